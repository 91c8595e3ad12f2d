// One-token decoding steps of the recurrent mixers (kernels' *_step functions): the causal
// conv1d window shift, the Mamba-1 selective-scan state update and the Mamba-2 SSD state
// update. Not differentiable (generation runs without a tape); the states are updated in
// place, so a step costs O(1) in the length of what came before.
//
// Glossary: b batch, d channels, w conv width, n state size, g groups of B/C, h heads, p head dim.
#pragma once

#include "autograd/tensor.h"

namespace ssmtrain {

// x (b, d) -> out (b, d); state (b, d, w-1) in x's dtype holds the last w-1 inputs and is
// shifted in place (the oldest leaves, x enters). weight (d, w), bias (d) or undefined.
Tensor causal_conv1d_step(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& state,
                          bool silu = true);

struct SelectiveScanStepInputs {
  Tensor u;           // (b, d)
  Tensor delta;       // (b, d)
  Tensor A;           // (d, n)
  Tensor B;           // (b, g, n)
  Tensor C;           // (b, g, n)
  Tensor D;           // (d) or undefined
  Tensor z;           // (b, d) or undefined
  Tensor delta_bias;  // (d) or undefined
  bool delta_softplus = true;
};
// -> out (b, d) in u's dtype; state (b, d, n) f32 (f64 on the CPU with f64 inputs), in place.
Tensor selective_scan_step(const SelectiveScanStepInputs& in, const Tensor& state);

struct SsdStepInputs {
  Tensor x;        // (b, h, p)
  Tensor dt;       // (b, h)
  Tensor A;        // (h)
  Tensor B;        // (b, g, n)
  Tensor C;        // (b, g, n)
  Tensor D;        // (h) or undefined
  Tensor z;        // (b, h, p) or undefined
  Tensor dt_bias;  // (h) or undefined
  bool dt_softplus = true;
};
// -> out (b, h, p) in x's dtype; states (b, h, p, n) f32 (f64 with f64 inputs on the CPU), in place.
Tensor ssd_step(const SsdStepInputs& in, const Tensor& states);

}  // namespace ssmtrain
