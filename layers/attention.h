// Causal self-attention as a block's mixer (DESIGN.md section 3): multi-head or grouped-query
// (n_kv_heads < n_heads), optional rotary position embedding, no biases (as in Jamba).
// q/k/v/o projections feed the fused attention op of autograd/attention_ops.h.
//
// Glossary: b batch, l sequence length, d d_model, h query heads, kv key/value heads, dh head dim.
#pragma once

#include <vector>

#include "configs/config.h"
#include "layers/basic.h"

namespace ssmtrain {

class AttentionMixer : public Mixer {
 public:
  // Built from model.attention, d_model, n_layers (o_proj is scaled by 1 / sqrt(n_layers) at
  // init, as Mamba's out_proj) and the derived sizes model.attention_n_kv_heads() and
  // attention_head_dim(); `deterministic` false picks the faster atomic-dQ backward on the GPU
  // (training.deterministic). Throws std::invalid_argument when kv heads do not divide the
  // heads, or the head dim is not given and n_heads does not divide d_model, or rope is asked
  // with an odd head dim.
  AttentionMixer(const configs::ModelConfig& model, bool deterministic, Generator& gen, DType dtype = DType::f32);
  // x (b, l, d) -> (b, l, d); with doc_index a token attends only within its own document.
  Tensor forward(const Tensor& x, const Tensor& doc_index) const override;
  MixerCache new_cache(int64_t batch, int64_t max_len, DType dtype, Device device) const override;
  Tensor prefill(const Tensor& x, const MixerCache& cache) const override;
  Tensor step(const Tensor& x, const MixerCache& cache, const std::vector<int64_t>& positions) const override;

 private:
  configs::ModelConfig model_;
  bool deterministic_;
  Linear& q_proj_;  // d -> h dh
  Linear& k_proj_;  // d -> kv dh
  Linear& v_proj_;  // d -> kv dh
  Linear& o_proj_;  // h dh -> d
};

// Rotary position embedding over the last dimension of x (b, l, heads, dh), positions 0..l-1:
// the pairs (x[i], x[i + dh/2]) are rotated by angle position * theta^(-2i/dh) (the
// "rotate_half" convention of GPT-NeoX and HuggingFace Llama). The angle tables, built once per
// forward for q and k alike, are (l, 1, dh/2) in x's dtype on x's device.
struct RotaryTables {
  Tensor cos, sin;
};
RotaryTables rotary_tables(int64_t seq_len, int64_t head_dim, double theta, DType dtype, Device device);
Tensor rotary_embedding(const Tensor& x, const RotaryTables& tables);

}  // namespace ssmtrain
