// Warp-level bf16 tensor-core primitives, written once for every kernel that uses them (the SSD
// tensor-core kernels, kernels/cuda/ssd_tc*.cu; flash attention, kernels/cuda/attention_flash.cu;
// the selective scan's asynchronous copies): ldmatrix loads of 8x8 operand matrices from shared
// memory, mma.sync m16n8k16 with f32 accumulation, cp.async copies from global to shared memory,
// and where each lane points ldmatrix in a 16x16 block. Fragment layouts follow the PTX ISA.
// Where the kernels were tuned with different asm qualifiers, both forms are kept under names
// that say the difference (mma_bf16 / mma_bf16_volatile, cp_async_16 / cp_async_16_unordered),
// so that sharing this header changed no kernel's generated code.
// Included only from .cu files.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace ssmtrain::kernels::mma {

using bf16 = __nv_bfloat16;

// The shared-state-space address of a generic pointer into shared memory.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- ldmatrix ----
// Four 8x8 b16 matrices; lane i gives the address of row i % 8 of matrix i / 8, and register r
// receives matrix r (the lane holds row lane / 4, columns 2 (lane % 4) and + 1; with .trans the
// matrix is transposed first). addr is a shared-state-space address (smem_addr of the lane's row).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// Two matrices; lanes 0..15 give the addresses.
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(addr));
}
// The same from the lane's row pointer into shared memory.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16* p) { ldmatrix_x4(r, smem_addr(p)); }
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* p) {
  ldmatrix_x4_trans(r, smem_addr(p));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const bf16* p) { ldmatrix_x2(r, smem_addr(p)); }
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const bf16* p) {
  ldmatrix_x2_trans(r, smem_addr(p));
}

// ---- cp.async ----
// 16 bytes global -> shared without passing through registers; zeros (and nothing read) when
// !valid, but src must still be a valid address. Completes at cp_async_wait / cp_async_wait_all.
// cp_async_16 carries a "memory" clobber, so the compiler keeps the thread's other memory
// accesses in program order around it (flash attention); cp_async_16_unordered does not, and its
// callers (the SSD and selective-scan kernels) rely on the waits' clobbers and the barriers.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_16_unordered(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
// 4 bytes likewise (per-position values such as lse, delta or document ids), through L1.
__device__ __forceinline__ void cp_async_4(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 4 : 0)
               : "memory");
}
// Closes the group of this thread's copies issued so far; cp_async_wait<N> waits until at most
// N of its most recently committed groups are in flight; cp_async_wait_all waits for every copy.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// ---- mma ----
// d (16 x 8, f32) += a (16 x 16, bf16, row-major) * b (16 x 8, bf16, column-major).
// Fragments (gr = lane / 4, tq = lane % 4): a[0] row gr, cols 2tq..+1; a[1] row gr + 8, same
// cols; a[2], a[3] the same rows at cols + 8. b0: k rows 2tq..+1 of column gr; b1: k + 8.
// d[0], d[1]: row gr, cols 2tq, 2tq + 1; d[2], d[3]: row gr + 8.
// mma_bf16 is a plain asm statement that the compiler may schedule freely (flash attention);
// mma_bf16_volatile keeps its place among the other volatile asm (ldmatrix, cp.async) as the
// SSD kernels were tuned with.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma_bf16_volatile(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a bf16 pair, lo at the lower address (the lower k or column index).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// An A operand (16 x 16) from two adjacent 16 x 8 accumulators c0 (columns 0..7) and c1 (8..15):
// how a matmul's output feeds the next matmul without leaving registers.
__device__ __forceinline__ void accumulators_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack_bf16(c0[0], c0[1]);
  a[1] = pack_bf16(c0[2], c0[3]);
  a[2] = pack_bf16(c1[0], c1[1]);
  a[3] = pack_bf16(c1[2], c1[3]);
}

// ---- where each lane points ldmatrix.x4 in a 16 x 16 block ----
// Two orders of the four 8x8 matrices:
// rows order: (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15,
//   cols 8-15). Gives the A fragment of a tile stored [m][k] (non-trans), and the B fragments of
//   two n-tiles of a tile stored [k][n] (trans: registers 0, 1 for columns c0..c0+7, 2, 3 for
//   c0+8..c0+15).
// cols order: (rows 0-7, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 0-7), (rows 8-15,
//   cols 8-15). Gives the B fragments of two n-tiles of a tile stored [n][k] (non-trans:
//   registers 0, 1 for rows r0..r0+7, 2, 3 for r0+8..r0+15) and the A fragment of a tile stored
//   [k][m] (trans, rows are k, columns are m).
// Two spellings of those orders: element pointers into a tile with a run-time leading dimension
// ld (the SSD kernels), and row / column offsets for byte addresses into tiles with a
// compile-time stride (flash attention).
__device__ __forceinline__ const bf16* frag_rows16(const bf16* base, int ld, int r0, int c0) {
  const int lane = threadIdx.x & 31;
  return base + (r0 + (lane & 15)) * ld + c0 + (lane >> 4) * 8;
}
__device__ __forceinline__ const bf16* frag_cols16(const bf16* base, int ld, int r0, int c0) {
  const int lane = threadIdx.x & 31;
  return base + (r0 + (lane >> 4) * 8 + (lane & 7)) * ld + c0 + ((lane >> 3) & 1) * 8;
}
// a_row, a_col: the rows order; b_row, b_col: the cols order.
struct LaneOffsets {
  int a_row, a_col, b_row, b_col;
};
__device__ __forceinline__ LaneOffsets lane_offsets(int lane) {
  return {lane % 16, (lane / 16) * 8, lane % 8 + (lane / 16) * 8, ((lane / 8) % 2) * 8};
}
// Bytes from a tile's element (0, 0) to (row, col), rows kStride elements apart.
template <int kStride>
__device__ __forceinline__ constexpr uint32_t tile_offset(int row, int col) {
  return static_cast<uint32_t>((row * kStride + col) * sizeof(bf16));
}

}  // namespace ssmtrain::kernels::mma
