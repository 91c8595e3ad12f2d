// The add_rmsnorm node (autograd/norm_ops.h): checks shapes, runs kernels/norm.h on the inputs'
// device, and records one node whose backward is the hand-written backward kernel.
#include "autograd/norm_ops.h"

#include <algorithm>

#include "autograd/dispatch.h"
#include "autograd/node.h"
#include "kernels/norm.h"

namespace ssmtrain {
namespace {

template <typename T> const T* ptr(const Tensor& t) { return t.defined() ? static_cast<const T*>(t.data()) : nullptr; }
template <typename T> T* mut(const Tensor& t) { return t.defined() ? static_cast<T*>(t.data()) : nullptr; }
[[maybe_unused]] const void* raw(const Tensor& t) { return t.defined() ? t.data() : nullptr; }

}  // namespace

AddRmsnormOutputs add_rmsnorm(const Tensor& x_in, const Tensor& residual_in, const Tensor& weight_in, double eps) {
  const char* op = "add_rmsnorm";
  detail::common_device(op, {&x_in, &weight_in});
  detail::check_same_dtype(op, {&x_in, &weight_in});
  detail::check_dtype_float(op, x_in);
  if (residual_in.defined()) {
    detail::common_device(op, {&x_in, &residual_in});
    detail::check_same_dtype(op, {&x_in, &residual_in});
    if (residual_in.shape() != x_in.shape())
      detail::op_error(op, "residual " + residual_in.str() + " must have the shape of x " + x_in.str());
  }
  if (x_in.dim() < 1) detail::op_error(op, "x must have a last dimension, got " + x_in.str());
  const int64_t d = x_in.size(-1);
  if (weight_in.dim() != 1 || weight_in.size(0) != d)
    detail::op_error(op, "weight " + weight_in.str() + " does not match the last dimension of " + x_in.str());
  const Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const Tensor residual = residual_in.defined() ? residual_in.contiguous() : Tensor();
  const int64_t rows = x.numel() / std::max<int64_t>(d, 1);
  AddRmsnormOutputs out;
  out.sum = Tensor::empty(x.shape(), x.dtype(), x.device());     // (..., d)
  out.normed = Tensor::empty(x.shape(), x.dtype(), x.device());  // (..., d)
  Tensor rstd = Tensor::empty({rows}, DType::f32, x.device());   // (rows)
  if (x.device().is_cpu()) {
    detail::cpu_float_dispatch(op, x.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::add_rmsnorm_forward<T>(ptr<T>(x), ptr<T>(residual), ptr<T>(weight), rows, d, eps,
                                           mut<T>(out.sum), mut<T>(out.normed), rstd.data_ptr<float>());
    });
  } else {
    SSM_CUDA_BRANCH(x, kernels::cuda::add_rmsnorm_forward(x.dtype(), x.data(), raw(residual), weight.data(), rows, d,
                                                          eps, out.sum.data(), out.normed.data(),
                                                          rstd.data_ptr<float>(), stream));
  }
  const bool has_residual = residual.defined();
  // Saved: sum (the norm's input), weight, rstd. Outputs: sum (grad 0), normed (grad 1).
  attach_backward(op, {x_in, residual_in, weight_in}, {&out.sum, &out.normed}, {out.sum, weight, rstd},
                  [rows, d, has_residual](const auto& g, const auto& s) {
    const Tensor &sum = s[0], &w = s[1], &r = s[2];
    const Tensor dsum = g[0].contiguous(), dy = g[1].contiguous();
    Tensor dx = Tensor::empty(sum.shape(), sum.dtype(), sum.device());
    Tensor dw = Tensor::empty(w.shape(), w.dtype(), w.device());
    if (sum.device().is_cpu()) {
      detail::cpu_float_dispatch("add_rmsnorm backward", sum.dtype(), [&](auto t) {
        using T = decltype(t);
        kernels::cpu::add_rmsnorm_backward<T>(ptr<T>(sum), ptr<T>(w), r.data_ptr<float>(), ptr<T>(dy), ptr<T>(dsum),
                                              rows, d, mut<T>(dx), mut<T>(dw));
      });
    } else {
      SSM_CUDA_BRANCH(sum, kernels::cuda::add_rmsnorm_backward(sum.dtype(), sum.data(), w.data(), r.data_ptr<float>(),
                                                               dy.data(), dsum.data(), rows, d, dx.data(), dw.data(),
                                                               stream));
    }
    // x and residual receive the same gradient (the engine never writes into it in place).
    return std::vector<Tensor>{dx, has_residual ? dx : Tensor(), dw};
  });
  return out;
}

}  // namespace ssmtrain
