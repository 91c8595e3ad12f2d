// The fused residual add + RMSNorm of every block (kernels/norm.h): one pass, one node whose
// backward is a hand-written kernel.
#pragma once

#include "autograd/tensor.h"

namespace ssmtrain {

struct AddRmsnormOutputs {
  Tensor sum;     // (..., d), the dtype of x: x + residual, the next residual stream
  Tensor normed;  // (..., d), the dtype of x: rmsnorm(sum) * weight
};

// sum = x + residual (residual undefined: sum = x), normed = rmsnorm(sum) * weight, one pass.
// x, residual (..., d) share dtype and shape; weight (d) has the dtype of x. Both outputs carry
// gradients (the backward adds the gradient reaching sum to the one through normed).
AddRmsnormOutputs add_rmsnorm(const Tensor& x, const Tensor& residual, const Tensor& weight,
                              double eps = 1e-5);

}  // namespace ssmtrain
