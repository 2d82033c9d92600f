// bort's own GEMM: C (M, N) = A (M, K) · Bᵀ with B (N, K) packed once, then a fused epilogue.
//
// B is packed in 16-column panels, so that each k-step of a panel is one 64-byte row:
//   fp32  [K][16]             one float per column
//   bf16  [Kp/2][16][2]       pairs of k (vdpbf16ps)
//   u8s8  [Kp/4][16][4]       quads of k (vpdpbusd), B signed, A unsigned
// Kp is K rounded up to the step (1, 2, 4); the padding is 0 in A and B, so it adds nothing.
// A is row-major with Kp columns (lda ≥ Kp): fp32 as given; bf16 and u8 converted by the caller
// once per GEMM, one scale per row for u8, so a row's result never depends on the other rows.
// The microkernels (gemm_impl.hpp) are compiled once per ISA family; backend.hpp chooses among
// them (and MKL) once, by CPUID features.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

#include "encoder/kernels.hpp"  // Act

namespace bort::gemm {

using encoder::Act;

enum class Type { F32, BF16, U8S8 };

constexpr int64_t kPanel = 16;  // columns per panel
constexpr int64_t elem_bytes(Type t) { return t == Type::F32 ? 4 : t == Type::BF16 ? 2 : 1; }
// k-values per 4-byte step of a panel column: 1 float, 2 bf16, 4 int8
constexpr int64_t k_step(Type t) { return 4 / elem_bytes(t); }
constexpr int64_t round_up(int64_t x, int64_t step) { return (x + step - 1) / step * step; }

// What the microkernel does to a finished tile before it stores it, in this order:
//   u8s8: c = a_scale[m] · w_scale[n] · (c − a_zero[m] · w_sum[n])   (int32 → fp32)
//   c += bias[n];  c = act(c);  c += residual[m · ldr + n]
// Indices are those of the whole GEMM; null pointers skip a step.
struct Epilogue {
  const float* bias = nullptr;
  Act act = Act::None;
  const float* residual = nullptr;
  int64_t ldr = 0;
  const float* a_scale = nullptr;
  const int32_t* a_zero = nullptr;
  const float* w_scale = nullptr;
  const int32_t* w_sum = nullptr;

  // The same epilogue for the block whose first element is (m0, n0).
  Epilogue at(int64_t m0, int64_t n0) const {
    Epilogue e = *this;
    if (bias) e.bias += n0;
    if (residual) e.residual += m0 * ldr + n0;
    if (a_scale) e.a_scale += m0;
    if (a_zero) e.a_zero += m0;
    if (w_scale) e.w_scale += n0;
    if (w_sum) e.w_sum += n0;
    return e;
  }
};

// One block: rows [0, M) of A against `panels` consecutive panels starting at B, whose first
// `n` columns are real (n ≤ 16 · panels); C (M, n) with leading dimension ldc. kp: the packed K.
// A and B are typed by the kernel: float / uint16_t (bf16 bits) / uint8_t and int8_t.
using BlockFn = void (*)(const void* A, int64_t lda, int64_t M, const void* B, int64_t kp,
                         int64_t panels, int64_t n, float* C, int64_t ldc, const Epilogue& e);

// A register-only loop of the kernel's instruction (iters × independent chains): returns the
// operations it ran, for "% of the instruction's peak" (bench/gemm.py). sink defeats the optimiser.
using PeakFn = double (*)(int64_t iters, float* sink);

// One kernel of one ISA: its block function and its peak loop.
struct Kernel {
  BlockFn block = nullptr;
  PeakFn peak = nullptr;
  explicit operator bool() const { return block != nullptr; }
};

// The kernels this CPU runs (backend.hpp chooses them), empty where it lacks the instruction.
struct Kernels {
  Kernel f32;
  Kernel bf16;  // AVX512-BF16
  Kernel u8s8;  // AVX512-VNNI
  const Kernel& get(Type t) const { return t == Type::F32 ? f32 : t == Type::BF16 ? bf16 : u8s8; }
};

// Each one defined in its own translation unit, compiled for its ISA.
namespace avx2 { extern const Kernel f32; }
namespace avx512 { extern const Kernel f32; }
namespace avx512_bf16 { extern const Kernel bf16; }
namespace avx512_vnni { extern const Kernel u8s8; }

// 64-byte aligned storage for packed panels (and the caller's converted activations).
struct Aligned {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<void, Free> ptr;
  int64_t bytes = 0;
  static Aligned make(int64_t bytes) {
    const int64_t rounded = round_up(bytes > 0 ? bytes : 64, 64);
    void* p = std::aligned_alloc(64, static_cast<size_t>(rounded));
    if (!p) throw std::bad_alloc();
    return {std::unique_ptr<void, Free>(p), rounded};
  }
  template <class T>
  T* as() const { return static_cast<T*>(ptr.get()); }
};

// A matrix packed in panels: element (n, k) of the logical (N, K) matrix B is
// src[n · stride_n + k · stride_k], so both W (N, K) row-major (stride_n = ldw, stride_k = 1)
// and V (K, N) row-major (stride_n = 1, stride_k = ldv) pack without a transposed copy.
// T is float, uint16_t (bf16 bits) or int8_t; the type's k-step comes from T's size.
template <class T>
void pack(const T* src, int64_t N, int64_t K, int64_t stride_n, int64_t stride_k, T* dst) {
  constexpr int64_t step = 4 / static_cast<int64_t>(sizeof(T));
  const int64_t kp = round_up(K, step), panels = (N + kPanel - 1) / kPanel;
  for (int64_t p = 0; p < panels; ++p) {
    T* out = dst + p * kp * kPanel;  // element (j, k) of the panel at out[k · 16 + j · step + k % step]
    const int64_t n0 = p * kPanel, cols = std::min(kPanel, N - n0);
    if (cols < kPanel || stride_n != 1) std::fill(out, out + kp * kPanel, T(0));
    if (stride_n == 1) {  // rows of k are contiguous in n (V): copy them across
      for (int64_t k = 0; k < K; ++k) {
        const T* row = src + k * stride_k + n0;
        T* o = out + (k - k % step) * kPanel + k % step;
        for (int64_t j = 0; j < cols; ++j) o[j * step] = row[j * stride_n];
      }
    } else {  // rows of n are contiguous in k (W, Kᵀ): copy each down its column
      for (int64_t j = 0; j < cols; ++j) {
        const T* row = src + (n0 + j) * stride_n;
        T* o = out + j * step;
        for (int64_t k = 0; k < K; ++k) o[(k - k % step) * kPanel + k % step] = row[k * stride_k];
        for (int64_t k = K; k < kp; ++k) o[(k - k % step) * kPanel + k % step] = T(0);
      }
    }
  }
}

// Bytes of a packed (N, K) matrix of element type T.
template <class T>
int64_t packed_bytes(int64_t N, int64_t K) {
  constexpr int64_t step = 4 / static_cast<int64_t>(sizeof(T));
  return (N + kPanel - 1) / kPanel * kPanel * round_up(K, step) * static_cast<int64_t>(sizeof(T));
}

}  // namespace bort::gemm
