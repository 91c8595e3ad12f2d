// Warp-level bf16 tensor-core primitives for the SSD kernels (kernels/cuda/ssd.cu): ldmatrix
// loads of 16x16 operand fragments from shared memory and mma.sync m16n8k16 with f32
// accumulation. Fragment layouts follow the PTX ISA; the address helpers say which one.
// Included only from .cu files.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace ssmtrain::kernels::ssd_mma {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lane i gives the row address of matrix i / 8, row i % 8.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
// Two matrices; lanes 0..15 give the addresses.
__device__ __forceinline__ void ldsm_x2(uint32_t (&r)[2], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x2_t(uint32_t (&r)[2], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(p)));
}

// 16 bytes global -> shared without passing through registers; zeros when !valid (src is
// then not read, but must still be a valid address). Completes at cp_async_wait_all.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
// Closes the group of this thread's copies issued so far; cp_async_wait<N> waits until at
// most N of its groups are pending.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// d (16x8, f32) += a (16x16, row) * b (16x8, col).
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a bf16 pair, lo at the lower address (the lower k or column index).
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Address of this lane's row for ldsm_x4 of a 16x16 block at (r0, c0) of a row-major tile
// (leading dimension ld elements), in the order (rows 0-7, cols 0-7), (rows 8-15, cols 0-7),
// (rows 0-7, cols 8-15), (rows 8-15, cols 8-15). Gives the A fragment of a tile stored
// [m][k] (non-trans), and the B fragments of two n-tiles of a tile stored [k][n] (trans:
// registers 0, 1 for columns c0..c0+7, registers 2, 3 for c0+8..c0+15).
__device__ __forceinline__ const bf16* frag_rows16(const bf16* base, int ld, int r0, int c0) {
  const int lane = threadIdx.x & 31;
  return base + (r0 + (lane & 15)) * ld + c0 + (lane >> 4) * 8;
}
// The other order: (rows 0-7, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 0-7),
// (rows 8-15, cols 8-15). Gives the B fragments of two n-tiles of a tile stored [n][k]
// (non-trans: registers 0, 1 for rows r0..r0+7, 2, 3 for r0+8..r0+15) and the A fragment of
// a tile stored [k][m] (trans, rows are k, columns are m).
__device__ __forceinline__ const bf16* frag_cols16(const bf16* base, int ld, int r0, int c0) {
  const int lane = threadIdx.x & 31;
  return base + (r0 + (lane >> 4) * 8 + (lane & 7)) * ld + c0 + ((lane >> 3) & 1) * 8;
}

}  // namespace ssmtrain::kernels::ssd_mma
