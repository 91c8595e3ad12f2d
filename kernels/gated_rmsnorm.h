// Gated RMSNorm, the norm that follows SSD in Mamba-2 (RMSNormGated, norm_before_gate=False):
//   u = y * silu(z)   (u = y when z is not given)
//   out = u * rstd * weight,  rstd = 1 / sqrt(mean(u^2) + eps) over each group of group_size
// consecutive elements of the last dimension (group_size = d: one group, plain RMSNorm of u).
// rstd (rows, d / group_size) is kept in f32 for the backward.
//
// Glossary: rows = every leading index flattened (b * l), d the normalised dim (d_inner).
#pragma once

#include "kernels/common.h"

namespace ssmtrain::kernels {

namespace cpu {
// y, z, out (rows, d); weight (d); rstd (rows, d / group_size); z may be null.
// group_size divides d. T = float or double.
template <typename T>
void gated_rmsnorm_forward(const T* y, const T* z, const T* weight, int64_t rows, int64_t d,
                           int64_t group_size, double eps, T* out, float* rstd);
// With u = y * silu(z), per group: du = rstd * (w*dout - u * rstd^2 * mean(w*dout*u));
// dy = du * silu(z), dz = du * y * silu'(z); dweight (d) = sum_rows dout * u * rstd,
// overwritten (not accumulated), rows summed in order. dz is required when z is given.
template <typename T>
void gated_rmsnorm_backward(const T* y, const T* z, const T* weight, const float* rstd,
                            const T* dout, int64_t rows, int64_t d, int64_t group_size, T* dy,
                            T* dz, T* dweight);
}  // namespace cpu

namespace cuda {
// kernels/cuda/gated_rmsnorm.cu (d at most 12288). y, z, weight, out, dout, dy, dz, dweight
// share dtype (f32 or bf16); rstd is f32; one fused
// pass per row. The dweight sum over rows runs in a fixed order (per-block partials, then
// one ordered pass).
void gated_rmsnorm_forward(DType dtype, const void* y, const void* z, const void* weight,
                           int64_t rows, int64_t d, int64_t group_size, double eps, void* out,
                           float* rstd, cudaStream_t s);
void gated_rmsnorm_backward(DType dtype, const void* y, const void* z, const void* weight,
                            const float* rstd, const void* dout, int64_t rows, int64_t d,
                            int64_t group_size, void* dy, void* dz, void* dweight,
                            cudaStream_t s);
}  // namespace cuda

}  // namespace ssmtrain::kernels
