// See dispatch.h.
#include <algorithm>

#include "autograd/dispatch.h"

namespace ssmtrain::detail {

void op_error(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

Device common_device(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (!t->defined()) op_error(op, "an input tensor is undefined");
    if (!first) first = t;
    else if (!(t->device() == first->device()))
      op_error(op, "inputs are on different devices (" + first->device().str() + " and " +
                       t->device().str() + ")");
  }
  return first ? first->device() : Device::cpu();
}

void check_same_dtype(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (!first) first = t;
    else if (t->dtype() != first->dtype())
      op_error(op, std::string("inputs have different dtypes (") + dtype_name(first->dtype()) +
                       " and " + dtype_name(t->dtype()) + ")");
  }
}

void check_dtype_float(const char* op, const Tensor& t) {
  if (!dtype_is_float(t.dtype()))
    op_error(op, std::string("expects a floating-point tensor, got ") + dtype_name(t.dtype()));
}

kernels::Layout layout_of(const Tensor& t) {
  if (t.dim() > kernels::kMaxDims)
    throw std::invalid_argument("tensor " + t.str() + " has more than 8 dimensions");
  kernels::Layout l;
  l.ndim = static_cast<int>(t.dim());
  for (int i = 0; i < l.ndim; ++i) {
    l.shape[i] = t.shape()[i];
    l.strides[i] = t.strides()[i];
  }
  return l;
}

kernels::Layout broadcast_layout(const Tensor& t, const Shape& out_shape) {
  kernels::Layout l;
  l.ndim = static_cast<int>(out_shape.size());
  const int64_t lead = static_cast<int64_t>(out_shape.size()) - t.dim();
  for (int i = 0; i < l.ndim; ++i) {
    l.shape[i] = out_shape[i];
    const int64_t src = i - lead;
    l.strides[i] = (src < 0 || t.shape()[src] == 1) ? 0 : t.strides()[src];
  }
  return l;
}

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      op_error(op, "shapes " + shape_str(a) + " and " + shape_str(b) + " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  if (n > static_cast<size_t>(kernels::kMaxDims)) op_error(op, "more than 8 dimensions");
  return out;
}

int64_t normalize_dim(const char* op, int64_t dim, int64_t ndim) {
  const int64_t d = dim < 0 ? dim + ndim : dim;
  if (d < 0 || d >= ndim)
    op_error(op, "dimension " + std::to_string(dim) + " out of range for " + std::to_string(ndim) +
                     " dimensions");
  return d;
}

}  // namespace ssmtrain::detail
