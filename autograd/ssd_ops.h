// The differentiable SSD scan of Mamba-2 (kernels/ssd.h): one fused node with a hand-written
// backward kernel. The gated RMSNorm that follows it is autograd/gated_rmsnorm_ops.h.
// Glossary: b batch, l sequence length, h heads, p head dim, n state size, g groups of B/C.
#pragma once

#include <limits>

#include "autograd/tensor.h"

namespace ssmtrain {

// Optional tensors may be undefined.
struct SsdInputs {
  Tensor x;               // (b, l, h, p)
  Tensor dt;              // (b, l, h)
  Tensor A;               // (h), f32 (f64 on the CPU for gradient checks)
  Tensor B;               // (b, l, g, n)
  Tensor C;               // (b, l, g, n)
  Tensor D;               // (h) or (h, p)
  Tensor z;               // (b, l, h, p): out = ssd(...) * silu(z)
  Tensor dt_bias;         // (h)
  Tensor initial_states;  // (b, h, p, n), f32
  Tensor doc_index;       // (b, l), i32: the state resets where it changes
  bool dt_softplus = true;
  // dt is clamped to [dt_min, dt_max] after softplus when narrower than (0, inf).
  double dt_min = 0.0;
  double dt_max = std::numeric_limits<double>::infinity();
  int64_t chunk_size = 256;  // the GPU's chunk length, 64..256; the CPU runs the recurrence
};

struct SsdOutputs {
  Tensor out;            // (b, l, h, p), the dtype of x
  Tensor final_states;   // (b, h, p, n), f32; defined when asked for
};

SsdOutputs ssd(const SsdInputs& in, bool return_final_states = false);
}  // namespace ssmtrain
