// One-token decoding steps of the recurrent mixers (kernels' *_step functions): the causal
// conv1d window shift, the Mamba-1 selective-scan state update and the Mamba-2 SSD state
// update, and one attention query per sequence over its KV cache. Not differentiable (generation runs without a tape); the states are updated in
// place, so a step costs O(1) in the length of what came before.
//
// Glossary: b batch, d channels, w conv width, n state size, g groups of B/C, h heads, p head dim,
// h_kv key/value heads, dh attention head dim, L the KV cache capacity.
#pragma once

#include <cstdint>
#include <vector>

#include "autograd/tensor.h"
#include "kernels/sampling.h"

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

// q (b, h, dh): the token at position lengths[i] - 1 of sequence i; k_cache, v_cache (b, L, h_kv, dh)
// hold its positions 0 .. lengths[i] - 1 (the new key and value included) -> out (b, h, dh), softmax
// scale 1 / sqrt(dh). Reads only the cached rows, O(lengths[i]) per sequence.
Tensor attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const std::vector<int64_t>& lengths);

// The next token of each row of logits (b, vocab) (f32 or bf16 on the GPU; f32 or f64 on the
// CPU) into out (b) i64 on the same device, by the rule of kernels/sampling.h: row i is draw
// *draw of sequence first_sequence + i. draw is an i64 (1) on that device, advanced by one in
// place after the rows have read it, so a CUDA graph that replays this call draws anew each
// time. Only b ids need to reach the host.
void sample_tokens(const Tensor& logits, const kernels::SamplingParams& params, int64_t first_sequence,
                   const Tensor& draw, const Tensor& out);

}  // namespace ssmtrain
