// The fused residual-stream and MLP nodes: add_rmsnorm (kernels/norm.h) and swiglu
// (kernels/swiglu.h). Each checks shapes, runs its kernel on the inputs' device, and records
// one node whose backward is the hand-written backward kernel.
#include "autograd/fused_ops.h"

#include <algorithm>

#include "autograd/dispatch.h"
#include "autograd/node.h"
#include "kernels/norm.h"
#include "kernels/swiglu.h"

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

Tensor swiglu(const Tensor& gate_up_in) {
  const char* op = "swiglu";
  detail::check_dtype_float(op, gate_up_in);
  if (gate_up_in.dim() < 1 || gate_up_in.size(-1) % 2 != 0)
    detail::op_error(op, "gate_up (..., 2f) needs an even last dimension, got " + gate_up_in.str());
  const Tensor gate_up = gate_up_in.contiguous();
  const int64_t f = gate_up.size(-1) / 2;
  const int64_t rows = f > 0 ? gate_up.numel() / (2 * f) : 0;
  Shape out_shape = gate_up.shape();
  out_shape.back() = f;
  Tensor out = Tensor::empty(out_shape, gate_up.dtype(), gate_up.device());  // (..., f)
  if (gate_up.device().is_cpu()) {
    detail::cpu_float_dispatch(op, gate_up.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::swiglu_forward<T>(ptr<T>(gate_up), rows, f, mut<T>(out));
    });
  } else {
    SSM_CUDA_BRANCH(gate_up, kernels::cuda::swiglu_forward(gate_up.dtype(), gate_up.data(), rows, f, out.data(),
                                                           stream));
  }
  attach_backward(op, {gate_up_in}, {&out}, {gate_up}, [rows, f](const auto& g, const auto& s) {
    const Tensor& gu = s[0];
    const Tensor dout = g[0].contiguous();
    Tensor dgate_up = Tensor::empty(gu.shape(), gu.dtype(), gu.device());  // (..., 2f)
    if (gu.device().is_cpu()) {
      detail::cpu_float_dispatch("swiglu backward", gu.dtype(), [&](auto t) {
        using T = decltype(t);
        kernels::cpu::swiglu_backward<T>(ptr<T>(gu), ptr<T>(dout), rows, f, mut<T>(dgate_up));
      });
    } else {
      SSM_CUDA_BRANCH(gu, kernels::cuda::swiglu_backward(gu.dtype(), gu.data(), dout.data(), rows, f,
                                                         dgate_up.data(), stream));
    }
    return std::vector<Tensor>{dgate_up};
  });
  return out;
}

}  // namespace ssmtrain
