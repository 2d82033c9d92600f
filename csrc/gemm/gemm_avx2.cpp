// The avx2 build of gemm_impl.hpp's f32 kernel (flags in CMakeLists.txt). Its own namespace keeps
// its inline functions apart from the other builds'.

#include "gemm/gemm.hpp"

// Standard headers first: the implementation is included inside a namespace below.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace bort::gemm::avx2 {
#include "encoder/simd.hpp"
#include "gemm/gemm_impl.hpp"
extern const Kernel f32{block<F32>, F32::peak};
}  // namespace bort::gemm::avx2
