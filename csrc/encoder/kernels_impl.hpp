// The element-wise kernels, written once over `Vec` (simd.hpp). Included inside a namespace by
// kernels_avx2.cpp and kernels_avx512.cpp, each compiled for its ISA.
#include <algorithm>
#include <cstring>

#include "encoder/simd.hpp"

namespace {

using bort::encoder::Act;
using bort::encoder::Kernels;

// Apply f to n floats in vectors; the tail goes through a zero-padded vector, so it gets the
// same arithmetic as the body.
template <class F>
inline void each(float* x, int64_t n, F f) {
  int64_t i = 0;
  for (; i + Vec::width <= n; i += Vec::width) f(Vec::load(x + i)).store(x + i);
  if (i < n) {
    float tmp[Vec::width] = {};
    std::memcpy(tmp, x + i, (n - i) * sizeof(float));
    f(Vec::load(tmp)).store(tmp);
    std::memcpy(x + i, tmp, (n - i) * sizeof(float));
  }
}

inline Vec load_tail(const float* x, int64_t n, float fill) {
  float tmp[Vec::width];
  std::fill(tmp, tmp + Vec::width, fill);
  std::memcpy(tmp, x, n * sizeof(float));
  return Vec::load(tmp);
}

void bias_act(float* x, const float* bias, int64_t n, Act act) {
  int64_t i = 0;
  for (; i + Vec::width <= n; i += Vec::width)
    activate(Vec::load(x + i) + Vec::load(bias + i), act).store(x + i);
  if (i < n) {
    float tmp[Vec::width] = {};
    std::memcpy(tmp, x + i, (n - i) * sizeof(float));
    activate(Vec::load(tmp) + load_tail(bias + i, n - i, 0.0f), act).store(tmp);
    std::memcpy(x + i, tmp, (n - i) * sizeof(float));
  }
}

void add_layernorm(float* out, const float* x, const float* bias, const float* residual,
                   const float* gamma, const float* beta, int64_t h, float eps) {
  // out = x + bias + residual first (out may alias x or residual), then normalise in place.
  for (int64_t i = 0; i < h; ++i)
    out[i] = x[i] + (bias ? bias[i] : 0.0f) + (residual ? residual[i] : 0.0f);
  Vec acc = Vec::set1(0.0f);
  int64_t i = 0;
  for (; i + Vec::width <= h; i += Vec::width) acc = acc + Vec::load(out + i);
  float sum = reduce_add(acc);
  for (; i < h; ++i) sum += out[i];
  const float mean = sum / static_cast<float>(h);
  acc = Vec::set1(0.0f);
  const Vec m = Vec::set1(mean);
  for (i = 0; i + Vec::width <= h; i += Vec::width) {
    const Vec d = Vec::load(out + i) - m;
    acc = fma(d, d, acc);
  }
  float sq = reduce_add(acc);
  for (; i < h; ++i) sq += (out[i] - mean) * (out[i] - mean);
  const float inv = 1.0f / std::sqrt(sq / static_cast<float>(h) + eps);
  const Vec vinv = Vec::set1(inv);
  for (i = 0; i + Vec::width <= h; i += Vec::width)
    fma((Vec::load(out + i) - m) * vinv, Vec::load(gamma + i), Vec::load(beta + i)).store(out + i);
  for (; i < h; ++i) out[i] = (out[i] - mean) * inv * gamma[i] + beta[i];
}

void softmax(float* x, int64_t n, float scale) {
  Vec vmax = Vec::set1(-INFINITY);
  int64_t i = 0;
  for (; i + Vec::width <= n; i += Vec::width) vmax = max(vmax, Vec::load(x + i));
  float mx = reduce_max(vmax);
  for (; i < n; ++i) mx = std::max(mx, x[i]);
  const Vec s = Vec::set1(scale), shift = Vec::set1(scale * mx);
  Vec vsum = Vec::set1(0.0f);
  float sum = 0.0f;
  i = 0;
  for (; i + Vec::width <= n; i += Vec::width) {
    const Vec e = exp(fma(Vec::load(x + i), s, Vec::set1(0.0f) - shift));
    e.store(x + i);
    vsum = vsum + e;
  }
  if (i < n) {
    float tmp[Vec::width];
    const Vec e = exp(fma(load_tail(x + i, n - i, mx), s, Vec::set1(0.0f) - shift));
    e.store(tmp);
    for (int64_t j = 0; j < n - i; ++j) {
      x[i + j] = tmp[j];
      sum += tmp[j];
    }
  }
  sum += reduce_add(vsum);
  const float inv = 1.0f / sum;
  each(x, n, [inv](Vec v) { return v * Vec::set1(inv); });
}

void to_bf16(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    y[i] = static_cast<uint16_t>(u >> 16);
  }
}

void quantize_u8(const float* x, uint8_t* q, int64_t n, int levels, float* scale, int32_t* zero) {
  Vec vlo = Vec::set1(0.0f), vhi = Vec::set1(0.0f);  // the range always holds 0
  int64_t i = 0;
  for (; i + Vec::width <= n; i += Vec::width) {
    const Vec v = Vec::load(x + i);
    vlo = min(vlo, v);
    vhi = max(vhi, v);
  }
  float lo = -reduce_max(Vec::set1(0.0f) - vlo), hi = reduce_max(vhi);
  for (; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  const float s = hi > lo ? (hi - lo) / static_cast<float>(levels) : 1.0f;
  const int32_t z = std::clamp(static_cast<int32_t>(std::nearbyint(-lo / s)), 0, levels);
  const float inv = 1.0f / s, top = static_cast<float>(levels);
  const float zf = static_cast<float>(z) + 0.5f;  // + 0.5 then truncate: round half up, x ≥ 0
  for (int64_t j = 0; j < n; ++j)
    q[j] = static_cast<uint8_t>(static_cast<int32_t>(std::min(std::max(x[j] * inv + zf, 0.0f), top + 0.49f)));
  *scale = s;
  *zero = z;
}

void dequantize(const int32_t* c, float* y, int64_t n, float sx, int32_t zero, const float* sw,
                const int32_t* colsum) {
  for (int64_t j = 0; j < n; ++j)
    y[j] = sx * sw[j] * static_cast<float>(c[j] - zero * colsum[j]);
}

}  // namespace
