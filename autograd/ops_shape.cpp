// Shape and dtype ops: reshape and narrow (views), transpose, concat, split, cast, device
// moves and clone (copies).
#include <utility>
#include <numeric>

#include "autograd/dispatch.h"
#include "autograd/node.h"
#include "autograd/ops.h"

namespace ssmtrain {

Tensor clone(const Tensor& x) {
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  copy_into(out, x);
  attach_backward("clone", {x}, {&out}, {}, [](const auto& g, const auto&) {
    return std::vector<Tensor>{g[0]};
  });
  return out;
}

Tensor reshape(const Tensor& x, const Shape& shape_in) {
  Shape shape = shape_in;
  int64_t known = 1, infer_at = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer_at >= 0) detail::op_error("reshape", "more than one -1 in " + shape_str(shape_in));
      infer_at = static_cast<int64_t>(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer_at >= 0) shape[infer_at] = known == 0 ? 0 : x.numel() / known;
  if (shape_numel(shape) != x.numel())
    detail::op_error("reshape", "cannot view " + x.str() + " as " + shape_str(shape_in));
  const Tensor base = x.is_contiguous() ? x : clone(x);
  Tensor out = make_view(base, shape, contiguous_strides(shape), base.offset());
  const Shape x_shape = x.shape();
  attach_backward("reshape", {base}, {&out}, {}, [x_shape](const auto& g, const auto&) {
    return std::vector<Tensor>{reshape(g[0], x_shape)};
  });
  return out;
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  const int64_t d = detail::normalize_dim("narrow", dim, x.dim());
  if (start < 0 || length < 0 || start + length > x.size(d))
    detail::op_error("narrow", "range [" + std::to_string(start) + ", " + std::to_string(start + length) +
                                   ") outside dimension " + std::to_string(d) + " of " + x.str());
  Shape shape = x.shape();
  shape[d] = length;
  Tensor out = make_view(x, shape, x.strides(), x.offset() + start * x.strides()[d]);
  const Shape x_shape = x.shape();
  attach_backward("narrow", {x}, {&out}, {}, [x_shape, d, start, length](const auto& g, const auto&) {
    Tensor dx = Tensor::zeros(x_shape, g[0].dtype(), g[0].device());
    copy_into(narrow(dx, d, start, length), g[0]);
    return std::vector<Tensor>{dx};
  });
  return out;
}

Tensor transpose(const Tensor& x, int64_t dim0, int64_t dim1) {
  const int64_t d0 = detail::normalize_dim("transpose", dim0, x.dim());
  const int64_t d1 = detail::normalize_dim("transpose", dim1, x.dim());
  Shape shape = x.shape(), strides = x.strides();
  std::swap(shape[d0], shape[d1]);
  std::swap(strides[d0], strides[d1]);
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  copy_into(out, make_view(x, shape, strides, x.offset()));
  attach_backward("transpose", {x}, {&out}, {}, [d0, d1](const auto& g, const auto&) {
    return std::vector<Tensor>{transpose(g[0], d0, d1)};
  });
  return out;
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  if (xs.empty()) detail::op_error("concat", "no tensors");
  const int64_t d = detail::normalize_dim("concat", dim, xs[0].dim());
  Shape shape = xs[0].shape();
  shape[d] = 0;
  std::vector<int64_t> sizes;
  for (const Tensor& x : xs) {
    Shape s = x.shape();
    if (s.size() != shape.size() || x.dtype() != xs[0].dtype() || !(x.device() == xs[0].device()))
      detail::op_error("concat", x.str() + " does not match " + xs[0].str());
    s[d] = 0;
    for (size_t i = 0; i < s.size(); ++i)
      if (static_cast<int64_t>(i) != d && s[i] != shape[i])
        detail::op_error("concat", "shapes " + shape_str(x.shape()) + " and " + shape_str(xs[0].shape()) +
                                       " differ outside dimension " + std::to_string(d));
    sizes.push_back(x.size(d));
    shape[d] += x.size(d);
  }
  Tensor out = Tensor::empty(shape, xs[0].dtype(), xs[0].device());
  int64_t start = 0;
  {
    NoGradGuard no_grad;
    for (const Tensor& x : xs) {
      copy_into(narrow(out, d, start, x.size(d)), x);
      start += x.size(d);
    }
  }
  attach_backward("concat", xs, {&out}, {}, [sizes, d](const auto& g, const auto&) {
    std::vector<Tensor> grads;
    int64_t begin = 0;
    for (int64_t size : sizes) {
      grads.push_back(narrow(g[0], d, begin, size).contiguous());
      begin += size;
    }
    return grads;
  });
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  const int64_t d = detail::normalize_dim("split", dim, x.dim());
  const int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  if (total != x.size(d))
    detail::op_error("split", "sizes sum to " + std::to_string(total) + " but dimension " + std::to_string(d) +
                                  " of " + x.str() + " is " + std::to_string(x.size(d)));
  std::vector<Tensor> parts;
  {
    NoGradGuard no_grad;
    int64_t start = 0;
    for (int64_t size : sizes) {
      parts.push_back(narrow(x, d, start, size));
      start += size;
    }
  }
  std::vector<Tensor*> outs;
  for (Tensor& p : parts) outs.push_back(&p);
  attach_backward("split", {x}, outs, {}, [d](const auto& g, const auto&) {
    return std::vector<Tensor>{concat(g, d)};
  });
  return parts;
}

Tensor cast(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Tensor out = Tensor::empty(x.shape(), dtype, x.device());
  copy_into(out, x);
  if (dtype_is_float(dtype) && dtype_is_float(x.dtype())) {
    const DType from = x.dtype();
    attach_backward("cast", {x}, {&out}, {}, [from](const auto& g, const auto&) {
      return std::vector<Tensor>{cast(g[0], from)};
    });
  }
  return out;
}

Tensor to_device(const Tensor& x, Device device) {
  if (x.device() == device) return x;
  Tensor out = Tensor::empty(x.shape(), x.dtype(), device);
  copy_into(out, x);
  const Device from = x.device();
  attach_backward("to_device", {x}, {&out}, {}, [from](const auto& g, const auto&) {
    return std::vector<Tensor>{to_device(g[0], from)};
  });
  return out;
}

}  // namespace ssmtrain
