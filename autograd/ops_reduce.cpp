// Reductions: sum / mean over a dimension or everything, softmax and log-softmax.
#include "autograd/dispatch.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "kernels/reduce.h"

namespace ssmtrain {
namespace {

using detail::cpu_float_dispatch;

// x viewed as (outer, n, inner) around dimension d.
struct Split3 {
  int64_t outer = 1, n = 1, inner = 1;
};
Split3 split_at(const Shape& shape, int64_t d) {
  Split3 s;
  for (int64_t i = 0; i < static_cast<int64_t>(shape.size()); ++i) {
    if (i < d) s.outer *= shape[i];
    else if (i == d) s.n = shape[i];
    else s.inner *= shape[i];
  }
  return s;
}

// dx (outer, n, inner) = scale * dy (outer, inner) broadcast along n.
Tensor sum_dim_backward(const Tensor& dy_in, const Shape& x_shape, Split3 s, double scale) {
  const Tensor dy = dy_in.contiguous();
  Tensor dx = Tensor::empty(x_shape, dy.dtype(), dy.device());
  if (dy.device().is_cpu()) {
    cpu_float_dispatch("sum backward", dy.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::sum_dim_backward<T>(static_cast<const T*>(dy.data()), s.outer, s.n, s.inner,
                                        static_cast<T*>(dx.data()), scale);
    });
  } else {
    SSM_CUDA_BRANCH(dy, kernels::cuda::sum_dim_backward(dy.dtype(), dy.data(), s.outer, s.n, s.inner,
                                                        dx.data(), scale, stream));
  }
  return dx;
}

Tensor sum_scaled(const char* name, const Tensor& x_in, int64_t dim, bool keepdim, bool average) {
  detail::common_device(name, {&x_in});
  detail::check_dtype_float(name, x_in);
  const int64_t d = detail::normalize_dim(name, dim, x_in.dim());
  const Tensor x = x_in.contiguous();
  const Split3 s = split_at(x.shape(), d);
  const double scale = average ? 1.0 / static_cast<double>(s.n) : 1.0;
  Shape out_shape = x.shape();
  if (keepdim) out_shape[d] = 1;
  else out_shape.erase(out_shape.begin() + d);
  Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
  if (x.device().is_cpu()) {
    cpu_float_dispatch(name, x.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::sum_dim<T>(static_cast<const T*>(x.data()), s.outer, s.n, s.inner,
                               static_cast<T*>(y.data()), scale);
    });
  } else {
    SSM_CUDA_BRANCH(x, kernels::cuda::sum_dim(x.dtype(), x.data(), s.outer, s.n, s.inner, y.data(),
                                              scale, stream));
  }
  const Shape x_shape = x.shape();
  attach_backward(name, {x_in}, {&y}, {}, [x_shape, s, scale](const auto& g, const auto&) {
    return std::vector<Tensor>{sum_dim_backward(g[0], x_shape, s, scale)};
  });
  return y;
}

Tensor softmax_impl(const char* name, const Tensor& x_in, int64_t dim, bool log) {
  detail::common_device(name, {&x_in});
  detail::check_dtype_float(name, x_in);
  const int64_t d = detail::normalize_dim(name, dim, x_in.dim());
  const Tensor x = x_in.contiguous();
  const Split3 s = split_at(x.shape(), d);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.device().is_cpu()) {
    cpu_float_dispatch(name, x.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::softmax_forward<T>(static_cast<const T*>(x.data()), s.outer, s.n, s.inner,
                                       static_cast<T*>(y.data()), log);
    });
  } else {
    SSM_CUDA_BRANCH(x, kernels::cuda::softmax_forward(x.dtype(), x.data(), s.outer, s.n, s.inner,
                                                      y.data(), log, stream));
  }
  attach_backward(name, {x_in}, {&y}, {y}, [s, log](const auto& g, const auto& saved) {
    const Tensor& ys = saved[0];
    const Tensor dy = g[0].contiguous();
    Tensor dx = Tensor::empty(ys.shape(), ys.dtype(), ys.device());
    if (ys.device().is_cpu()) {
      cpu_float_dispatch("softmax backward", ys.dtype(), [&](auto t) {
        using T = decltype(t);
        kernels::cpu::softmax_backward<T>(static_cast<const T*>(ys.data()),
                                          static_cast<const T*>(dy.data()), s.outer, s.n, s.inner,
                                          static_cast<T*>(dx.data()), log);
      });
    } else {
      SSM_CUDA_BRANCH(ys, kernels::cuda::softmax_backward(ys.dtype(), ys.data(), dy.data(), s.outer,
                                                          s.n, s.inner, dx.data(), log, stream));
    }
    return std::vector<Tensor>{dx};
  });
  return y;
}

}  // namespace

Tensor sum(const Tensor& x, int64_t dim, bool keepdim) { return sum_scaled("sum", x, dim, keepdim, false); }
Tensor mean(const Tensor& x, int64_t dim, bool keepdim) { return sum_scaled("mean", x, dim, keepdim, true); }

// The whole tensor as one dimension: a sum over dim 0 of the flattened view.
Tensor sum(const Tensor& x) { return reshape(sum(reshape(x, {x.numel()}), 0), {}); }
Tensor mean(const Tensor& x) { return reshape(mean(reshape(x, {x.numel()}), 0), {}); }

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl("softmax", x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_impl("log_softmax", x, dim, true); }

}  // namespace ssmtrain
