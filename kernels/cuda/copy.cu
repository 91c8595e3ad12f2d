// Data movement on the GPU: strided copies of any element size (contiguous copies become one
// cudaMemcpyAsync, batched transposes go through shared-memory tiles), dtype casts among
// f32 / bf16 / f16 / i32 / i64, and constant fills.
// Same contracts as kernels/cpu/copy.cpp (kernels/copy.h).
#include "kernels/copy.h"

#include <cstring>
#include <cuda_runtime.h>

#include <algorithm>
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

// Batched 2-D transposes: copies whose dst-contiguous dimension `a` is not the src-contiguous
// one `b` (the (b, l, c) <-> (b, c, l) layout changes of the Mamba mixers). Element by element
// such a copy reads or writes with a stride, at a fraction of copy bandwidth; here a 32 x 32
// tile of (a, b) goes through shared memory so that both the reads (along b) and the writes
// (along a) are coalesced. The other dimensions (`rest`) index whole tiles.
struct TransposePlan {
  int64_t na = 0, nb = 0;        // sizes of dimensions a and b
  int64_t src_a = 0, dst_b = 0;  // src stride of a, dst stride of b (src stride of b and dst stride of a are 1)
  Layout rest_src, rest_dst;     // the remaining dimensions, in order
  int64_t rest_numel = 1;
};

constexpr int kTransposeTile = 32;
constexpr int kTransposeRows = 8;  // blockDim (32, 8): each thread moves 4 elements of a tile

template <typename Word>
__global__ void __launch_bounds__(kTransposeTile* kTransposeRows)
    copy_transpose_kernel(const Word* src, Word* dst, TransposePlan plan, int64_t tiles_b) {
  __shared__ Word tile[kTransposeTile][kTransposeTile + 1];  // +1: no bank conflicts down a column
  const int64_t a0 = int64_t(blockIdx.x / tiles_b) * kTransposeTile;
  const int64_t b0 = int64_t(blockIdx.x % tiles_b) * kTransposeTile;
  for (int64_t r = blockIdx.y; r < plan.rest_numel; r += gridDim.y) {
    const Word* from = src + strided_offset(r, plan.rest_src);
    Word* to = dst + strided_offset(r, plan.rest_dst);
    for (int k = threadIdx.y; k < kTransposeTile; k += kTransposeRows) {
      const int64_t a = a0 + k, b = b0 + threadIdx.x;
      if (a < plan.na && b < plan.nb) tile[k][threadIdx.x] = from[a * plan.src_a + b];
    }
    __syncthreads();
    for (int k = threadIdx.y; k < kTransposeTile; k += kTransposeRows) {
      const int64_t b = b0 + k, a = a0 + threadIdx.x;
      if (a < plan.na && b < plan.nb) to[b * plan.dst_b + a] = tile[threadIdx.x][k];
    }
    __syncthreads();
  }
}

// The plan for a simplified pair of layouts, when the copy is such a transpose.
bool plan_transpose(const Layout& src, const Layout& dst, TransposePlan* plan) {
  int a = -1, b = -1;
  for (int dim = 0; dim < src.ndim; ++dim) {
    if (dst.strides[dim] == 1) a = dim;
    if (src.strides[dim] == 1) b = dim;
  }
  if (a < 0 || b < 0 || a == b) return false;
  plan->na = src.shape[a];
  plan->nb = src.shape[b];
  plan->src_a = src.strides[a];
  plan->dst_b = dst.strides[b];
  for (int dim = 0; dim < src.ndim; ++dim) {
    if (dim == a || dim == b) continue;
    const int r = plan->rest_src.ndim++;
    plan->rest_dst.ndim++;
    plan->rest_src.shape[r] = plan->rest_dst.shape[r] = src.shape[dim];
    plan->rest_src.strides[r] = src.strides[dim];
    plan->rest_dst.strides[r] = dst.strides[dim];
    plan->rest_numel *= src.shape[dim];
  }
  return true;
}

template <typename Word>
void launch_copy_transpose(const void* src, void* dst, const TransposePlan& plan, cudaStream_t stream) {
  const int64_t tiles_a = ceil_div(plan.na, int64_t(kTransposeTile)), tiles_b = ceil_div(plan.nb, int64_t(kTransposeTile));
  const dim3 grid(unsigned(tiles_a * tiles_b), unsigned(std::min<int64_t>(plan.rest_numel, 65535)));
  copy_transpose_kernel<Word><<<grid, dim3(kTransposeTile, kTransposeRows), 0, stream>>>(
      static_cast<const Word*>(src), static_cast<Word*>(dst), plan, tiles_b);
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
  TransposePlan plan;
  if (plan_transpose(from, to, &plan) && ceil_div(plan.na, int64_t(kTransposeTile)) * ceil_div(plan.nb, int64_t(kTransposeTile)) < (int64_t(1) << 31)) {
    switch (elem_size) {
      case 1: launch_copy_transpose<uint8_t>(src, dst, plan, stream); return;
      case 2: launch_copy_transpose<uint16_t>(src, dst, plan, stream); return;
      case 4: launch_copy_transpose<uint32_t>(src, dst, plan, stream); return;
      case 8: launch_copy_transpose<uint64_t>(src, dst, plan, stream); return;
      default: break;
    }
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
