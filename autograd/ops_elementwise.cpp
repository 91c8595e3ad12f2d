// Elementwise ops: activations, scalar affine and power, broadcasting binary arithmetic.
#include <stdexcept>

#include "autograd/dispatch.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "kernels/elementwise.h"
#include "kernels/reduce.h"

namespace ssmtrain {
namespace {

using detail::cpu_float_dispatch;

Tensor empty_like(const Tensor& x) { return Tensor::empty(x.shape(), x.dtype(), x.device()); }

// dx = dy * op'(x), from the saved input and output.
Tensor unary_backward(kernels::UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy_in) {
  const Tensor dy = dy_in.contiguous();
  Tensor dx = empty_like(x);
  if (x.device().is_cpu()) {
    cpu_float_dispatch("unary backward", x.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::unary_backward<T>(op, static_cast<const T*>(x.data()),
                                      static_cast<const T*>(y.data()),
                                      static_cast<const T*>(dy.data()), static_cast<T*>(dx.data()),
                                      x.numel());
    });
  } else {
    SSM_CUDA_BRANCH(x, kernels::cuda::unary_backward(op, x.dtype(), x.data(), y.data(), dy.data(),
                                                     dx.data(), x.numel(), stream));
  }
  return dx;
}

Tensor unary(const char* name, kernels::UnaryOp op, const Tensor& x_in) {
  detail::common_device(name, {&x_in});
  detail::check_dtype_float(name, x_in);
  const Tensor x = x_in.contiguous();
  Tensor y = empty_like(x);
  if (x.device().is_cpu()) {
    cpu_float_dispatch(name, x.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::unary_forward<T>(op, static_cast<const T*>(x.data()), static_cast<T*>(y.data()),
                                     x.numel());
    });
  } else {
    SSM_CUDA_BRANCH(x, kernels::cuda::unary_forward(op, x.dtype(), x.data(), y.data(), x.numel(), stream));
  }
  attach_backward(name, {x_in}, {&y}, {x, y}, [op](const auto& g, const auto& s) {
    return std::vector<Tensor>{unary_backward(op, s[0], s[1], g[0])};
  });
  return y;
}

// Sums a gradient of the broadcast output shape back to an operand's shape.
Tensor reduce_to_shape(const Tensor& full, const Shape& shape) {
  if (full.shape() == shape) return full;
  Tensor out = Tensor::empty(shape, full.dtype(), full.device());
  const kernels::Layout fl = detail::layout_of(full);
  const kernels::Layout dl = detail::broadcast_layout(out, full.shape());
  if (full.device().is_cpu()) {
    cpu_float_dispatch("sum_to", full.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::sum_to<T>(static_cast<const T*>(full.data()), fl, static_cast<T*>(out.data()), dl);
    });
  } else {
    SSM_CUDA_BRANCH(full, kernels::cuda::sum_to(full.dtype(), full.data(), fl, out.data(), dl, stream));
  }
  return out;
}

// Gradient of a op b with respect to operand `which`, reduced to that operand's shape.
Tensor binary_grad(kernels::BinaryOp op, int which, const Tensor& dy_in, const Tensor& a,
                   const Tensor& b) {
  const Tensor dy = dy_in.contiguous();
  const Shape& out_shape = dy.shape();
  const kernels::Layout al = detail::broadcast_layout(a, out_shape);
  const kernels::Layout bl = detail::broadcast_layout(b, out_shape);
  Tensor d_full = Tensor::empty(out_shape, dy.dtype(), dy.device());
  if (dy.device().is_cpu()) {
    cpu_float_dispatch("binary backward", dy.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::binary_backward<T>(op, which, static_cast<const T*>(dy.data()),
                                       static_cast<const T*>(a.data()), al,
                                       static_cast<const T*>(b.data()), bl,
                                       static_cast<T*>(d_full.data()));
    });
  } else {
    SSM_CUDA_BRANCH(dy, kernels::cuda::binary_backward(op, which, dy.dtype(), dy.data(), a.data(), al,
                                                       b.data(), bl, d_full.data(), stream));
  }
  return reduce_to_shape(d_full, which == 0 ? a.shape() : b.shape());
}

Tensor binary(const char* name, kernels::BinaryOp op, const Tensor& a, const Tensor& b) {
  detail::common_device(name, {&a, &b});
  detail::check_same_dtype(name, {&a, &b});
  detail::check_dtype_float(name, a);
  const Shape out_shape = detail::broadcast_shapes(name, a.shape(), b.shape());
  const kernels::Layout al = detail::broadcast_layout(a, out_shape);
  const kernels::Layout bl = detail::broadcast_layout(b, out_shape);
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());
  if (a.device().is_cpu()) {
    cpu_float_dispatch(name, a.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::binary_forward<T>(op, static_cast<const T*>(a.data()), al,
                                      static_cast<const T*>(b.data()), bl, static_cast<T*>(out.data()));
    });
  } else {
    SSM_CUDA_BRANCH(a, kernels::cuda::binary_forward(op, a.dtype(), a.data(), al, b.data(), bl,
                                                     out.data(), stream));
  }
  const bool need_a = a.requires_grad(), need_b = b.requires_grad();
  attach_backward(name, {a, b}, {&out}, {a, b}, [op, need_a, need_b](const auto& g, const auto& s) {
    return std::vector<Tensor>{need_a ? binary_grad(op, 0, g[0], s[0], s[1]) : Tensor(),
                               need_b ? binary_grad(op, 1, g[0], s[0], s[1]) : Tensor()};
  });
  return out;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary("add", kernels::BinaryOp::add, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary("sub", kernels::BinaryOp::sub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary("mul", kernels::BinaryOp::mul, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary("div", kernels::BinaryOp::div, a, b); }

Tensor affine(const Tensor& x_in, double alpha, double beta) {
  detail::common_device("affine", {&x_in});
  detail::check_dtype_float("affine", x_in);
  const Tensor x = x_in.contiguous();
  Tensor y = empty_like(x);
  if (x.device().is_cpu()) {
    cpu_float_dispatch("affine", x.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::affine<T>(static_cast<const T*>(x.data()), static_cast<T*>(y.data()), x.numel(),
                              alpha, beta);
    });
  } else {
    SSM_CUDA_BRANCH(x, kernels::cuda::affine(x.dtype(), x.data(), y.data(), x.numel(), alpha, beta, stream));
  }
  attach_backward("affine", {x_in}, {&y}, {}, [alpha](const auto& g, const auto&) {
    return std::vector<Tensor>{affine(g[0], alpha, 0.0)};
  });
  return y;
}

Tensor add(const Tensor& x, double s) { return affine(x, 1.0, s); }
Tensor mul(const Tensor& x, double s) { return affine(x, s, 0.0); }

Tensor pow(const Tensor& x_in, double p) {
  detail::common_device("pow", {&x_in});
  detail::check_dtype_float("pow", x_in);
  const Tensor x = x_in.contiguous();
  Tensor y = empty_like(x);
  if (x.device().is_cpu()) {
    cpu_float_dispatch("pow", x.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::pow_scalar<T>(static_cast<const T*>(x.data()), static_cast<T*>(y.data()), x.numel(), p);
    });
  } else {
    SSM_CUDA_BRANCH(x, kernels::cuda::pow_scalar(x.dtype(), x.data(), y.data(), x.numel(), p, stream));
  }
  attach_backward("pow", {x_in}, {&y}, {x}, [p](const auto& g, const auto& s) {
    const Tensor& xs = s[0];
    const Tensor dy = g[0].contiguous();
    Tensor dx = empty_like(xs);
    if (xs.device().is_cpu()) {
      cpu_float_dispatch("pow backward", xs.dtype(), [&](auto t) {
        using T = decltype(t);
        kernels::cpu::pow_scalar_backward<T>(static_cast<const T*>(xs.data()),
                                             static_cast<const T*>(dy.data()),
                                             static_cast<T*>(dx.data()), xs.numel(), p);
      });
    } else {
      SSM_CUDA_BRANCH(xs, kernels::cuda::pow_scalar_backward(xs.dtype(), xs.data(), dy.data(), dx.data(),
                                                             xs.numel(), p, stream));
    }
    return std::vector<Tensor>{dx};
  });
  return y;
}

Tensor neg(const Tensor& x) { return unary("neg", kernels::UnaryOp::neg, x); }
Tensor exp(const Tensor& x) { return unary("exp", kernels::UnaryOp::exp, x); }
Tensor log(const Tensor& x) { return unary("log", kernels::UnaryOp::log, x); }
Tensor sqrt(const Tensor& x) { return unary("sqrt", kernels::UnaryOp::sqrt, x); }
Tensor square(const Tensor& x) { return unary("square", kernels::UnaryOp::square, x); }
Tensor sigmoid(const Tensor& x) { return unary("sigmoid", kernels::UnaryOp::sigmoid, x); }
Tensor silu(const Tensor& x) { return unary("silu", kernels::UnaryOp::silu, x); }
Tensor gelu(const Tensor& x) { return unary("gelu", kernels::UnaryOp::gelu, x); }
Tensor softplus(const Tensor& x) { return unary("softplus", kernels::UnaryOp::softplus, x); }

void add_(const Tensor& dst, const Tensor& src) {
  detail::common_device("add_", {&dst, &src});
  detail::check_same_dtype("add_", {&dst, &src});
  if (dst.shape() != src.shape())
    detail::op_error("add_", "shapes " + shape_str(dst.shape()) + " and " + shape_str(src.shape()) + " differ");
  if (!dst.is_contiguous()) detail::op_error("add_", "destination must be contiguous");
  // out aliases a: every element is read and then written by the same index.
  const kernels::Layout dl = detail::layout_of(dst), sl = detail::layout_of(src);
  if (dst.device().is_cpu()) {
    cpu_float_dispatch("add_", dst.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::binary_forward<T>(kernels::BinaryOp::add, static_cast<const T*>(dst.data()), dl,
                                      static_cast<const T*>(src.data()), sl, static_cast<T*>(dst.data()));
    });
  } else {
    SSM_CUDA_BRANCH(dst, kernels::cuda::binary_forward(kernels::BinaryOp::add, dst.dtype(), dst.data(), dl,
                                                       src.data(), sl, dst.data(), stream));
  }
}

}  // namespace ssmtrain
