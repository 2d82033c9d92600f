// The avx512_bf16 build of gemm_impl.hpp's bf16 kernel (flags in CMakeLists.txt). Its own namespace keeps
// its inline functions apart from the other builds'.
#define BORT_AVX512
#define BORT_GEMM_BF16
#include "gemm/gemm.hpp"

// Standard headers first: the implementation is included inside a namespace below.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace bort::gemm::avx512_bf16 {
#include "encoder/simd.hpp"
#include "gemm/gemm_impl.hpp"
extern const Kernel bf16{block<BF16>, BF16::peak};
}  // namespace bort::gemm::avx512_bf16
