// The host definitions of the activations the CPU reference kernels share (the CUDA kernels'
// are in kernels/cuda/activations.cuh), in the reference's own precision T (float or double).
#pragma once

#include <cmath>

namespace ssmtrain::kernels::cpu {

// softplus(x) = x above this (exp(-20) is below the rounding of x), on the GPU too.
constexpr double kSoftplusThreshold = 20.0;

// 1 / (1 + exp(-x)); 0 where exp(-x) overflows, its limit.
template <typename T> T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

// log(1 + exp(x)).
template <typename T> T softplus(T x) { return x > T(kSoftplusThreshold) ? x : std::log1p(std::exp(x)); }

// x sigmoid(x)
template <typename T> T silu(T x) { return x * sigmoid(x); }

// d silu(x) / dx
template <typename T> T silu_grad(T x) {
  const T sg = sigmoid(x);
  return sg * (T(1) + x * (T(1) - sg));
}

}  // namespace ssmtrain::kernels::cpu
