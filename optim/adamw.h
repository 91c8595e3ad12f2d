// AdamW (Loshchilov & Hutter) over a module's named parameters, with decoupled weight decay
// applied only to parameters flagged for it (not norms, biases, A_log, D, dt_bias). Moments
// are f32 (the parameters' dtype) on the parameters' device; the state (step and moments by
// parameter name) is what a checkpoint saves. Also the global gradient norm and clipping.
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
};

class AdamW {
 public:
  AdamW(std::vector<NamedParameter> parameters, AdamWOptions options);
  // One update with learning rate lr from each parameter's .grad (parameters without a
  // gradient are skipped). Deterministic: elementwise only.
  void step(double lr);
  int64_t steps() const { return step_; }

  struct Moments {
    Tensor exp_avg, exp_avg_sq;
  };
  std::map<std::string, Moments>& state() { return state_; }
  void set_steps(int64_t steps) { step_ = steps; }

 private:
  std::vector<NamedParameter> parameters_;
  AdamWOptions options_;
  std::map<std::string, Moments> state_;
  int64_t step_ = 0;
};

// sqrt(sum of squares of every gradient), accumulated per parameter in a fixed order.
double global_grad_norm(const std::vector<NamedParameter>& parameters);
// Scales every gradient by min(1, max_norm / (norm + 1e-6)); returns the norm before.
double clip_grad_norm(const std::vector<NamedParameter>& parameters, double max_norm);

}  // namespace ssmtrain
