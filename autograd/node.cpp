// The backward engine: dependency counting over the recorded graph, then a walk that always
// takes the ready node created last, so gradients are summed in the same order every run.
#include "autograd/node.h"

#include <atomic>
#include <map>
#include <queue>
#include <stdexcept>
#include <unordered_map>

#include "autograd/grad_ready.h"
#include "autograd/ops.h"

namespace ssmtrain {
namespace {
std::atomic<uint64_t> next_sequence_nr{0};
thread_local bool grad_mode = true;
thread_local GradReadyHook ready_hook;
}  // namespace

Node::Node() : sequence_nr(next_sequence_nr.fetch_add(1)) {}

AccumulateGrad::AccumulateGrad(const std::shared_ptr<TensorImpl>& leaf) : leaf_(leaf) {
  outputs.push_back({leaf->shape, leaf->dtype, leaf->device});
}

std::vector<Tensor> AccumulateGrad::apply(const std::vector<Tensor>& grad_outputs) {
  std::shared_ptr<TensorImpl> leaf = leaf_.lock();
  if (!leaf) return {};
  const Tensor& g = grad_outputs[0];
  if (g.shape() != leaf->shape)
    throw std::logic_error("gradient of shape " + shape_str(g.shape()) + " for a leaf of shape " +
                           shape_str(leaf->shape));
  Tensor& grad = leaf->grad;
  if (!grad.defined()) {
    // A fresh buffer in the leaf's dtype: later accumulation must not write into g.
    grad = Tensor::empty(leaf->shape, leaf->dtype, leaf->device);
    copy_into(grad, g);
  } else {
    add_(grad, g.dtype() == grad.dtype() ? g : cast(g, grad.dtype()));
  }
  if (ready_hook) ready_hook(*leaf);
  return {};
}

GradReadyHookGuard::GradReadyHookGuard(GradReadyHook hook) : previous_(std::move(ready_hook)) {
  ready_hook = std::move(hook);
}
GradReadyHookGuard::~GradReadyHookGuard() { ready_hook = std::move(previous_); }
const GradReadyHook& grad_ready_hook() { return ready_hook; }

bool grad_enabled() { return grad_mode; }

NoGradGuard::NoGradGuard() : previous_(grad_mode) { grad_mode = false; }
NoGradGuard::~NoGradGuard() { grad_mode = previous_; }
EnableGradGuard::EnableGradGuard() : previous_(grad_mode) { grad_mode = true; }
EnableGradGuard::~EnableGradGuard() { grad_mode = previous_; }

Edge gradient_edge(const Tensor& t) {
  if (!t.defined()) return {};
  TensorImpl* impl = t.impl();
  if (impl->grad_fn) return {impl->grad_fn, impl->output_nr};
  if (!impl->requires_grad) return {};
  if (!impl->grad_accumulator) impl->grad_accumulator = std::make_shared<AccumulateGrad>(t.impl_ptr());
  return {impl->grad_accumulator, 0};
}

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!grad_mode) return false;
  for (const Tensor* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!grad_mode) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void record(const std::shared_ptr<Node>& node, const std::vector<Tensor>& inputs,
            std::vector<Tensor*> outputs) {
  node->next_edges.reserve(inputs.size());
  for (const Tensor& t : inputs) node->next_edges.push_back(gradient_edge(t));
  for (size_t i = 0; i < outputs.size(); ++i) {
    Tensor& out = *outputs[i];
    node->outputs.push_back({out.shape(), out.dtype(), out.device()});
    out.impl()->grad_fn = node;
    out.impl()->output_nr = static_cast<int>(i);
  }
}

void attach_backward(const char* name, const std::vector<Tensor>& inputs,
                     std::vector<Tensor*> outputs, const std::vector<Tensor>& to_save, BackwardFn fn) {
  if (!needs_grad(inputs)) return;
  auto node = std::make_shared<FunctionNode>(name, std::move(fn));
  for (const Tensor& t : to_save) node->saved.push_back(t.defined() ? t.detach() : Tensor());
  record(node, inputs, std::move(outputs));
}

void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads) {
  NoGradGuard no_grad;  // backward rules do not record
  // 1. Count, for every reachable node, how many edges lead into it.
  std::unordered_map<Node*, int> dependencies;
  std::unordered_map<Node*, std::shared_ptr<Node>> owner;
  std::vector<Node*> stack;
  for (const Tensor& r : roots) {
    Edge e = gradient_edge(r);
    if (e.node && !owner.count(e.node.get())) {
      owner[e.node.get()] = e.node;
      stack.push_back(e.node.get());
    }
  }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const Edge& e : n->next_edges) {
      if (!e.node) continue;
      ++dependencies[e.node.get()];
      if (!owner.count(e.node.get())) {
        owner[e.node.get()] = e.node;
        stack.push_back(e.node.get());
      }
    }
  }

  // 2. Seed the roots' gradients, then process ready nodes newest-first.
  std::unordered_map<Node*, std::vector<Tensor>> buffers;
  auto accumulate = [&](Node* n, int output_nr, const Tensor& g) {
    std::vector<Tensor>& buf = buffers[n];
    if (buf.empty()) buf.resize(n->outputs.size());
    Tensor& slot = buf[output_nr];
    slot = slot.defined() ? add(slot, g) : g;
  };
  auto newer_first = [](Node* a, Node* b) { return a->sequence_nr < b->sequence_nr; };
  std::priority_queue<Node*, std::vector<Node*>, decltype(newer_first)> ready(newer_first);
  for (size_t i = 0; i < roots.size(); ++i) {
    Edge e = gradient_edge(roots[i]);
    if (!e.node) continue;
    if (grads[i].shape() != roots[i].shape())
      throw std::invalid_argument("backward: gradient " + grads[i].str() + " for " + roots[i].str());
    accumulate(e.node.get(), e.output_nr, grads[i]);
  }
  for (const auto& [n, _] : owner)
    if (dependencies[n] == 0) ready.push(n);

  while (!ready.empty()) {
    Node* n = ready.top();
    ready.pop();
    std::vector<Tensor> grad_outputs = std::move(buffers[n]);
    buffers.erase(n);
    grad_outputs.resize(n->outputs.size());
    for (size_t i = 0; i < grad_outputs.size(); ++i)
      if (!grad_outputs[i].defined()) {
        const Node::OutputMeta& m = n->outputs[i];
        grad_outputs[i] = Tensor::zeros(m.shape, m.dtype, m.device);
      }
    std::vector<Tensor> grad_inputs = n->apply(grad_outputs);
    n->release();
    for (size_t i = 0; i < n->next_edges.size(); ++i) {
      const Edge& e = n->next_edges[i];
      if (!e.node) continue;
      if (i < grad_inputs.size() && grad_inputs[i].defined())
        accumulate(e.node.get(), e.output_nr, grad_inputs[i]);
      if (--dependencies[e.node.get()] == 0) ready.push(e.node.get());
    }
  }
}

}  // namespace ssmtrain
