// A small SIMD vocabulary for the element-wise kernels: one source, two instruction sets.
//
// Included by kernels_avx2.cpp (BORT_AVX512 undefined, compiled with -mavx2 -mfma) and by
// kernels_avx512.cpp (BORT_AVX512 defined, -mavx512f -mavx512dq -mavx512bw -mavx512vl). Each
// includer wraps it in its own namespace, so both versions live in one module and the dispatcher
// picks one at run time. exp and erf are polynomial approximations accurate to a few ulp / 1.5e-7.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "encoder/kernels.hpp"  // Act (already included by the includer, outside its namespace)

#ifdef BORT_AVX512
struct Vec {
  static constexpr int width = 16;
  __m512 v;
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec set1(float x) { return {_mm512_set1_ps(x)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  friend Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm512_div_ps(a.v, b.v)}; }
  friend Vec fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  friend Vec max(Vec a, Vec b) { return {_mm512_max_ps(a.v, b.v)}; }
  friend Vec min(Vec a, Vec b) { return {_mm512_min_ps(a.v, b.v)}; }
  friend Vec abs(Vec a) { return {_mm512_abs_ps(a.v)}; }
  friend Vec copysign(Vec mag, Vec sign) {
    const __m512i s = _mm512_and_si512(_mm512_castps_si512(sign.v), _mm512_set1_epi32(INT32_MIN));
    return {_mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(abs(mag).v), s))};
  }
  friend float reduce_add(Vec a) { return _mm512_reduce_add_ps(a.v); }
  friend float reduce_max(Vec a) { return _mm512_reduce_max_ps(a.v); }
  // 2^n for integral-valued n in [-126, 127]
  static Vec pow2(Vec n) {
    const __m512i i = _mm512_add_epi32(_mm512_cvtps_epi32(n.v), _mm512_set1_epi32(127));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(i, 23))};
  }
  static Vec round(Vec a) { return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT)}; }
  // the first n lanes (0 <= n <= width); the others read as 0 / are not written
  static __mmask16 lanes(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static Vec load_n(const float* p, int64_t n) { return {_mm512_maskz_loadu_ps(lanes(n), p)}; }
  void store_n(float* p, int64_t n) const { _mm512_mask_storeu_ps(p, lanes(n), v); }
};
#else
struct Vec {
  static constexpr int width = 8;
  __m256 v;
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec set1(float x) { return {_mm256_set1_ps(x)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  friend Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm256_div_ps(a.v, b.v)}; }
  friend Vec fma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  friend Vec max(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }
  friend Vec min(Vec a, Vec b) { return {_mm256_min_ps(a.v, b.v)}; }
  friend Vec abs(Vec a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)}; }
  friend Vec copysign(Vec mag, Vec sign) {
    const __m256 s = _mm256_and_ps(sign.v, _mm256_set1_ps(-0.0f));
    return {_mm256_or_ps(abs(mag).v, s)};
  }
  friend float reduce_add(Vec a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  friend float reduce_max(Vec a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static Vec pow2(Vec n) {
    const __m256i i = _mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(i, 23))};
  }
  static Vec round(Vec a) { return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
  static __m256i lanes(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static Vec load_n(const float* p, int64_t n) { return {_mm256_maskload_ps(p, lanes(n))}; }
  void store_n(float* p, int64_t n) const { _mm256_maskstore_ps(p, lanes(n), v); }
};
#endif

// e^x: x = n·ln2 + r with |r| ≤ ln2/2, e^r by a degree-6 polynomial (Cephes expf), 2^n by bits.
inline Vec exp(Vec x) {
  x = min(max(x, Vec::set1(-87.3f)), Vec::set1(88.3f));
  const Vec n = Vec::round(x * Vec::set1(1.44269504088896341f));
  const Vec r = fma(n, Vec::set1(-0.693359375f), x);
  const Vec r2 = fma(n, Vec::set1(2.12194440e-4f), r);
  Vec p = Vec::set1(1.9875691500e-4f);
  p = fma(p, r2, Vec::set1(1.3981999507e-3f));
  p = fma(p, r2, Vec::set1(8.3334519073e-3f));
  p = fma(p, r2, Vec::set1(4.1665795894e-2f));
  p = fma(p, r2, Vec::set1(1.6666665459e-1f));
  p = fma(p, r2, Vec::set1(5.0000001201e-1f));
  p = fma(p, r2 * r2, r2 + Vec::set1(1.0f));
  return p * Vec::pow2(n);
}

// erf(x), Abramowitz & Stegun 7.1.26: |error| ≤ 1.5e-7.
inline Vec erf(Vec x) {
  const Vec a = abs(x);
  const Vec t = Vec::set1(1.0f) / fma(Vec::set1(0.3275911f), a, Vec::set1(1.0f));
  Vec p = Vec::set1(1.061405429f);
  p = fma(p, t, Vec::set1(-1.453152027f));
  p = fma(p, t, Vec::set1(1.421413741f));
  p = fma(p, t, Vec::set1(-0.284496736f));
  p = fma(p, t, Vec::set1(0.254829592f));
  const Vec y = Vec::set1(1.0f) - p * t * exp(Vec::set1(0.0f) - a * a);
  return copysign(y, x);
}

// tanh(x) = 1 - 2 / (e^{2x} + 1), exact enough for the tanh GELU.
inline Vec tanh(Vec x) {
  return Vec::set1(1.0f) - Vec::set1(2.0f) / (exp(x + x) + Vec::set1(1.0f));
}

// The FFN's activations (bort::encoder::Act), shared by the element-wise kernels and the GEMM
// epilogues.
inline Vec activate(Vec v, ::bort::encoder::Act act) {
  using ::bort::encoder::Act;
  switch (act) {
    case Act::GeluErf:
      return Vec::set1(0.5f) * v * (Vec::set1(1.0f) + erf(v * Vec::set1(0.70710678118654752f)));
    case Act::GeluTanh: {
      const Vec inner = v * fma(Vec::set1(0.044715f) * v, v, Vec::set1(1.0f));
      return Vec::set1(0.5f) * v * (Vec::set1(1.0f) + tanh(Vec::set1(0.79788456080286536f) * inner));
    }
    case Act::Relu:
      return max(v, Vec::set1(0.0f));
    case Act::None:
      break;
  }
  return v;
}
