#include "encoder/encoder.hpp"

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
  int64_t tokens = 0, max_len = 0;              // of this call
  std::vector<float> x, qkv, ctx, ffn, tmp, scores, kv, pooled;
  std::vector<uint16_t> qkv16, kv16, probs16;   // bf16 attention operands
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
      L.qkv = Linear(qkv, 3 * a, H, num_threads, dtype);
      L.out = Linear(take(w, p + "attention.output.dense.weight", {H, a}), H, a, num_threads, dtype);
      L.out_b = take(w, p + "attention.output.dense.bias", {H});
      L.ln1_g = take(w, p + "attention.output.LayerNorm.weight", {H});
      L.ln1_b = take(w, p + "attention.output.LayerNorm.bias", {H});
    }
    if (spec.ffn > 0) {
      L.in = Linear(take(w, p + "intermediate.dense.weight", {spec.ffn, H}), spec.ffn, H,
                    num_threads, dtype);
      L.in_b = take(w, p + "intermediate.dense.bias", {spec.ffn});
      // The FFN's down projection reads GELU outputs (mostly near 0, a few large): 8 bits per
      // token lose them (per-token cosine on all-MiniLM-L6-v2: 0.990 from this GEMM alone vs
      // ≥ 0.998 for each other), so int8 models run it in bf16.
      L.ffn_out = Linear(take(w, p + "output.dense.weight", {H, spec.ffn}), H, spec.ffn,
                         num_threads, dtype == Dtype::I8 ? Dtype::BF16 : dtype);
      L.ffn_out_b = take(w, p + "output.dense.bias", {H});
      L.ln2_g = take(w, p + "output.LayerNorm.weight", {H});
      L.ln2_b = take(w, p + "output.LayerNorm.bias", {H});
    }
    layers_.push_back(std::move(L));
  }
  if (arch.pooler) {
    pooler_ = Linear(take(w, "pooler.dense.weight", {H, H}), H, H, num_threads, dtype);
    pooler_b_ = take(w, "pooler.dense.bias", {H});
  }
  if (arch.num_labels > 0) {
    classifier_ = Linear(take(w, "classifier.weight", {arch.num_labels, H}), arch.num_labels, H,
                         num_threads, Dtype::F32);
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
  ar.tokens = static_cast<int64_t>(ar.row.size());
  ar.max_len = 0;
  for (int64_t b = 0; b < B; ++b) ar.max_len = std::max(ar.max_len, ar.offsets[b + 1] - ar.offsets[b]);
  Arena::grow(ar.x, ar.tokens * H);
  Arena::grow(ar.tmp, ar.tokens * H);

  Output out;
  auto t0 = Clock::now();
  auto lap = [&] {
    if (!timed) return;
    const auto t = Clock::now();
    out.sublayer_ms.push_back(std::chrono::duration<double, std::milli>(t - t0).count());
    t0 = t;
  };
  embed(in, ar);
  lap();
  for (const Layer& L : layers_) {
    if (L.heads > 0) attention(L, ar);
    lap();
    if (L.ffn > 0) feed_forward(L, ar);
    lap();
  }
  heads(ar, B, S, out);
  lap();
  return out;
}

// Row-wise work in tasks of this many tokens.
constexpr int64_t kChunk = 16;

// x[t] = LayerNorm(word[id] + position[p] + type[tt])
void Encoder::embed(const Batch& in, Arena& ar) const {
  const int64_t H = arch_.hidden, S = in.seq, T = ar.tokens;
  const Kernels& K = *kernels_;
  float* x = ar.x.data();
  pool_->run((T + kChunk - 1) / kChunk, [&](int64_t c, int) {
    for (int64_t t = c * kChunk; t < std::min(T, (c + 1) * kChunk); ++t) {
      const int64_t k = ar.row[t] * S + ar.col[t];
      const int64_t type = in.token_type_ids ? in.token_type_ids[k] : 0;
      float* xt = x + t * H;
      const float* w = word_.data() + in.input_ids[k] * H;
      const float* p = position_.data() + ar.pos[t] * H;
      const float* ty = token_type_.data() + type * H;
      for (int64_t i = 0; i < H; ++i) xt[i] = w[i] + p[i];
      K.add_layernorm(xt, xt, nullptr, ty, emb_gamma_.data(), emb_beta_.data(), H, arch_.layer_norm_eps);
    }
  });
}

// Rows [m0, m1) of x = LayerNorm(tmp), tmp holding a sublayer's output with its bias and x's
// residual added: the row epilogue of the sublayer's last GEMM.
Linear::RowsFn Encoder::layernorm(const std::vector<float>& gamma, const std::vector<float>& beta,
                                  Arena& ar) const {
  return [this, &gamma, &beta, &ar](int64_t m0, int64_t m1) {
    const int64_t H = arch_.hidden;
    for (int64_t t = m0; t < m1; ++t)
      kernels_->add_layernorm(ar.x.data() + t * H, ar.tmp.data() + t * H, nullptr, nullptr,
                              gamma.data(), beta.data(), H, arch_.layer_norm_eps);
  };
}

// Self-attention: the fused QKV projection, then per (sequence, head) softmax(Q Kᵀ / √d) V with
// bort's GEMM kernels on K and V packed per head in this thread's scratch (the scores, L × L, stay
// in cache), then x = LayerNorm(ctx · Woᵀ + b + x), the LayerNorm on each finished row block.
// bf16 and int8 models multiply Q Kᵀ and P V in bf16 (fp32 accumulation and softmax) where the
// CPU has AVX512-BF16: at long sequences these products rival the projections.
void Encoder::attention(const Layer& L, Arena& ar) const {
  const int64_t T = ar.tokens, a = L.heads * L.head_dim, d = L.head_dim, w3 = 3 * a, n_max = ar.max_len;
  const Kernels& K = *kernels_;
  const gemm::Kernels& own = gemm::backend().own;
  ThreadPool& pool = *pool_;
  float* qkv = Arena::grow(ar.qkv, T * w3);
  float* ctx = Arena::grow(ar.ctx, T * a);
  gemm::Epilogue bias;
  bias.bias = L.qkv_b.data();
  L.qkv(pool, ar.x.data(), T, qkv, ar.gemm, bias);

  const bool low = dtype_ != Dtype::F32 && own.bf16 && d % 2 == 0;
  // per slot: packed K (n × d) and V (d × n), each within this bound
  const int64_t n2 = gemm::round_up(n_max, 2);
  const int64_t packed = gemm::round_up(std::max(n_max, d), 16) * std::max(n2, d);
  const int slots = pool.size();
  float* scores = Arena::grow(ar.scores, slots * n_max * n_max);
  float* kv = low ? nullptr : Arena::grow(ar.kv, slots * 2 * packed);
  uint16_t* kv16 = low ? Arena::grow(ar.kv16, slots * 2 * packed) : nullptr;
  uint16_t* probs16 = low ? Arena::grow(ar.probs16, slots * n_max * n2) : nullptr;
  uint16_t* qkv16 = low ? Arena::grow(ar.qkv16, T * w3) : nullptr;
  if (low)
    pool.run((T + kChunk - 1) / kChunk, [&](int64_t c, int) {
      const int64_t t0 = c * kChunk, t1 = std::min(T, (c + 1) * kChunk);
      K.to_bf16(qkv + t0 * w3, qkv16 + t0 * w3, (t1 - t0) * w3);
    });
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  pool.run(static_cast<int64_t>(ar.offsets.size() - 1) * L.heads, [&](int64_t job, int slot) {
    const int64_t b = job / L.heads, h = job % L.heads;
    const int64_t s0 = ar.offsets[b], n = ar.offsets[b + 1] - s0;
    const int64_t np_n = (n + 15) / 16, np_d = (d + 15) / 16, nn = gemm::round_up(n, 2);
    float* sc = scores + slot * n_max * n_max;
    float* c = ctx + s0 * a + h * d;
    if (low) {
      const uint16_t* q = qkv16 + s0 * w3 + h * d;
      uint16_t *kp = kv16 + slot * 2 * packed, *vp = kp + packed, *p = probs16 + slot * n_max * n2;
      gemm::pack<uint16_t>(q + a, n, d, w3, 1, kp);   // K as (N = n, K = d)
      own.bf16.block(q, w3, n, kp, d, np_n, n, sc, n, {});
      for (int64_t i = 0; i < n; ++i) {
        K.softmax(sc + i * n, n, scale);
        K.to_bf16(sc + i * n, p + i * nn, n);
        if (nn > n) p[i * nn + n] = 0;
      }
      gemm::pack<uint16_t>(q + 2 * a, d, n, 1, w3, vp);  // V as (N = d, K = n)
      own.bf16.block(p, nn, n, vp, nn, np_d, d, c, a, {});
    } else {
      const float* q = qkv + s0 * w3 + h * d;
      float *kp = kv + slot * 2 * packed, *vp = kp + packed;
      gemm::pack<float>(q + a, n, d, w3, 1, kp);
      own.f32.block(q, w3, n, kp, d, np_n, n, sc, n, {});
      for (int64_t i = 0; i < n; ++i) K.softmax(sc + i * n, n, scale);
      gemm::pack<float>(q + 2 * a, d, n, 1, w3, vp);
      own.f32.block(sc, n, n, vp, n, np_d, d, c, a, {});
    }
  });
  gemm::Epilogue out;
  out.bias = L.out_b.data();
  out.residual = ar.x.data();
  out.ldr = arch_.hidden;
  L.out(pool, ctx, T, ar.tmp.data(), ar.gemm, out, layernorm(L.ln1_g, L.ln1_b, ar));
}

// x = LayerNorm(act(x · W1ᵀ + b1) · W2ᵀ + b2 + x), bias + activation in the first GEMM's epilogue.
void Encoder::feed_forward(const Layer& L, Arena& ar) const {
  const int64_t T = ar.tokens;
  float* ffn = Arena::grow(ar.ffn, T * L.ffn);
  gemm::Epilogue up;
  up.bias = L.in_b.data();
  up.act = activation(arch_.activation);
  L.in(*pool_, ar.x.data(), T, ffn, ar.gemm, up);
  gemm::Epilogue down;
  down.bias = L.ffn_out_b.data();
  down.residual = ar.x.data();
  down.ldr = arch_.hidden;
  L.ffn_out(*pool_, ffn, T, ar.tmp.data(), ar.gemm, down, layernorm(L.ln2_g, L.ln2_b, ar));
}

// Tokens scattered back to (B, S, H); the pooler and the classifier on each first token.
void Encoder::heads(Arena& ar, int64_t B, int64_t S, Output& out) const {
  const int64_t H = arch_.hidden;
  const float* x = ar.x.data();
  out.last_hidden_state.assign(B * S * H, 0.0f);
  for (int64_t t = 0; t < ar.tokens; ++t)
    std::memcpy(out.last_hidden_state.data() + (ar.row[t] * S + ar.col[t]) * H, x + t * H,
                H * sizeof(float));
  if (!arch_.pooler) return;
  out.pooler_output.resize(B * H);
  float* first = Arena::grow(ar.pooled, B * H);
  for (int64_t b = 0; b < B; ++b)
    std::memcpy(first + b * H, x + ar.offsets[b] * H, H * sizeof(float));
  gemm::Epilogue bias;
  bias.bias = pooler_b_.data();
  pooler_(*pool_, first, B, out.pooler_output.data(), ar.gemm, bias);
  for (float& v : out.pooler_output) v = std::tanh(v);
  if (arch_.num_labels > 0) {
    out.logits.resize(B * arch_.num_labels);
    gemm::Epilogue head;
    head.bias = classifier_b_.data();
    classifier_(*pool_, out.pooler_output.data(), B, out.logits.data(), ar.gemm, head);
  }
}

}  // namespace bort::encoder
