// Fused differentiable ops of the residual stream and the MLP: residual add + RMSNorm in one
// pass (kernels/norm.h), and SwiGLU over a packed gate/up projection (kernels/swiglu.h). Each
// is one node whose backward is a hand-written kernel.
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

// gate_up (..., 2f): first half gate, second half up -> silu(gate) * up (..., f).
Tensor swiglu(const Tensor& gate_up);

}  // namespace ssmtrain
