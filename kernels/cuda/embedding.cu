// Embedding lookup on the GPU and its deterministic backward: the (id, position) pairs are
// stably radix-sorted by id (CUB), then each run of equal ids is summed by one block in
// position order and added into its row of dtable. No atomics: the same bits on every run.
#include "kernels/embedding.h"

#include <algorithm>
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>

#include <limits>
#include <string>

#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"

namespace ssmtrain::kernels::cuda {
namespace {

using cuda_detail::ceil_div;
using cuda_detail::dispatch_float;
using cuda_detail::dispatch_index;
using cuda_detail::from_f32;
using cuda_detail::grid_for;
using cuda_detail::to_f32;

constexpr int kThreads = 256;

// out (n, d) = table[ids] (vocab, d); an id outside [0, vocab) gives a zero row.
template <typename T, typename Index>
__global__ void embedding_forward_kernel(const Index* ids, int64_t n, const T* table,
                                         int64_t vocab, int64_t d, T* out) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n * d;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t token = idx / d, col = idx % d;
    const int64_t id = static_cast<int64_t>(ids[token]);
    out[idx] = (id >= 0 && id < vocab) ? table[id * d + col] : from_f32<T>(0.0f);
  }
}

// Sort keys (n): the id, or `vocab` (sorted last, then skipped) for an id out of range;
// positions (n) = 0 .. n-1.
template <typename Index>
__global__ void make_sort_pairs_kernel(const Index* ids, int64_t n, int64_t vocab, uint32_t* keys,
                                       int32_t* positions) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t id = static_cast<int64_t>(ids[i]);
    keys[i] = static_cast<uint32_t>((id >= 0 && id < vocab) ? id : vocab);
    positions[i] = static_cast<int32_t>(i);
  }
}

// One block per sorted slot; the block at the first slot of a run of equal ids sums the dy
// rows (n, d) of that run in position order (the sort is stable) and adds the sum into
// dtable[id] (vocab, d). Other blocks return at once.
template <typename T>
__global__ void embedding_accumulate_runs_kernel(const uint32_t* sorted_keys,
                                                 const int32_t* sorted_positions, int64_t n,
                                                 const T* dy, int64_t vocab, int64_t d,
                                                 T* dtable) {
  for (int64_t start = blockIdx.x; start < n; start += gridDim.x) {
    const uint32_t id = sorted_keys[start];
    if (static_cast<int64_t>(id) >= vocab) continue;          // out-of-range ids sort last
    if (start > 0 && sorted_keys[start - 1] == id) continue;  // not the first of its run
    int64_t end = start + 1;
    while (end < n && sorted_keys[end] == id) ++end;
    T* row = dtable + static_cast<int64_t>(id) * d;
    for (int64_t col = threadIdx.x; col < d; col += blockDim.x) {
      float total = 0.0f;
      for (int64_t slot = start; slot < end; ++slot)
        total += to_f32(dy[static_cast<int64_t>(sorted_positions[slot]) * d + col]);
      row[col] = from_f32<T>(to_f32(row[col]) + total);
    }
  }
}

// Bits needed to hold every key 0 .. max_key.
int key_bits(int64_t max_key) {
  int bits = 1;
  while (bits < 32 && (int64_t(1) << bits) <= max_key) ++bits;
  return bits;
}

void check_sizes(const char* op, int64_t n, int64_t vocab, int64_t d) {
  if (n < 0 || vocab < 0 || d < 0)
    throw KernelError(std::string("cuda::") + op + ": negative size (n " + std::to_string(n) +
                      ", vocab " + std::to_string(vocab) + ", d " + std::to_string(d) + ")");
}

}  // namespace

void embedding_forward(DType dtype, DType index_dtype, const void* ids, int64_t n,
                       const void* table, int64_t vocab, int64_t d, void* out, cudaStream_t s) {
  check_sizes("embedding_forward", n, vocab, d);
  if (n == 0 || d == 0) return;
  dispatch_float(dtype, "embedding_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_index(index_dtype, "embedding_forward", [&](auto index_tag) {
      using Index = typename decltype(index_tag)::type;
      embedding_forward_kernel<T, Index><<<grid_for(n * d, kThreads), kThreads, 0, s>>>(
          static_cast<const Index*>(ids), n, static_cast<const T*>(table), vocab, d,
          static_cast<T*>(out));
      SSM_CUDA_CHECK_LAUNCH();
    });
  });
}

void embedding_backward(DType dtype, DType index_dtype, const void* ids, int64_t n, const void* dy,
                        int64_t vocab, int64_t d, void* dtable, cudaStream_t s) {
  check_sizes("embedding_backward", n, vocab, d);
  if (n == 0 || d == 0 || vocab == 0) return;
  if (n > std::numeric_limits<int32_t>::max() || vocab >= std::numeric_limits<uint32_t>::max())
    throw KernelError("cuda::embedding_backward: n " + std::to_string(n) + " or vocab " +
                      std::to_string(vocab) + " too large (n < 2^31, vocab < 2^32 - 1)");
  const int num_items = static_cast<int>(n);
  // Reject bad dtypes before any scratch is allocated.
  dispatch_float(dtype, "embedding_backward", [](auto) {});
  dispatch_index(index_dtype, "embedding_backward", [](auto) {});

  // Scratch: keys and positions, before and after the sort.
  uint32_t *keys_in = nullptr, *keys_out = nullptr;
  int32_t *positions_in = nullptr, *positions_out = nullptr;
  const size_t key_bytes = static_cast<size_t>(n) * sizeof(uint32_t);
  const size_t position_bytes = static_cast<size_t>(n) * sizeof(int32_t);
  SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&keys_in), key_bytes, s));
  SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&keys_out), key_bytes, s));
  SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&positions_in), position_bytes, s));
  SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&positions_out), position_bytes, s));

  dispatch_index(index_dtype, "embedding_backward", [&](auto index_tag) {
    using Index = typename decltype(index_tag)::type;
    make_sort_pairs_kernel<Index><<<grid_for(n, kThreads), kThreads, 0, s>>>(
        static_cast<const Index*>(ids), n, vocab, keys_in, positions_in);
    SSM_CUDA_CHECK_LAUNCH();
  });

  // Stable LSD radix sort over the bits that keys 0 .. vocab use.
  const int end_bit = key_bits(vocab);
  size_t temp_bytes = 0;
  SSM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, keys_out,
                                                 positions_in, positions_out, num_items, 0,
                                                 end_bit, s));
  void* temp = nullptr;
  SSM_CUDA_CHECK(cudaMallocAsync(&temp, temp_bytes > 0 ? temp_bytes : 1, s));
  SSM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, positions_in,
                                                 positions_out, num_items, 0, end_bit, s));

  dispatch_float(dtype, "embedding_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(n, 65535LL * 16));
    const int threads = d <= 128 ? 128 : kThreads;
    embedding_accumulate_runs_kernel<T><<<blocks, threads, 0, s>>>(
        keys_out, positions_out, n, static_cast<const T*>(dy), vocab, d, static_cast<T*>(dtable));
    SSM_CUDA_CHECK_LAUNCH();
  });

  SSM_CUDA_CHECK(cudaFreeAsync(temp, s));
  SSM_CUDA_CHECK(cudaFreeAsync(keys_in, s));
  SSM_CUDA_CHECK(cudaFreeAsync(keys_out, s));
  SSM_CUDA_CHECK(cudaFreeAsync(positions_in, s));
  SSM_CUDA_CHECK(cudaFreeAsync(positions_out, s));
}

}  // namespace ssmtrain::kernels::cuda
