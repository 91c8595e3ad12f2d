// Data movement: strided copies (transpose, narrow, concat, split, contiguous), dtype casts
// and constant fills. The CPU versions take typed pointers, the CUDA versions a dtype tag.
#pragma once

#include "kernels/common.h"

namespace ssmtrain::kernels {

namespace cpu {
// dst[idx . dst.strides] = src[idx . src.strides] for every index idx of the shape, which
// src and dst share (their ndim and shape must agree). Elements of elem_size bytes.
void copy_strided(const void* src, const Layout& src_layout, void* dst, const Layout& dst_layout,
                  int64_t elem_size);
// n contiguous elements converted from one dtype to another (any pair of DType).
void cast(DType from, const void* src, DType to, void* dst, int64_t n);
// n elements of dtype set to value (converted to dtype).
void fill(DType dtype, void* dst, int64_t n, double value);
}  // namespace cpu

namespace cuda {
void copy_strided(const void* src, const Layout& src_layout, void* dst, const Layout& dst_layout,
                  int64_t elem_size, cudaStream_t stream);
// Pairs among f32, bf16, f16, i32, i64 (float <-> int casts truncate toward zero).
void cast(DType from, const void* src, DType to, void* dst, int64_t n, cudaStream_t stream);
void fill(DType dtype, void* dst, int64_t n, double value, cudaStream_t stream);
}  // namespace cuda

}  // namespace ssmtrain::kernels
