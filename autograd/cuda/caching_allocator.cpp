// The CUDA caching allocator. Sizes round up to 512 bytes (up to 1 MiB) or to 2 MiB (above),
// so steps that repeat their allocations hit the cache exactly. Free blocks are kept per
// (device, stream, size); a block is only reused on the stream it was freed on, which keeps
// stream order without events. On an out-of-memory error the cache is emptied and the
// allocation retried once.
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/allocator.h"
#include "autograd/cuda/caching_allocator.h"
#include "autograd/stream.h"
#include "kernels/cuda/check.h"

namespace ssmtrain {
namespace {

constexpr size_t kSmallLimit = size_t(1) << 20;
constexpr size_t kSmallRound = 512;
constexpr size_t kLargeRound = size_t(2) << 20;

size_t round_size(size_t bytes) {
  if (bytes == 0) bytes = 1;
  const size_t unit = bytes <= kSmallLimit ? kSmallRound : kLargeRound;
  return (bytes + unit - 1) / unit * unit;
}

struct DevicePool {
  std::multimap<std::pair<cudaStream_t, size_t>, void*> free_blocks;
  MemoryStats stats;
};

class CachingAllocator {
 public:
  void* allocate(size_t bytes, int device, size_t* rounded, cudaStream_t* stream_out) {
    const size_t size = round_size(bytes);
    cudaStream_t stream = current_stream(device);
    std::lock_guard<std::mutex> lock(mutex_);
    DevicePool& pool = pool_for(device);
    auto it = pool.free_blocks.find({stream, size});
    void* ptr = nullptr;
    if (it != pool.free_blocks.end()) {
      ptr = it->second;
      pool.free_blocks.erase(it);
    } else {
      DeviceGuard guard(device);
      cudaError_t err = cudaMalloc(&ptr, size);
      if (err == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        release_cached(device, pool);
        err = cudaMalloc(&ptr, size);
      }
      if (err != cudaSuccess) {
        (void)cudaGetLastError();
        throw std::runtime_error(
            "CUDA out of memory on cuda:" + std::to_string(device) + " allocating " +
            std::to_string(size) + " bytes (" + std::to_string(pool.stats.allocated) +
            " bytes in live tensors): " + cudaGetErrorString(err));
      }
      pool.stats.reserved += static_cast<int64_t>(size);
      ++pool.stats.num_device_mallocs;
    }
    pool.stats.allocated += static_cast<int64_t>(size);
    if (pool.stats.allocated > pool.stats.peak_allocated)
      pool.stats.peak_allocated = pool.stats.allocated;
    *rounded = size;
    *stream_out = stream;
    return ptr;
  }

  void free(void* ptr, size_t size, int device, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    DevicePool& pool = pool_for(device);
    pool.stats.allocated -= static_cast<int64_t>(size);
    pool.free_blocks.emplace(std::make_pair(stream, size), ptr);
  }

  MemoryStats stats(int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    return pool_for(device).stats;
  }

  void reset_peak(int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    DevicePool& pool = pool_for(device);
    pool.stats.peak_allocated = pool.stats.allocated;
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t d = 0; d < pools_.size(); ++d) release_cached(static_cast<int>(d), pools_[d]);
  }

 private:
  DevicePool& pool_for(int device) {
    if (device < 0) throw std::invalid_argument("negative CUDA device index");
    if (static_cast<size_t>(device) >= pools_.size()) pools_.resize(device + 1);
    return pools_[device];
  }

  // Frees every cached block of one device (after its streams finished using them).
  void release_cached(int device, DevicePool& pool) {
    if (pool.free_blocks.empty()) return;
    DeviceGuard guard(device);
    SSM_CUDA_CHECK(cudaDeviceSynchronize());
    for (auto& [key, ptr] : pool.free_blocks) {
      SSM_CUDA_CHECK(cudaFree(ptr));
      pool.stats.reserved -= static_cast<int64_t>(key.second);
    }
    pool.free_blocks.clear();
  }

  std::mutex mutex_;
  std::vector<DevicePool> pools_;
};

CachingAllocator& allocator() {
  // Leaked on purpose: tensors destroyed during static destruction still find it.
  static CachingAllocator* instance = new CachingAllocator();
  return *instance;
}

}  // namespace

void* cuda_allocate_block(size_t bytes, int device, size_t* rounded, cudaStream_t* stream) {
  return allocator().allocate(bytes, device, rounded, stream);
}

void cuda_free_block(void* ptr, size_t rounded, int device, cudaStream_t stream) {
  allocator().free(ptr, rounded, device, stream);
}

void* cuda_allocate_pinned(size_t bytes) {
  void* ptr = nullptr;
  if (bytes == 0) bytes = 64;
  if (cudaHostAlloc(&ptr, bytes, cudaHostAllocDefault) != cudaSuccess) {
    (void)cudaGetLastError();
    return nullptr;
  }
  return ptr;
}

void cuda_free_pinned(void* ptr) { (void)cudaFreeHost(ptr); }

MemoryStats cuda_memory_stats(int device) { return allocator().stats(device); }
void reset_peak_memory(int device) { allocator().reset_peak(device); }
void empty_cuda_cache() { allocator().empty_cache(); }

}  // namespace ssmtrain
