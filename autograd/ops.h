// The differentiable ops. Each runs on its inputs' device (all inputs on one device), calls
// the kernel of kernels/<op>.h for that device, and records a node with its backward rule
// when an input needs a gradient. CPU ops compute in f32 (or f64, for gradient checks);
// CUDA ops take f32 or bf16 (f16 for elementwise ops and casts) with f32 accumulation.
#pragma once

#include <vector>

#include "autograd/tensor.h"

namespace ssmtrain {

// ---- linear algebra ----
// a (..., m, k) @ b (k, n) -> (..., m, n); or batched a (B, m, k) @ b (B, k, n) -> (B, m, n),
// where one of a, b may be 2-D and shared by every batch (W (o, i) @ x (B, i, l) -> (B, o, l)).
// trans_a / trans_b transpose the last two dimensions of a / b first.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// x (..., in) @ weight (out, in)^T (+ bias (out)) -> (..., out): the Linear layer's product.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// ---- elementwise (binary ops broadcast numpy-style) ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& x, double s);
Tensor mul(const Tensor& x, double s);
Tensor affine(const Tensor& x, double alpha, double beta);  // alpha * x + beta
Tensor pow(const Tensor& x, double p);
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor square(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor silu(const Tensor& x);
Tensor gelu(const Tensor& x);
Tensor softplus(const Tensor& x);

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator+(const Tensor& a, double s) { return add(a, s); }
inline Tensor operator-(const Tensor& a, double s) { return add(a, -s); }
inline Tensor operator*(const Tensor& a, double s) { return mul(a, s); }
inline Tensor operator/(const Tensor& a, double s) { return mul(a, 1.0 / s); }
inline Tensor operator-(const Tensor& a) { return neg(a); }

// ---- reductions (dim may be negative) ----
Tensor sum(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor mean(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor sum(const Tensor& x);  // all elements -> shape {}
Tensor mean(const Tensor& x);
Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);

// ---- neural-network ops ----
// RMSNorm over the last dimension: x * rsqrt(mean(x^2) + eps) * weight.
Tensor rmsnorm(const Tensor& x, const Tensor& weight, double eps = 1e-5);
// ids (...) of i32 / i64 into table (vocab, d) -> (..., d).
Tensor embedding(const Tensor& ids, const Tensor& table);
// Mean cross-entropy of logits (n, vocab) against targets (n), skipping ignore_index; -> {}.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);

// ---- shape ----
Tensor reshape(const Tensor& x, const Shape& shape);  // one -1 allowed; a view when possible
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);  // a view
Tensor transpose(const Tensor& x, int64_t dim0, int64_t dim1);               // contiguous copy
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);
Tensor cast(const Tensor& x, DType dtype);
// A contiguous copy with its own storage; the gradient passes through unchanged.
Tensor clone(const Tensor& x);
Tensor to_device(const Tensor& x, Device device);

// In-place, not differentiable: dst += src (same shape and device). Used for .grad.
void add_(const Tensor& dst, const Tensor& src);

}  // namespace ssmtrain
