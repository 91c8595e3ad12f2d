// The differentiable gated RMSNorm of Mamba-2 (kernels/gated_rmsnorm.h): one fused node with
// a hand-written backward kernel.
#pragma once

#include <cstdint>

#include "autograd/tensor.h"

namespace ssmtrain {

// out = rmsnorm(y * silu(z)) * weight over groups of group_size elements of the last
// dimension (Mamba-2's RMSNormGated with ngroups = d / group_size; norm_before_gate=False).
// y, z (..., d), z optional (undefined: plain grouped RMSNorm); weight (d); group_size 0
// means d (one group).
Tensor gated_rmsnorm(const Tensor& y, const Tensor& z, const Tensor& weight, double eps = 1e-5,
                     int64_t group_size = 0);

}  // namespace ssmtrain
