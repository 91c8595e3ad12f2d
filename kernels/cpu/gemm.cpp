// CPU reference of the batched row-major GEMM (kernels/gemm.h):
// C (m, n) = alpha * op(A) (m, k) op(B) (k, n) + beta * C, one OpenBLAS call per batch.
#include "kernels/gemm.h"

#include <cblas.h>

#include <limits>
#include <string>
#include <type_traits>

namespace ssmtrain::kernels::cpu {

namespace {

[[noreturn]] void fail(const std::string& what) { throw KernelError("gemm: " + what); }

void check_shape(const GemmShape& g) {
  if (g.m < 0 || g.n < 0 || g.k < 0 || g.batch < 0)
    fail("negative size (m " + std::to_string(g.m) + ", n " + std::to_string(g.n) + ", k " +
         std::to_string(g.k) + ", batch " + std::to_string(g.batch) + ")");
  const int64_t blas_max = std::numeric_limits<blasint>::max();
  if (g.m > blas_max || g.n > blas_max || g.k > blas_max || g.lda > blas_max ||
      g.ldb > blas_max || g.ldc > blas_max)
    fail("a size or leading dimension exceeds the BLAS integer range");
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  if (g.ldc < g.n) fail("ldc " + std::to_string(g.ldc) + " < n " + std::to_string(g.n));
  if (g.k == 0) return;
  const int64_t a_width = g.trans_a ? g.m : g.k;  // A is (k, m) when trans_a, else (m, k)
  const int64_t b_width = g.trans_b ? g.k : g.n;  // B is (n, k) when trans_b, else (k, n)
  if (g.lda < a_width)
    fail("lda " + std::to_string(g.lda) + " < row width " + std::to_string(a_width) + " of A");
  if (g.ldb < b_width)
    fail("ldb " + std::to_string(g.ldb) + " < row width " + std::to_string(b_width) + " of B");
}

}  // namespace

template <typename T>
void gemm(const GemmShape& g, double alpha, const T* a, const T* b, double beta, T* c) {
  check_shape(g);
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  const CBLAS_TRANSPOSE ta = g.trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = g.trans_b ? CblasTrans : CblasNoTrans;
  for (int64_t batch = 0; batch < g.batch; ++batch) {
    const T* ab = a + batch * g.stride_a;
    const T* bb = b + batch * g.stride_b;
    T* cb = c + batch * g.stride_c;  // (m, n), row stride ldc
    if (g.k == 0) {  // empty product: C = beta * C (C not read when beta is 0)
      for (int64_t i = 0; i < g.m; ++i)
        for (int64_t j = 0; j < g.n; ++j)
          cb[i * g.ldc + j] = beta == 0.0 ? T(0) : static_cast<T>(beta * double(cb[i * g.ldc + j]));
      continue;
    }
    if constexpr (std::is_same_v<T, float>) {
      cblas_sgemm(CblasRowMajor, ta, tb, blasint(g.m), blasint(g.n), blasint(g.k), float(alpha),
                  ab, blasint(g.lda), bb, blasint(g.ldb), float(beta), cb, blasint(g.ldc));
    } else {
      cblas_dgemm(CblasRowMajor, ta, tb, blasint(g.m), blasint(g.n), blasint(g.k), alpha, ab,
                  blasint(g.lda), bb, blasint(g.ldb), beta, cb, blasint(g.ldc));
    }
  }
}

template void gemm<float>(const GemmShape&, double, const float*, const float*, double, float*);
template void gemm<double>(const GemmShape&, double, const double*, const double*, double,
                           double*);

}  // namespace ssmtrain::kernels::cpu
