// Strided-layout helpers shared by the CUDA kernels: the element offset of a linear index
// under a Layout, and the host-side checks that two layouts describe the same shape.
// Included only from .cu files.
#pragma once

#include <string>

#include "kernels/common.h"

namespace ssmtrain::kernels::cuda_detail {

// Offset (in elements) of the row-major linear index `linear` over layout.shape, read through
// layout.strides. The last dimension varies fastest.
__device__ __forceinline__ int64_t strided_offset(int64_t linear, const Layout& layout) {
  int64_t offset = 0;
  for (int dim = layout.ndim - 1; dim >= 0; --dim) {
    const int64_t size = layout.shape[dim];
    const int64_t index = linear % size;
    linear /= size;
    offset += index * layout.strides[dim];
  }
  return offset;
}

// True when the layout is row-major contiguous (dimensions of size 1 may have any stride).
inline bool is_contiguous(const Layout& layout) {
  int64_t expected = 1;
  for (int dim = layout.ndim - 1; dim >= 0; --dim) {
    if (layout.shape[dim] != 1 && layout.strides[dim] != expected) return false;
    expected *= layout.shape[dim];
  }
  return true;
}

// Throws unless both layouts have the same ndim (<= kMaxDims, >= 0) and shape.
inline void check_same_shape(const char* op, const Layout& a, const Layout& b) {
  if (a.ndim < 0 || a.ndim > kMaxDims || a.ndim != b.ndim)
    throw KernelError(std::string("cuda::") + op + ": layouts have ndim " + std::to_string(a.ndim) +
                      " and " + std::to_string(b.ndim) + " (must be equal, at most " +
                      std::to_string(kMaxDims) + ")");
  for (int dim = 0; dim < a.ndim; ++dim) {
    if (a.shape[dim] != b.shape[dim] || a.shape[dim] < 0)
      throw KernelError(std::string("cuda::") + op + ": shapes differ at dimension " +
                        std::to_string(dim) + " (" + std::to_string(a.shape[dim]) + " vs " +
                        std::to_string(b.shape[dim]) + ")");
  }
}

}  // namespace ssmtrain::kernels::cuda_detail
