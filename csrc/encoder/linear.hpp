// A linear layer's GEMM, Y (M, N) = X (M, K) · Wᵀ with W (N, K), in fp32, bf16 or int8.
//
// Weights are converted and packed once at load into MKL's GEMM layout, in one column slice per
// pool thread (each thread multiplies its own slice; nothing is shared). X and Y stay fp32:
// - fp32: cblas_sgemm_compute on packed W.
// - bf16: X rounded to bf16 (round to nearest even) once per call; cblas_gemm_bf16bf16f32_compute
//   accumulates in fp32 (AMX / AVX512-BF16 where present, MKL's emulation on AVX2).
// - int8: dynamic quantisation. W: symmetric per output channel, s8. X: asymmetric per row, u8
//   with a zero point; cblas_gemm_s8u8s32_compute gives C = Xq · Wqᵀ in int32 and the epilogue
//   applies Y = sx[m] · sw[n] · (C − zp[m] · Σk Wq[n, k]). Without VNNI the u8 × s8 pair sums
//   saturate int16 (vpmaddubsw: 2 · 255 · 127 > 32767), so weights use 7 bits (±63) there
//   (GEMM_NOTES' pitfall); activations, which carry the outliers, keep all 8.
// MKL's packed layout depends on the M given when packing: 128 measured fastest for every M from
// 1 to 512 on this machine class (2× the unpacked rate at M = 16); results are exact for any M.
#pragma once

#include <mkl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "encoder/kernels.hpp"
#include "encoder/thread_pool.hpp"

namespace bort::encoder {

enum class Dtype { F32, BF16, I8 };

// Per-call buffers for the converted input and int32 results; grown, never shrunk.
struct GemmScratch {
  std::vector<uint16_t> x_bf16;
  std::vector<uint8_t> x_u8;
  std::vector<float> x_scale;
  std::vector<int32_t> x_zero, c32;
};

class Linear {
 public:
  Linear() = default;
  // int8_max: the largest weight code, 127 with VNNI, 63 without.
  Linear(const std::vector<float>& W, int64_t n, int64_t k, int parts, Dtype dtype, int int8_max)
      : N_(n), K_(k), dtype_(dtype) {
    std::vector<int8_t> wq;
    std::vector<uint16_t> wb;
    if (dtype == Dtype::I8) {  // symmetric per output channel
      wq.resize(N_ * K_);
      scale_.resize(N_);
      colsum_.resize(N_);
      for (int64_t r = 0; r < N_; ++r) {
        float amax = 0.0f;
        for (int64_t c = 0; c < K_; ++c) amax = std::max(amax, std::fabs(W[r * K_ + c]));
        const float s = amax > 0 ? amax / static_cast<float>(int8_max) : 1.0f;
        scale_[r] = s;
        int32_t sum = 0;
        for (int64_t c = 0; c < K_; ++c) {
          const int32_t q = static_cast<int32_t>(std::nearbyint(W[r * K_ + c] / s));
          wq[r * K_ + c] = static_cast<int8_t>(std::clamp(q, -int8_max, int8_max));
          sum += wq[r * K_ + c];
        }
        colsum_[r] = sum;
      }
    } else if (dtype == Dtype::BF16) {
      wb.resize(N_ * K_);
      kernels().to_bf16(W.data(), wb.data(), N_ * K_);
    }
    const int64_t blocks = (N_ + 15) / 16;
    parts = static_cast<int>(std::min<int64_t>(std::max(parts, 1), blocks));
    for (int p = 0; p < parts; ++p) {
      const int64_t n0 = std::min(N_, blocks * p / parts * 16);
      const int64_t n1 = std::min(N_, blocks * (p + 1) / parts * 16);
      if (n1 <= n0) continue;
      const int64_t cols = n1 - n0;
      size_t bytes = 0;
      if (dtype == Dtype::F32) bytes = cblas_sgemm_pack_get_size(CblasBMatrix, 128, cols, K_);
      if (dtype == Dtype::BF16) bytes = cblas_gemm_bf16bf16f32_pack_get_size(CblasBMatrix, 128, cols, K_);
      if (dtype == Dtype::I8) bytes = cblas_gemm_s8u8s32_pack_get_size(CblasBMatrix, 128, cols, K_);
      void* dst = mkl_malloc(bytes, 64);
      if (!dst) throw std::bad_alloc();
      if (dtype == Dtype::F32)
        cblas_sgemm_pack(CblasRowMajor, CblasBMatrix, CblasTrans, 128, cols, K_, 1.0f,
                         W.data() + n0 * K_, K_, static_cast<float*>(dst));
      if (dtype == Dtype::BF16)
        cblas_gemm_bf16bf16f32_pack(CblasRowMajor, CblasBMatrix, CblasTrans, 128, cols, K_,
                                    wb.data() + n0 * K_, K_, static_cast<MKL_BF16*>(dst));
      if (dtype == Dtype::I8)
        cblas_gemm_s8u8s32_pack(CblasRowMajor, CblasBMatrix, CblasTrans, 128, cols, K_,
                                wq.data() + n0 * K_, K_, dst);
      slices_.push_back({n0, n1, dst});
    }
  }
  Linear(Linear&& o) noexcept { *this = std::move(o); }
  Linear& operator=(Linear&& o) noexcept {
    std::swap(N_, o.N_);
    std::swap(K_, o.K_);
    std::swap(dtype_, o.dtype_);
    std::swap(slices_, o.slices_);
    std::swap(scale_, o.scale_);
    std::swap(colsum_, o.colsum_);
    return *this;
  }
  Linear(const Linear&) = delete;
  ~Linear() {
    for (auto& s : slices_) mkl_free(s.packed);
  }

  // Y (M, N) = X (M, K) · Wᵀ, then epilogue(n0, n1) on each slice's columns (fp32 values in Y)
  // while they are in cache.
  template <class Epilogue>
  void operator()(ThreadPool& pool, const float* X, int64_t M, float* Y, GemmScratch& s,
                  Epilogue epilogue) const {
    const Kernels& k = kernels();
    const int64_t rows = std::max<int64_t>(1, 16384 / K_);  // per task: enough to beat dispatch
    const int64_t tasks = (M + rows - 1) / rows;
    if (dtype_ == Dtype::BF16) {
      grow(s.x_bf16, M * K_);
      pool.run(tasks, [&](int64_t t, int) {
        for (int64_t m = t * rows; m < std::min(M, (t + 1) * rows); ++m)
          k.to_bf16(X + m * K_, s.x_bf16.data() + m * K_, K_);
      });
    } else if (dtype_ == Dtype::I8) {
      grow(s.x_u8, M * K_);
      grow(s.x_scale, M);
      grow(s.x_zero, M);
      grow(s.c32, M * N_);
      pool.run(tasks, [&](int64_t t, int) {
        for (int64_t m = t * rows; m < std::min(M, (t + 1) * rows); ++m)
          k.quantize_u8(X + m * K_, s.x_u8.data() + m * K_, K_, 255, &s.x_scale[m], &s.x_zero[m]);
      });
    }
    pool.run(static_cast<int64_t>(slices_.size()), [&](int64_t p, int) {
      const Slice& sl = slices_[p];
      const int64_t cols = sl.n1 - sl.n0;
      if (dtype_ == Dtype::F32) {
        cblas_sgemm_compute(CblasRowMajor, CblasNoTrans, CblasPacked, M, cols, K_, X, K_,
                            static_cast<const float*>(sl.packed), K_, 0.0f, Y + sl.n0, N_);
      } else if (dtype_ == Dtype::BF16) {
        cblas_gemm_bf16bf16f32_compute(CblasRowMajor, CblasNoTrans, CblasPacked, M, cols, K_, 1.0f,
                                       s.x_bf16.data(), K_,
                                       static_cast<const MKL_BF16*>(sl.packed), K_, 0.0f,
                                       Y + sl.n0, N_);
      } else {
        const MKL_INT32 zero = 0;
        int32_t* c = s.c32.data();
        cblas_gemm_s8u8s32_compute(CblasRowMajor, CblasNoTrans, CblasPacked, CblasFixOffset, M,
                                   cols, K_, 1.0f, s.x_u8.data(), K_, 0, sl.packed, K_, 0, 0.0f,
                                   c + sl.n0, N_, &zero);
        for (int64_t m = 0; m < M; ++m)
          k.dequantize(c + m * N_ + sl.n0, Y + m * N_ + sl.n0, cols, s.x_scale[m], s.x_zero[m],
                       scale_.data() + sl.n0, colsum_.data() + sl.n0);
      }
      epilogue(sl.n0, sl.n1);
    });
  }
  void operator()(ThreadPool& pool, const float* X, int64_t M, float* Y, GemmScratch& s) const {
    (*this)(pool, X, M, Y, s, [](int64_t, int64_t) {});
  }

 private:
  template <class T>
  static void grow(std::vector<T>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  }
  struct Slice {
    int64_t n0, n1;
    void* packed;
  };
  int64_t N_ = 0, K_ = 0;
  Dtype dtype_ = Dtype::F32;
  std::vector<Slice> slices_;
  std::vector<float> scale_;     // int8: per output channel
  std::vector<int32_t> colsum_;  // int8: Σk Wq[n, k]
};

}  // namespace bort::encoder
