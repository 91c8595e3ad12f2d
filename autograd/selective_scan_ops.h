// Differentiable state-space scans (fused single nodes with hand-written backward kernels).
#pragma once

#include "autograd/tensor.h"

namespace ssmtrain {

// Mamba-1 selective scan (kernels/selective_scan.h). Optional tensors may be undefined.
struct SelectiveScanInputs {
  Tensor u;              // (b, d, l)
  Tensor delta;          // (b, d, l)
  Tensor A;              // (d, n), f32 (f64 on the CPU for gradient checks)
  Tensor B;              // (b, g, n, l)
  Tensor C;              // (b, g, n, l)
  Tensor D;              // (d)
  Tensor z;              // (b, d, l)
  Tensor delta_bias;     // (d)
  Tensor initial_state;  // (b, d, n), f32
  Tensor doc_index;      // (b, l), i32: the state resets where it changes
  bool delta_softplus = true;
};

struct SelectiveScanOutputs {
  Tensor out;          // (b, d, l), the dtype of u
  Tensor final_state;  // (b, d, n), f32; defined when asked for
};

SelectiveScanOutputs selective_scan(const SelectiveScanInputs& in, bool return_final_state = false);

}  // namespace ssmtrain
