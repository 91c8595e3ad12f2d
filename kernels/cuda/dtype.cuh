// Device-side dtype helpers shared by the CUDA kernels: f32 <-> storage conversions and the
// dispatch from a runtime DType to the C++ element type (arithmetic always runs in f32).
// Included only from .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>

#include "kernels/common.h"

namespace ssmtrain::kernels::cuda_detail {

// ---- element loads and stores through f32 ----
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

// ---- runtime DType -> C++ type ----
template <typename T> struct TypeTag {
  using type = T;
};

[[noreturn]] inline void unsupported_dtype(const char* op, DType dtype, const char* supported) {
  throw KernelError(std::string("cuda::") + op + ": unsupported dtype " + dtype_name(dtype) +
                    " (supported: " + supported + ")");
}

// Calls fn(TypeTag<T>{}) for T in {float, __nv_bfloat16, __half}; other dtypes throw, naming op.
// Use as: dispatch_float(dtype, "op", [&](auto tag) { using T = typename decltype(tag)::type; ...});
template <typename Fn> void dispatch_float(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::f32: fn(TypeTag<float>{}); return;
    case DType::bf16: fn(TypeTag<__nv_bfloat16>{}); return;
    case DType::f16: fn(TypeTag<__half>{}); return;
    default: unsupported_dtype(op, dtype, "f32, bf16, f16");
  }
}

// The same for ops whose contract lists only f32 and bf16 (fewer instantiations).
template <typename Fn> void dispatch_f32_bf16(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::f32: fn(TypeTag<float>{}); return;
    case DType::bf16: fn(TypeTag<__nv_bfloat16>{}); return;
    default: unsupported_dtype(op, dtype, "f32, bf16");
  }
}

// Index dtypes (token ids, targets): i32 or i64.
template <typename Fn> void dispatch_index(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::i32: fn(TypeTag<int32_t>{}); return;
    case DType::i64: fn(TypeTag<int64_t>{}); return;
    default: unsupported_dtype(op, dtype, "i32, i64 (index)");
  }
}

}  // namespace ssmtrain::kernels::cuda_detail
