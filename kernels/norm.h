// RMSNorm over the last dimension: y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps).
// rstd (rows) is kept in f32 for the backward. add_rmsnorm fuses the residual add in front:
// sum = x + residual, y = rmsnorm(sum) * weight, both written in one pass.
#pragma once

#include "kernels/common.h"

namespace ssmtrain::kernels {

namespace cpu {
// x, y (rows, d); weight (d); rstd (rows).
template <typename T>
void rmsnorm_forward(const T* x, const T* weight, int64_t rows, int64_t d, double eps, T* y,
                     float* rstd);
// dx (rows, d) = rstd * (w*dy - x * rstd^2 * mean(w*dy*x)); dweight (d) = sum_rows dy * x * rstd.
// dweight is overwritten (not accumulated).
template <typename T>
void rmsnorm_backward(const T* x, const T* weight, const float* rstd, const T* dy, int64_t rows,
                      int64_t d, T* dx, T* dweight);

// sum (rows, d) = x + residual (residual null: sum = x); y (rows, d) = sum * rstd * weight;
// rstd (rows) of sum. The norm reads sum as stored (rounded to T).
template <typename T>
void add_rmsnorm_forward(const T* x, const T* residual, const T* weight, int64_t rows, int64_t d,
                         double eps, T* sum, T* y, float* rstd);
// dx (rows, d) = rmsnorm's dx at sum for dy, plus dsum (null: none): the gradient of both x and
// residual. dweight (d) = sum_rows dy * sum * rstd, overwritten.
template <typename T>
void add_rmsnorm_backward(const T* sum, const T* weight, const float* rstd, const T* dy,
                          const T* dsum, int64_t rows, int64_t d, T* dx, T* dweight);
}  // namespace cpu

namespace cuda {
// x, y, weight, dy, dx, dweight share dtype (f32 or bf16); rstd is f32. The dweight sum over
// rows runs in a fixed order (per-block partials, then one ordered pass).
void rmsnorm_forward(DType dtype, const void* x, const void* weight, int64_t rows, int64_t d,
                     double eps, void* y, float* rstd, cudaStream_t s);
void rmsnorm_backward(DType dtype, const void* x, const void* weight, const float* rstd,
                      const void* dy, int64_t rows, int64_t d, void* dx, void* dweight,
                      cudaStream_t s);
// The fused residual add + RMSNorm, same contract as the CPU; residual and dsum may be null.
// sum, y, dx have the dtype of x; sum is rounded to that dtype before the norm reads it.
void add_rmsnorm_forward(DType dtype, const void* x, const void* residual, const void* weight,
                         int64_t rows, int64_t d, double eps, void* sum, void* y, float* rstd,
                         cudaStream_t s);
void add_rmsnorm_backward(DType dtype, const void* sum, const void* weight, const float* rstd,
                          const void* dy, const void* dsum, int64_t rows, int64_t d, void* dx,
                          void* dweight, cudaStream_t s);
}  // namespace cuda

}  // namespace ssmtrain::kernels
