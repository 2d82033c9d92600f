// Element-wise kernels around the GEMMs, one row at a time, with run-time ISA dispatch.
//
// Each kernel exists twice (kernels_avx2.cpp, kernels_avx512.cpp, one source: kernels_impl.hpp);
// `kernels()` runs the ISA that gemm::backend() chose (the best one the CPU runs, or a lower one
// named by BORT_ISA). A CPU without AVX2 + FMA gets a clear error, never an illegal instruction.
#pragma once

#include <cstdint>
#include <string>

namespace bort::encoder {

enum class Act : int { None = 0, GeluErf = 1, GeluTanh = 2, Relu = 3 };

struct Kernels {
  const char* isa;
  // x (n,) <- act(x + bias)
  void (*bias_act)(float* x, const float* bias, int64_t n, Act act);
  // out (h,) <- LayerNorm(x + bias + residual) · gamma + beta; bias / residual may be null;
  // out may alias x or residual.
  void (*add_layernorm)(float* out, const float* x, const float* bias, const float* residual,
                        const float* gamma, const float* beta, int64_t h, float eps);
  // x (n,) <- softmax(scale · x)
  void (*softmax)(float* x, int64_t n, float scale);
  // y (n,) <- bf16(x), round to nearest even
  void (*to_bf16)(const float* x, uint16_t* y, int64_t n);
  // q (n,) <- round(x / scale) + zero in [0, levels]; the row's scale and zero point are written
  void (*quantize_u8)(const float* x, uint8_t* q, int64_t n, int levels, float* scale,
                      int32_t* zero);
  // y (n,) <- sx · sw · (c − zero · colsum)
  void (*dequantize)(const int32_t* c, float* y, int64_t n, float sx, int32_t zero,
                     const float* sw, const int32_t* colsum);
};

namespace avx2 { extern const Kernels kernels; }
namespace avx512 { extern const Kernels kernels; }

// The kernels for this CPU (and BORT_ISA); throws std::runtime_error if none can run.
const Kernels& kernels();
// "avx512" or "avx2": what kernels() chose.
std::string isa();

}  // namespace bort::encoder
