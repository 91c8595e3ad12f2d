// CPU reference of the elementwise ops (kernels/elementwise.h): activations and their
// derivatives, affine and power maps, and broadcasting binary arithmetic. Each element is
// computed in double and rounded once to T.
#include "kernels/elementwise.h"

#include <cmath>
#include <string>

#include "kernels/cpu/activations.h"

namespace ssmtrain::kernels::cpu {

namespace {

[[noreturn]] void fail(const char* op, const std::string& what) {
  throw KernelError(std::string(op) + ": " + what);
}

void check_count(const char* op, int64_t n) {
  if (n < 0) fail(op, "negative element count " + std::to_string(n));
}

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

double unary_value(UnaryOp op, double x) {
  switch (op) {
    case UnaryOp::neg: return -x;
    case UnaryOp::exp: return std::exp(x);
    case UnaryOp::log: return std::log(x);
    case UnaryOp::silu: return x * sigmoid(x);
    case UnaryOp::gelu: return 0.5 * x * (1.0 + std::erf(x * kInvSqrt2));
    case UnaryOp::softplus: return softplus(x);
    case UnaryOp::sigmoid: return sigmoid(x);
    case UnaryOp::sqrt: return std::sqrt(x);
    case UnaryOp::square: return x * x;
  }
  return std::nan("");  // unreachable: ops are checked before the loops
}

// dy * op'(x), with y = op(x) where the rule reads it (exp, sqrt: exact enough from y).
double unary_grad(UnaryOp op, double x, double y, double dy) {
  switch (op) {
    case UnaryOp::neg: return -dy;
    case UnaryOp::exp: return dy * y;
    case UnaryOp::log: return dy / x;
    case UnaryOp::silu: {
      const double s = sigmoid(x);
      return dy * (s + x * s * (1.0 - s));
    }
    case UnaryOp::gelu: {
      const double cdf = 0.5 * (1.0 + std::erf(x * kInvSqrt2));
      const double pdf = kInvSqrt2Pi * std::exp(-0.5 * x * x);
      return dy * (cdf + x * pdf);
    }
    case UnaryOp::softplus: return dy * sigmoid(x);
    case UnaryOp::sigmoid: {  // from x: 1 - y loses all precision in T once y is near 1
      const double s = sigmoid(x);
      return dy * s * (1.0 - s);
    }
    case UnaryOp::sqrt: return dy * 0.5 / y;
    case UnaryOp::square: return dy * 2.0 * x;
  }
  return std::nan("");
}

double binary_value(BinaryOp op, double a, double b) {
  switch (op) {
    case BinaryOp::add: return a + b;
    case BinaryOp::sub: return a - b;
    case BinaryOp::mul: return a * b;
    case BinaryOp::div: return a / b;
  }
  return std::nan("");
}

// Gradient of a op b with respect to operand `which` (0 = a, 1 = b), times dy.
double binary_grad(BinaryOp op, int which, double dy, double a, double b) {
  switch (op) {
    case BinaryOp::add: return dy;
    case BinaryOp::sub: return which == 0 ? dy : -dy;
    case BinaryOp::mul: return which == 0 ? dy * b : dy * a;
    case BinaryOp::div: return which == 0 ? dy / b : -dy * a / (b * b);
  }
  return std::nan("");
}

// Unknown enum values are rejected before any parallel loop (a throw inside one would abort).
void check_op(const char* op_name, UnaryOp op) {
  if (static_cast<int>(op) > static_cast<int>(UnaryOp::square))
    fail(op_name, "unknown unary op " + std::to_string(static_cast<int>(op)));
}
void check_op(const char* op_name, BinaryOp op) {
  if (static_cast<int>(op) > static_cast<int>(BinaryOp::div))
    fail(op_name, "unknown binary op " + std::to_string(static_cast<int>(op)));
}

// Both operands share ndim and shape, within kMaxDims and non-negative.
void check_layouts(const char* op, const Layout& a, const Layout& b) {
  if (a.ndim < 0 || a.ndim > kMaxDims)
    fail(op, "ndim " + std::to_string(a.ndim) + " outside [0, " + std::to_string(kMaxDims) + "]");
  if (a.ndim != b.ndim)
    fail(op, "a has ndim " + std::to_string(a.ndim) + ", b " + std::to_string(b.ndim));
  for (int d = 0; d < a.ndim; ++d) {
    if (a.shape[d] != b.shape[d])
      fail(op, "shapes differ at dim " + std::to_string(d) + ": a " + std::to_string(a.shape[d]) +
                   ", b " + std::to_string(b.shape[d]));
    if (a.shape[d] < 0)
      fail(op, "negative size " + std::to_string(a.shape[d]) + " at dim " + std::to_string(d));
  }
}

// Calls f(out_index, a_offset, b_offset) for every element of the shared shape, parallel
// over rows of the last dimension; out_index is the contiguous (row-major) index.
template <typename F>
void for_each_broadcast(const Layout& a, const Layout& b, F&& f) {
  if (a.ndim == 0) {
    f(int64_t{0}, int64_t{0}, int64_t{0});
    return;
  }
  const int last = a.ndim - 1;
  const int64_t width = a.shape[last];
  const int64_t rows = width == 0 ? 0 : a.numel() / width;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t a_base = a.row_offset(row);
    const int64_t b_base = b.row_offset(row);
    for (int64_t j = 0; j < width; ++j)
      f(row * width + j, a_base + j * a.strides[last], b_base + j * b.strides[last]);
  }
}

}  // namespace

// y (n) = op(x (n))
template <typename T> void unary_forward(UnaryOp op, const T* x, T* y, int64_t n) {
  check_op("unary_forward", op);
  check_count("unary_forward", n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(unary_value(op, double(x[i])));
}

// dx (n) = dy (n) * op'(x (n))
template <typename T>
void unary_backward(UnaryOp op, const T* x, const T* y, const T* dy, T* dx, int64_t n) {
  check_op("unary_backward", op);
  check_count("unary_backward", n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    dx[i] = static_cast<T>(unary_grad(op, double(x[i]), double(y[i]), double(dy[i])));
}

template <typename T> void affine(const T* x, T* y, int64_t n, double alpha, double beta) {
  check_count("affine", n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(alpha * double(x[i]) + beta);
}

template <typename T> void pow_scalar(const T* x, T* y, int64_t n, double p) {
  check_count("pow_scalar", n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(std::pow(double(x[i]), p));
}

// dx = dy * p * x^(p-1); exactly 0 when p == 0 (x^0 is constant, even at x = 0).
template <typename T> void pow_scalar_backward(const T* x, const T* dy, T* dx, int64_t n, double p) {
  check_count("pow_scalar_backward", n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    dx[i] = p == 0.0 ? T(0) : static_cast<T>(double(dy[i]) * p * std::pow(double(x[i]), p - 1.0));
}

// out (shape) = a (shape, a strides) op b (shape, b strides)
template <typename T>
void binary_forward(BinaryOp op, const T* a, const Layout& a_layout, const T* b,
                    const Layout& b_layout, T* out) {
  check_op("binary_forward", op);
  check_layouts("binary_forward", a_layout, b_layout);
  for_each_broadcast(a_layout, b_layout, [&](int64_t i, int64_t ia, int64_t ib) {
    out[i] = static_cast<T>(binary_value(op, double(a[ia]), double(b[ib])));
  });
}

// d_full (shape) = d(a op b)/d operand `which` * dy (shape)
template <typename T>
void binary_backward(BinaryOp op, int which, const T* dy, const T* a, const Layout& a_layout,
                     const T* b, const Layout& b_layout, T* d_full) {
  check_op("binary_backward", op);
  check_layouts("binary_backward", a_layout, b_layout);
  if (which != 0 && which != 1)
    fail("binary_backward", "operand index " + std::to_string(which) + " is not 0 (a) or 1 (b)");
  for_each_broadcast(a_layout, b_layout, [&](int64_t i, int64_t ia, int64_t ib) {
    d_full[i] = static_cast<T>(binary_grad(op, which, double(dy[i]), double(a[ia]), double(b[ib])));
  });
}

#define SSM_INSTANTIATE(T)                                                                     \
  template void unary_forward<T>(UnaryOp, const T*, T*, int64_t);                              \
  template void unary_backward<T>(UnaryOp, const T*, const T*, const T*, T*, int64_t);         \
  template void affine<T>(const T*, T*, int64_t, double, double);                              \
  template void pow_scalar<T>(const T*, T*, int64_t, double);                                  \
  template void pow_scalar_backward<T>(const T*, const T*, T*, int64_t, double);               \
  template void binary_forward<T>(BinaryOp, const T*, const Layout&, const T*, const Layout&,  \
                                  T*);                                                         \
  template void binary_backward<T>(BinaryOp, int, const T*, const T*, const Layout&, const T*, \
                                   const Layout&, T*);
SSM_INSTANTIATE(float)
SSM_INSTANTIATE(double)
#undef SSM_INSTANTIATE

}  // namespace ssmtrain::kernels::cpu
