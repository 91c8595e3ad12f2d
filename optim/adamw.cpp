// See adamw.h. The CPU path calls the f32/f64 reference of kernels/adamw.h per dtype; the GPU
// path gathers every f32 CUDA parameter into one multi-tensor launch per gradient dtype.
#include "optim/adamw.h"

#include <cmath>
#include <stdexcept>

#include "autograd/dispatch.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "kernels/adamw.h"

namespace ssmtrain {

namespace {

// A parameter's gradient as the update reads it: contiguous, and on the CPU in the
// parameter's dtype.
Tensor update_grad(const Tensor& param, const Tensor& grad) {
  if (param.device().is_cpu() && grad.dtype() != param.dtype()) return cast(grad, param.dtype());
  return grad.contiguous();
}

bool on_gpu_path(const Tensor& param) { return param.is_cuda(); }

void check_gpu_param(const NamedParameter& p) {
  if (p.value->dtype() != DType::f32 || !p.value->is_contiguous())
    throw std::invalid_argument("AdamW: parameter " + p.name + " is " + p.value->str() +
                                "; on the GPU the update needs contiguous f32 master weights");
}

}  // namespace

AdamW::AdamW(std::vector<NamedParameter> parameters, AdamWOptions options)
    : parameters_(std::move(parameters)), options_(options) {
  for (const NamedParameter& p : parameters_) {
    if (state_.count(p.name)) throw std::invalid_argument("AdamW: parameter " + p.name + " given twice");
    const Tensor& v = *p.value;
    state_[p.name] = {Tensor::zeros(v.shape(), v.dtype(), v.device()), Tensor::zeros(v.shape(), v.dtype(), v.device())};
    if (options_.bf16_copies && v.is_cuda() && v.dtype() == DType::f32)
      copies_[p.name] = Tensor::empty(v.shape(), DType::bf16, v.device());
  }
  refresh_compute_copies();
}

const Tensor& AdamW::compute_copy(const std::string& name) const {
  static const Tensor none;
  const auto it = copies_.find(name);
  return it == copies_.end() ? none : it->second;
}

void AdamW::refresh_compute_copies() {
  NoGradGuard no_grad;
  for (const NamedParameter& p : parameters_) {
    const auto it = copies_.find(p.name);
    if (it != copies_.end()) copy_into(it->second, cast(p.value->detach(), DType::bf16));
  }
}

void AdamW::step(double lr, double grad_scale) {
  NoGradGuard no_grad;
  ++step_;
  kernels::AdamWStep h;
  h.lr = lr;
  h.beta1 = options_.beta1;
  h.beta2 = options_.beta2;
  h.eps = options_.eps;
  h.weight_decay = options_.weight_decay;
  h.bias_correction1 = 1.0 - std::pow(options_.beta1, double(step_));
  h.bias_correction2 = 1.0 - std::pow(options_.beta2, double(step_));
  h.grad_scale = grad_scale;

  std::vector<Tensor> grads;  // keeps converted gradients alive until the launches are queued
  grads.reserve(parameters_.size());
  // GPU lists by gradient dtype (f32, bf16), all on the first CUDA parameter's device.
  std::vector<kernels::AdamWTensor<float, void>> gpu_f32, gpu_bf16;
  const Tensor* gpu_anchor = nullptr;
  for (const NamedParameter& p : parameters_) {
    const Tensor raw = p.value->grad();
    if (!raw.defined()) continue;
    Tensor& param = *p.value;
    Moments& m = state_.at(p.name);
    grads.push_back(update_grad(param, raw));
    const Tensor& g = grads.back();
    if (on_gpu_path(param)) {
      check_gpu_param(p);
      if (!gpu_anchor) gpu_anchor = p.value;
      if (param.device() != gpu_anchor->device())
        throw std::invalid_argument("AdamW: parameter " + p.name + " is on " + param.device().str() + ", not " +
                                    gpu_anchor->device().str() + " like the others");
      kernels::AdamWTensor<float, void> a;
      a.param = param.data_ptr<float>();
      a.grad = g.data();
      a.exp_avg = m.exp_avg.data_ptr<float>();
      a.exp_avg_sq = m.exp_avg_sq.data_ptr<float>();
      const auto copy = copies_.find(p.name);
      a.param_copy = copy == copies_.end() ? nullptr : copy->second.data();
      a.numel = param.numel();
      a.weight_decay = p.weight_decay;
      if (g.dtype() == DType::f32) {
        gpu_f32.push_back(a);
      } else if (g.dtype() == DType::bf16) {
        gpu_bf16.push_back(a);
      } else {
        throw std::invalid_argument("AdamW: gradient of " + p.name + " is " + g.str() + "; expected f32 or bf16");
      }
      continue;
    }
    detail::cpu_float_dispatch("AdamW", param.dtype(), [&](auto tag) {
      using T = decltype(tag);
      const kernels::AdamWTensor<T, T> a{param.data_ptr<T>(), g.data_ptr<T>(), m.exp_avg.data_ptr<T>(),
                                         m.exp_avg_sq.data_ptr<T>(), nullptr, param.numel(), p.weight_decay};
      kernels::cpu::adamw_step<T>(&a, 1, h);
    });
  }
  if (gpu_anchor) {
    SSM_CUDA_BRANCH(*gpu_anchor, kernels::cuda::adamw_step(DType::f32, gpu_f32.data(), int64_t(gpu_f32.size()),
                                                           h, stream));
    SSM_CUDA_BRANCH(*gpu_anchor, kernels::cuda::adamw_step(DType::bf16, gpu_bf16.data(),
                                                           int64_t(gpu_bf16.size()), h, stream));
  }
}

namespace {

// Gradients by device kind: CPU ones (any float dtype) and CUDA ones grouped by dtype. They
// are the .grad tensors themselves (contiguous, as the engine makes them), so scaling one
// scales the gradient.
struct GradLists {
  std::vector<Tensor> cpu;
  std::vector<Tensor> cuda_f32, cuda_bf16;
};

GradLists gradient_lists(const std::vector<NamedParameter>& parameters) {
  GradLists lists;
  for (const NamedParameter& p : parameters) {
    const Tensor g = p.value->grad();
    if (!g.defined()) continue;
    if (!g.is_contiguous()) throw std::invalid_argument("grad norm: gradient of " + p.name + " is not contiguous");
    if (!g.is_cuda()) {
      lists.cpu.push_back(g);
    } else if (g.dtype() == DType::f32) {
      lists.cuda_f32.push_back(g);
    } else if (g.dtype() == DType::bf16) {
      lists.cuda_bf16.push_back(g);
    } else {
      throw std::invalid_argument("grad norm: gradient of " + p.name + " is " + g.str() + "; expected f32 or bf16");
    }
  }
  return lists;
}

[[maybe_unused]] void pointers_of(const std::vector<Tensor>& ts, std::vector<void*>& ptrs, std::vector<int64_t>& numels) {
  for (const Tensor& t : ts) {
    ptrs.push_back(t.data());
    numels.push_back(t.numel());
  }
}

}  // namespace

double global_grad_norm(const std::vector<NamedParameter>& parameters) {
  NoGradGuard no_grad;
  const GradLists lists = gradient_lists(parameters);
  double total = 0.0;
  for (const Tensor& g : lists.cpu) {
    const Tensor x = g.dtype() == DType::f64 || g.dtype() == DType::f32 ? g : cast(g, DType::f32);
    detail::cpu_float_dispatch("grad norm", x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      const T* ptr = x.data_ptr<T>();
      const int64_t n = x.numel();
      total += kernels::cpu::sum_squares<T>(&ptr, &n, 1);
    });
  }
  for (const std::vector<Tensor>* list : {&lists.cuda_f32, &lists.cuda_bf16}) {
    if (list->empty()) continue;
    std::vector<void*> ptrs;
    std::vector<int64_t> numels;
    pointers_of(*list, ptrs, numels);
    Tensor result = Tensor::empty({1}, DType::f32, list->front().device());
    SSM_CUDA_BRANCH(result, kernels::cuda::sum_squares(list->front().dtype(), ptrs.data(), numels.data(),
                                                       int64_t(ptrs.size()), result.data_ptr<float>(), stream));
    total += result.item();
  }
  return std::sqrt(total);
}

double clip_scale(double norm, double max_norm) {
  return max_norm > 0 && norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;
}

double clip_grad_norm(const std::vector<NamedParameter>& parameters, double max_norm) {
  const double norm = global_grad_norm(parameters);
  const double scale = clip_scale(norm, max_norm);
  if (scale == 1.0) return norm;
  NoGradGuard no_grad;
  const GradLists lists = gradient_lists(parameters);
  for (const Tensor& g : lists.cpu) copy_into(g, mul(g, scale));
  for (const std::vector<Tensor>* list : {&lists.cuda_f32, &lists.cuda_bf16}) {
    if (list->empty()) continue;
    std::vector<void*> ptrs;
    std::vector<int64_t> numels;
    pointers_of(*list, ptrs, numels);
    SSM_CUDA_BRANCH(list->front(), kernels::cuda::scale(list->front().dtype(), ptrs.data(), numels.data(),
                                                        int64_t(ptrs.size()), static_cast<float>(scale), stream));
  }
  return norm;
}

}  // namespace ssmtrain
