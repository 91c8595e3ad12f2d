// Multi-tensor AdamW, sum of squares and scaling on the GPU (kernels/adamw.h). Every tensor of
// the list is cut into fixed chunks of kChunk elements; block b takes chunk b of the whole
// list (binary search in the table of each tensor's first chunk). The table travels to the
// device with each call (a few bytes per tensor). The sum of squares writes one partial per
// chunk, then one block adds them in order: the bits depend only on the sizes and values.
#include "kernels/adamw.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/vector_io.cuh"
#include "kernels/cuda/sum_partials.cuh"

namespace ssmtrain::kernels::cuda {
namespace {

using cuda_detail::block_allreduce;
using cuda_detail::block_sum;
using cuda_detail::ceil_div;
using cuda_detail::dispatch_f32_bf16;
using cuda_detail::load_items;
using cuda_detail::store_items;

constexpr int kThreads = 256;
constexpr int kItems = 4;               // consecutive elements per thread and step
constexpr int64_t kChunk = 16384;       // elements per block: a multiple of kThreads * kItems
constexpr int kFinalThreads = 1024;     // the one block that adds the partials
constexpr int64_t kMaxGridChunks = 65535LL * 256;

// One tensor of an AdamW list on the device.
struct AdamWSlot {
  float* param;
  const void* grad;
  float* exp_avg;
  float* exp_avg_sq;
  __nv_bfloat16* param_copy;  // or null
  int64_t numel;
  int64_t first_chunk;        // chunks of earlier tensors
  float decay;                // weight_decay, or 0 where not flagged
  bool aligned;               // every pointer on a 16-byte boundary: vector loads
};

// One tensor of a sum-of-squares or scale list.
struct ListSlot {
  void* data;
  int64_t numel;
  int64_t first_chunk;
  bool aligned;
};

// The scalars of the step, in f32.
struct StepScalars {
  float lr, beta1, beta2, eps, inv_c1, inv_c2, grad_scale;
};

// Index of the slot holding global chunk `chunk`: the last slot whose first_chunk <= chunk.
template <typename Slot>
__device__ __forceinline__ int find_slot(const Slot* slots, int count, int64_t chunk) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (slots[mid].first_chunk <= chunk) lo = mid; else hi = mid - 1;
  }
  return lo;
}

template <typename Grad>
__global__ void adamw_kernel(const AdamWSlot* slots, int count, int64_t total_chunks, StepScalars h) {
  for (int64_t chunk = blockIdx.x; chunk < total_chunks; chunk += gridDim.x) {
    const AdamWSlot a = slots[find_slot(slots, count, chunk)];
    const int64_t begin = (chunk - a.first_chunk) * kChunk;
    const int64_t end = min(a.numel, begin + kChunk);
    const Grad* grad = static_cast<const Grad*>(a.grad);
    for (int64_t i = begin + threadIdx.x * kItems; i < end; i += int64_t(blockDim.x) * kItems) {
      float p[kItems], g[kItems], m[kItems], v[kItems];
      load_items<kItems>(a.param, i, end, a.aligned, p);
      load_items<kItems>(grad, i, end, a.aligned, g);
      load_items<kItems>(a.exp_avg, i, end, a.aligned, m);
      load_items<kItems>(a.exp_avg_sq, i, end, a.aligned, v);
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        const float gk = g[k] * h.grad_scale;
        m[k] = h.beta1 * m[k] + (1.0f - h.beta1) * gk;
        v[k] = h.beta2 * v[k] + (1.0f - h.beta2) * gk * gk;
        const float update = (m[k] * h.inv_c1) / (sqrtf(v[k] * h.inv_c2) + h.eps);
        p[k] = p[k] - h.lr * (update + a.decay * p[k]);
      }
      store_items<kItems>(a.param, i, end, a.aligned, p);
      store_items<kItems>(a.exp_avg, i, end, a.aligned, m);
      store_items<kItems>(a.exp_avg_sq, i, end, a.aligned, v);
      if (a.param_copy) store_items<kItems>(a.param_copy, i, end, a.aligned, p);
    }
  }
}

// partials[chunk] = sum of x^2 over the chunk (fixed block tree).
template <typename T>
__global__ void sum_squares_chunks_kernel(const ListSlot* slots, int count, int64_t total_chunks, float* partials) {
  for (int64_t chunk = blockIdx.x; chunk < total_chunks; chunk += gridDim.x) {
    const ListSlot a = slots[find_slot(slots, count, chunk)];
    const int64_t begin = (chunk - a.first_chunk) * kChunk;
    const int64_t end = min(a.numel, begin + kChunk);
    const T* x = static_cast<const T*>(a.data);
    float local = 0.0f;
    for (int64_t i = begin + threadIdx.x * kItems; i < end; i += int64_t(blockDim.x) * kItems) {
      float v[kItems];
      load_items<kItems>(x, i, end, a.aligned, v);
#pragma unroll
      for (int k = 0; k < kItems; ++k) local += v[k] * v[k];
    }
    const float total = block_sum(local);
    if (threadIdx.x == 0) partials[chunk] = total;
  }
}

template <typename T>
__global__ void scale_kernel(const ListSlot* slots, int count, int64_t total_chunks, float scale) {
  for (int64_t chunk = blockIdx.x; chunk < total_chunks; chunk += gridDim.x) {
    const ListSlot a = slots[find_slot(slots, count, chunk)];
    const int64_t begin = (chunk - a.first_chunk) * kChunk;
    const int64_t end = min(a.numel, begin + kChunk);
    T* x = static_cast<T*>(a.data);
    for (int64_t i = begin + threadIdx.x * kItems; i < end; i += int64_t(blockDim.x) * kItems) {
      float v[kItems];
      load_items<kItems>(x, i, end, a.aligned, v);
#pragma unroll
      for (int k = 0; k < kItems; ++k) v[k] *= scale;
      store_items<kItems>(x, i, end, a.aligned, v);
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void check_list(const char* op, int64_t count) {
  if (count < 0) throw KernelError(std::string("cuda::") + op + ": negative tensor count " + std::to_string(count));
  if (count > (int64_t(1) << 30)) throw KernelError(std::string("cuda::") + op + ": too many tensors");
}

void check_numel(const char* op, int64_t index, int64_t numel) {
  if (numel < 0)
    throw KernelError(std::string("cuda::") + op + ": tensor " + std::to_string(index) + " has negative size " +
                      std::to_string(numel));
}

// Copies the slot table to the device (stream-ordered scratch; freed by the caller).
template <typename Slot>
Slot* upload(const std::vector<Slot>& slots, cudaStream_t s) {
  Slot* device = nullptr;
  const size_t bytes = slots.size() * sizeof(Slot);
  SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&device), bytes, s));
  SSM_CUDA_CHECK(cudaMemcpyAsync(device, slots.data(), bytes, cudaMemcpyHostToDevice, s));
  return device;
}

unsigned grid_for_chunks(int64_t chunks) { return static_cast<unsigned>(std::min(chunks, kMaxGridChunks)); }

// The list's slots (empty tensors dropped) and its total chunks.
std::vector<ListSlot> list_slots(const char* op, const void* const* tensors, const int64_t* numels, int64_t count,
                                 int64_t& total_chunks) {
  std::vector<ListSlot> slots;
  total_chunks = 0;
  for (int64_t t = 0; t < count; ++t) {
    check_numel(op, t, numels[t]);
    if (numels[t] == 0) continue;
    slots.push_back({const_cast<void*>(tensors[t]), numels[t], total_chunks, aligned16(tensors[t])});
    total_chunks += ceil_div(numels[t], kChunk);
  }
  return slots;
}

}  // namespace

void adamw_step(DType grad_dtype, const AdamWTensor<float, void>* tensors, int64_t count, const AdamWStep& step,
                cudaStream_t s) {
  check_list("adamw_step", count);
  std::vector<AdamWSlot> slots;
  int64_t total_chunks = 0;
  for (int64_t t = 0; t < count; ++t) {
    const AdamWTensor<float, void>& a = tensors[t];
    check_numel("adamw_step", t, a.numel);
    if (a.numel == 0) continue;
    if (!a.param || !a.grad || !a.exp_avg || !a.exp_avg_sq)
      throw KernelError("cuda::adamw_step: tensor " + std::to_string(t) + " lacks a parameter, gradient or moment");
    const bool aligned = aligned16(a.param) && aligned16(a.grad) && aligned16(a.exp_avg) &&
                         aligned16(a.exp_avg_sq) && aligned16(a.param_copy);
    slots.push_back({a.param, a.grad, a.exp_avg, a.exp_avg_sq, static_cast<__nv_bfloat16*>(a.param_copy), a.numel,
                     total_chunks, a.weight_decay ? static_cast<float>(step.weight_decay) : 0.0f, aligned});
    total_chunks += ceil_div(a.numel, kChunk);
  }
  dispatch_f32_bf16(grad_dtype, "adamw_step", [&](auto tag) {
    using Grad = typename decltype(tag)::type;
    if (slots.empty()) return;
    const StepScalars h{static_cast<float>(step.lr), static_cast<float>(step.beta1), static_cast<float>(step.beta2),
                        static_cast<float>(step.eps), static_cast<float>(1.0 / step.bias_correction1),
                        static_cast<float>(1.0 / step.bias_correction2), static_cast<float>(step.grad_scale)};
    AdamWSlot* device = upload(slots, s);
    adamw_kernel<Grad><<<grid_for_chunks(total_chunks), kThreads, 0, s>>>(device, int(slots.size()), total_chunks, h);
    SSM_CUDA_CHECK_LAUNCH();
    SSM_CUDA_CHECK(cudaFreeAsync(device, s));
  });
}

void sum_squares(DType dtype, const void* const* tensors, const int64_t* numels, int64_t count, float* result,
                 cudaStream_t s) {
  check_list("sum_squares", count);
  int64_t total_chunks = 0;
  const std::vector<ListSlot> slots = list_slots("sum_squares", tensors, numels, count, total_chunks);
  dispatch_f32_bf16(dtype, "sum_squares", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (slots.empty()) {
      SSM_CUDA_CHECK(cudaMemsetAsync(result, 0, sizeof(float), s));
      return;
    }
    ListSlot* device = upload(slots, s);
    float* partials = nullptr;
    SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partials), size_t(total_chunks) * sizeof(float), s));
    sum_squares_chunks_kernel<T><<<grid_for_chunks(total_chunks), kThreads, 0, s>>>(device, int(slots.size()),
                                                                                   total_chunks, partials);
    SSM_CUDA_CHECK_LAUNCH();
    // *result = the partials summed in double by one block, strided per thread in order.
    cuda_detail::sum_partials_by_block<double>(partials, 1, total_chunks, 1, result, kFinalThreads, s);
    SSM_CUDA_CHECK(cudaFreeAsync(partials, s));
    SSM_CUDA_CHECK(cudaFreeAsync(device, s));
  });
}

void scale(DType dtype, void* const* tensors, const int64_t* numels, int64_t count, float scale, cudaStream_t s) {
  check_list("scale", count);
  int64_t total_chunks = 0;
  const std::vector<ListSlot> slots =
      list_slots("scale", const_cast<const void* const*>(tensors), numels, count, total_chunks);
  dispatch_f32_bf16(dtype, "scale", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (slots.empty()) return;
    ListSlot* device = upload(slots, s);
    scale_kernel<T><<<grid_for_chunks(total_chunks), kThreads, 0, s>>>(device, int(slots.size()), total_chunks, scale);
    SSM_CUDA_CHECK_LAUNCH();
    SSM_CUDA_CHECK(cudaFreeAsync(device, s));
  });
}

}  // namespace ssmtrain::kernels::cuda
