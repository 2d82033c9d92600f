// The AVX2 + FMA build of kernels_impl.hpp (compiled with -mavx2 -mfma).
#include "encoder/kernels.hpp"

// Standard headers first: kernels_impl.hpp is included inside a namespace below.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace bort::encoder::avx2 {
#include "encoder/kernels_impl.hpp"
const Kernels kernels{"avx2", bias_act, add_layernorm, softmax, to_bf16,
                        quantize_u8, dequantize};
}  // namespace bort::encoder::avx2
