// A linear layer's GEMM, Y (M, N) = X (M, K) · Wᵀ + epilogue, with W (N, K), in fp32, bf16 or int8.
//
// Weights are converted and packed once at load, for whichever GEMM gemm::backend() chose for the
// dtype: bort's microkernels (gemm/gemm.hpp panels) or MKL's packed format, in one column slice
// per pool thread. X and Y stay fp32; per call X is converted once:
// - fp32: used as it is.
// - bf16: rounded to bf16 (round to nearest even); products accumulate in fp32.
// - int8: dynamic quantisation. W: symmetric per output channel, s8. X: asymmetric per row, u8
//   with a zero point; C = Xq · Wqᵀ in int32, and the epilogue applies
//   Y = sx[m] · sw[n] · (C − zp[m] · Σk Wq[n, k]). Without VNNI the u8 × s8 pair sums of MKL's
//   kernels saturate int16 (vpmaddubsw: 2 · 255 · 127 > 32767), so weights use 7 bits (±63)
//   there (GEMM_NOTES' pitfall); activations, which carry the outliers, keep all 8.
// Each row is converted on its own (one scale per token), so a row's output never depends on
// the other rows of the batch. The epilogue (gemm::Epilogue: bias, activation, residual) runs
// on each finished tile in registers (own kernels) or on each slice after MKL's call.
// Work split: the own kernels' tasks are (row block × column chunk) tiles, at least ~4 per
// thread so that the pool balances them; MKL's are the per-thread column slices.
// MKL's packed layout depends on the M given when packing: 128 measured fastest for every M from
// 1 to 512 on this machine class (2× the unpacked rate at M = 16); results are exact for any M.
#pragma once

#include <mkl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <vector>

#include "encoder/kernels.hpp"
#include "encoder/thread_pool.hpp"
#include "gemm/backend.hpp"

namespace bort::encoder {

enum class Dtype { F32, BF16, I8 };

// Per-call buffers for the converted input and int32 results; grown, never shrunk.
struct GemmScratch {
  std::vector<uint16_t> x_bf16;
  std::vector<uint8_t> x_u8;
  std::vector<float> x_scale;
  std::vector<int32_t> x_zero, c32;
};

inline gemm::Type gemm_type(Dtype d) {
  return d == Dtype::F32 ? gemm::Type::F32 : d == Dtype::BF16 ? gemm::Type::BF16 : gemm::Type::U8S8;
}

class Linear {
 public:
  Linear() = default;
  // W (n, k) row-major; parts: the pool's threads (MKL's column slices).
  Linear(const std::vector<float>& W, int64_t n, int64_t k, int parts, Dtype dtype)
      : N_(n), K_(k), dtype_(dtype) {
    const gemm::Backend& be = gemm::backend();
    const gemm::Type type = gemm_type(dtype);
    own_ = be.of(type) == gemm::Source::Own;
    kp_ = own_ ? gemm::round_up(K_, gemm::k_step(type)) : K_;
    std::vector<int8_t> wq;
    std::vector<uint16_t> wb;
    if (dtype == Dtype::I8) {  // symmetric per output channel
      const int int8_max = be.int8_max;
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
    if (own_) {
      if (dtype == Dtype::F32) pack_own(W.data());
      if (dtype == Dtype::BF16) pack_own(wb.data());
      if (dtype == Dtype::I8) pack_own(wq.data());
      return;
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
    std::swap(kp_, o.kp_);
    std::swap(dtype_, o.dtype_);
    std::swap(own_, o.own_);
    std::swap(packed_, o.packed_);
    std::swap(slices_, o.slices_);
    std::swap(scale_, o.scale_);
    std::swap(colsum_, o.colsum_);
    return *this;
  }
  Linear(const Linear&) = delete;
  ~Linear() {
    for (auto& s : slices_) mkl_free(s.packed);
  }

  // Y (M, N) = epilogue(X (M, K) · Wᵀ); Y aliases neither X nor e.residual. An activation
  // needs a bias (MKL's path applies them together).
  void operator()(ThreadPool& pool, const float* X, int64_t M, float* Y, GemmScratch& s,
                  const gemm::Epilogue& e = {}) const {
    (*this)(pool, X, M, Y, s, e, RowsFn{});
  }
  // The same, then rows(m0, m1) on each block of finished rows of Y (e.g. a LayerNorm): inside
  // the GEMM's task while its rows are in cache where the tasks own whole rows (at large M, or
  // on one thread), else in a pass after it.
  using RowsFn = std::function<void(int64_t, int64_t)>;
  void operator()(ThreadPool& pool, const float* X, int64_t M, float* Y, GemmScratch& s,
                  const gemm::Epilogue& e, const RowsFn& rows) const {
    if (M <= 0) return;
    const void* A = convert(pool, X, M, s);
    const bool fused = own_ && own_gemm(pool, A, M, Y, s, e, rows);
    if (!own_) mkl_gemm(pool, X, M, Y, s, e);
    if (rows && !fused) {
      const int64_t chunk = 16;
      pool.run((M + chunk - 1) / chunk, [&](int64_t c, int) {
        rows(c * chunk, std::min(M, (c + 1) * chunk));
      });
    }
  }

 private:
  template <class T>
  static void grow(std::vector<T>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  }

  template <class T>
  void pack_own(const T* w) {
    packed_ = gemm::Aligned::make(gemm::packed_bytes<T>(N_, K_));
    gemm::pack<T>(w, N_, K_, K_, 1, packed_.as<T>());
  }

  // X in the GEMM's input type, kp_ columns per row (zero-padded); the int8 row scales in s.
  const void* convert(ThreadPool& pool, const float* X, int64_t M, GemmScratch& s) const {
    if (dtype_ == Dtype::F32) return X;
    const Kernels& k = kernels();
    const int64_t rows = std::max<int64_t>(1, 16384 / K_);  // per task: enough to beat dispatch
    const int64_t tasks = (M + rows - 1) / rows;
    if (dtype_ == Dtype::BF16) {
      grow(s.x_bf16, M * kp_);
      pool.run(tasks, [&](int64_t t, int) {
        for (int64_t m = t * rows; m < std::min(M, (t + 1) * rows); ++m) {
          uint16_t* row = s.x_bf16.data() + m * kp_;
          k.to_bf16(X + m * K_, row, K_);
          std::fill(row + K_, row + kp_, uint16_t(0));
        }
      });
      return s.x_bf16.data();
    }
    grow(s.x_u8, M * kp_);
    grow(s.x_scale, M);
    grow(s.x_zero, M);
    pool.run(tasks, [&](int64_t t, int) {
      for (int64_t m = t * rows; m < std::min(M, (t + 1) * rows); ++m) {
        uint8_t* row = s.x_u8.data() + m * kp_;
        k.quantize_u8(X + m * K_, row, K_, 255, &s.x_scale[m], &s.x_zero[m]);
        std::fill(row + K_, row + kp_, uint8_t(0));
      }
    });
    return s.x_u8.data();
  }

  // Returns whether rows() ran inside the tasks.
  bool own_gemm(ThreadPool& pool, const void* A, int64_t M, float* Y, const GemmScratch& s,
                gemm::Epilogue e, const RowsFn& rows) const {
    const gemm::BlockFn block = gemm::backend().own.get(gemm_type(dtype_)).block;
    if (dtype_ == Dtype::I8) {
      e.a_scale = s.x_scale.data();
      e.a_zero = s.x_zero.data();
      e.w_scale = scale_.data();
      e.w_sum = colsum_.data();
    }
    const int64_t bytes = gemm::elem_bytes(gemm_type(dtype_));
    const auto* a = static_cast<const char*>(A);
    const auto* b = packed_.as<const char>();
    // Row blocks of 64 (whole 4- and 8-row tiles; 32, 48 and 256 measured slower): up to 64
    // tokens the threads split only the columns. Chunks of whole 4-panel groups, ~4 tasks per
    // thread, so that the pool balances them; whole rows per task when rows() wants them and
    // there are row blocks enough to balance the threads (two each).
    const int64_t block_rows = std::min<int64_t>(M, 64), row_blocks = (M + block_rows - 1) / block_rows;
    const int64_t panels = (N_ + gemm::kPanel - 1) / gemm::kPanel;
    const bool whole_rows = pool.size() == 1 || (rows && row_blocks >= 2 * pool.size());
    const int64_t want = 4 * pool.size();
    const int64_t chunks = std::clamp<int64_t>((want + row_blocks - 1) / row_blocks, 1, panels);
    const int64_t per = whole_rows ? panels : gemm::round_up((panels + chunks - 1) / chunks, 4);
    const int64_t col_chunks = (panels + per - 1) / per;
    pool.run(row_blocks * col_chunks, [&](int64_t t, int) {
      const int64_t m0 = t / col_chunks * block_rows, p0 = t % col_chunks * per;
      const int64_t m = std::min(block_rows, M - m0), np = std::min(per, panels - p0);
      const int64_t n0 = p0 * gemm::kPanel;
      block(a + m0 * kp_ * bytes, kp_, m, b + p0 * kp_ * gemm::kPanel * bytes, kp_, np,
            std::min(N_ - n0, np * gemm::kPanel), Y + m0 * N_ + n0, N_, e.at(m0, n0));
      if (rows && whole_rows) rows(m0, m0 + m);
    });
    return rows && whole_rows;
  }

  void mkl_gemm(ThreadPool& pool, const float* X, int64_t M, float* Y, GemmScratch& s,
                const gemm::Epilogue& e) const {
    const Kernels& k = kernels();
    if (dtype_ == Dtype::I8) grow(s.c32, M * N_);
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
      for (int64_t m = 0; m < M; ++m) {  // the epilogue on the slice, while it is in cache
        float* y = Y + m * N_ + sl.n0;
        if (e.bias) k.bias_act(y, e.bias + sl.n0, cols, e.act);
        if (e.residual)
          for (int64_t j = 0; j < cols; ++j) y[j] += e.residual[m * e.ldr + sl.n0 + j];
      }
    });
  }

  struct Slice {
    int64_t n0, n1;
    void* packed;
  };
  int64_t N_ = 0, K_ = 0, kp_ = 0;
  Dtype dtype_ = Dtype::F32;
  bool own_ = false;
  gemm::Aligned packed_;         // own kernels: the panels
  std::vector<Slice> slices_;    // MKL: one packed slice per thread
  std::vector<float> scale_;     // int8: per output channel
  std::vector<int32_t> colsum_;  // int8: Σk Wq[n, k]
};

}  // namespace bort::encoder
