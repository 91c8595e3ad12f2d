// CPU allocations and the device-independent side of Storage.
#include "autograd/allocator.h"

#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>

#include "autograd/cuda/caching_allocator.h"

namespace ssmtrain {

Storage::~Storage() {
  if (!data) return;
  if (device.is_cpu()) {
#if SSMTRAIN_WITH_CUDA
    if (pinned) {
      cuda_free_pinned(data);
      return;
    }
#endif
    std::free(data);
  } else {
#if SSMTRAIN_WITH_CUDA
    cuda_free_block(data, bytes, device.index, stream);
#endif
  }
}

std::shared_ptr<Storage> allocate_storage(size_t bytes, Device device) {
  auto s = std::make_shared<Storage>();
  s->device = device;
  if (device.is_cpu()) {
    const size_t rounded = (bytes + 63) / 64 * 64;
    s->bytes = rounded;
    if (rounded > 0) {
      s->data = std::aligned_alloc(64, rounded);
      if (!s->data)
        throw std::bad_alloc();
    }
    return s;
  }
#if SSMTRAIN_WITH_CUDA
  s->data = cuda_allocate_block(bytes, device.index, &s->bytes, &s->stream);
  return s;
#else
  throw std::runtime_error("ssmtrain was built without CUDA; cannot allocate on " + device.str());
#endif
}

std::shared_ptr<Storage> allocate_pinned_storage(size_t bytes) {
#if SSMTRAIN_WITH_CUDA
  auto s = std::make_shared<Storage>();
  s->bytes = (bytes + 63) / 64 * 64;
  s->data = cuda_allocate_pinned(s->bytes);
  if (s->data) {
    s->pinned = true;
    return s;
  }
#endif
  return allocate_storage(bytes, Device::cpu());  // no GPU: ordinary memory
}

#if !SSMTRAIN_WITH_CUDA
MemoryStats cuda_memory_stats(int) { return {}; }
void reset_peak_memory(int) {}
void empty_cuda_cache() {}
#endif

}  // namespace ssmtrain
