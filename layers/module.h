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

// What one mixer keeps between decoding steps for a batch of sequences. Mamba layers: the
// convolution window (the last w-1 inputs) and the SSM state, both O(1) in the context;
// attention: a key/value cache preallocated to the longest context. Undefined members are
// not used by that mixer. Row i of every tensor belongs to sequence i, so row(i) gives a
// batch-1 view that a prefill can fill in place.
struct MixerCache {
  Tensor conv;  // (b, channels, w-1), the activation dtype
  Tensor ssm;   // Mamba-1 (b, e, n), Mamba-2 (b, h, p, n); f32 (f64 for f64 models on the CPU)
  Tensor k, v;  // (b, max_len, kv, dh), the activation dtype
  MixerCache row(int64_t i) const;
};

// A sequence mixer of a block (Mamba-1, Mamba-2, attention): x (b, l, d) -> (b, l, d), with a
// per-token document index (b, l) i32 (or undefined) marking where packed documents start.
class Mixer : public Module {
 public:
  virtual Tensor forward(const Tensor& x, const Tensor& doc_index) const = 0;
  // A zeroed cache for `batch` sequences of at most `max_len` tokens, activations in `dtype`.
  virtual MixerCache new_cache(int64_t batch, int64_t max_len, DType dtype, Device device) const = 0;
  // The parallel forward of x (b, l, d) starting at position 0, leaving in `cache` (batch b)
  // the state after the last token. Returns what forward(x, {}) returns.
  virtual Tensor prefill(const Tensor& x, const MixerCache& cache) const = 0;
  // One token per sequence: x (b, 1, d), where sequence i already holds positions[i] tokens
  // in `cache`; updates the cache in place and returns (b, 1, d).
  virtual Tensor step(const Tensor& x, const MixerCache& cache, const std::vector<int64_t>& positions) const = 0;
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
// the GPU (the cast is differentiable, so gradients reach the f32 master copy). Inside a
// WeightCastCache with gradients off, each weight is cast once and the cast reused.
Tensor weight_for(const Tensor& weight, const Tensor& x);

// For its lifetime (on this thread, with gradients off), weight_for keeps every cast it makes,
// keyed by the parameter and the dtype, and returns it again instead of casting anew: a
// generation casts its weights to bf16 once instead of at every step (and a CUDA graph of a
// step then reads the casts instead of recomputing them). The parameters must not change while
// it lives; the casts are dropped with it. Nested caches share the outermost one.
class WeightCastCache {
 public:
  WeightCastCache();
  ~WeightCastCache();
  WeightCastCache(const WeightCastCache&) = delete;
  WeightCastCache& operator=(const WeightCastCache&) = delete;
  size_t size() const;  // casts held
  struct Entries;

 private:
  std::unique_ptr<Entries> entries_;  // null when an outer cache serves
};

}  // namespace ssmtrain
