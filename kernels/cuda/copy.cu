// Data movement on the GPU: strided copies of any element size (contiguous copies become one
// cudaMemcpyAsync), dtype casts among f32 / bf16 / f16 / i32 / i64, and constant fills.
// Same contracts as kernels/cpu/copy.cpp (kernels/copy.h).
#include "kernels/copy.h"

#include <cstring>
#include <cuda_runtime.h>

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/layout.cuh"

namespace ssmtrain::kernels::cuda {
namespace {

using cuda_detail::ceil_div;
using cuda_detail::from_f32;
using cuda_detail::grid_for;
using cuda_detail::strided_offset;
using cuda_detail::to_f32;
using cuda_detail::TypeTag;

constexpr int kThreads = 256;

// ---- copy_strided ----

// Drops size-1 dimensions and merges neighbours that are contiguous with each other in both
// layouts, so the kernel does as little index arithmetic as the copy allows.
void simplify_layouts(Layout& src, Layout& dst) {
  Layout s, d;
  for (int dim = 0; dim < src.ndim; ++dim) {
    if (src.shape[dim] == 1) continue;
    const int last = s.ndim - 1;
    if (last >= 0 && s.strides[last] == src.strides[dim] * src.shape[dim] &&
        d.strides[last] == dst.strides[dim] * src.shape[dim]) {
      s.shape[last] *= src.shape[dim];
      d.shape[last] = s.shape[last];
      s.strides[last] = src.strides[dim];
      d.strides[last] = dst.strides[dim];
      continue;
    }
    s.shape[s.ndim] = src.shape[dim];
    s.strides[s.ndim++] = src.strides[dim];
    d.shape[d.ndim] = src.shape[dim];
    d.strides[d.ndim++] = dst.strides[dim];
  }
  src = s;
  dst = d;
}

// dst[idx . dst.strides] = src[idx . src.strides] for every linear index of the shared shape.
// Word is an unsigned integer of the element size.
template <typename Word>
__global__ void copy_strided_kernel(const Word* src, Layout src_layout, Word* dst,
                                    Layout dst_layout, int64_t numel) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < numel;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[strided_offset(i, dst_layout)] = src[strided_offset(i, src_layout)];
}

// The same for element sizes that are not 1, 2, 4 or 8 bytes: byte by byte.
__global__ void copy_strided_bytes_kernel(const uint8_t* src, Layout src_layout, uint8_t* dst,
                                          Layout dst_layout, int64_t numel, int64_t elem_size) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    const uint8_t* from = src + strided_offset(i, src_layout) * elem_size;
    uint8_t* to = dst + strided_offset(i, dst_layout) * elem_size;
    for (int64_t b = 0; b < elem_size; ++b) to[b] = from[b];
  }
}

template <typename Word>
void launch_copy_strided(const void* src, const Layout& src_layout, void* dst,
                         const Layout& dst_layout, int64_t numel, cudaStream_t stream) {
  copy_strided_kernel<Word><<<grid_for(numel, kThreads), kThreads, 0, stream>>>(
      static_cast<const Word*>(src), src_layout, static_cast<Word*>(dst), dst_layout, numel);
  SSM_CUDA_CHECK_LAUNCH();
}

// ---- cast ----

template <typename T> constexpr bool is_float_type() {
  return std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>;
}

// One element from From to To: floats go through f32, float -> int truncates toward zero,
// int -> int converts directly (no detour through f32, so i64 values survive).
template <typename To, typename From> __device__ __forceinline__ To convert(From v) {
  if constexpr (is_float_type<From>() && is_float_type<To>()) {
    return from_f32<To>(to_f32(v));
  } else if constexpr (is_float_type<From>()) {
    return static_cast<To>(to_f32(v));  // cvt.rzi: toward zero
  } else if constexpr (is_float_type<To>()) {
    return from_f32<To>(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

// dst (n) = convert(src (n)).
template <typename From, typename To>
__global__ void cast_kernel(const From* src, To* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = convert<To>(src[i]);
}

// Calls fn(TypeTag<T>{}) for the dtypes cast supports.
template <typename Fn> void dispatch_castable(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f32: fn(TypeTag<float>{}); return;
    case DType::bf16: fn(TypeTag<__nv_bfloat16>{}); return;
    case DType::f16: fn(TypeTag<__half>{}); return;
    case DType::i32: fn(TypeTag<int32_t>{}); return;
    case DType::i64: fn(TypeTag<int64_t>{}); return;
    default: cuda_detail::unsupported_dtype("cast", dtype, "f32, bf16, f16, i32, i64");
  }
}

// ---- fill ----

// dst (n) = pattern, for an element size of sizeof(Word).
template <typename Word> __global__ void fill_kernel(Word* dst, int64_t n, Word pattern) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = pattern;
}

template <typename Word>
void launch_fill(void* dst, int64_t n, uint64_t pattern_bits, cudaStream_t stream) {
  Word pattern;
  std::memcpy(&pattern, &pattern_bits, sizeof(Word));  // little-endian: the low bytes
  fill_kernel<Word><<<grid_for(n, kThreads), kThreads, 0, stream>>>(static_cast<Word*>(dst), n,
                                                                     pattern);
  SSM_CUDA_CHECK_LAUNCH();
}

// value truncated toward zero into Int, saturating at Int's limits; NaN gives 0 (as the CPU).
template <typename Int> Int saturating_int(double value) {
  if (std::isnan(value)) return 0;
  const double lo = static_cast<double>(std::numeric_limits<Int>::min());
  const double hi = static_cast<double>(std::numeric_limits<Int>::max());
  if (value <= lo) return std::numeric_limits<Int>::min();
  if (value >= hi) return std::numeric_limits<Int>::max();
  return static_cast<Int>(std::trunc(value));
}

// The bit pattern of `value` stored as dtype, in the low dtype_size bytes.
uint64_t fill_pattern(DType dtype, double value) {
  uint64_t bits = 0;
  switch (dtype) {
    case DType::f32: {
      const float f = static_cast<float>(value);
      std::memcpy(&bits, &f, 4);
      break;
    }
    case DType::bf16: bits = float_to_bf16_bits(static_cast<float>(value)); break;
    case DType::f16: bits = float_to_f16_bits(static_cast<float>(value)); break;
    case DType::i32: {
      const int32_t v = saturating_int<int32_t>(value);
      std::memcpy(&bits, &v, 4);
      break;
    }
    case DType::i64: {
      const int64_t v = saturating_int<int64_t>(value);
      std::memcpy(&bits, &v, 8);
      break;
    }
    case DType::u8: bits = saturating_int<uint8_t>(value); break;
    case DType::f64: std::memcpy(&bits, &value, 8); break;
  }
  return bits;
}

}  // namespace

void copy_strided(const void* src, const Layout& src_layout, void* dst, const Layout& dst_layout,
                  int64_t elem_size, cudaStream_t stream) {
  cuda_detail::check_same_shape("copy_strided", src_layout, dst_layout);
  if (elem_size <= 0)
    throw KernelError("cuda::copy_strided: element size must be positive, got " +
                      std::to_string(elem_size));
  const int64_t numel = src_layout.numel();
  if (numel == 0) return;
  Layout from = src_layout, to = dst_layout;
  simplify_layouts(from, to);
  // Contiguous to contiguous (a scalar, or one dimension of stride 1 after merging).
  if (from.ndim == 0 || (from.ndim == 1 && from.strides[0] == 1 && to.strides[0] == 1)) {
    SSM_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(numel * elem_size),
                                   cudaMemcpyDeviceToDevice, stream));
    return;
  }
  switch (elem_size) {
    case 1: launch_copy_strided<uint8_t>(src, from, dst, to, numel, stream); return;
    case 2: launch_copy_strided<uint16_t>(src, from, dst, to, numel, stream); return;
    case 4: launch_copy_strided<uint32_t>(src, from, dst, to, numel, stream); return;
    case 8: launch_copy_strided<uint64_t>(src, from, dst, to, numel, stream); return;
    default:
      copy_strided_bytes_kernel<<<grid_for(numel, kThreads), kThreads, 0, stream>>>(
          static_cast<const uint8_t*>(src), from, static_cast<uint8_t*>(dst), to, numel,
          elem_size);
      SSM_CUDA_CHECK_LAUNCH();
  }
}

void cast(DType from, const void* src, DType to, void* dst, int64_t n, cudaStream_t stream) {
  if (n < 0) throw KernelError("cuda::cast: negative count " + std::to_string(n));
  if (n == 0) return;
  if (from == to) {
    // Still reject dtypes the contract leaves out.
    dispatch_castable(from, [](auto) {});
    SSM_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n * dtype_size(from)),
                                   cudaMemcpyDeviceToDevice, stream));
    return;
  }
  dispatch_castable(from, [&](auto from_tag) {
    using From = typename decltype(from_tag)::type;
    dispatch_castable(to, [&](auto to_tag) {
      using To = typename decltype(to_tag)::type;
      cast_kernel<From, To><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
          static_cast<const From*>(src), static_cast<To*>(dst), n);
      SSM_CUDA_CHECK_LAUNCH();
    });
  });
}

void fill(DType dtype, void* dst, int64_t n, double value, cudaStream_t stream) {
  if (n < 0) throw KernelError("cuda::fill: negative count " + std::to_string(n));
  if (n == 0) return;
  const uint64_t pattern = fill_pattern(dtype, value);
  if (pattern == 0) {  // every byte zero (+0.0 or integer 0)
    SSM_CUDA_CHECK(cudaMemsetAsync(dst, 0, static_cast<size_t>(n * dtype_size(dtype)), stream));
    return;
  }
  switch (dtype_size(dtype)) {
    case 1: launch_fill<uint8_t>(dst, n, pattern, stream); return;
    case 2: launch_fill<uint16_t>(dst, n, pattern, stream); return;
    case 4: launch_fill<uint32_t>(dst, n, pattern, stream); return;
    case 8: launch_fill<uint64_t>(dst, n, pattern, stream); return;
    default: cuda_detail::unsupported_dtype("fill", dtype, "any");
  }
}

}  // namespace ssmtrain::kernels::cuda
