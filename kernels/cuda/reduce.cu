// Reductions on the GPU with a fixed summation order: sum over one dimension of (outer, n,
// inner), sum of a broadcast gradient back to an operand's shape, (log-)softmax and its
// backward, and a whole-tensor sum. Same contracts as kernels/cpu/reduce.cpp; accumulation f32.
//   inner == 1: one block per row, each thread sums a fixed stride of the row, then a fixed
//               block tree (block_reduce.cuh); inner > 1: one thread per (outer, inner) column
//               looping over n in order. sum_to: one thread per (output, chunk of the reduced
//               space), chunks added in order. No atomics, so every run gives the same bits.
#include "kernels/reduce.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"

namespace ssmtrain::kernels::cuda {
namespace {

using cuda_detail::block_max;
using cuda_detail::block_sum;
using cuda_detail::ceil_div;
using cuda_detail::dispatch_float;
using cuda_detail::from_f32;
using cuda_detail::grid_for;
using cuda_detail::row_block_threads;
using cuda_detail::to_f32;

constexpr int kThreads = 256;
// sum_to: split the reduction into ordered chunks of this length (at most kSumToMaxChunks),
// unless there are already this many outputs to keep the GPU busy.
constexpr int64_t kSumToChunkLen = 64;
constexpr int64_t kSumToMaxChunks = 1024;
constexpr int64_t kSumToManyOutputs = 65536;

#define SSM_GRID_STRIDE_LOOP(i, n)                                          \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

// ---- sum_dim ----

// y (rows) = scale * sum of x (rows, n); one block per row (grid-stride over rows).
template <typename T>
__global__ void sum_rows_kernel(const T* x, int64_t rows, int64_t n, T* y, float scale) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* x_row = x + row * n;
    float partial = 0.0f;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) partial += to_f32(x_row[j]);
    const float total = block_sum(partial);
    if (threadIdx.x == 0) y[row] = from_f32<T>(scale * total);
  }
}

// y (outer, inner) = scale * sum over n of x (outer, n, inner); one thread per column.
template <typename T>
__global__ void sum_columns_kernel(const T* x, int64_t outer, int64_t n, int64_t inner, T* y,
                                   float scale) {
  SSM_GRID_STRIDE_LOOP(col, outer * inner) {
    const int64_t o = col / inner, i = col % inner;
    const T* x_col = x + o * n * inner + i;
    float total = 0.0f;
    for (int64_t j = 0; j < n; ++j) total += to_f32(x_col[j * inner]);
    y[col] = from_f32<T>(scale * total);
  }
}

// dx (outer, n, inner) = scale * dy (outer, inner).
template <typename T>
__global__ void broadcast_dim_kernel(const T* dy, int64_t outer, int64_t n, int64_t inner, T* dx,
                                     float scale) {
  SSM_GRID_STRIDE_LOOP(idx, outer * n * inner) {
    const int64_t o = idx / (n * inner), i = idx % inner;
    dx[idx] = from_f32<T>(scale * to_f32(dy[o * inner + i]));
  }
}

// ---- sum_to ----

// How sum_to walks the full shape: the kept dimensions index the output, the reduced ones
// (dst stride 0, size other than 1) are summed over in row-major order. A reduced dimension
// of size 0 gives zeros.
struct SumToPlan {
  int kept_ndim = 0;
  int64_t kept_shape[kMaxDims] = {};
  int64_t kept_src_stride[kMaxDims] = {};
  int64_t kept_dst_stride[kMaxDims] = {};
  int reduced_ndim = 0;
  int64_t reduced_shape[kMaxDims] = {};
  int64_t reduced_src_stride[kMaxDims] = {};
  int64_t outputs = 1;   // product of kept_shape
  int64_t reduced = 1;   // product of reduced_shape
};

// Offsets of output element `out` (linear over the kept dims): its first source element and
// its place in dst.
__device__ __forceinline__ void sum_to_offsets(int64_t out, const SumToPlan& plan,
                                               int64_t* src_base, int64_t* dst_offset) {
  int64_t rest = out;
  *src_base = 0;
  *dst_offset = 0;
  for (int dim = plan.kept_ndim - 1; dim >= 0; --dim) {
    const int64_t index = rest % plan.kept_shape[dim];
    rest /= plan.kept_shape[dim];
    *src_base += index * plan.kept_src_stride[dim];
    *dst_offset += index * plan.kept_dst_stride[dim];
  }
}

// One thread per (chunk, output element): sums the chunk's slice [chunk * chunk_len, ...) of
// the reduced index space in order. With one chunk the sum goes straight to dst; otherwise to
// partials (chunks, outputs). Adjacent threads take adjacent outputs (coalesced for a bias).
template <typename T>
__global__ void sum_to_chunks_kernel(const T* src, SumToPlan plan, int64_t chunks,
                                     int64_t chunk_len, float* partials, T* dst) {
  SSM_GRID_STRIDE_LOOP(idx, plan.outputs * chunks) {
    const int64_t chunk = idx / plan.outputs, out = idx % plan.outputs;
    int64_t src_base, dst_offset;
    sum_to_offsets(out, plan, &src_base, &dst_offset);
    const int64_t r_end = min(plan.reduced, (chunk + 1) * chunk_len);
    float total = 0.0f;
    for (int64_t r = chunk * chunk_len; r < r_end; ++r) {
      int64_t rest_r = r, src_offset = src_base;
      for (int dim = plan.reduced_ndim - 1; dim >= 0; --dim) {
        src_offset += (rest_r % plan.reduced_shape[dim]) * plan.reduced_src_stride[dim];
        rest_r /= plan.reduced_shape[dim];
      }
      total += to_f32(src[src_offset]);
    }
    if (chunks == 1)
      dst[dst_offset] = from_f32<T>(total);
    else
      partials[idx] = total;
  }
}

// dst[out] = sum over chunks, in order, of partials (chunks, outputs).
template <typename T>
__global__ void sum_to_final_kernel(const float* partials, SumToPlan plan, int64_t chunks, T* dst) {
  SSM_GRID_STRIDE_LOOP(out, plan.outputs) {
    int64_t src_base, dst_offset;
    sum_to_offsets(out, plan, &src_base, &dst_offset);
    float total = 0.0f;
    for (int64_t c = 0; c < chunks; ++c) total += partials[c * plan.outputs + out];
    dst[dst_offset] = from_f32<T>(total);
  }
}

// ---- softmax ----

// y (rows, n) = softmax or log_softmax of x (rows, n); one block per row.
template <typename T>
__global__ void softmax_rows_kernel(const T* x, int64_t rows, int64_t n, T* y, bool log) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* x_row = x + row * n;
    T* y_row = y + row * n;
    float local_max = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      local_max = cuda_detail::MaxOp{}(local_max, to_f32(x_row[j]));
    const float row_max = block_max(local_max);
    float local_sum = 0.0f;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      local_sum += expf(to_f32(x_row[j]) - row_max);
    const float row_sum = block_sum(local_sum);
    const float log_sum = logf(row_sum), inv_sum = 1.0f / row_sum;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const float shifted = to_f32(x_row[j]) - row_max;
      y_row[j] = from_f32<T>(log ? shifted - log_sum : expf(shifted) * inv_sum);
    }
  }
}

// The same over (outer, n, inner) with inner > 1: one thread per (outer, inner) column.
template <typename T>
__global__ void softmax_columns_kernel(const T* x, int64_t outer, int64_t n, int64_t inner, T* y,
                                       bool log) {
  SSM_GRID_STRIDE_LOOP(col, outer * inner) {
    const int64_t base = (col / inner) * n * inner + col % inner;
    float col_max = -INFINITY;
    for (int64_t j = 0; j < n; ++j) col_max = cuda_detail::MaxOp{}(col_max, to_f32(x[base + j * inner]));
    float col_sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) col_sum += expf(to_f32(x[base + j * inner]) - col_max);
    const float log_sum = logf(col_sum), inv_sum = 1.0f / col_sum;
    for (int64_t j = 0; j < n; ++j) {
      const float shifted = to_f32(x[base + j * inner]) - col_max;
      y[base + j * inner] = from_f32<T>(log ? shifted - log_sum : expf(shifted) * inv_sum);
    }
  }
}

// Backward of one softmax / log_softmax entry given the row's reduction
// (softmax: sum(dy * y); log: sum(dy)). The reduction and the difference dy - dot are kept in
// f64: where dy and dot nearly cancel, an f32 dot would lose the small result.
__device__ __forceinline__ float softmax_grad(float y, float dy, double row_dot, bool log) {
  return log ? static_cast<float>(dy - static_cast<double>(expf(y)) * row_dot)
             : static_cast<float>(y * (dy - row_dot));
}

struct DoubleSumOp {
  __device__ __forceinline__ double operator()(double a, double b) const { return a + b; }
};

// dx (rows, n) from y, dy (rows, n); one block per row.
template <typename T>
__global__ void softmax_backward_rows_kernel(const T* y, const T* dy, int64_t rows, int64_t n,
                                             T* dx, bool log) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* y_row = y + row * n;
    const T* dy_row = dy + row * n;
    double local = 0.0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      local += log ? to_f32(dy_row[j]) : double(to_f32(dy_row[j])) * to_f32(y_row[j]);
    const double row_dot = cuda_detail::block_allreduce(local, DoubleSumOp{}, 0.0);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      dx[row * n + j] = from_f32<T>(softmax_grad(to_f32(y_row[j]), to_f32(dy_row[j]), row_dot, log));
  }
}

// The same over (outer, n, inner) with inner > 1: one thread per column.
template <typename T>
__global__ void softmax_backward_columns_kernel(const T* y, const T* dy, int64_t outer, int64_t n,
                                                int64_t inner, T* dx, bool log) {
  SSM_GRID_STRIDE_LOOP(col, outer * inner) {
    const int64_t base = (col / inner) * n * inner + col % inner;
    double col_dot = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t at = base + j * inner;
      col_dot += log ? to_f32(dy[at]) : double(to_f32(dy[at])) * to_f32(y[at]);
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t at = base + j * inner;
      dx[at] = from_f32<T>(softmax_grad(to_f32(y[at]), to_f32(dy[at]), col_dot, log));
    }
  }
}

// ---- sum_all ----

constexpr int kSumAllThreads = 512;
constexpr int64_t kSumAllMaxBlocks = 1024;

// partials (gridDim.x) = per-block sums of x (n): block b sums elements b*T + t + k*(grid*T).
// The grid size is a function of n only, so the order is fixed.
template <typename T>
__global__ void sum_all_partials_kernel(const T* x, int64_t n, float* partials) {
  float local = 0.0f;
  SSM_GRID_STRIDE_LOOP(i, n) local += to_f32(x[i]);
  const float total = block_sum(local);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// out = sum of partials (count), in one block.
template <typename T>
__global__ void sum_all_final_kernel(const float* partials, int64_t count, T* out) {
  float local = 0.0f;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) local += partials[i];
  const float total = block_sum(local);
  if (threadIdx.x == 0) out[0] = from_f32<T>(total);
}

#undef SSM_GRID_STRIDE_LOOP

// Blocks for a per-row kernel; rows beyond the cap are covered by the grid-stride loop.
unsigned row_grid(int64_t rows) {
  return static_cast<unsigned>(rows < 65535LL * 16 ? (rows < 1 ? 1 : rows) : 65535LL * 16);
}

void check_dims(const char* op, int64_t outer, int64_t n, int64_t inner) {
  if (outer < 0 || n < 0 || inner < 0)
    throw KernelError(std::string("cuda::") + op + ": negative size (outer " +
                      std::to_string(outer) + ", n " + std::to_string(n) + ", inner " +
                      std::to_string(inner) + ")");
}

}  // namespace

void sum_dim(DType dtype, const void* x, int64_t outer, int64_t n, int64_t inner, void* y,
             double scale, cudaStream_t s) {
  check_dims("sum_dim", outer, n, inner);
  if (outer * inner == 0) return;
  dispatch_float(dtype, "sum_dim", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x_t = static_cast<const T*>(x);
    T* y_t = static_cast<T*>(y);
    if (inner == 1) {
      const int threads = row_block_threads(n);
      sum_rows_kernel<T><<<row_grid(outer), threads, 0, s>>>(x_t, outer, n, y_t, float(scale));
    } else {
      sum_columns_kernel<T><<<grid_for(outer * inner, kThreads), kThreads, 0, s>>>(
          x_t, outer, n, inner, y_t, float(scale));
    }
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void sum_dim_backward(DType dtype, const void* dy, int64_t outer, int64_t n, int64_t inner, void* dx,
                      double scale, cudaStream_t s) {
  check_dims("sum_dim_backward", outer, n, inner);
  const int64_t numel = outer * n * inner;
  if (numel == 0) return;
  dispatch_float(dtype, "sum_dim_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    broadcast_dim_kernel<T><<<grid_for(numel, kThreads), kThreads, 0, s>>>(
        static_cast<const T*>(dy), outer, n, inner, static_cast<T*>(dx), float(scale));
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void sum_to(DType dtype, const void* src, const Layout& full, void* dst, const Layout& dst_layout,
            cudaStream_t s) {
  if (full.ndim < 0 || full.ndim > kMaxDims || dst_layout.ndim != full.ndim)
    throw KernelError("cuda::sum_to: dst_layout must have the full shape's ndim (" +
                      std::to_string(full.ndim) + "), got " + std::to_string(dst_layout.ndim));
  SumToPlan plan;
  int64_t src_stride = 1;  // src is contiguous over full.shape
  int64_t src_strides[kMaxDims] = {};
  for (int dim = full.ndim - 1; dim >= 0; --dim) {
    src_strides[dim] = src_stride;
    src_stride *= full.shape[dim];
  }
  for (int dim = 0; dim < full.ndim; ++dim) {
    if (full.shape[dim] < 0 || dst_layout.shape[dim] < 0)
      throw KernelError("cuda::sum_to: negative size at dimension " + std::to_string(dim));
    if (dst_layout.strides[dim] == 0 && full.shape[dim] != 1) {
      plan.reduced_shape[plan.reduced_ndim] = full.shape[dim];
      plan.reduced_src_stride[plan.reduced_ndim++] = src_strides[dim];
      plan.reduced *= full.shape[dim];
    } else {
      plan.kept_shape[plan.kept_ndim] = full.shape[dim];
      plan.kept_src_stride[plan.kept_ndim] = src_strides[dim];
      plan.kept_dst_stride[plan.kept_ndim++] = dst_layout.strides[dim];
      plan.outputs *= full.shape[dim];
    }
  }
  if (plan.outputs == 0) return;
  // Few outputs with long reductions (a bias gradient) split the reduced space into ordered
  // chunks of partial sums, then add the chunks in order. The split depends on the shape only.
  const int64_t chunks =
      plan.outputs >= kSumToManyOutputs
          ? 1
          : std::clamp<int64_t>(ceil_div(plan.reduced, kSumToChunkLen), 1, kSumToMaxChunks);
  const int64_t chunk_len = std::max<int64_t>(1, ceil_div(plan.reduced, chunks));
  dispatch_float(dtype, "sum_to", [&](auto tag) {
    using T = typename decltype(tag)::type;
    float* partials = nullptr;
    if (chunks > 1)
      SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partials),
                                     static_cast<size_t>(chunks * plan.outputs) * sizeof(float), s));
    sum_to_chunks_kernel<T><<<grid_for(plan.outputs * chunks, kThreads), kThreads, 0, s>>>(
        static_cast<const T*>(src), plan, chunks, chunk_len, partials, static_cast<T*>(dst));
    SSM_CUDA_CHECK_LAUNCH();
    if (chunks > 1) {
      sum_to_final_kernel<T><<<grid_for(plan.outputs, kThreads), kThreads, 0, s>>>(
          partials, plan, chunks, static_cast<T*>(dst));
      SSM_CUDA_CHECK_LAUNCH();
      SSM_CUDA_CHECK(cudaFreeAsync(partials, s));
    }
  });
}

void softmax_forward(DType dtype, const void* x, int64_t outer, int64_t n, int64_t inner, void* y,
                     bool log, cudaStream_t s) {
  check_dims("softmax_forward", outer, n, inner);
  if (outer * n * inner == 0) return;
  dispatch_float(dtype, "softmax_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x_t = static_cast<const T*>(x);
    T* y_t = static_cast<T*>(y);
    if (inner == 1) {
      softmax_rows_kernel<T><<<row_grid(outer), row_block_threads(n), 0, s>>>(x_t, outer, n, y_t,
                                                                              log);
    } else {
      softmax_columns_kernel<T><<<grid_for(outer * inner, kThreads), kThreads, 0, s>>>(
          x_t, outer, n, inner, y_t, log);
    }
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void softmax_backward(DType dtype, const void* y, const void* dy, int64_t outer, int64_t n,
                      int64_t inner, void* dx, bool log, cudaStream_t s) {
  check_dims("softmax_backward", outer, n, inner);
  if (outer * n * inner == 0) return;
  dispatch_float(dtype, "softmax_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* y_t = static_cast<const T*>(y);
    const T* dy_t = static_cast<const T*>(dy);
    T* dx_t = static_cast<T*>(dx);
    if (inner == 1) {
      softmax_backward_rows_kernel<T><<<row_grid(outer), row_block_threads(n), 0, s>>>(
          y_t, dy_t, outer, n, dx_t, log);
    } else {
      softmax_backward_columns_kernel<T><<<grid_for(outer * inner, kThreads), kThreads, 0, s>>>(
          y_t, dy_t, outer, n, inner, dx_t, log);
    }
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void sum_all(DType dtype, const void* x, int64_t n, void* out, cudaStream_t s) {
  if (n < 0) throw KernelError("cuda::sum_all: negative count " + std::to_string(n));
  dispatch_float(dtype, "sum_all", [&](auto tag) {
    using T = typename decltype(tag)::type;
    // Pass 1: a grid fixed by n (never by the device) writes one partial per block.
    const int64_t blocks = n == 0 ? 1 : std::min(ceil_div(n, kSumAllThreads), kSumAllMaxBlocks);
    float* partials = nullptr;
    SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partials),
                                   static_cast<size_t>(blocks) * sizeof(float), s));
    sum_all_partials_kernel<T><<<static_cast<unsigned>(blocks), kSumAllThreads, 0, s>>>(
        static_cast<const T*>(x), n, partials);
    SSM_CUDA_CHECK_LAUNCH();
    // Pass 2: one block sums the partials in order.
    sum_all_final_kernel<T><<<1, kSumAllThreads, 0, s>>>(partials, blocks, static_cast<T*>(out));
    SSM_CUDA_CHECK_LAUNCH();
    SSM_CUDA_CHECK(cudaFreeAsync(partials, s));
  });
}

}  // namespace ssmtrain::kernels::cuda
