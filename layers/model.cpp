// See model.h.
#include "layers/model.h"

#include <stdexcept>
#include <string>

#include "autograd/checkpoint.h"
#include "autograd/norm_ops.h"
#include "autograd/node.h"
#include "autograd/ops.h"

namespace ssmtrain {
namespace {
std::unique_ptr<Mixer> make_mixer(const ModelOptions& o, MixerKind kind, Generator& gen, DType dtype) {
  switch (kind) {
    case MixerKind::mamba2: return std::make_unique<Mamba2Mixer>(o.config, gen, dtype);
    case MixerKind::attention: return std::make_unique<AttentionMixer>(o.config, o.deterministic, gen, dtype);
    case MixerKind::mamba1: break;
  }
  return std::make_unique<Mamba1Mixer>(o.config, gen, dtype);
}

std::unique_ptr<FeedForward> make_ffn(const ModelOptions& o, FfnKind kind, Generator& gen, DType dtype) {
  if (kind == FfnKind::mlp) return std::make_unique<Mlp>(o.config, gen, dtype);
  return std::make_unique<Moe>(o.config, gen, dtype);
}

// block->forward under activation checkpointing: the block's inputs are kept, its inside is
// recomputed in the backward. The MoE losses leave as an extra output; the expert counts are
// taken from the first (forward) run only.
Block::Stream checkpointed(const Block* block, const Block::Stream& in, const Tensor& doc_index, AuxLosses* aux) {
  const bool first_block = !in.residual.defined();
  auto forward_done = std::make_shared<bool>(false);
  auto fn = [block, doc_index, first_block, aux, forward_done](const std::vector<Tensor>& inputs) {
    AuxLosses local;
    const Block::Stream out = block->forward({inputs[0], first_block ? Tensor() : inputs[1]}, doc_index, &local);
    if (!*forward_done && aux) {
      for (const Tensor& counts : local.expert_counts) aux->expert_counts.push_back(counts);
    }
    *forward_done = true;
    std::vector<Tensor> outputs{out.delta, out.residual};
    if (local.total.defined()) outputs.push_back(local.total);
    return outputs;
  };
  const std::vector<Tensor> outs = checkpoint(fn, first_block ? std::vector<Tensor>{in.delta}
                                                              : std::vector<Tensor>{in.delta, in.residual});
  if (outs.size() > 2 && aux) aux->add(outs[2]);
  return {outs[0], outs[1]};
}

// The fused residual add + RMSNorm with the norm's weight in x's dtype.
AddRmsnormOutputs add_norm(const Tensor& delta, const Tensor& residual, const RMSNorm& norm) {
  return add_rmsnorm(delta, residual, weight_for(norm.weight, delta), norm.eps);
}
}  // namespace

std::vector<LayerKind> ModelOptions::layer_list() const {
  if (layers.empty()) return configs::resolve_layout(config).layers;
  if (int64_t(layers.size()) != config.n_layers)
    throw std::invalid_argument("model: " + std::to_string(layers.size()) + " layer kinds given for n_layers " +
                                std::to_string(config.n_layers));
  return layers;
}

std::string ModelOptions::layout_string() const {
  const configs::Layout layout{layer_list()};
  return layout.mixer_string() + " / " + layout.ffn_string();
}

double training_flops_per_token(const ModelOptions& options, int64_t seq_len) {
  const configs::ModelConfig& o = options.config;
  const double d = double(o.d_model);
  double per_token = d * double(o.vocab_size);  // LM head
  for (const LayerKind& k : options.layer_list()) {
    if (k.mixer == MixerKind::mamba1) {
      const double e = double(o.mamba1_d_inner()), n = double(o.mamba1.d_state), r = double(o.mamba1_dt_rank());
      per_token += d * 2 * e + e * (r + 2 * n) + r * e + e * d;  // in, x, dt and out projections
    } else if (k.mixer == MixerKind::mamba2) {
      const double e = double(o.mamba2_d_inner()), gn = double(o.mamba2.ngroups * o.mamba2.d_state);
      const double h = double(o.mamba2_n_heads());
      per_token += d * (2 * e + 2 * gn + h) + e * d;  // in and out projections
    } else {
      const double q = double(o.attention.n_heads * o.attention_head_dim());
      const double kv = double(o.attention_n_kv_heads() * o.attention_head_dim());
      per_token += d * (2 * q + 2 * kv);  // q, k, v and o projections
      per_token += double(seq_len) * q;   // causal: half of 2 l (h dh) multiply-adds (scores and values)
    }
    if (k.ffn == FfnKind::mlp) per_token += 3 * d * double(o.mlp_d_ff());
    if (k.ffn == FfnKind::moe) per_token += d * double(o.moe.n_experts) + double(o.moe.top_k) * 3 * d * double(o.moe_d_ff());
  }
  return 6.0 * per_token;
}

ParameterCounts parameter_counts(const ModelOptions& options) {
  const configs::ModelConfig& o = options.config;
  const int64_t d = o.d_model;
  ParameterCounts c;
  c.total = o.vocab_size * d + d + (o.tie_embeddings ? 0 : d * o.vocab_size);  // embedding, norm_f, lm_head
  int64_t inactive = 0;
  for (const LayerKind& k : options.layer_list()) {
    c.total += d;  // norm
    if (k.mixer == MixerKind::mamba1) {
      const int64_t e = o.mamba1_d_inner(), n = o.mamba1.d_state, r = o.mamba1_dt_rank();
      c.total += d * 2 * e + e * o.mamba1.d_conv + e + e * (r + 2 * n) + r * e + e + e * n + e + e * d;
      if (o.mamba1.dt_bc_norm) c.total += r + 2 * n;
    } else if (k.mixer == MixerKind::mamba2) {
      const int64_t e = o.mamba2_d_inner(), gn = o.mamba2.ngroups * o.mamba2.d_state, h = o.mamba2_n_heads();
      const int64_t conv = o.mamba2_conv_dim();
      c.total += d * (2 * e + 2 * gn + h) + conv * o.mamba2.d_conv + conv + 3 * h + e + e * d;
    } else {
      const int64_t q = o.attention.n_heads * o.attention_head_dim(), kv = o.attention_n_kv_heads() * o.attention_head_dim();
      c.total += d * q + 2 * d * kv + q * d;
    }
    if (k.ffn == FfnKind::mlp) c.total += d + 3 * d * o.mlp_d_ff();
    if (k.ffn == FfnKind::moe) {
      c.total += d + o.moe.n_experts * d + 3 * o.moe.n_experts * o.moe_d_ff() * d;
      inactive += (o.moe.n_experts - o.moe.top_k) * 3 * d * o.moe_d_ff();
    }
  }
  c.active = c.total - inactive;
  return c;
}

Block::Block(const ModelOptions& o, LayerKind kind, Generator& gen, DType dtype)
    : norm_(register_module("norm", std::make_unique<RMSNorm>(o.config.d_model, o.config.norm_eps, dtype))),
      mixer_(register_module("mixer", make_mixer(o, kind.mixer, gen, dtype))) {
  if (kind.ffn != FfnKind::none) {
    ffn_norm_ = &register_module("ffn_norm", std::make_unique<RMSNorm>(o.config.d_model, o.config.norm_eps, dtype));
    ffn_ = &register_module(kind.ffn == FfnKind::mlp ? "mlp" : "moe", make_ffn(o, kind.ffn, gen, dtype));
  }
}

template <typename Mix>
Block::Stream Block::run(const Stream& in, Mix&& mix, AuxLosses* aux) const {
  AddRmsnormOutputs a = add_norm(in.delta, in.residual, norm_);  // (b, l, d)
  Stream out{mix(a.normed), a.sum};
  if (ffn_) {
    a = add_norm(out.delta, out.residual, *ffn_norm_);
    out = {ffn_->forward(a.normed, aux), a.sum};
  }
  return out;
}

Block::Stream Block::forward(const Stream& in, const Tensor& doc_index, AuxLosses* aux) const {
  return run(in, [&](const Tensor& x) { return mixer_.forward(x, doc_index); }, aux);
}

Block::Stream Block::prefill(const Stream& in, const MixerCache& cache) const {
  return run(in, [&](const Tensor& x) { return mixer_.prefill(x, cache); }, nullptr);
}

Block::Stream Block::step(const Stream& in, const MixerCache& cache, const std::vector<int64_t>& positions) const {
  return run(in, [&](const Tensor& x) { return mixer_.step(x, cache, positions); }, nullptr);
}

InferenceCache InferenceCache::row(int64_t i) const {
  InferenceCache r;
  r.dtype = dtype;
  r.batch = 1;
  r.max_len = max_len;
  for (const MixerCache& c : layers) r.layers.push_back(c.row(i));
  return r;
}

LanguageModel::LanguageModel(const ModelOptions& o, uint64_t seed, DType dtype)
    : options_(o), embedding_([&]() -> Embedding& {
        Generator gen(seed);
        return register_module("embedding", std::make_unique<Embedding>(o.config.vocab_size, o.config.d_model, gen, dtype));
      }()) {
  options_.layers = o.layer_list();  // resolved once
  // Each component draws from its own stream (seed, offset by component) so adding a layer
  // does not change the ones before it.
  for (int64_t i = 0; i < o.config.n_layers; ++i) {
    Generator gen(seed + 1 + uint64_t(i));
    blocks_.push_back(&register_module("blocks." + std::to_string(i),
                                       std::make_unique<Block>(options_, options_.layers[size_t(i)], gen, dtype)));
  }
  final_norm_ = &register_module("norm_f", std::make_unique<RMSNorm>(o.config.d_model, o.config.norm_eps, dtype));
  if (!o.config.tie_embeddings) {
    Generator gen(seed + 1 + uint64_t(o.config.n_layers));
    lm_head_ = &register_module("lm_head", std::make_unique<Linear>(o.config.d_model, o.config.vocab_size, false, gen, dtype));
  }
}

Tensor LanguageModel::logits(const Tensor& ids, const Tensor& doc_index, std::optional<DType> compute_dtype,
                             AuxLosses* aux) const {
  Block::Stream stream{embedding_.forward(ids), Tensor()};  // (b, l, d)
  if (compute_dtype) stream.delta = cast(stream.delta, *compute_dtype);
  const bool recompute = options_.activation_checkpointing && grad_enabled();
  for (const Block* block : blocks_)
    stream = recompute ? checkpointed(block, stream, doc_index, aux) : block->forward(stream, doc_index, aux);
  return head(stream);
}

Tensor LanguageModel::head(const Block::Stream& stream) const {
  Tensor h = add_norm(stream.delta, stream.residual, *final_norm_).normed;
  h = reshape(h, {-1, options_.config.d_model});  // (b l, d)
  return lm_head_ ? lm_head_->forward(h) : matmul(h, weight_for(embedding_.table, h), false, true);
}

InferenceCache LanguageModel::new_inference_cache(int64_t batch, int64_t max_len,
                                                  std::optional<DType> compute_dtype) const {
  if (batch < 1 || max_len < 1)
    throw std::invalid_argument("inference cache: batch and max_len must be positive, got " + std::to_string(batch) +
                                " and " + std::to_string(max_len));
  InferenceCache cache;
  cache.dtype = compute_dtype.value_or(embedding_.table.dtype());
  cache.batch = batch;
  cache.max_len = max_len;
  for (const Block* block : blocks_)
    cache.layers.push_back(block->mixer().new_cache(batch, max_len, cache.dtype, embedding_.table.device()));
  return cache;
}

Tensor LanguageModel::prefill(const Tensor& ids, const InferenceCache& cache) const {
  if (ids.dim() != 2 || ids.size(0) != cache.batch)
    throw std::invalid_argument("prefill: ids must be (" + std::to_string(cache.batch) + ", l) for this cache, got " +
                                ids.str());
  if (ids.size(1) > cache.max_len)
    throw std::invalid_argument("prefill: " + std::to_string(ids.size(1)) + " tokens exceed the cache's max_len " +
                                std::to_string(cache.max_len));
  Block::Stream stream{cast(embedding_.forward(ids), cache.dtype), Tensor()};  // (b, l, d)
  for (size_t i = 0; i < blocks_.size(); ++i) stream = blocks_[i]->prefill(stream, cache.layers[i]);
  return head(stream);
}

Tensor LanguageModel::step(const Tensor& ids, const InferenceCache& cache, const std::vector<int64_t>& positions) const {
  if (ids.dim() != 1 || ids.size(0) != cache.batch || int64_t(positions.size()) != cache.batch)
    throw std::invalid_argument("step: ids (" + std::to_string(cache.batch) + ") and as many positions expected, got " +
                                ids.str() + " and " + std::to_string(positions.size()) + " positions");
  Block::Stream stream{cast(embedding_.forward(reshape(ids, {cache.batch, 1})), cache.dtype), Tensor()};  // (b, 1, d)
  for (size_t i = 0; i < blocks_.size(); ++i) stream = blocks_[i]->step(stream, cache.layers[i], positions);
  return head(stream);  // (b, vocab)
}

LossTerms LanguageModel::losses(const Tensor& ids, const Tensor& targets, const Tensor& doc_index,
                                std::optional<DType> compute_dtype) const {
  LossTerms terms;
  terms.lm = cross_entropy(logits(ids, doc_index, compute_dtype, &terms.aux), reshape(targets, {-1}));
  terms.total = terms.aux.total.defined() ? add(terms.lm, cast(terms.aux.total, terms.lm.dtype())) : terms.lm;
  return terms;
}

Tensor LanguageModel::loss(const Tensor& ids, const Tensor& targets, const Tensor& doc_index,
                           std::optional<DType> compute_dtype) const {
  return losses(ids, targets, doc_index, compute_dtype).total;
}

int64_t LanguageModel::active_parameters() {
  int64_t inactive = 0;
  for (const Block* block : blocks_)
    if (const auto* moe = dynamic_cast<const Moe*>(block->ffn())) inactive += moe->inactive_parameters();
  return num_parameters() - inactive;
}

}  // namespace ssmtrain
