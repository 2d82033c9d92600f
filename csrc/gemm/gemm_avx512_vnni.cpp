// The avx512_vnni build of gemm_impl.hpp's u8s8 kernel (flags in CMakeLists.txt). Its own namespace keeps
// its inline functions apart from the other builds'.
#define BORT_AVX512
#define BORT_GEMM_U8S8
#include "gemm/gemm.hpp"

// Standard headers first: the implementation is included inside a namespace below.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace bort::gemm::avx512_vnni {
#include "encoder/simd.hpp"
#include "gemm/gemm_impl.hpp"
extern const Kernel u8s8{block<U8S8>, U8S8::peak};
}  // namespace bort::gemm::avx512_vnni
