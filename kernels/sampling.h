// The next token of each row of logits (rows, vocab): greedy argmax or a seeded draw under
// temperature, top-k and top-p, so a decode step hands only `rows` token ids to the host. The
// CPU reference sorts; the GPU version radix-selects; both are built from the helpers below,
// which use only IEEE-exact operations and explicit fmaf, so both devices pick the same token.
//
// The rule, per row:
//   - every token gets a composite key: its logit's order (descending) then its id (ascending),
//     so keys are distinct and "the first n tokens" is one well-defined set whatever the ties;
//   - greedy (temperature 0): the token of the largest key, i.e. the first of equal maxima,
//     the same as std::max_element over the row;
//   - otherwise each token weighs w = exp((logit - max) / temperature) as a fixed-point integer
//     (weight_shift bits after the point; weights below 2^-shift count 0, about e^-33 of the
//     largest for a 32k vocabulary), so sums are exact and need no ordered float adds;
//   - top_k keeps the k first tokens; top_p then keeps the shortest prefix of those whose weight
//     reaches top_p of their total (ceil, in double); the draw u in [0, 1) (53 bits of
//     Philox(seed, block (sequence << 40) ^ draw)) picks the first token whose running weight
//     exceeds floor(u * total) of the kept ones;
//   - a row whose weights are all 0 (a NaN or infinite logit) gets the greedy token.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/common.h"
#include "kernels/philox.h"

namespace ssmtrain::kernels {

struct SamplingParams {
  double temperature = 0.0;  // 0: greedy
  int64_t top_k = 0;         // 0 (or >= vocab): all tokens
  double top_p = 1.0;        // in (0, 1]; 1: all of top_k's tokens
  uint64_t seed = 0;
};

// A uniform double in [0, 1) from 53 bits of Philox(seed, block (sequence, draw)): draw `draw`
// of sequence `sequence`.
SSM_HD double sampling_uniform(uint64_t seed, int64_t sequence, int64_t draw) {
  const uint64_t block = (static_cast<uint64_t>(sequence) << 40) ^ static_cast<uint64_t>(draw);
  const Philox4 r = philox_block(seed, block);
  const uint64_t bits = (static_cast<uint64_t>(r.v[0]) << 21) ^ (static_cast<uint64_t>(r.v[1]) >> 11);
  return static_cast<double>(bits & ((uint64_t(1) << 53) - 1)) / static_cast<double>(uint64_t(1) << 53);
}

// Bits that hold a token id: ids 0 .. vocab-1.
SSM_HD int sampling_id_bits(int64_t vocab) {
  int bits = 0;
  while ((int64_t(1) << bits) < vocab) ++bits;
  return bits;
}

// Fixed-point bits of a weight in [0, 1]: the sum of vocab weights stays below 2^63.
SSM_HD int sampling_weight_shift(int64_t vocab) { return 63 - sampling_id_bits(vocab + 1); }

// An unsigned key with the order of the float logit (-0 and +0 equal; NaN above +inf).
SSM_HD uint32_t sampling_order_key(float logit) {
#if defined(__CUDA_ARCH__)
  uint32_t bits = __float_as_uint(logit);
#else
  uint32_t bits;
  std::memcpy(&bits, &logit, sizeof bits);
#endif
  if (bits == 0x80000000u) bits = 0;  // -0 == +0
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Distinct keys, larger first: logit order, then the lower id. id_bits = sampling_id_bits(vocab).
SSM_HD uint64_t sampling_composite(float logit, int64_t id, int id_bits) {
  const uint64_t id_mask = (uint64_t(1) << id_bits) - 1;
  return (static_cast<uint64_t>(sampling_order_key(logit)) << id_bits) | (id_mask - static_cast<uint64_t>(id));
}
SSM_HD int64_t sampling_id_of(uint64_t composite, int id_bits) {
  const uint64_t id_mask = (uint64_t(1) << id_bits) - 1;
  return static_cast<int64_t>(id_mask - (composite & id_mask));
}

// exp(x) for x <= 0 (0 below -64, and for NaN): Cody-Waite reduction by ln 2 and a degree-7
// polynomial, every step an IEEE-exact operation or an explicit fmaf, so the CPU and the GPU
// compute the same bits. Relative error about 1e-7.
SSM_HD float sampling_exp(float x) {
  if (!(x >= -64.0f)) return 0.0f;
  if (x > 0.0f) x = 0.0f;
  const float k = rintf(x * 1.44269504f);      // x / ln 2, rounded to an integer
  float r = fmaf(-k, 0.693145751953125f, x);   // ln 2 high part (exact product)
  r = fmaf(-k, 1.428606765330187e-06f, r);     // ln 2 low part; |r| <= 0.35
  float p = 1.98412698e-4f;                    // 1/7!
  p = fmaf(p, r, 1.38888889e-3f);              // 1/6!
  p = fmaf(p, r, 8.33333333e-3f);              // 1/5!
  p = fmaf(p, r, 4.16666667e-2f);              // 1/4!
  p = fmaf(p, r, 1.66666667e-1f);              // 1/3!
  p = fmaf(p, r, 0.5f);
  p = fmaf(p, r, 1.0f);
  p = fmaf(p, r, 1.0f);
  return ldexpf(p, static_cast<int>(k));       // exact: p * 2^k stays normal for k >= -93
}

// The fixed-point weight of a logit: exp((logit - max) * inv_temperature) * 2^shift, truncated.
SSM_HD uint64_t sampling_weight(float logit, float max_logit, float inv_temperature, int shift) {
  const float w = sampling_exp((logit - max_logit) * inv_temperature);
  return static_cast<uint64_t>(ldexpf(w, shift));  // exact scaling, then truncation
}

// 1 / temperature as the kernels use it (a float, rounded once on the host).
inline float sampling_inv_temperature(const SamplingParams& p) { return static_cast<float>(1.0 / p.temperature); }

// The token count that top_p keeps must reach: ceil(top_p * total) in double, at least 1.
SSM_HD uint64_t sampling_top_p_target(double top_p, uint64_t total) {
  const double t = ceil(top_p * static_cast<double>(total));
  if (t < 1.0) return 1;
  return t >= static_cast<double>(total) ? total : static_cast<uint64_t>(t);
}

// The draw's position in the kept weight: floor(u * total), below total.
SSM_HD uint64_t sampling_draw_target(double u, uint64_t total) {
  const uint64_t t = static_cast<uint64_t>(u * static_cast<double>(total));
  return t >= total ? total - 1 : t;
}

namespace cpu {
// logits (rows, vocab) -> out (rows) token ids; row i is draw `draw` of sequence
// first_sequence + i. T is float or double (compared as float, like the GPU's bf16 / f32).
template <typename T>
void sample_tokens(const T* logits, int64_t rows, int64_t vocab, const SamplingParams& params, int64_t first_sequence,
                   int64_t draw, int64_t* out);
}  // namespace cpu

namespace cuda {
// logits (rows, vocab) f32 or bf16 on the device -> out (rows) i64 on the device. *draw (a
// device i64) is this call's draw index; the call then adds one to it, so a CUDA graph that
// replays the call draws anew each time. One block per row; no host synchronisation.
void sample_tokens(DType dtype, const void* logits, int64_t rows, int64_t vocab, const SamplingParams& params,
                   int64_t first_sequence, int64_t* draw, int64_t* out, cudaStream_t stream);
}  // namespace cuda

}  // namespace ssmtrain::kernels
