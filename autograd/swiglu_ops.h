// SwiGLU over a packed gate/up projection (kernels/swiglu.h), the MLP's and the experts'
// activation: one node whose backward is a hand-written kernel.
#pragma once

#include "autograd/tensor.h"

namespace ssmtrain {

// gate_up (..., 2f): first half gate, second half up -> silu(gate) * up (..., f).
Tensor swiglu(const Tensor& gate_up);

}  // namespace ssmtrain
