// See model.h.
#include "layers/model.h"

#include <string>

#include "autograd/ops.h"

namespace ssmtrain {
namespace {
std::unique_ptr<Mixer> make_mixer(const ModelOptions& o, Generator& gen, DType dtype) {
  if (o.mixer == MixerKind::mamba2) {
    Mamba2Options m = o.mamba2;
    m.d_model = o.d_model;
    m.n_layers = o.n_layers;
    return std::make_unique<Mamba2Mixer>(m, gen, dtype);
  }
  Mamba1Options m = o.mamba1;
  m.d_model = o.d_model;
  m.n_layers = o.n_layers;
  return std::make_unique<Mamba1Mixer>(m, gen, dtype);
}
}  // namespace

double training_flops_per_token(const ModelOptions& o) {
  const double d = double(o.d_model);
  double per_layer = 0;
  if (o.mixer == MixerKind::mamba1) {
    const double e = double(o.mamba1.expand * o.d_model), n = double(o.mamba1.d_state);
    const double r = double(o.mamba1.dt_rank > 0 ? o.mamba1.dt_rank : (o.d_model + 15) / 16);
    per_layer = d * 2 * e + e * (r + 2 * n) + r * e + e * d;  // in, x, dt and out projections
  } else {
    const double e = double(o.mamba2.expand * o.d_model), gn = double(o.mamba2.ngroups * o.mamba2.d_state);
    const double h = e / double(o.mamba2.headdim);
    per_layer = d * (2 * e + 2 * gn + h) + e * d;  // in and out projections
  }
  return 6.0 * (double(o.n_layers) * per_layer + d * double(o.vocab_size));
}

Block::Block(const ModelOptions& o, Generator& gen, DType dtype)
    : norm_(register_module("norm", std::make_unique<RMSNorm>(o.d_model, o.norm_eps, dtype))),
      mixer_(register_module("mixer", make_mixer(o, gen, dtype))) {}

Tensor Block::forward(const Tensor& x, const Tensor& doc_index) const {
  return add(x, mixer_.forward(norm_.forward(x), doc_index));
}

LanguageModel::LanguageModel(const ModelOptions& o, uint64_t seed, DType dtype)
    : options_(o), embedding_([&]() -> Embedding& {
        Generator gen(seed);
        return register_module("embedding", std::make_unique<Embedding>(o.vocab_size, o.d_model, gen, dtype));
      }()) {
  // Each component draws from its own stream (seed, offset by component) so adding a layer
  // does not change the ones before it.
  for (int64_t i = 0; i < o.n_layers; ++i) {
    Generator gen(seed + 1 + uint64_t(i));
    blocks_.push_back(&register_module("blocks." + std::to_string(i), std::make_unique<Block>(o, gen, dtype)));
  }
  final_norm_ = &register_module("norm_f", std::make_unique<RMSNorm>(o.d_model, o.norm_eps, dtype));
  if (!o.tie_embeddings) {
    Generator gen(seed + 1 + uint64_t(o.n_layers));
    lm_head_ = &register_module("lm_head", std::make_unique<Linear>(o.d_model, o.vocab_size, false, gen, dtype));
  }
}

Tensor LanguageModel::logits(const Tensor& ids, const Tensor& doc_index, std::optional<DType> compute_dtype) const {
  Tensor h = embedding_.forward(ids);  // (b, l, d)
  if (compute_dtype) h = cast(h, *compute_dtype);
  for (const Block* block : blocks_) h = block->forward(h, doc_index);
  h = final_norm_->forward(h);
  h = reshape(h, {-1, options_.d_model});                   // (b l, d)
  return lm_head_ ? lm_head_->forward(h) : matmul(h, weight_for(embedding_.table, h), false, true);
}

Tensor LanguageModel::loss(const Tensor& ids, const Tensor& targets, const Tensor& doc_index,
                           std::optional<DType> compute_dtype) const {
  return cross_entropy(logits(ids, doc_index, compute_dtype), reshape(targets, {-1}));
}

}  // namespace ssmtrain
