// Matrix products: a (..., m, k) @ b (k, n), batched (B, m, k) @ (B, k, n) or with one operand
// shared by the batch, and linear.
#include "autograd/dispatch.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "kernels/gemm.h"

namespace ssmtrain {
namespace {

// C = op(A) op(B) for contiguous 2-D or 3-D operands. With one operand 3-D (batch, ., .) and
// the other 2-D, the 2-D one is shared by every batch (batch stride 0): W (out, in) @ x (b, in, l)
// gives channel-major activations (b, out, l) without a transpose.
Tensor gemm(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  const bool batched = a.dim() == 3 || b.dim() == 3;
  const int64_t batch = a.dim() == 3 ? a.size(0) : b.dim() == 3 ? b.size(0) : 1;
  if (a.dim() == 3 && b.dim() == 3 && a.size(0) != b.size(0))
    detail::op_error("matmul", "batch sizes differ: " + a.str() + " @ " + b.str());
  const int64_t a_rows = a.size(-2), a_cols = a.size(-1);
  const int64_t b_rows = b.size(-2), b_cols = b.size(-1);
  kernels::GemmShape g;
  g.trans_a = ta;
  g.trans_b = tb;
  g.m = ta ? a_cols : a_rows;
  g.k = ta ? a_rows : a_cols;
  g.n = tb ? b_rows : b_cols;
  const int64_t k_b = tb ? b_cols : b_rows;
  if (k_b != g.k)
    detail::op_error("matmul", "inner dimensions differ: " + a.str() + (ta ? "^T" : "") + " @ " +
                                   b.str() + (tb ? "^T" : ""));
  g.lda = a_cols;
  g.ldb = b_cols;
  g.ldc = g.n;
  g.batch = batch;
  g.stride_a = a.dim() == 3 ? a_rows * a_cols : 0;
  g.stride_b = b.dim() == 3 ? b_rows * b_cols : 0;
  g.stride_c = g.m * g.n;
  Shape out_shape = batched ? Shape{batch, g.m, g.n} : Shape{g.m, g.n};
  Tensor c = Tensor::empty(out_shape, a.dtype(), a.device());
  if (a.device().is_cpu()) {
    detail::cpu_float_dispatch("matmul", a.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::gemm<T>(g, 1.0, static_cast<const T*>(a.data()), static_cast<const T*>(b.data()),
                            0.0, static_cast<T*>(c.data()));
    });
  } else {
    SSM_CUDA_BRANCH(a, kernels::cuda::gemm(g, a.dtype(), a.dtype(), 1.0, a.data(), b.data(), 0.0,
                                           c.data(), stream));
  }
  return c;
}

// sum over the batch of op(A_i) op(B_i) for contiguous 3-D a, b: the gradient of an operand that
// was shared by every batch. One product per batch accumulated (beta = 1) into an f32 result in
// batch order, then rounded once to the operands' dtype.
Tensor gemm_batch_sum(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  const int64_t a_rows = a.size(1), a_cols = a.size(2), b_rows = b.size(1), b_cols = b.size(2);
  kernels::GemmShape g;
  g.trans_a = ta;
  g.trans_b = tb;
  g.m = ta ? a_cols : a_rows;
  g.k = ta ? a_rows : a_cols;
  g.n = tb ? b_rows : b_cols;
  g.lda = a_cols;
  g.ldb = b_cols;
  g.ldc = g.n;
  const bool wide = a.dtype() == DType::f64;
  Tensor c = Tensor::empty({g.m, g.n}, wide ? DType::f64 : DType::f32, a.device());
  const int64_t elem = dtype_size(a.dtype());
  for (int64_t i = 0; i < a.size(0); ++i) {
    const double beta = i == 0 ? 0.0 : 1.0;
    const char* ai = static_cast<const char*>(a.data()) + i * a_rows * a_cols * elem;
    const char* bi = static_cast<const char*>(b.data()) + i * b_rows * b_cols * elem;
    if (a.device().is_cpu()) {
      detail::cpu_float_dispatch("matmul", a.dtype(), [&](auto t) {
        using T = decltype(t);
        kernels::cpu::gemm<T>(g, 1.0, reinterpret_cast<const T*>(ai), reinterpret_cast<const T*>(bi), beta,
                              static_cast<T*>(c.data()));
      });
    } else {
      SSM_CUDA_BRANCH(a, kernels::cuda::gemm(g, a.dtype(), DType::f32, 1.0, ai, bi, beta, c.data(), stream));
    }
  }
  return c.dtype() == a.dtype() ? c : cast(c, a.dtype());
}

// The recorded product; gradients by the same rule: with A' = op(A), B' = op(B): dA' = dC B'^T
// and dB' = A'^T dC, summed over the batch for an operand every batch shared.
Tensor matmul_core(const Tensor& a_in, const Tensor& b_in, bool ta, bool tb) {
  const Tensor a = a_in.contiguous(), b = b_in.contiguous();
  Tensor c = gemm(a, b, ta, tb);
  attach_backward("matmul", {a_in, b_in}, {&c}, {a, b}, [ta, tb](const auto& g, const auto& s) {
    const Tensor dc = g[0].contiguous();
    const Tensor &a_s = s[0], &b_s = s[1];
    Tensor da, db;
    if (a_s.dim() == 2 && b_s.dim() == 3)
      da = ta ? gemm_batch_sum(b_s, dc, tb, true) : gemm_batch_sum(dc, b_s, false, !tb);
    else
      da = ta ? gemm(b_s, dc, tb, true) : gemm(dc, b_s, false, !tb);
    if (b_s.dim() == 2 && a_s.dim() == 3)
      db = tb ? gemm_batch_sum(dc, a_s, true, ta) : gemm_batch_sum(a_s, dc, !ta, false);
    else
      db = tb ? gemm(dc, a_s, true, ta) : gemm(a_s, dc, !ta, false);
    return std::vector<Tensor>{da, db};
  });
  return c;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  detail::common_device("matmul", {&a, &b});
  detail::check_same_dtype("matmul", {&a, &b});
  detail::check_dtype_float("matmul", a);
  if (b.dim() == 2 && a.dim() >= 2) {
    if (a.dim() == 2 || !trans_a) {
      // Fold the leading dimensions of a into its rows: (..., m, k) -> (M, k).
      Shape out_shape(a.shape().begin(), a.shape().end() - 1);
      const Tensor a2 = a.dim() == 2 ? a : reshape(a, {a.numel() / a.size(-1), a.size(-1)});
      Tensor c = matmul_core(a2, b, trans_a, trans_b);
      if (a.dim() == 2) return c;
      out_shape.push_back(c.size(1));
      return reshape(c, out_shape);
    }
  }
  if (a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0)) return matmul_core(a, b, trans_a, trans_b);
  // One operand shared by every batch: (B, m, k)^T @ (k, n) or (m, k) @ (B, k, n).
  if ((a.dim() == 3 && b.dim() == 2) || (a.dim() == 2 && b.dim() == 3)) return matmul_core(a, b, trans_a, trans_b);
  detail::op_error("matmul", "unsupported operands " + a.str() + " and " + b.str() +
                                 " (need (..., m, k) @ (k, n), (m, k) @ (B, k, n) or (B, m, k) @ (B, k, n))");
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  Tensor y = matmul(x, weight, false, true);
  return bias.defined() ? add(y, bias) : y;
}

}  // namespace ssmtrain
