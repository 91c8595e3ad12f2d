// Shared vocabulary of the kernels: dtypes, strided layouts, host bf16/f16 conversion.
// kernels/ knows no Tensor: every op takes raw pointers, sizes and (on the GPU) a stream.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

// The same type CUDA's runtime declares, so headers need not include cuda_runtime.h.
struct CUstream_st;
using cudaStream_t = CUstream_st*;

#if defined(__CUDACC__)
#define SSM_HD __host__ __device__ __forceinline__
#else
#define SSM_HD inline
#endif

namespace ssmtrain {

enum class DType : uint8_t { f32, bf16, f16, i32, i64, u8, f64 };

constexpr int64_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::bf16: return 2;
    case DType::f16: return 2;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::u8: return 1;
    case DType::f64: return 8;
  }
  return 0;
}

constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::u8: return "u8";
    case DType::f64: return "f64";
  }
  return "?";
}

constexpr bool dtype_is_float(DType t) {
  return t == DType::f32 || t == DType::bf16 || t == DType::f16 || t == DType::f64;
}

namespace kernels {

// At most this many dimensions in a strided layout (enough for (b, l, h, p, n) and friends).
constexpr int kMaxDims = 8;

// A shape and the element strides of one operand over it. For broadcasting, an operand's
// stride is 0 along a dimension it is broadcast over. Passed by value to CUDA kernels.
struct Layout {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  // Element offset of row `row` (a linear index over dims 0..ndim-2) under these strides.
  SSM_HD int64_t row_offset(int64_t row) const {
    int64_t offset = 0;
    for (int d = ndim - 2; d >= 0; --d) {
      offset += (row % shape[d]) * strides[d];
      row /= shape[d];
    }
    return offset;
  }
};

// Elementwise activations. gelu is the exact erf form.
enum class UnaryOp : uint8_t { neg, exp, log, silu, gelu, softplus, sigmoid, sqrt, square };
enum class BinaryOp : uint8_t { add, sub, mul, div };

// ---- host conversions (round to nearest even; NaN stays NaN) ----
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t float_to_f16_bits(float f);
float f16_bits_to_float(uint16_t h);

// Thrown for a contract violation (bad sizes, unsupported dtype); message says which op.
struct KernelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace kernels
}  // namespace ssmtrain
