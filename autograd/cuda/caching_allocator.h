// Internal interface of the CUDA caching allocator (autograd/cuda/caching_allocator.cpp).
#pragma once

#include <cstddef>

#include "kernels/common.h"

namespace ssmtrain {

// A block of at least `bytes` on `device`, reused on the device's current stream. Writes the
// block's rounded size and stream; throws std::runtime_error naming the device and sizes
// when memory runs out even after the cache was emptied.
void* cuda_allocate_block(size_t bytes, int device, size_t* rounded, cudaStream_t* stream);
void cuda_free_block(void* ptr, size_t rounded, int device, cudaStream_t stream);
// Page-locked host memory; null when no GPU is usable.
void* cuda_allocate_pinned(size_t bytes);
void cuda_free_pinned(void* ptr);

}  // namespace ssmtrain
