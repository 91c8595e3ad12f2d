// RMSNorm over the last dimension: y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps).
// rstd (rows) is kept in f32 for the backward.
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
}  // namespace cpu

namespace cuda {
// x, y, weight, dy, dx, dweight share dtype (f32 or bf16); rstd is f32. The dweight sum over
// rows runs in a fixed order (per-block partials, then one ordered pass).
void rmsnorm_forward(DType dtype, const void* x, const void* weight, int64_t rows, int64_t d,
                     double eps, void* y, float* rstd, cudaStream_t s);
void rmsnorm_backward(DType dtype, const void* x, const void* weight, const float* rstd,
                      const void* dy, int64_t rows, int64_t d, void* dx, void* dweight,
                      cudaStream_t s);
}  // namespace cuda

}  // namespace ssmtrain::kernels
