// Per-thread runs of K consecutive elements between memory and f32 registers, as 16-byte
// (or 8-byte) vectors when the caller knows the run is aligned, else element by element with
// a bound. Included only from .cu files.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/dtype.cuh"

namespace ssmtrain::kernels::cuda_detail {

// K consecutive elements from p[t0 ...], zeros past `end`. When `aligned` (rows and pointers
// on 16-byte boundaries), whole 16- or 8-byte vectors.
template <int K, typename T>
__device__ __forceinline__ void load_items(const T* p, int64_t t0, int64_t end, bool aligned, float (&v)[K]) {
  constexpr int kBytes = sizeof(T) * K;
  if (aligned && t0 + K <= end) {
    if constexpr (kBytes % 16 == 0) {
      constexpr int kPer = 16 / sizeof(T);
#pragma unroll
      for (int q = 0; q < kBytes / 16; ++q) {
        const uint4 raw = reinterpret_cast<const uint4*>(p + t0)[q];
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int j = 0; j < kPer; ++j) v[q * kPer + j] = to_f32(e[j]);
      }
      return;
    } else if constexpr (kBytes == 8) {
      const uint2 raw = *reinterpret_cast<const uint2*>(p + t0);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int i = 0; i < K; ++i) v[i] = to_f32(e[i]);
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < K; ++i) v[i] = t0 + i < end ? to_f32(p[t0 + i]) : 0.0f;
}

template <int K, typename T>
__device__ __forceinline__ void store_items(T* p, int64_t t0, int64_t end, bool aligned, const float (&v)[K]) {
  constexpr int kBytes = sizeof(T) * K;
  if (aligned && t0 + K <= end) {
    if constexpr (kBytes % 16 == 0 || kBytes == 8) {
      T e[K];
#pragma unroll
      for (int i = 0; i < K; ++i) e[i] = from_f32<T>(v[i]);
      if constexpr (kBytes % 16 == 0) {
#pragma unroll
        for (int q = 0; q < kBytes / 16; ++q)
          reinterpret_cast<uint4*>(p + t0)[q] = reinterpret_cast<const uint4*>(e)[q];
      } else {
        *reinterpret_cast<uint2*>(p + t0) = *reinterpret_cast<const uint2*>(e);
      }
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < K; ++i)
    if (t0 + i < end) p[t0 + i] = from_f32<T>(v[i]);
}

}  // namespace ssmtrain::kernels::cuda_detail
