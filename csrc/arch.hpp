// The architecture of a BERT-family encoder: the C++ mirror of bort.arch.Arch.
//
// One meaning everywhere: a layer with heads == 0 has no attention sublayer and one with
// ffn == 0 has no FFN sublayer; a removed sublayer is the identity (no weights, no bias, no
// LayerNorm, 0 parameters, 0 FLOPs). Parameter and FLOP counts here must equal the Python
// ones exactly (tests/test_arch.py checks both against each other and against real models).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace bort {

enum class Activation { GeluErf, GeluTanh, Relu };
enum class PositionStyle { Absolute, Roberta };  // RoBERTa: positions start at pad_token_id + 1

struct Layer {
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t ffn = 0;

  int64_t attn_width() const { return heads * head_dim; }

  // Q, K, V (hidden -> a, with bias), output projection (a -> hidden, with bias), LayerNorm.
  int64_t attention_params(int64_t hidden) const {
    if (heads == 0) return 0;
    const int64_t a = attn_width();
    return 3 * (hidden * a + a) + (a * hidden + hidden) + 2 * hidden;
  }
  // Two dense layers with biases and a LayerNorm.
  int64_t ffn_params(int64_t hidden) const {
    if (ffn == 0) return 0;
    return (hidden * ffn + ffn) + (ffn * hidden + hidden) + 2 * hidden;
  }
  int64_t params(int64_t hidden) const { return attention_params(hidden) + ffn_params(hidden); }

  // Multiply-adds count 2 FLOPs; only matrix products are counted (projections, QK^T, PV).
  int64_t flops(int64_t hidden, int64_t batch, int64_t seq_len) const {
    const int64_t tokens = batch * seq_len;
    int64_t f = 0;
    if (heads > 0) {
      const int64_t a = attn_width();
      f += 2 * tokens * hidden * 3 * a;                       // fused QKV projection
      f += 2 * 2 * batch * heads * seq_len * seq_len * head_dim;  // QK^T and PV
      f += 2 * tokens * a * hidden;                           // output projection
    }
    if (ffn > 0) f += 2 * 2 * tokens * hidden * ffn;
    return f;
  }
};

struct Params {
  int64_t embeddings = 0, encoder = 0, pooler = 0, head = 0;
  int64_t total() const { return embeddings + encoder + pooler + head; }
};

struct Arch {
  int64_t hidden = 0;
  std::vector<Layer> layers;
  int64_t vocab_size = 30522;
  int64_t max_positions = 512;
  int64_t type_vocab_size = 2;
  Activation activation = Activation::GeluErf;
  double layer_norm_eps = 1e-12;
  PositionStyle position_style = PositionStyle::Absolute;
  int64_t pad_token_id = 0;
  bool pooler = true;
  int64_t num_labels = 0;  // 0: no classification head
  bool mlm_head = false;    // masked-LM head, decoder tied to the word embeddings

  // Throws std::invalid_argument naming the first inconsistent field.
  void validate() const {
    auto need = [](bool ok, const std::string& what) {
      if (!ok) throw std::invalid_argument(what);
    };
    need(hidden > 0, "hidden must be positive, got " + std::to_string(hidden));
    need(vocab_size > 0, "vocab_size must be positive");
    need(max_positions > 0, "max_positions must be positive");
    need(type_vocab_size > 0, "type_vocab_size must be positive");
    need(num_labels >= 0, "num_labels must be >= 0");
    need(!(num_labels > 0 && !pooler), "a classification head needs the pooler");
    need(layer_norm_eps > 0, "layer_norm_eps must be positive");
    need(pad_token_id >= 0 && pad_token_id < vocab_size, "pad_token_id must be a valid token id");
    if (position_style == PositionStyle::Roberta)
      need(max_positions > pad_token_id + 1, "max_positions too small for RoBERTa positions");
    for (size_t i = 0; i < layers.size(); ++i) {
      const Layer& l = layers[i];
      const std::string at = "layer " + std::to_string(i) + ": ";
      need(l.heads >= 0 && l.head_dim >= 0 && l.ffn >= 0, at + "sizes must be >= 0");
      need(l.heads == 0 || l.head_dim > 0, at + "heads > 0 needs head_dim > 0");
    }
  }

  Params params() const {
    Params p;
    p.embeddings = (vocab_size + max_positions + type_vocab_size) * hidden + 2 * hidden;
    for (const Layer& l : layers) p.encoder += l.params(hidden);
    if (pooler) p.pooler = hidden * hidden + hidden;
    p.head = num_labels > 0 ? hidden * num_labels + num_labels : 0;
    if (mlm_head) p.head += hidden * hidden + hidden + 2 * hidden + vocab_size;
    return p;
  }

  // Encoder FLOPs for `batch` sequences of `seq_len` real tokens, plus pooler and head on
  // the first token of each sequence (embedding lookups cost no FLOPs).
  int64_t flops(int64_t batch, int64_t seq_len) const {
    if (batch <= 0 || seq_len <= 0) throw std::invalid_argument("batch and seq_len must be positive");
    int64_t f = 0;
    for (const Layer& l : layers) f += l.flops(hidden, batch, seq_len);
    if (pooler) f += 2 * batch * hidden * hidden;
    if (num_labels > 0) f += 2 * batch * hidden * num_labels;
    if (mlm_head) f += 2 * batch * seq_len * hidden * (hidden + vocab_size);
    return f;
  }
};

}  // namespace bort
