// The GEMM microkernels, written once. Included inside a namespace by gemm_avx2.cpp,
// gemm_avx512.cpp, gemm_avx512_bf16.cpp and gemm_avx512_vnni.cpp, each compiled for its ISA
// (after simd.hpp, which gives `Vec`); BORT_GEMM_BF16 / BORT_GEMM_U8S8 add those kernels.
//
// A tile is MR rows × NP panels (16 columns each) held in registers for the whole K loop: per
// k-step, NP 64-byte loads of B and MR broadcasts of A feed MR · NP · (16 / width) independent
// FMA chains; the epilogue runs on the finished tile. Tiles sweep the rows of A for one group of
// panels, then the next group: A and the group's panels stream from L2 in long sequential runs
// (cutting K into L1-sized blocks, GotoBLAS-style, measured 3-10% slower here: the short runs
// defeat the hardware prefetcher). At small M the rows cannot hide the FMA latency, so more
// panels (independent column blocks) run side by side, and B is prefetched: it streams.
#include <algorithm>
#include <cstring>

namespace {

using ::bort::gemm::Epilogue;
using ::bort::gemm::kPanel;

constexpr int kWidth = Vec::width;
constexpr int kVecs = kPanel / kWidth;  // vectors per panel row
constexpr int kPrefetch = 8;            // k-steps of B ahead (512 bytes per panel)


// Tile shapes: accumulators MR · NP · kVecs stay within the register file, with room for B and A.
// AVX-512: 4 × 4 panels (16 chains) measured 2-5% faster on Zen 4 than 8 × 3, 6 × 4 or 12 × 2
// in every dtype (fewer concurrent A streams); the narrower groups at a block's end take 8 rows.
#ifdef BORT_AVX512
constexpr int kPanels = 4, kSmallPanels = 4, kSmallM = 4;
constexpr int rows_for(int np) { return np <= 3 ? 8 : 4; }
#else
constexpr int kPanels = 1, kSmallPanels = 2, kSmallM = 2;
constexpr int rows_for(int np) { return np == 1 ? 6 : 12 / (kVecs * np); }
#endif

// Bias, activation and residual on one finished vector of row r (columns c0 .. c0 + n).
inline void finish(Vec v, int64_t r, int64_t c0, int64_t n, float* C, int64_t ldc,
                   const Epilogue& e) {
  const bool full = n == kWidth;
  if (e.bias) v = v + (full ? Vec::load(e.bias + c0) : Vec::load_n(e.bias + c0, n));
  if (e.act != ::bort::encoder::Act::None) v = activate(v, e.act);
  if (e.residual) {
    const float* res = e.residual + r * e.ldr + c0;
    v = v + (full ? Vec::load(res) : Vec::load_n(res, n));
  }
  if (full)
    v.store(C + r * ldc + c0);
  else
    v.store_n(C + r * ldc + c0, n);
}

template <class T>
inline int32_t read32(const T* p) {  // a pair of bf16 or a quad of bytes, as one broadcast
  int32_t x;
  std::memcpy(&x, p, 4);
  return x;
}

// Register-only loops for "% of peak": independent chains of the kernel's instruction (within
// the register file: 32 zmm, 16 ymm), no memory traffic. Each returns the operations it ran
// (2 per multiply-add).
#ifdef BORT_AVX512
constexpr int kChains = 24;
#else
constexpr int kChains = 12;
#endif

// iters × kChains applications of step, each chain held in a register (the empty asm keeps the
// compiler from interchanging the loops); returns the chains combined, so none is dead code.
template <class V, class Step, class Combine>
V chains(int64_t iters, V start, Step step, Combine combine) {
  V acc[kChains];
#pragma GCC unroll 24
  for (int i = 0; i < kChains; ++i) acc[i] = start;
  for (int64_t it = 0; it < iters; ++it)
#pragma GCC unroll 24
    for (int i = 0; i < kChains; ++i) {
      acc[i] = step(acc[i]);
      asm("" : "+v"(acc[i]));
    }
#pragma GCC unroll 24
  for (int i = 1; i < kChains; ++i) acc[0] = combine(acc[0], acc[i]);
  return acc[0];
}

struct F32 {
  using A = float;
  using B = float;
  static double peak(int64_t iters, float* sink) {
    const Vec a = Vec::set1(0.999f), b = Vec::set1(1e-3f);
    const Vec sum{chains(iters, Vec::set1(1.0f).v, [&](auto x) { return fma(Vec{x}, a, b).v; },
                         [](auto x, auto y) { return (Vec{x} + Vec{y}).v; })};
    *sink = reduce_add(sum);
    return 2.0 * kWidth * kChains * static_cast<double>(iters);
  }
  template <int MR, int NP>
  static void tile(const float* A_, int64_t lda, const float* B_, int64_t ps, int64_t kp,
                   int64_t cols, float* C, int64_t ldc, const Epilogue& e, bool prefetch) {
    Vec acc[MR][NP * kVecs];
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NP * kVecs; ++j) acc[r][j] = Vec::set1(0.0f);
    for (int64_t k = 0; k < kp; ++k) {
      Vec b[NP * kVecs];
      for (int p = 0; p < NP; ++p) {
        const float* row = B_ + p * ps + k * kPanel;
        if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(row + kPrefetch * kPanel), _MM_HINT_T0);
        for (int v = 0; v < kVecs; ++v) b[p * kVecs + v] = Vec::load(row + v * kWidth);
      }
      for (int r = 0; r < MR; ++r) {
        const Vec a = Vec::set1(A_[r * lda + k]);
        for (int j = 0; j < NP * kVecs; ++j) acc[r][j] = fma(a, b[j], acc[r][j]);
      }
    }
    for (int j = 0; j < NP * kVecs; ++j) {
      const int64_t c0 = j * kWidth;
      if (c0 >= cols) break;
      const int64_t n = std::min<int64_t>(kWidth, cols - c0);
      for (int r = 0; r < MR; ++r) finish(acc[r][j], r, c0, n, C, ldc, e);
    }
  }
};

#ifdef BORT_GEMM_BF16
struct BF16 {
  using A = uint16_t;
  using B = uint16_t;
  static double peak(int64_t iters, float* sink) {
    const __m512bh one = reinterpret_cast<__m512bh>(_mm512_set1_epi16(0x3F80));  // 1.0 pairs
    const __m512 sum = chains(iters, _mm512_set1_ps(1.0f),
                              [&](__m512 x) { return _mm512_dpbf16_ps(x, one, one); },
                              [](__m512 x, __m512 y) { return _mm512_add_ps(x, y); });
    *sink = _mm512_reduce_add_ps(sum);
    return 64.0 * kChains * static_cast<double>(iters);  // 16 lanes × 2 pairs × 2
  }
  template <int MR, int NP>
  static void tile(const uint16_t* A_, int64_t lda, const uint16_t* B_, int64_t ps, int64_t kp,
                   int64_t cols, float* C, int64_t ldc, const Epilogue& e, bool prefetch) {
    __m512 acc[MR][NP];
    for (int r = 0; r < MR; ++r)
      for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kp; k += 2) {
      __m512bh b[NP];
      for (int p = 0; p < NP; ++p) {
        const uint16_t* row = B_ + p * ps + k * kPanel;
        if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(row + 2 * kPrefetch * kPanel), _MM_HINT_T0);
        b[p] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(row));
      }
      for (int r = 0; r < MR; ++r) {
        const __m512bh a = reinterpret_cast<__m512bh>(_mm512_set1_epi32(read32(A_ + r * lda + k)));
        for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_dpbf16_ps(acc[r][p], a, b[p]);
      }
    }
    for (int p = 0; p < NP; ++p) {
      const int64_t c0 = p * kPanel;
      if (c0 >= cols) break;
      const int64_t n = std::min<int64_t>(kPanel, cols - c0);
      for (int r = 0; r < MR; ++r) finish(Vec{acc[r][p]}, r, c0, n, C, ldc, e);
    }
  }
};
#endif

#ifdef BORT_GEMM_U8S8
// acc += a (u8) · b (s8) in quads. Accumulators typed __m512i (64-bit lanes) and used as 32-bit
// ones keep GCC 12 from holding them in registers (half the VNNI rate measured): 32-bit lanes.
using I32x16 = __v16si;
inline I32x16 dpbusd(I32x16 acc, __m512i a, __m512i b) {
  return reinterpret_cast<I32x16>(_mm512_dpbusd_epi32(reinterpret_cast<__m512i>(acc), a, b));
}

struct U8S8 {
  using A = uint8_t;
  using B = int8_t;
  static double peak(int64_t iters, float* sink) {
    const __m512i one = _mm512_set1_epi8(1);
    const I32x16 sum = chains(iters, I32x16{}, [&](I32x16 x) { return dpbusd(x, one, one); },
                              [](I32x16 x, I32x16 y) { return x + y; });
    *sink = static_cast<float>(_mm512_reduce_add_epi32(reinterpret_cast<__m512i>(sum)));
    return 128.0 * kChains * static_cast<double>(iters);  // 16 lanes × 4 × 2
  }
  template <int MR, int NP>
  static void tile(const uint8_t* A_, int64_t lda, const int8_t* B_, int64_t ps, int64_t kp,
                   int64_t cols, float* C, int64_t ldc, const Epilogue& e, bool prefetch) {
    I32x16 acc[MR][NP];
    for (int r = 0; r < MR; ++r)
      for (int p = 0; p < NP; ++p) acc[r][p] = I32x16{};
    for (int64_t k = 0; k < kp; k += 4) {
      __m512i b[NP];
      for (int p = 0; p < NP; ++p) {
        const int8_t* row = B_ + p * ps + k * kPanel;
        if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(row + 4 * kPrefetch * kPanel), _MM_HINT_T0);
        b[p] = _mm512_loadu_si512(row);
      }
      for (int r = 0; r < MR; ++r) {
        const __m512i a = _mm512_set1_epi32(read32(A_ + r * lda + k));
        for (int p = 0; p < NP; ++p) acc[r][p] = dpbusd(acc[r][p], a, b[p]);
      }
    }
    // int32 → fp32 exactly as linear algebra says: sx · sw · (c − zero · Σk w)
    for (int p = 0; p < NP; ++p) {
      const int64_t c0 = p * kPanel;
      if (c0 >= cols) break;
      const int64_t n = std::min<int64_t>(kPanel, cols - c0);
      const __mmask16 mask = Vec::lanes(n);
      const __m512i wsum = _mm512_maskz_loadu_epi32(mask, e.w_sum + c0);
      const __m512 wscale = _mm512_maskz_loadu_ps(mask, e.w_scale + c0);
      for (int r = 0; r < MR; ++r) {
        const __m512i c = _mm512_sub_epi32(reinterpret_cast<__m512i>(acc[r][p]), _mm512_mullo_epi32(_mm512_set1_epi32(e.a_zero[r]), wsum));
        const __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(c), _mm512_mul_ps(wscale, _mm512_set1_ps(e.a_scale[r])));
        finish(Vec{y}, r, c0, n, C, ldc, e);
      }
    }
  }
};
#endif

// The row tail: a tile of R < MR rows, found by recursion over R (no run-time tile sizes).
template <class Op, int NP, int R>
void tail(int64_t rows, const typename Op::A* A, int64_t lda, const typename Op::B* B, int64_t ps,
          int64_t kp, int64_t cols, float* C, int64_t ldc, const Epilogue& e, bool prefetch) {
  if constexpr (R > 0) {
    if (rows == R)
      Op::template tile<R, NP>(A, lda, B, ps, kp, cols, C, ldc, e, prefetch);
    else
      tail<Op, NP, R - 1>(rows, A, lda, B, ps, kp, cols, C, ldc, e, prefetch);
  }
}

// All M rows against NP panels.
template <class Op, int NP>
void sweep(const typename Op::A* A, int64_t lda, int64_t M, const typename Op::B* B, int64_t ps,
           int64_t kp, int64_t cols, float* C, int64_t ldc, const Epilogue& e, bool prefetch) {
  constexpr int MR = rows_for(NP);
  int64_t m = 0;
  for (; m + MR <= M; m += MR)
    Op::template tile<MR, NP>(A + m * lda, lda, B, ps, kp, cols, C + m * ldc, ldc, e.at(m, 0), prefetch);
  if (m < M)
    tail<Op, NP, MR - 1>(M - m, A + m * lda, lda, B, ps, kp, cols, C + m * ldc, ldc, e.at(m, 0), prefetch);
}

template <class Op>
void block(const void* Av, int64_t lda, int64_t M, const void* Bv, int64_t kp, int64_t panels,
           int64_t n, float* C, int64_t ldc, const Epilogue& e) {
  const auto* A = static_cast<const typename Op::A*>(Av);
  const auto* B = static_cast<const typename Op::B*>(Bv);
  const int64_t ps = kp * kPanel;  // elements per panel
  const bool small = M <= kSmallM;
  const int group = small ? kSmallPanels : kPanels;
  for (int64_t p = 0; p < panels; p += group) {
    const int np = static_cast<int>(std::min<int64_t>(group, panels - p));
    const int64_t c0 = p * kPanel, cols = std::min<int64_t>(n - c0, np * kPanel);
    const typename Op::B* Bp = B + p * ps;
    const Epilogue ep = e.at(0, c0);
    switch (np) {
      case 1: sweep<Op, 1>(A, lda, M, Bp, ps, kp, cols, C + c0, ldc, ep, small); break;
      case 2: sweep<Op, 2>(A, lda, M, Bp, ps, kp, cols, C + c0, ldc, ep, small); break;
      case 3: sweep<Op, 3>(A, lda, M, Bp, ps, kp, cols, C + c0, ldc, ep, small); break;
      default: sweep<Op, 4>(A, lda, M, Bp, ps, kp, cols, C + c0, ldc, ep, small); break;
    }
  }
}

}  // namespace
