// AdamW (Loshchilov & Hutter) over a module's named parameters, with decoupled weight decay
// applied only to parameters flagged for it (not norms, biases, A_log, D, dt_bias). Moments
// are f32 (the parameters' dtype) on the parameters' device; the state (step and moments by
// parameter name) is what a checkpoint saves. Also the global gradient norm and clipping.
// On the GPU one multi-tensor launch (kernels/adamw.h) updates every parameter, and can write
// a bf16 copy of each updated weight for the next forward in the same pass.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "layers/module.h"

namespace ssmtrain {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  // GPU only: keep a bf16 copy of every f32 CUDA parameter, rewritten by each step from the
  // updated master weight (compute_copy() hands it out).
  bool bf16_copies = false;
};

class AdamW {
 public:
  AdamW(std::vector<NamedParameter> parameters, AdamWOptions options);
  // One update with learning rate lr from each parameter's .grad (parameters without a
  // gradient are skipped). Deterministic: elementwise only. grad_scale multiplies every
  // gradient inside the update (clipping without a separate pass over the gradients).
  void step(double lr, double grad_scale = 1.0);
  int64_t steps() const { return step_; }

  struct Moments {
    Tensor exp_avg, exp_avg_sq;
  };
  std::map<std::string, Moments>& state() { return state_; }
  void set_steps(int64_t steps) { step_ = steps; }

  // The bf16 copy of parameter `name` as of the last step (or construction / refresh); an
  // undefined tensor when copies are off or the parameter is not an f32 CUDA tensor. The copy
  // is updated in place, so a reference taken once stays current. It carries no gradient.
  const Tensor& compute_copy(const std::string& name) const;
  // Rewrites every copy from its master weight (after loading a checkpoint into the model).
  void refresh_compute_copies();

 private:
  std::vector<NamedParameter> parameters_;
  AdamWOptions options_;
  std::map<std::string, Moments> state_;
  std::map<std::string, Tensor> copies_;  // name -> bf16 copy (bf16_copies only)
  int64_t step_ = 0;
};

// sqrt(sum of squares of every gradient): on the CPU in double in parameter order; on the GPU
// one multi-tensor launch per gradient dtype with a fixed summation order.
double global_grad_norm(const std::vector<NamedParameter>& parameters);
// Scales every gradient by min(1, max_norm / (norm + 1e-6)); returns the norm before.
double clip_grad_norm(const std::vector<NamedParameter>& parameters, double max_norm);
// The factor clip_grad_norm would scale the gradients by: 1 under the limit (or max_norm <= 0).
double clip_scale(double norm, double max_norm);

}  // namespace ssmtrain
