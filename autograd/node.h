// The tape: every differentiable op that sees an input needing a gradient records a Node
// holding its backward rule, the tensors it saved, and one edge per input to the node that
// produced that input. backward() walks the nodes in reverse topological order (ties broken
// by creation order, newest first, so the order of gradient sums is fixed) and accumulates
// .grad on the leaves.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "autograd/tensor.h"

namespace ssmtrain {

class Node;

// Where the gradient for one input goes: output `output_nr` of `node` (null: no gradient).
struct Edge {
  std::shared_ptr<Node> node;
  int output_nr = 0;
};

class Node {
 public:
  Node();
  virtual ~Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Gradients for the inputs (one per entry of next_edges) from the gradients of the
  // outputs (one per output; an output nobody used gets zeros of its shape).
  virtual std::vector<Tensor> apply(const std::vector<Tensor>& grad_outputs) = 0;
  virtual std::string name() const = 0;
  // Drops saved tensors once the backward has used them.
  virtual void release() { saved.clear(); }

  std::vector<Edge> next_edges;
  // Shape, dtype and device of each output, to materialise zeros for unused outputs.
  struct OutputMeta {
    Shape shape;
    DType dtype;
    Device device;
  };
  std::vector<OutputMeta> outputs;
  std::vector<Tensor> saved;  // detached: saving never creates reference cycles
  uint64_t sequence_nr;
};

// Accumulates into a leaf's .grad.
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(const std::shared_ptr<TensorImpl>& leaf);
  std::vector<Tensor> apply(const std::vector<Tensor>& grad_outputs) override;
  std::string name() const override { return "AccumulateGrad"; }

 private:
  std::weak_ptr<TensorImpl> leaf_;
};

// Whether ops record nodes on this thread (true by default).
bool grad_enabled();

// Disables recording for its lifetime (evaluation, optimizer updates, recomputation).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

class EnableGradGuard {
 public:
  EnableGradGuard();
  ~EnableGradGuard();
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool previous_;
};

// The edge that a gradient for `t` flows along (null when t needs none).
Edge gradient_edge(const Tensor& t);
// True when recording is on and any input needs a gradient.
bool needs_grad(std::initializer_list<const Tensor*> inputs);
bool needs_grad(const std::vector<Tensor>& inputs);

// Connects a freshly built node: its inputs' edges, and the outputs' grad_fn.
void record(const std::shared_ptr<Node>& node, const std::vector<Tensor>& inputs,
            std::vector<Tensor*> outputs);

// A node whose backward rule is a function of the output gradients and the saved tensors.
// Rules capture only plain values (dims, flags); tensors go through `saved`, so release()
// frees them.
using BackwardFn =
    std::function<std::vector<Tensor>(const std::vector<Tensor>& grads, const std::vector<Tensor>& saved)>;

class FunctionNode final : public Node {
 public:
  FunctionNode(const char* name, BackwardFn fn) : name_(name), fn_(std::move(fn)) {}
  std::vector<Tensor> apply(const std::vector<Tensor>& grad_outputs) override {
    return fn_(grad_outputs, saved);
  }
  std::string name() const override { return name_; }

 private:
  const char* name_;
  BackwardFn fn_;
};

// When an input needs a gradient: builds a FunctionNode, saves (detached) `to_save` and
// records it for `inputs` and `outputs`. No-op otherwise.
void attach_backward(const char* name, const std::vector<Tensor>& inputs,
                     std::vector<Tensor*> outputs, const std::vector<Tensor>& to_save, BackwardFn fn);

// Runs the backward pass from `roots` with the given gradients (same shapes).
void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads);

}  // namespace ssmtrain
