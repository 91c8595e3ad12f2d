// The gated-RMSNorm node: check shapes, run kernels/gated_rmsnorm.h on the inputs' device, and
// record one node whose backward is the hand-written kernel.
#include "autograd/gated_rmsnorm_ops.h"

#include <string>
#include <vector>

#include "autograd/dispatch.h"
#include "autograd/node.h"
#include "kernels/gated_rmsnorm.h"

namespace ssmtrain {
namespace {

const char* kNorm = "gated_rmsnorm";

void expect_shape(const Tensor& t, const Shape& shape, const char* name) {
  if (t.defined() && t.shape() != shape)
    detail::op_error(kNorm, std::string(name) + " must be " + shape_str(shape) + ", got " + t.str());
}

template <typename T> const T* ptr(const Tensor& t) { return t.defined() ? static_cast<const T*>(t.data()) : nullptr; }
template <typename T> T* mut(const Tensor& t) { return t.defined() ? static_cast<T*>(t.data()) : nullptr; }

}  // namespace

Tensor gated_rmsnorm(const Tensor& y_in, const Tensor& z_in, const Tensor& weight_in, double eps,
                     int64_t group_size) {
  detail::common_device(kNorm, {&y_in, &weight_in});
  detail::check_same_dtype(kNorm, {&y_in, &weight_in});
  detail::check_dtype_float(kNorm, y_in);
  if (z_in.defined()) {
    detail::common_device(kNorm, {&y_in, &z_in});
    detail::check_same_dtype(kNorm, {&y_in, &z_in});
    expect_shape(z_in, y_in.shape(), "z");
  }
  if (y_in.dim() < 1) detail::op_error(kNorm, "y must have a last dimension, got " + y_in.str());
  const int64_t d = y_in.size(-1);
  expect_shape(weight_in, {d}, "weight");
  if (group_size == 0) group_size = d;
  if (group_size < 1 || d % group_size != 0)
    detail::op_error(kNorm, "group_size " + std::to_string(group_size) + " must divide the last dimension of " +
                                y_in.str());
  const Tensor y = y_in.contiguous(), weight = weight_in.contiguous();
  const Tensor z = z_in.defined() ? z_in.contiguous() : Tensor();
  const int64_t rows = y.numel() / d;
  Tensor out = Tensor::empty(y.shape(), y.dtype(), y.device());
  Tensor rstd = Tensor::empty({rows, d / group_size}, DType::f32, y.device());
  if (y.device().is_cpu()) {
    detail::cpu_float_dispatch(kNorm, y.dtype(), [&](auto tag) {
      using T = decltype(tag);
      kernels::cpu::gated_rmsnorm_forward<T>(ptr<T>(y), ptr<T>(z), ptr<T>(weight), rows, d, group_size, eps,
                                             mut<T>(out), rstd.data_ptr<float>());
    });
  } else {
    SSM_CUDA_BRANCH(y, kernels::cuda::gated_rmsnorm_forward(y.dtype(), y.data(), z.defined() ? z.data() : nullptr,
                                                            weight.data(), rows, d, group_size, eps, out.data(),
                                                            rstd.data_ptr<float>(), stream));
  }
  std::vector<Tensor> inputs{y_in, weight_in};
  if (z_in.defined()) inputs.push_back(z_in);
  attach_backward(kNorm, inputs, {&out}, {y, z, weight, rstd}, [rows, d, group_size](const auto& g, const auto& sv) {
    const Tensor &ys = sv[0], &zs = sv[1], &w = sv[2], &r = sv[3];
    const Tensor dout = g[0].contiguous();
    Tensor dy = Tensor::empty(ys.shape(), ys.dtype(), ys.device());
    Tensor dw = Tensor::empty(w.shape(), w.dtype(), w.device());
    Tensor dz = zs.defined() ? Tensor::empty(zs.shape(), zs.dtype(), zs.device()) : Tensor();
    if (ys.device().is_cpu()) {
      detail::cpu_float_dispatch(kNorm, ys.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kernels::cpu::gated_rmsnorm_backward<T>(ptr<T>(ys), ptr<T>(zs), ptr<T>(w), r.data_ptr<float>(),
                                                ptr<T>(dout), rows, d, group_size, mut<T>(dy), mut<T>(dz), mut<T>(dw));
      });
    } else {
      SSM_CUDA_BRANCH(ys, kernels::cuda::gated_rmsnorm_backward(
                              ys.dtype(), ys.data(), zs.defined() ? zs.data() : nullptr, w.data(),
                              r.data_ptr<float>(), dout.data(), rows, d, group_size, dy.data(),
                              dz.defined() ? dz.data() : nullptr, dw.data(), stream));
    }
    std::vector<Tensor> grads{dy, dw};
    if (zs.defined()) grads.push_back(dz);
    return grads;
  });
  return out;
}

}  // namespace ssmtrain
