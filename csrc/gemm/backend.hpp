// What runs on this CPU: the ISA of the element-wise kernels and, per dtype, whose GEMM (bort's
// own microkernels or MKL). Decided once, in `backend()`, from CPUID features, never the vendor:
//   - own kernels wherever the CPU has their instructions: fp32 FMA (AVX2 or AVX-512), bf16
//     vdpbf16ps (AVX512-BF16), u8s8 vpdpbusd (AVX512-VNNI);
//   - MKL on CPUs with AMX (its AMX bf16/int8 GEMMs and its sgemm measure faster there), and for
//     a dtype whose instruction the CPU lacks (bf16 without AVX512-BF16, int8 without VNNI).
// Two environment variables, read here only: BORT_ISA=avx2|avx512 forces a lower ISA (tests
// cover the fallbacks on one machine); BORT_GEMM=own|mkl forces the GEMM source where the CPU
// allows it.
#pragma once

#include <string>

#include "gemm/gemm.hpp"

namespace bort::gemm {

enum class Source { Own, Mkl };

struct Backend {
  std::string isa;         // "avx512" or "avx2"
  bool bf16 = false;       // AVX512-BF16 usable (for bort's kernels: attention, bf16 GEMM)
  bool vnni = false;       // AVX512-VNNI usable
  bool amx = false;        // AMX-BF16 + AMX-INT8
  Source source[3] = {Source::Own, Source::Own, Source::Own};  // by Type: F32, BF16, U8S8
  int int8_max = 127;      // largest weight code: 63 where u8 × s8 pair sums saturate int16
  Kernels own;             // bort's kernels for this ISA (null where the CPU lacks them)

  Source of(Type t) const { return source[static_cast<int>(t)]; }
  // Whose GEMM a type gets: "own-avx512", "own-avx2", "own-avx512bf16", "own-avx512vnni", "mkl"
  // or "mkl-amx".
  std::string gemm_name(Type t) const;
  // e.g. "avx512 (fp32: own-avx512, bf16: own-avx512bf16, int8: own-avx512vnni)"
  std::string describe() const;
};

// The backend of this process; throws std::runtime_error on a CPU without AVX2 + FMA or an
// environment variable naming something this CPU cannot run.
const Backend& backend();

}  // namespace bort::gemm
