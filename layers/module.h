// Module: a named tree of parameters (f32 master copies, or f64 for gradient checks) and
// submodules. Names are dotted paths ("blocks.3.mixer.in_proj.weight"), the keys of
// checkpoints. Each parameter says whether weight decay applies (not to norms, biases,
// A_log, D, dt_bias).
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/tensor.h"

namespace ssmtrain {

struct Parameter {
  std::string name;  // relative to the module that owns it
  Tensor value;      // a leaf with requires_grad
  bool weight_decay = true;
};

struct NamedParameter {
  std::string name;  // full dotted path from the module asked
  Tensor* value;
  bool weight_decay;
};

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Every parameter of this module and its submodules, in registration order.
  std::vector<NamedParameter> named_parameters(const std::string& prefix = "");
  int64_t num_parameters();
  // Moves every parameter to `device` (keeping it a leaf that needs a gradient).
  void to(Device device);
  void zero_grad();

 protected:
  Tensor& register_parameter(const std::string& name, Tensor value, bool weight_decay = true);
  template <typename M> M& register_module(const std::string& name, std::unique_ptr<M> module) {
    M& ref = *module;
    children_.emplace_back(name, std::move(module));
    return ref;
  }

 private:
  std::deque<Parameter> parameters_;  // a deque: references handed out stay valid
  std::vector<std::pair<std::string, std::unique_ptr<Module>>> children_;
};

// A sequence mixer of a block (Mamba-1, Mamba-2, attention): x (b, l, d) -> (b, l, d), with a
// per-token document index (b, l) i32 (or undefined) marking where packed documents start.
class Mixer : public Module {
 public:
  virtual Tensor forward(const Tensor& x, const Tensor& doc_index) const = 0;
};

// What MoE feed-forwards add to the training loss beyond next-token cross-entropy, summed over
// the layers of one forward pass, and what they report for logging.
struct AuxLosses {
  Tensor total;                        // {} f32: sum of coef * loss over MoE layers (undefined: none)
  std::vector<Tensor> expert_counts;   // per MoE layer, (e) i32: tokens routed to each expert
  void add(const Tensor& loss);
};

// A block's feed-forward (SwiGLU MLP or MoE): x (b, l, d) -> (b, l, d). `aux` (may be null)
// collects auxiliary losses.
class FeedForward : public Module {
 public:
  virtual Tensor forward(const Tensor& x, AuxLosses* aux) const = 0;
};

// The activation dtype a module's weights are cast to for x: bf16 weights for bf16 inputs on
// the GPU (the cast is differentiable, so gradients reach the f32 master copy).
Tensor weight_for(const Tensor& weight, const Tensor& x);

}  // namespace ssmtrain
