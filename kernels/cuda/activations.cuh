// The device definitions of the activations the CUDA kernels share (the CPU references' are in
// kernels/cpu/activations.h), one template per function over how its transcendentals are done:
//   Math::accurate  expf, log1pf and IEEE division: within an ulp or two of the f32 reference;
//   Math::fast_exp  exp from the special-function unit (__expf, ex2.approx: about 2 ulp), the
//                   division and log1p as accurate;
//   Math::fast      exp, log and the division on the special-function unit (__expf, __logf,
//                   __fdividef: about 2 ulp each, a few instructions where an IEEE division takes
//                   a dozen), for values that are rounded to bf16 next or sit inside a scan whose
//                   tolerance allows it. Past x = -87 the fast sigmoid is 0, its limit.
// Each kernel keeps the accuracy it was written and measured with. Also here: exp2_ftz, the
// one-instruction 2^x the scans' decays use.
// Included only from .cu files.
#pragma once

#include <cuda_runtime.h>

namespace ssmtrain::kernels::cuda_detail {

enum class Math { accurate, fast_exp, fast };

// softplus(x) = x above this (exp(-20) is below f32's rounding of x), as on the CPU.
constexpr float kSoftplusThreshold = 20.0f;

// 1 / (1 + exp(-x))
template <Math M = Math::accurate>
__device__ __forceinline__ float sigmoid(float x) {
  if constexpr (M == Math::accurate) return 1.0f / (1.0f + expf(-x));
  else if constexpr (M == Math::fast_exp) return 1.0f / (1.0f + __expf(-x));
  else return __fdividef(1.0f, 1.0f + __expf(-x));
}

// log(1 + exp(x)); the fast form returns exp(x) below -15, where 1 + exp(x) rounds to 1.
template <Math M = Math::accurate>
__device__ __forceinline__ float softplus(float x) {
  if constexpr (M == Math::accurate) return x > kSoftplusThreshold ? x : log1pf(expf(x));
  else if constexpr (M == Math::fast_exp) return x > kSoftplusThreshold ? x : log1pf(__expf(x));
  else return x > kSoftplusThreshold ? x : (x < -15.0f ? __expf(x) : __logf(1.0f + __expf(x)));
}

// x sigmoid(x)
template <Math M = Math::accurate>
__device__ __forceinline__ float silu(float x) {
  return x * sigmoid<M>(x);
}

// d silu(x) / dx from x and sg = sigmoid(x).
__device__ __forceinline__ float silu_grad_from(float x, float sg) { return sg * (1.0f + x * (1.0f - sg)); }
template <Math M = Math::accurate>
__device__ __forceinline__ float silu_grad(float x) {
  return silu_grad_from(x, sigmoid<M>(x));
}

// 2^x in one MUFU.EX2 (ex2.approx.ftz, 2 ulp); results below 2^-126 flush to zero, where a
// decay is zero for every purpose (exp2f spends four more instructions keeping them subnormal).
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace ssmtrain::kernels::cuda_detail
