// LanguageModel: embedding -> blocks -> final RMSNorm -> LM head (tied to the embedding by
// default). A block is pre-norm residual, x = x + mixer(norm(x)). This first cut builds
// stacks of one mixer kind (Mamba-1 or Mamba-2); the per-layer layout of DESIGN.md section 3
// (attention, MoE, resolved from the recipe) extends Block.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "layers/basic.h"
#include "layers/mamba1.h"
#include "layers/mamba2.h"

namespace ssmtrain {

enum class MixerKind { mamba1, mamba2 };

struct ModelOptions {
  int64_t vocab_size = 256;
  int64_t d_model = 128;
  int64_t n_layers = 2;
  bool tie_embeddings = true;
  double norm_eps = 1e-5;
  MixerKind mixer = MixerKind::mamba1;
  Mamba1Options mamba1;  // d_model and n_layers are taken from above
  Mamba2Options mamba2;  // likewise
};

// Training (forward + backward) matrix FLOPs per token: 6 x the multiply-adds of every
// projection and the LM head; the scans and convolutions are left out, as MFU usually does.
double training_flops_per_token(const ModelOptions& options);

class Block : public Module {
 public:
  Block(const ModelOptions& options, Generator& gen, DType dtype);
  Tensor forward(const Tensor& x, const Tensor& doc_index) const;  // (b, l, d) -> (b, l, d)

 private:
  RMSNorm& norm_;
  Mixer& mixer_;
};

class LanguageModel : public Module {
 public:
  // Parameters drawn from Generator(seed) on the CPU in `dtype` (f32; f64 for gradient
  // checks), so every device and rank starts from the same bits.
  LanguageModel(const ModelOptions& options, uint64_t seed, DType dtype = DType::f32);
  // ids (b, l) -> logits (b * l, vocab), computed in `compute_dtype` (bf16 for mixed
  // precision on the GPU); by default in the parameters' dtype.
  Tensor logits(const Tensor& ids, const Tensor& doc_index = Tensor(),
                std::optional<DType> compute_dtype = std::nullopt) const;
  // Mean next-token cross-entropy of logits(ids) against targets (b, l); ignore_index -100.
  Tensor loss(const Tensor& ids, const Tensor& targets, const Tensor& doc_index = Tensor(),
              std::optional<DType> compute_dtype = std::nullopt) const;
  const ModelOptions& options() const { return options_; }

 private:
  ModelOptions options_;
  Embedding& embedding_;
  std::vector<Block*> blocks_;
  RMSNorm* final_norm_ = nullptr;
  Linear* lm_head_ = nullptr;  // untied only
};

}  // namespace ssmtrain
