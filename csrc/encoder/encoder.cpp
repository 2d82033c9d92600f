#include "encoder/encoder.hpp"

#include <mkl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace bort::encoder {

namespace {

std::vector<float> take(const std::map<std::string, TensorView>& w, const std::string& name,
                        std::vector<int64_t> shape) {
  auto it = w.find(name);
  if (it == w.end()) throw std::invalid_argument("missing tensor '" + name + "'");
  if (it->second.shape != shape) {
    auto str = [](const std::vector<int64_t>& s) {
      std::string out = "(";
      for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
      return out + (s.size() == 1 ? ",)" : ")");
    };
    throw std::invalid_argument("tensor '" + name + "' has shape " + str(it->second.shape) +
                                ", the architecture needs " + str(shape));
  }
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return std::vector<float>(it->second.data, it->second.data + n);
}

Act activation(bort::Activation a) {
  switch (a) {
    case bort::Activation::GeluErf: return Act::GeluErf;
    case bort::Activation::GeluTanh: return Act::GeluTanh;
    case bort::Activation::Relu: return Act::Relu;
  }
  return Act::None;
}

// MKL follows BORT_ISA too, so the forced-AVX2 path is AVX2 end to end.
void configure_mkl() {
  static const bool once = [] {
    const char* forced = std::getenv("BORT_ISA");
    if (forced && std::string(forced) == "avx2") mkl_enable_instructions(MKL_ENABLE_AVX2);
    return true;
  }();
  (void)once;
}

// Without VNNI, MKL's u8 × s8 kernels sum pairs in saturating int16: keep weights to 7 bits.
int int8_max() {
  const char* forced = std::getenv("BORT_ISA");
  const bool avx2_only = forced && std::string(forced) == "avx2";
  const bool vnni = __builtin_cpu_supports("avx512vnni") || __builtin_cpu_supports("avxvnni");
  return vnni && !avx2_only ? 127 : 63;
}

using Clock = std::chrono::steady_clock;

}  // namespace

struct Encoder::Layer {
  int64_t heads = 0, head_dim = 0, ffn = 0;
  Linear qkv, out, in, ffn_out;                // (3a, H), (H, a), (I, H), (H, I)
  std::vector<float> qkv_b, out_b, ln1_g, ln1_b;  // (3a), (H) x3
  std::vector<float> in_b, ffn_out_b, ln2_g, ln2_b;  // (I), (H) x3
};

struct Encoder::Arena {
  GemmScratch gemm;
  std::vector<int64_t> row, col, pos, offsets;  // per token: batch row, column, position id;
                                                // per sequence: its first token
  std::vector<float> x, qkv, ctx, ffn, tmp, scores, pooled;
  std::vector<uint16_t> qkv_bf16, probs_bf16;  // bf16 / int8 models: attention operands
  template <class T>
  static T* grow(std::vector<T>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  }
};

Encoder::Encoder(const Arch& arch, const std::map<std::string, TensorView>& w, int num_threads,
                 Dtype dtype)
    : arch_(arch), dtype_(dtype) {
  arch_.validate();
  if (num_threads < 1) throw std::invalid_argument("num_threads must be >= 1");
  kernels_ = &kernels();
  configure_mkl();
  const int levels = int8_max();
  const int64_t H = arch.hidden;
  word_ = take(w, "embeddings.word_embeddings.weight", {arch.vocab_size, H});
  position_ = take(w, "embeddings.position_embeddings.weight", {arch.max_positions, H});
  token_type_ = take(w, "embeddings.token_type_embeddings.weight", {arch.type_vocab_size, H});
  emb_gamma_ = take(w, "embeddings.LayerNorm.weight", {H});
  emb_beta_ = take(w, "embeddings.LayerNorm.bias", {H});
  for (size_t i = 0; i < arch.layers.size(); ++i) {
    const bort::Layer& spec = arch.layers[i];
    const std::string p = "encoder.layer." + std::to_string(i) + ".";
    Layer L;
    L.heads = spec.heads;
    L.head_dim = spec.head_dim;
    L.ffn = spec.ffn;
    if (spec.heads > 0) {
      const int64_t a = spec.attn_width();
      std::vector<float> qkv;
      for (const char* part : {"query", "key", "value"}) {  // fused: Q rows, then K, then V
        auto wt = take(w, p + "attention.self." + part + ".weight", {a, H});
        auto b = take(w, p + "attention.self." + part + ".bias", {a});
        qkv.insert(qkv.end(), wt.begin(), wt.end());
        L.qkv_b.insert(L.qkv_b.end(), b.begin(), b.end());
      }
      L.qkv = Linear(qkv, 3 * a, H, num_threads, dtype, levels);
      L.out = Linear(take(w, p + "attention.output.dense.weight", {H, a}), H, a, num_threads, dtype,
                     levels);
      L.out_b = take(w, p + "attention.output.dense.bias", {H});
      L.ln1_g = take(w, p + "attention.output.LayerNorm.weight", {H});
      L.ln1_b = take(w, p + "attention.output.LayerNorm.bias", {H});
    }
    if (spec.ffn > 0) {
      L.in = Linear(take(w, p + "intermediate.dense.weight", {spec.ffn, H}), spec.ffn, H,
                    num_threads, dtype, levels);
      L.in_b = take(w, p + "intermediate.dense.bias", {spec.ffn});
      // The FFN's down projection reads GELU outputs (mostly near 0, a few large): 8 bits per
      // token lose them (per-token cosine on all-MiniLM-L6-v2: 0.990 from this GEMM alone vs
      // ≥ 0.998 for each other), so int8 models run it in bf16.
      L.ffn_out = Linear(take(w, p + "output.dense.weight", {H, spec.ffn}), H, spec.ffn,
                         num_threads, dtype == Dtype::I8 ? Dtype::BF16 : dtype, levels);
      L.ffn_out_b = take(w, p + "output.dense.bias", {H});
      L.ln2_g = take(w, p + "output.LayerNorm.weight", {H});
      L.ln2_b = take(w, p + "output.LayerNorm.bias", {H});
    }
    layers_.push_back(std::move(L));
  }
  if (arch.pooler) {
    pooler_ = Linear(take(w, "pooler.dense.weight", {H, H}), H, H, num_threads, dtype, levels);
    pooler_b_ = take(w, "pooler.dense.bias", {H});
  }
  if (arch.num_labels > 0) {
    classifier_w_ = take(w, "classifier.weight", {arch.num_labels, H});
    classifier_b_ = take(w, "classifier.bias", {arch.num_labels});
  }
  pool_ = std::make_unique<ThreadPool>(num_threads);
}

Encoder::~Encoder() = default;

std::unique_ptr<Encoder::Arena> Encoder::acquire() const {
  std::lock_guard<std::mutex> lock(arenas_mutex_);
  if (arenas_.empty()) return std::make_unique<Arena>();
  auto a = std::move(arenas_.back());
  arenas_.pop_back();
  return a;
}

void Encoder::release(std::unique_ptr<Arena> arena) const {
  std::lock_guard<std::mutex> lock(arenas_mutex_);
  arenas_.push_back(std::move(arena));
}

Output Encoder::forward(const Batch& in, bool timed) const {
  const Arch& A = arch_;
  const int64_t B = in.batch, S = in.seq, H = A.hidden;
  if (B <= 0 || S <= 0) throw std::invalid_argument("empty batch: shape (" + std::to_string(B) + ", " + std::to_string(S) + ")");
  const bool roberta = A.position_style == PositionStyle::Roberta;
  auto arena = acquire();
  struct Return {  // the arena goes back to the pool whatever happens
    const Encoder* e;
    std::unique_ptr<Arena>& a;
    ~Return() { e->release(std::move(a)); }
  } give_back{this, arena};
  Arena& ar = *arena;

  // ---- validate and pack: tokens with mask 1, in order
  ar.row.clear();
  ar.col.clear();
  ar.offsets.assign(1, 0);
  ar.pos.clear();
  for (int64_t b = 0; b < B; ++b) {
    int64_t count = 0;
    for (int64_t j = 0; j < S; ++j) {
      const int64_t k = b * S + j;
      const int64_t m = in.attention_mask ? in.attention_mask[k] : 1;
      if (m != 0 && m != 1)
        throw std::invalid_argument("attention_mask values must be 0 or 1, got " + std::to_string(m));
      const int64_t id = in.input_ids[k];
      if (id < 0 || id >= A.vocab_size)
        throw std::invalid_argument("input_ids out of range [0, " + std::to_string(A.vocab_size) +
                                    "): " + std::to_string(id) + " at (" + std::to_string(b) + ", " +
                                    std::to_string(j) + ")");
      const int64_t t = in.token_type_ids ? in.token_type_ids[k] : 0;
      if (t < 0 || t >= A.type_vocab_size)
        throw std::invalid_argument("token_type_ids out of range [0, " +
                                    std::to_string(A.type_vocab_size) + "): " + std::to_string(t));
      if (!m) continue;
      ++count;
      // BERT: the column; RoBERTa: pad + the count of real tokens so far (transformers' rule)
      const int64_t pos = roberta ? A.pad_token_id + count : j;
      if (pos >= A.max_positions)
        throw std::invalid_argument("sequence " + std::to_string(b) + " needs position " +
                                    std::to_string(pos) + ", beyond the model's " +
                                    std::to_string(A.max_positions) + " positions");
      ar.row.push_back(b);
      ar.col.push_back(j);
      ar.pos.push_back(pos);
    }
    if (count == 0)
      throw std::invalid_argument("sequence " + std::to_string(b) + " has no tokens (attention_mask all 0)");
    ar.offsets.push_back(ar.offsets.back() + count);
  }
  const int64_t T = static_cast<int64_t>(ar.row.size());
  int64_t max_len = 0, max_a = 0, max_ffn = 0;
  for (int64_t b = 0; b < B; ++b) max_len = std::max(max_len, ar.offsets[b + 1] - ar.offsets[b]);
  for (const Layer& L : layers_) {
    max_a = std::max(max_a, L.heads * L.head_dim);
    max_ffn = std::max(max_ffn, L.ffn);
  }
  float* x = Arena::grow(ar.x, T * H);
  float* qkv = Arena::grow(ar.qkv, T * 3 * max_a);
  float* ctx = Arena::grow(ar.ctx, T * max_a);
  float* ffn = Arena::grow(ar.ffn, T * max_ffn);
  float* tmp = Arena::grow(ar.tmp, T * H);
  float* scores = Arena::grow(ar.scores, pool_->size() * max_len * max_len);
  const Kernels& K = *kernels_;
  ThreadPool& pool = *pool_;
  Output out;
  auto t0 = Clock::now();
  auto lap = [&] {
    if (!timed) return;
    const auto t = Clock::now();
    out.sublayer_ms.push_back(std::chrono::duration<double, std::milli>(t - t0).count());
    t0 = t;
  };
  const int64_t chunk = 16;  // tokens per task in row-wise kernels
  const int64_t chunks = (T + chunk - 1) / chunk;

  // ---- embeddings: x[t] = LayerNorm(word[id] + position[p] + type[tt])
  pool.run(chunks, [&](int64_t c, int) {
    for (int64_t t = c * chunk; t < std::min(T, (c + 1) * chunk); ++t) {
      const int64_t k = ar.row[t] * S + ar.col[t];
      const int64_t type = in.token_type_ids ? in.token_type_ids[k] : 0;
      float* xt = x + t * H;
      const float* w = word_.data() + in.input_ids[k] * H;
      const float* p = position_.data() + ar.pos[t] * H;
      const float* ty = token_type_.data() + type * H;
      for (int64_t i = 0; i < H; ++i) xt[i] = w[i] + p[i];
      K.add_layernorm(xt, xt, nullptr, ty, emb_gamma_.data(), emb_beta_.data(), H, A.layer_norm_eps);
    }
  });
  lap();

  for (const Layer& L : layers_) {
    if (L.heads > 0) {
      const int64_t a = L.heads * L.head_dim, d = L.head_dim, w3 = 3 * a;
      // qkv (T, 3a) = x · Wqkvᵀ + b
      L.qkv(pool, x, T, qkv, ar.gemm, [&](int64_t n0, int64_t n1) {
        for (int64_t t = 0; t < T; ++t)
          K.bias_act(qkv + t * w3 + n0, L.qkv_b.data() + n0, n1 - n0, Act::None);
      });
      // per (sequence, head): ctx = softmax(Q Kᵀ / √d) V, the L × L scores in this thread's
      // scratch. bf16 / int8 models multiply in bf16 (fp32 accumulation and softmax): at long
      // sequences these products rival the projections, and fp32 would dominate.
      const float scale = 1.0f / std::sqrt(static_cast<float>(d));
      const bool low = dtype_ != Dtype::F32;
      uint16_t* qkv16 = low ? Arena::grow(ar.qkv_bf16, T * w3) : nullptr;
      uint16_t* probs16 = low ? Arena::grow(ar.probs_bf16, pool.size() * max_len * max_len) : nullptr;
      if (low)
        pool.run(chunks, [&](int64_t c, int) {
          const int64_t t0 = c * chunk, t1 = std::min(T, (c + 1) * chunk);
          K.to_bf16(qkv + t0 * w3, qkv16 + t0 * w3, (t1 - t0) * w3);
        });
      pool.run(B * L.heads, [&](int64_t job, int slot) {
        const int64_t b = job / L.heads, h = job % L.heads;
        const int64_t s0 = ar.offsets[b], n = ar.offsets[b + 1] - s0;
        float* sc = scores + slot * max_len * max_len;
        float* c = ctx + s0 * a + h * d;
        if (low) {
          const uint16_t* q = qkv16 + s0 * w3 + h * d;
          uint16_t* p = probs16 + slot * max_len * max_len;
          cblas_gemm_bf16bf16f32(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, 1.0f, q, w3,
                                 q + a, w3, 0.0f, sc, n);
          for (int64_t i = 0; i < n; ++i) K.softmax(sc + i * n, n, scale);
          K.to_bf16(sc, p, n * n);
          cblas_gemm_bf16bf16f32(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, n, 1.0f, p, n,
                                 q + 2 * a, w3, 0.0f, c, a);
        } else {
          const float* q = qkv + s0 * w3 + h * d;
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, 1.0f, q, w3, q + a, w3,
                      0.0f, sc, n);
          for (int64_t i = 0; i < n; ++i) K.softmax(sc + i * n, n, scale);
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, n, 1.0f, sc, n, q + 2 * a,
                      w3, 0.0f, c, a);
        }
      });
      // x = LayerNorm(ctx · Woᵀ + b + x)
      L.out(pool, ctx, T, tmp, ar.gemm);
      pool.run(chunks, [&](int64_t c, int) {
        for (int64_t t = c * chunk; t < std::min(T, (c + 1) * chunk); ++t)
          K.add_layernorm(x + t * H, tmp + t * H, L.out_b.data(), x + t * H, L.ln1_g.data(),
                          L.ln1_b.data(), H, A.layer_norm_eps);
      });
    }
    lap();
    if (L.ffn > 0) {
      const Act act = activation(A.activation);
      L.in(pool, x, T, ffn, ar.gemm, [&](int64_t n0, int64_t n1) {
        for (int64_t t = 0; t < T; ++t)
          K.bias_act(ffn + t * L.ffn + n0, L.in_b.data() + n0, n1 - n0, act);
      });
      L.ffn_out(pool, ffn, T, tmp, ar.gemm);
      pool.run(chunks, [&](int64_t c, int) {
        for (int64_t t = c * chunk; t < std::min(T, (c + 1) * chunk); ++t)
          K.add_layernorm(x + t * H, tmp + t * H, L.ffn_out_b.data(), x + t * H, L.ln2_g.data(),
                          L.ln2_b.data(), H, A.layer_norm_eps);
      });
    }
    lap();
  }

  // ---- outputs: scatter tokens back to (B, S, H); pooler and head on each first token
  out.last_hidden_state.assign(B * S * H, 0.0f);
  for (int64_t t = 0; t < T; ++t)
    std::memcpy(out.last_hidden_state.data() + (ar.row[t] * S + ar.col[t]) * H, x + t * H,
                H * sizeof(float));
  if (A.pooler) {
    out.pooler_output.resize(B * H);
    float* first = Arena::grow(ar.pooled, B * H);
    for (int64_t b = 0; b < B; ++b)
      std::memcpy(first + b * H, x + ar.offsets[b] * H, H * sizeof(float));
    pooler_(pool, first, B, out.pooler_output.data(), ar.gemm);
    for (int64_t i = 0; i < B * H; ++i)
      out.pooler_output[i] = std::tanh(out.pooler_output[i] + pooler_b_[i % H]);
    if (A.num_labels > 0) {
      const int64_t C = A.num_labels;
      out.logits.resize(B * C);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, C, H, 1.0f,
                  out.pooler_output.data(), H, classifier_w_.data(), H, 0.0f, out.logits.data(), C);
      for (int64_t i = 0; i < B * C; ++i) out.logits[i] += classifier_b_[i % C];
    }
  }
  lap();
  return out;
}

}  // namespace bort::encoder
