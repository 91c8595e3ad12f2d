// See checkpoint.h. The node keeps fn and the detached inputs; its backward recomputes fn
// with recording on and runs a nested backward from the recomputed outputs.
#include "autograd/checkpoint.h"

#include <stdexcept>

#include "autograd/node.h"

namespace ssmtrain {
namespace {

class CheckpointNode final : public Node {
 public:
  CheckpointNode(CheckpointFn fn, std::vector<bool> input_needs_grad)
      : fn_(std::move(fn)), input_needs_grad_(std::move(input_needs_grad)) {}

  std::vector<Tensor> apply(const std::vector<Tensor>& grad_outputs) override {
    std::vector<Tensor> inputs;
    for (size_t i = 0; i < saved.size(); ++i) {
      Tensor x = saved[i].detach();
      if (input_needs_grad_[i]) x.set_requires_grad(true);
      inputs.push_back(x);
    }
    std::vector<Tensor> outputs;
    {
      EnableGradGuard enable;
      outputs = fn_(inputs);
    }
    std::vector<Tensor> roots, grads;
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (!outputs[i].requires_grad()) continue;
      roots.push_back(outputs[i]);
      grads.push_back(grad_outputs[i]);
    }
    if (!roots.empty()) run_backward(roots, grads);
    std::vector<Tensor> result;
    for (const Tensor& x : inputs) result.push_back(x.requires_grad() ? x.grad() : Tensor());
    return result;
  }
  std::string name() const override { return "Checkpoint"; }

 private:
  CheckpointFn fn_;
  std::vector<bool> input_needs_grad_;
};

}  // namespace

std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs) {
  std::vector<Tensor> outputs;
  {
    NoGradGuard no_grad;
    outputs = fn(inputs);
  }
  if (!grad_enabled()) return outputs;
  std::vector<bool> input_needs_grad;
  for (const Tensor& x : inputs) input_needs_grad.push_back(x.defined() && x.requires_grad());
  auto node = std::make_shared<CheckpointNode>(fn, input_needs_grad);
  for (const Tensor& x : inputs) node->saved.push_back(x.detach());
  std::vector<Tensor*> outs;
  for (Tensor& y : outputs) {
    if (!dtype_is_float(y.dtype()))
      throw std::invalid_argument("checkpoint: every output of fn must be a float tensor, got " +
                                  y.str());
    y = y.detach();  // a fresh handle: fn may have returned one of its inputs
    outs.push_back(&y);
  }
  record(node, inputs, outs);
  return outputs;
}

}  // namespace ssmtrain
