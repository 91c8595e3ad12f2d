// Row-major (batched) matrix products: C = alpha * op(A) op(B) + beta * C, where op(X) is X or
// its transpose. A is (m, k) or (k, m) when trans_a; B is (k, n) or (n, k) when trans_b;
// C is (m, n). Leading dimensions are row strides; batches are `batch` matrices apart by
// the given element strides.
#pragma once

#include "kernels/common.h"

namespace ssmtrain::kernels {

struct GemmShape {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int64_t batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;
};

namespace cpu {
// OpenBLAS sgemm / dgemm per batch.
template <typename T>
void gemm(const GemmShape& g, double alpha, const T* a, const T* b, double beta, T* c);
}  // namespace cpu

namespace cuda {
// cuBLASLt. ab_dtype: f32 (strict fp32, no TF32) or bf16 / f16 (fp32 accumulation);
// c_dtype: ab_dtype or f32. The handle is per device and the workspace per (device, stream),
// both created on first use.
void gemm(const GemmShape& g, DType ab_dtype, DType c_dtype, double alpha, const void* a,
          const void* b, double beta, void* c, cudaStream_t s);
}  // namespace cuda

}  // namespace ssmtrain::kernels
