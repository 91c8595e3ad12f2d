// Memory for tensors. CPU memory is 64-byte aligned heap memory. CUDA memory comes from a
// caching allocator: freed blocks go back to a per-(device, stream) pool keyed by their
// rounded size and are handed out again, so a training step that repeats its allocations
// makes no cudaMalloc after the first step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "autograd/device.h"
#include "kernels/common.h"

namespace ssmtrain {

// An allocation owned by a Storage; returned to its allocator on destruction.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  cudaStream_t stream = nullptr;  // CUDA: the stream the block is reused on
  bool pinned = false;            // CPU: page-locked (cudaHostAlloc) memory
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();
};

std::shared_ptr<Storage> allocate_storage(size_t bytes, Device device);
// Page-locked host memory, so host-to-device copies can run asynchronously. Without CUDA
// (or without a GPU) it is ordinary host memory.
std::shared_ptr<Storage> allocate_pinned_storage(size_t bytes);

struct MemoryStats {
  int64_t allocated = 0;       // bytes in live tensors (rounded block sizes)
  int64_t reserved = 0;        // allocated + cached free blocks
  int64_t peak_allocated = 0;  // high-water mark of `allocated` since the last reset
  int64_t num_device_mallocs = 0;
};

// CUDA allocator statistics for one device (all zeros on the CPU or without CUDA).
MemoryStats cuda_memory_stats(int device);
void reset_peak_memory(int device);
// Returns every cached free block of every device to the driver.
void empty_cuda_cache();

}  // namespace ssmtrain
