// LanguageModel: embedding -> blocks -> final RMSNorm -> LM head (tied to the embedding by
// default). A block is pre-norm residual (DESIGN.md section 3): x = x + mixer(norm(x)), then,
// when the layer has a feed-forward, x = x + ffn(norm(x)). Each layer's mixer (Mamba-1,
// Mamba-2, attention) and feed-forward (none, SwiGLU MLP, MoE) come from the resolved layout.
// The residual add and the next norm run as one fused op (add_rmsnorm).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "configs/config.h"
#include "configs/layout.h"
#include "layers/attention.h"
#include "layers/basic.h"
#include "layers/mamba1.h"
#include "layers/mamba2.h"
#include "layers/mlp.h"

namespace ssmtrain {

// The layer kinds are the recipe's (configs/layout.h); these names read better next to the
// Mixer and FeedForward modules.
using MixerKind = configs::Mixer;
using FfnKind = configs::Ffn;
using LayerKind = configs::LayerSpec;

// What a LanguageModel is built from. Every hyperparameter, its one default and the sizes
// derived from it live in configs/ (configs/config.h); the layers read `config` directly.
struct ModelOptions {
  configs::ModelConfig config;
  // One entry per layer (model_options fills it from config.layout); when empty, the layout
  // config.layout resolves to. Tests give lists a recipe cannot (Mamba-1 and Mamba-2 mixed).
  std::vector<LayerKind> layers;
  // Keep only each block's inputs during the forward and recompute the block in the backward
  // (autograd/checkpoint.h): less activation memory for about a third more compute
  // (training.activation_checkpointing).
  bool activation_checkpointing = false;
  bool deterministic = true;  // false: the faster atomic-dQ attention backward on the GPU (training.deterministic)

  // The per-layer list: `layers`, else config's resolved layout (throws configs::ConfigError
  // when it does not resolve, std::invalid_argument when `layers` has not config.n_layers entries).
  std::vector<LayerKind> layer_list() const;
  // The layout as DESIGN.md shows it: mixers ("MMMMAMMM") and feed-forwards ("-E-E-E-E").
  std::string layout_string() const;
};

// Training (forward + backward) FLOPs per token at sequence length seq_len: 6 x the
// multiply-adds of every projection a token goes through (for MoE, the router and top_k
// experts) and of the LM head, plus causal attention's scores and values (6 l h dh per
// token); the scans and convolutions are left out, as MFU usually does.
double training_flops_per_token(const ModelOptions& options, int64_t seq_len);

// The parameter counts of the model `options` describes, from the shapes alone (nothing is
// allocated: `config show` and the memory check use it on recipes too large to build). Equal
// to LanguageModel::num_parameters() and active_parameters() (tests/layers/model_test.cpp).
struct ParameterCounts {
  int64_t total = 0;
  int64_t active = 0;  // per token: MoE layers count top_k of their experts
};
ParameterCounts parameter_counts(const ModelOptions& options);

class Block : public Module {
 public:
  Block(const ModelOptions& options, LayerKind kind, Generator& gen, DType dtype);
  // The residual stream arrives as (delta, residual) with x = residual + delta (residual
  // undefined for the first block); returns the pair after this block, so the final add
  // fuses with the next norm. (b, l, d) each.
  struct Stream {
    Tensor delta, residual;
  };
  Stream forward(const Stream& in, const Tensor& doc_index, AuxLosses* aux) const;
  // Decoding (see Mixer): the forward of a prompt filling the mixer's cache, and one token.
  Stream prefill(const Stream& in, const MixerCache& cache) const;
  Stream step(const Stream& in, const MixerCache& cache, const std::vector<int64_t>& positions) const;
  const Mixer& mixer() const { return mixer_; }
  const FeedForward* ffn() const { return ffn_; }

 private:
  // norm -> mix -> (norm -> ffn): the block around any way of running its mixer.
  template <typename Mix> Stream run(const Stream& in, Mix&& mix, AuxLosses* aux) const;
  RMSNorm& norm_;
  Mixer& mixer_;
  RMSNorm* ffn_norm_ = nullptr;
  FeedForward* ffn_ = nullptr;
};

struct LossTerms {
  Tensor total;  // {}: what backward() runs on, lm + aux
  Tensor lm;     // {}: mean next-token cross-entropy
  AuxLosses aux;  // MoE losses and expert counts (empty without MoE layers)
};

// The decoding state of a whole model for `batch` sequences of at most `max_len` tokens: one
// MixerCache per layer (feed-forwards, MLP and MoE alike, keep nothing between tokens).
struct InferenceCache {
  std::vector<MixerCache> layers;
  DType dtype = DType::f32;  // the activation dtype the cache was made for
  int64_t batch = 0, max_len = 0;
  InferenceCache row(int64_t i) const;  // sequence i alone (batch 1), sharing storage
};

class LanguageModel : public Module {
 public:
  // Parameters drawn on the CPU in `dtype` (f32; f64 for gradient checks) from Philox
  // streams derived from `seed`, so every device and rank starts from the same bits.
  LanguageModel(const ModelOptions& options, uint64_t seed, DType dtype = DType::f32);
  // ids (b, l) -> logits (b * l, vocab), computed in `compute_dtype` (bf16 for mixed
  // precision on the GPU); by default in the parameters' dtype.
  Tensor logits(const Tensor& ids, const Tensor& doc_index = Tensor(),
                std::optional<DType> compute_dtype = std::nullopt, AuxLosses* aux = nullptr) const;
  // Next-token cross-entropy of logits(ids) against targets (b, l) (ignore_index -100), plus
  // the MoE layers' auxiliary losses.
  LossTerms losses(const Tensor& ids, const Tensor& targets, const Tensor& doc_index = Tensor(),
                   std::optional<DType> compute_dtype = std::nullopt) const;
  // losses(...).total.
  Tensor loss(const Tensor& ids, const Tensor& targets, const Tensor& doc_index = Tensor(),
              std::optional<DType> compute_dtype = std::nullopt) const;
  const ModelOptions& options() const { return options_; }
  Device device() const { return embedding_.table.device(); }  // where the parameters are

  // Generation (eval/generate.h builds on these). A zeroed cache on the parameters' device,
  // activations in compute_dtype (default: the parameters' dtype).
  InferenceCache new_inference_cache(int64_t batch, int64_t max_len,
                                     std::optional<DType> compute_dtype = std::nullopt) const;
  // ids (b, l), every sequence starting at position 0 (cache.batch == b) -> logits
  // (b * l, vocab), the same as logits(ids); the cache then holds the state after token l-1.
  Tensor prefill(const Tensor& ids, const InferenceCache& cache) const;
  // One token per sequence: ids (b), sequence i having positions[i] tokens in the cache ->
  // logits (b, vocab) for the next token. O(1) in the context for Mamba layers, O(context)
  // for attention (one pass over its KV cache).
  Tensor step(const Tensor& ids, const InferenceCache& cache, const std::vector<int64_t>& positions) const;
  // Parameters one token uses (all but the experts a token is not routed to).
  int64_t active_parameters();

 private:
  ModelOptions options_;
  Embedding& embedding_;
  std::vector<Block*> blocks_;
  RMSNorm* final_norm_ = nullptr;
  Linear* lm_head_ = nullptr;  // untied only
  Tensor head(const Block::Stream& stream) const;  // final norm + LM head: (b l, vocab)
};

}  // namespace ssmtrain
