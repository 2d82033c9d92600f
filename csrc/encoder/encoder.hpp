// The fused CPU encoder: post-LayerNorm BERT / RoBERTa forward for any bort::Arch.
//
// Batches run packed: the tokens of every sequence (attention_mask == 1) are gathered into one
// (T, H) matrix, so no work is spent on padding; attention runs per (sequence, head) in cache.
// Per layer: one fused QKV GEMM with the bias in its epilogue; attention; the output projection
// followed by bias + residual + LayerNorm in one pass; the FFN's first GEMM with bias + GELU in
// its epilogue; the second GEMM and bias + residual + LayerNorm. GEMMs are MKL's (sequential
// library, one call per thread on a slice of the output columns). Weights are owned and
// read-only after construction; activation buffers come from a pool of arenas, one per
// concurrent call, grown only when a larger batch arrives.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "arch.hpp"
#include "encoder/kernels.hpp"
#include "encoder/linear.hpp"
#include "encoder/thread_pool.hpp"

namespace bort::encoder {

// A tensor handed over by the caller: row-major float32, shape as given.
struct TensorView {
  const float* data = nullptr;
  std::vector<int64_t> shape;
};

// Inputs of one forward pass, (batch, seq) row-major int64; mask and types may be null.
struct Batch {
  int64_t batch = 0, seq = 0;
  const int64_t* input_ids = nullptr;
  const int64_t* attention_mask = nullptr;
  const int64_t* token_type_ids = nullptr;
};

struct Output {
  std::vector<float> last_hidden_state;  // (batch, seq, hidden); 0 at padding
  std::vector<float> pooler_output;      // (batch, hidden) when the arch has a pooler
  std::vector<float> logits;             // (batch, num_labels) with a head
  std::vector<double> sublayer_ms;       // when timed: embeddings, then per layer attention, FFN
};

class Encoder {
 public:
  // Copies the weights (bort / Hugging Face BertModel names); throws std::invalid_argument
  // naming a missing or mis-shaped tensor.
  // dtype: the precision of the linear layers' GEMMs (see linear.hpp); the rest runs in fp32.
  Encoder(const Arch& arch, const std::map<std::string, TensorView>& weights, int num_threads,
          Dtype dtype = Dtype::F32);
  ~Encoder();

  // Throws std::invalid_argument on out-of-range ids, types or masks, empty rows or batches,
  // and sequences longer than the position table.
  Output forward(const Batch& in, bool timed = false) const;

  const Arch& arch() const { return arch_; }
  int num_threads() const { return pool_->size(); }
  Dtype dtype() const { return dtype_; }

 private:
  struct Layer;
  struct Arena;
  std::unique_ptr<Arena> acquire() const;
  void release(std::unique_ptr<Arena> arena) const;
  // The ops of a forward pass, on the packed tokens of one arena.
  void embed(const Batch& in, Arena& ar) const;
  void attention(const Layer& L, Arena& ar) const;
  void feed_forward(const Layer& L, Arena& ar) const;
  Linear::RowsFn layernorm(const std::vector<float>& gamma, const std::vector<float>& beta,
                           Arena& ar) const;
  void heads(Arena& ar, int64_t B, int64_t S, Output& out) const;

  Arch arch_;
  Dtype dtype_;
  std::vector<float> word_, position_, token_type_, emb_gamma_, emb_beta_;
  std::vector<Layer> layers_;
  Linear pooler_;
  Linear classifier_;
  std::vector<float> pooler_b_, classifier_b_;
  std::unique_ptr<ThreadPool> pool_;
  const Kernels* kernels_;
  mutable std::mutex arenas_mutex_;
  mutable std::vector<std::unique_ptr<Arena>> arenas_;
};

}  // namespace bort::encoder
