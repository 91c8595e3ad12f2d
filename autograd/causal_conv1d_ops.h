// Differentiable causal depthwise conv1d (kernels/causal_conv1d.h): one fused node whose
// backward is the hand-written backward kernel.
#pragma once

#include "autograd/tensor.h"

namespace ssmtrain {

// Optional tensors may be undefined. With channel_last, x, out and the gradients are (b, l, d)
// and x may be a column slice of a wider (b, l, .) tensor (unit channel stride, any token
// stride >= d, batch stride l times that): it is read in place, not copied.
struct CausalConv1dInputs {
  Tensor x;              // (b, d, l), or (b, l, d) with channel_last
  Tensor weight;         // (d, w), w in 2..4; f32 on the GPU (f64 on the CPU for gradient checks)
  Tensor bias;           // (d), the dtype of weight
  Tensor initial_state;  // (b, d, w-1), the dtype of x: the last w-1 inputs of the previous segment
  Tensor doc_index;      // (b, l), i32: the window does not reach across a change
  bool silu = true;      // fused SiLU on the output
  bool channel_last = false;
};

struct CausalConv1dOutputs {
  Tensor out;          // (b, d, l), or (b, l, d) dense with channel_last; the dtype of x
  Tensor final_state;  // (b, d, w-1), the dtype of x; defined when asked for; carries no gradient
};

CausalConv1dOutputs causal_conv1d(const CausalConv1dInputs& in, bool return_final_state = false);

}  // namespace ssmtrain
