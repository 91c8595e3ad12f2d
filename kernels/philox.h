// Counter-based Philox4x32-10 random numbers: the same (seed, offset) gives the same bits on
// the CPU and the GPU. Element i of a fill uses counter block (offset + i / 4), lane i % 4.
// The normal transform (Box-Muller) uses only IEEE-exact operations and explicit fmaf, so it
// too is bit-identical on both devices.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/common.h"

namespace ssmtrain::kernels {

struct Philox4 {
  uint32_t v[4];
};

SSM_HD uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

// Philox4x32 with 10 rounds (Salmon et al., SC'11), counter c and key k.
SSM_HD Philox4 philox4x32_10(Philox4 c, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = philox_mulhilo(0xD2511F53u, c.v[0], &hi0);
    const uint32_t lo1 = philox_mulhilo(0xCD9E8D57u, c.v[2], &hi1);
    c = Philox4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

// Four random words for counter block `block` under `seed`.
SSM_HD Philox4 philox_block(uint64_t seed, uint64_t block) {
  Philox4 c{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u}};
  return philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Uniform in (0, 1]: 24 random bits, exactly representable, never 0 (safe for log).
SSM_HD float philox_uniform01(uint32_t bits) {
  return static_cast<float>((bits >> 8) + 1u) * 5.9604644775390625e-8f;  // 2^-24
}

// log(x) for x in (0, 1], built from frexp-style exact scaling and an fmaf polynomial.
SSM_HD float philox_log(float x) {
  // x = m * 2^e with m in [sqrt(1/2), sqrt(2)); the scaling by powers of two is exact.
  int e = 0;
  while (x < 0.70710678f) {
    x *= 2.0f;
    --e;
  }
  // log(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.1716.
  const float s = (x - 1.0f) / (x + 1.0f);
  const float s2 = s * s;
  float p = 0.0769230769f;               // 1/13
  p = fmaf(p, s2, 0.0909090909f);        // 1/11
  p = fmaf(p, s2, 0.1111111111f);        // 1/9
  p = fmaf(p, s2, 0.1428571429f);        // 1/7
  p = fmaf(p, s2, 0.2f);                 // 1/5
  p = fmaf(p, s2, 0.3333333333f);        // 1/3
  p = fmaf(p, s2, 1.0f);
  const float log_m = 2.0f * s * p;
  return fmaf(static_cast<float>(e), 0.693147180559945f, log_m);
}

// sin and cos of 2*pi*u for u in [0, 1): exact quadrant reduction, then Taylor polynomials.
SSM_HD void philox_sincos_2pi(float u, float* s_out, float* c_out) {
  const float q4 = u * 4.0f;                         // exact
  const int quadrant = static_cast<int>(q4);         // 0..3
  const float r = q4 - static_cast<float>(quadrant); // exact, in [0, 1)
  const float t = r * 1.57079632679489662f;          // angle in [0, pi/2)
  const float t2 = t * t;
  float sp = -2.50521083854e-8f;                     // -1/11!
  sp = fmaf(sp, t2, 2.75573192240e-6f);              // 1/9!
  sp = fmaf(sp, t2, -1.98412698413e-4f);             // -1/7!
  sp = fmaf(sp, t2, 8.33333333333e-3f);              // 1/5!
  sp = fmaf(sp, t2, -1.66666666667e-1f);             // -1/3!
  const float sin_t = fmaf(sp * t2, t, t);
  float cp = 2.08767569879e-9f;                      // 1/12!
  cp = fmaf(cp, t2, -2.75573192240e-7f);             // -1/10!
  cp = fmaf(cp, t2, 2.48015873016e-5f);              // 1/8!
  cp = fmaf(cp, t2, -1.38888888889e-3f);             // -1/6!
  cp = fmaf(cp, t2, 4.16666666667e-2f);              // 1/4!
  cp = fmaf(cp, t2, -0.5f);
  const float cos_t = fmaf(cp, t2, 1.0f);
  switch (quadrant) {
    case 0: *s_out = sin_t; *c_out = cos_t; break;
    case 1: *s_out = cos_t; *c_out = -sin_t; break;
    case 2: *s_out = -sin_t; *c_out = -cos_t; break;
    default: *s_out = -cos_t; *c_out = sin_t; break;
  }
}

// Element i of a uniform fill in [low, high).
SSM_HD float philox_uniform_at(uint64_t seed, uint64_t offset, int64_t i, float low, float high) {
  const Philox4 r = philox_block(seed, offset + static_cast<uint64_t>(i) / 4);
  const float u = philox_uniform01(r.v[i % 4]) - 5.9604644775390625e-8f;  // [0, 1)
  return fmaf(u, high - low, low);
}

// Element i of a normal fill: lanes (0,1) and (2,3) of a block are Box-Muller pairs.
SSM_HD float philox_normal_at(uint64_t seed, uint64_t offset, int64_t i, float mean, float std) {
  const Philox4 r = philox_block(seed, offset + static_cast<uint64_t>(i) / 4);
  const int lane = static_cast<int>(i % 4);
  const int pair = lane & ~1;
  const float u1 = philox_uniform01(r.v[pair]);
  const float u2 = philox_uniform01(r.v[pair + 1]) - 5.9604644775390625e-8f;
  const float radius = sqrtf(-2.0f * philox_log(u1));
  float s, c;
  philox_sincos_2pi(u2, &s, &c);
  const float z = (lane & 1) ? radius * s : radius * c;
  return fmaf(z, std, mean);
}

// Counter blocks that a fill of n elements consumes: advance the offset by this much.
constexpr uint64_t philox_blocks(int64_t n) { return static_cast<uint64_t>((n + 3) / 4); }

namespace cpu {
void fill_uniform(float* out, int64_t n, uint64_t seed, uint64_t offset, float low, float high);
void fill_normal(float* out, int64_t n, uint64_t seed, uint64_t offset, float mean, float std);
}  // namespace cpu

namespace cuda {
// out is f32 or bf16 (the f32 value rounded).
void fill_uniform(DType dtype, void* out, int64_t n, uint64_t seed, uint64_t offset, float low,
                  float high, cudaStream_t stream);
void fill_normal(DType dtype, void* out, int64_t n, uint64_t seed, uint64_t offset, float mean,
                 float std, cudaStream_t stream);
}  // namespace cuda

}  // namespace ssmtrain::kernels
