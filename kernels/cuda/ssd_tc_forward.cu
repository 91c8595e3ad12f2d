// The SSD's tensor-core forward (kernels/cuda/ssd.cu has the overview and the dispatch): the
// per-token quantities, forward (1) (also backward (1)), the shared C B^T tiles and forward
// (3), as mma.sync m16n8k16 bf16 with f32 accumulation over shared-memory tiles.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/check.h"
#include "kernels/cuda/ssd_common.cuh"
#include "kernels/cuda/ssd_tc.cuh"

namespace ssmtrain::kernels::ssd_detail {
namespace {

// Grid (h, nc, b): the per-token quantities of one chunk of one head, and the chunk decay.
template <typename T>
__global__ void __launch_bounds__(kThreads) tokens_kernel(Dims d, SsdArgs<T, float> a, TokenInfo ti, float* decay) {
  __shared__ ChunkTokens tk;
  const int64_t hh = blockIdx.x, c = blockIdx.y, bi = blockIdx.z;
  prep_chunk(d, a, bi, c, hh, tk);
  const int tid = threadIdx.x;
  if (tid < d.Q) {
    const int64_t at = d.tok(bi, hh, c) + tid;
    ti.dt[at] = tk.dt[tid];
    ti.grad[at] = tk.grad[tid];
    ti.cum[at] = tk.cum[tid];
    ti.first[at] = tk.first[tid] | (carries(tk, tid) ? kCarries : 0);
    ti.crel[at] = static_cast<float>((tk.cum[tid] - tk.cum[tid - tid % kTile]) * kLog2e);
  }
  if (tid == 0) decay[(bi * d.nc + c) * d.h + hh] = chunk_decay(tk);
}

// Forward (1) and backward (1) on tensor cores: out (p, n) = sum_t (w_t v_t) ⊗ k_t as
// (W V)^T K, with V and K the chunk's (64-token) tiles. Forward: v = x, k = B,
// w = exp(cum_last - cum_t) dt_t; backward: v = dout silu(z), k = C, w = e_t. W V is split
// into bf16 parts (three in the forward, whose final state is held to f32 accuracy; two in
// the backward), one product each.
// Grid (h * (p / PB) * (n / NB), nc, b); the block owns a (PB, NB) tile of the state, its
// 4 warps a (16, NTW * 8) tile each (PB / 16 warp rows).
template <int PB, int NTW, bool kGrad>
__global__ void __launch_bounds__(kTcThreads) chunk_state_tc_kernel(Dims d, SsdArgs<bf16, float> a, const bf16* dout,
                                                                    TokenInfo ti, float* out) {
  using namespace mma;
  constexpr int WR = PB / 16, WC = 4 / WR, NB = NTW * 8 * WC;
  constexpr int ldv = PB + kTcPad, ldk = NB + kTcPad;
  __shared__ float w[kMaxChunk];
  constexpr int NS = kGrad ? 2 : 3;
  __shared__ __align__(16) bf16 vparts[NS][kTile * ldv];  // (64 tokens, PB) w_t v_t in NS bf16 parts
  __shared__ __align__(16) bf16 kt[kTile * ldk];  // (64 tokens, NB) k_t
  const int nblocks = static_cast<int>(d.n / NB), pblocks = static_cast<int>(d.p / PB);
  const int nb = blockIdx.x % nblocks, pb = (blockIdx.x / nblocks) % pblocks;
  const int64_t hh = blockIdx.x / (nblocks * pblocks), c = blockIdx.y, bi = blockIdx.z, gg = hh / d.hpg;
  const int64_t c0 = c * d.Q;
  const int len = static_cast<int>(min(d.Q, d.l - c0));
  const int64_t tok0 = d.tok(bi, hh, c);
  {
    const double cum_last = ti.cum[tok0 + len - 1];
    const int first_last = ti.first[tok0 + len - 1] & (kCarries - 1);
    for (int s = threadIdx.x; s < len; s += kTcThreads) {
      const int fs = ti.first[tok0 + s];
      if (kGrad) w[s] = (fs & kCarries) ? expf(static_cast<float>(ti.cum[tok0 + s])) : 0.0f;
      else w[s] = s >= first_last ? expf(static_cast<float>(cum_last - ti.cum[tok0 + s])) * ti.dt[tok0 + s] : 0.0f;
    }
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wr = warp % WR, wc = warp / WR;
  float acc[NTW][4] = {};
  const int64_t vstride = d.h * d.p, kstride = d.g * d.n;
  for (int s0 = 0; s0 < len; s0 += kTile) {
    tile_sync();  // w is written; the previous tiles are read
    const int valid = min(kTile, len - s0);
    const int64_t xoff = d.x(bi, c0 + s0, hh) + pb * PB;
    load_rows_split<NS>(&vparts[0][0], kTile * ldv, ldv, (kGrad ? dout : a.x) + xoff,
                        kGrad && a.z ? a.z + xoff : nullptr, vstride, kTile, valid, PB, w + s0);
    load_rows(kt, ldk, (kGrad ? a.C : a.B) + d.bc(bi, c0 + s0, gg) + nb * NB, kstride, kTile, valid, NB);
    tile_sync();
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      // Smallest part first, so the large terms are added last.
#pragma unroll
      for (int part = NS - 1; part >= 0; --part) {
        uint32_t af[4];
        ldmatrix_x4_trans(af, frag_cols16(vparts[part], ldv, kk * 16, wr * 16));
        if constexpr (NTW == 1) {
          uint32_t bfr[2];
          ldmatrix_x2_trans(bfr, frag_rows16(kt, ldk, kk * 16, wc * 8));
          mma_bf16_volatile(acc[0], af, bfr[0], bfr[1]);
        } else {
#pragma unroll
          for (int j = 0; j < NTW / 2; ++j) {
            uint32_t bfr[4];
            ldmatrix_x4_trans(bfr, frag_rows16(kt, ldk, kk * 16, wc * NTW * 8 + j * 16));
            mma_bf16_volatile(acc[2 * j], af, bfr[0], bfr[1]);
            mma_bf16_volatile(acc[2 * j + 1], af, bfr[2], bfr[3]);
          }
        }
      }
    }
  }
  float* dst = out + d.st(bi, c, hh) + (pb * PB + wr * 16 + (lane >> 2)) * d.n + nb * NB + wc * NTW * 8 + 2 * (lane & 3);
#pragma unroll
  for (int j = 0; j < NTW; ++j) {
    *reinterpret_cast<float2*>(dst + 8 * j) = make_float2(acc[j][0], acc[j][1]);
    *reinterpret_cast<float2*>(dst + 8 * j + 8 * d.n) = make_float2(acc[j][2], acc[j][3]);
  }
}

// Grid (cb_pairs(ntt), nc * g, b): the products of one tile pair (t, s <= t), 4 warps of
// 16 rows each; the second layout (B_s C_t^T) only when both is set (the backward). Pairs
// whose t tile lies past the chunk's end are skipped (no kernel reads them). The state
// dimension passes through shared memory NB (<= 128) columns at a time, which is the order of
// k-steps warp_abt<n> takes, so the bits do not depend on NB.
template <int NB>
__global__ void __launch_bounds__(kTcThreads) cb_tc_kernel(Dims d, SsdArgs<bf16, float> a, bool both, float* cb) {
  constexpr int ldn = NB + kTcPad;
  __shared__ __align__(16) bf16 ct[kTile * ldn];  // (64, NB) C_t
  __shared__ __align__(16) bf16 bs[kTile * ldn];  // (64, NB) B_s
  const int pair = blockIdx.x;
  int t = 0;
  while ((t + 1) * (t + 2) / 2 <= pair) ++t;
  const int s = pair - t * (t + 1) / 2;
  const int64_t c = blockIdx.y / d.g, gg = blockIdx.y % d.g, bi = blockIdx.z, c0 = c * d.Q;
  const int len = static_cast<int>(min(d.Q, d.l - c0));
  const int t0 = t * kTile, s0 = s * kTile;
  if (t0 >= len) return;
  const int64_t bcstride = d.g * d.n;
  const int rw = (threadIdx.x >> 5) * 16;
  float g[8][4] = {}, gt[8][4] = {};
  for (int k0 = 0; k0 < d.n; k0 += NB) {
    if (k0 > 0) __syncthreads();  // the previous segment is read
    load_rows(ct, ldn, a.C + d.bc(bi, c0 + t0, gg) + k0, bcstride, kTile, min(kTile, len - t0), NB);
    load_rows(bs, ldn, a.B + d.bc(bi, c0 + s0, gg) + k0, bcstride, kTile, min(kTile, len - s0), NB);
    tile_sync();
    warp_abt<NB>(g, ct, ldn, rw, bs, ldn);
    if (both) warp_abt<NB>(gt, bs, ldn, rw, ct, ldn);
  }
  float* dst = cb + ((((bi * d.nc + c) * d.g + gg) * cb_pairs(d.ntt) + pair) * (both ? 2 : 1)) * kCbTile;
#pragma unroll
  for (int j = 0; j < 8; ++j)
    *reinterpret_cast<float4*>(dst + cb_frag(j)) = make_float4(g[j][0], g[j][1], g[j][2], g[j][3]);
  if (both) {
#pragma unroll
    for (int j = 0; j < 8; ++j)
      *reinterpret_cast<float4*>(dst + kCbTile + cb_frag(j)) = make_float4(gt[j][0], gt[j][1], gt[j][2], gt[j][3]);
  }
}

// Shared memory of chunk_scan_tc_kernel, in bytes: token quantities, then bf16 tiles. Region
// a holds C_t until the entering state's product is read, then the x_s of odd s tiles.
struct ScanTcSmem {
  int cum, dt, first, crel, a, sin, xs, total;
};
__host__ __device__ inline ScanTcSmem scan_tc_smem(int64_t n, int p) {
  ScanTcSmem s;
  const int ldn = static_cast<int>(n) + kTcPad, ldx = p + kTcPad;
  s.cum = 0;
  s.dt = s.cum + 8 * kMaxChunk;
  s.first = s.dt + 4 * kMaxChunk;
  s.crel = s.first + 4 * kMaxChunk;
  s.a = s.crel + 4 * kMaxChunk;                       // (64, n) C_t, then (64, p) x_s
  s.sin = s.a + 2 * kTile * (ldn > ldx ? ldn : ldx);  // (p, n) S_in
  s.xs = s.sin + 2 * p * ldn;                         // (64, p) x_s of even s tiles
  s.total = s.xs + 2 * kTile * ldx;
  return s;
}

// Forward (3) on tensor cores. Grid (ntt * h, nc, b): the block owns a 64-token tile t of
// one chunk of one head, warp w its rows 16 w .. 16 w + 15. Y = e_t (C_t S_in^T) first, then
// per input tile s <= t: G = C_t B_s^T (cb_tc_kernel's f32 tiles, read into registers one pair
// ahead), masked and scaled to G ∘ exp(cum_t - cum_s) dt_s, rounded to bf16 as the A operand
// of Y += G X_s. X_s tiles are double-buffered (the odd ones where C_t was).
template <int P>
__global__ void __launch_bounds__(kTcThreads) chunk_scan_tc_kernel(Dims d, SsdArgs<bf16, float> a, TokenInfo ti,
                                                                   const float* chunk_states, const float* cbt,
                                                                   bf16* out) {
  using namespace mma;
  constexpr int NP = P / 8, ldx = P + kTcPad;
  extern __shared__ __align__(16) unsigned char smem_tc[];
  const ScanTcSmem L = scan_tc_smem(d.n, P);
  double* cum = reinterpret_cast<double*>(smem_tc + L.cum);
  float* dts = reinterpret_cast<float*>(smem_tc + L.dt);
  int* first = reinterpret_cast<int*>(smem_tc + L.first);
  float* crel = reinterpret_cast<float*>(smem_tc + L.crel);
  bf16* ct = reinterpret_cast<bf16*>(smem_tc + L.a);     // (64, n) C_t
  bf16* sin = reinterpret_cast<bf16*>(smem_tc + L.sin);  // (p, n) S_in
  const TilePair xb{reinterpret_cast<bf16*>(smem_tc + L.xs), ct};  // (64, p) x_s of even / odd s tiles
  const int ntt = static_cast<int>(d.ntt);
  const int tile = blockIdx.x % ntt;
  const int64_t hh = blockIdx.x / ntt, c = blockIdx.y, bi = blockIdx.z, gg = hh / d.hpg, c0 = c * d.Q;
  const int len = static_cast<int>(min(d.Q, d.l - c0));
  const int t0 = tile * kTile;
  if (t0 >= len) return;
  const int n = static_cast<int>(d.n), ldn = n + kTcPad;
  const int tvalid = min(kTile, len - t0);
  const int64_t tok0 = d.tok(bi, hh, c);
  const int64_t bcstride = d.g * d.n, xstride = d.h * d.p;
  const bool carry = (ti.first[tok0 + t0] & kCarries) != 0;  // the entering state reaches the tile
  load_rows(xb[0], ldx, a.x + d.x(bi, c0, hh), xstride, kTile, min(kTile, len), P);
  if (carry) load_rows(ct, ldn, a.C + d.bc(bi, c0 + t0, gg), bcstride, kTile, tvalid, n);
  load_tokens(ti, tok0, t0 + tvalid, cum, dts, first, crel);
  if (carry) load_state_bf16(sin, ldn, chunk_states + d.st(bi, c, hh), P, n);  // S_in (p, n) as bf16
  float g[8][4];  // (16 rows, 64 columns s) of C_t B_s^T
  read_cb(g, cb_tile(d, cbt, 1, bi, c, gg, tile, 0, 0));
  tile_sync();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int rw = warp * 16;                 // the warp's first row in the tile
  const int ta = t0 + rw + (lane >> 2);     // this lane's rows in the chunk: ta, ta + 8
  const int tb = ta + 8;
  float y[NP][4] = {};
  if (carry) {
    for (int k0 = 0; k0 < n; k0 += 16) {
      uint32_t af[4];
      ldmatrix_x4(af, frag_rows16(ct, ldn, rw, k0));
#pragma unroll
      for (int j = 0; j < NP / 2; ++j) {
        uint32_t bfr[4];
        ldmatrix_x4(bfr, frag_cols16(sin, ldn, 16 * j, k0));
        mma_bf16_volatile(y[2 * j], af, bfr[0], bfr[1]);
        mma_bf16_volatile(y[2 * j + 1], af, bfr[2], bfr[3]);
      }
    }
    const float ea = ta < len && (first[ta] & kCarries) ? expf(static_cast<float>(cum[ta])) : 0.0f;
    const float eb = tb < len && (first[tb] & kCarries) ? expf(static_cast<float>(cum[tb])) : 0.0f;
#pragma unroll
    for (int j = 0; j < NP; ++j) {
      y[j][0] *= ea;
      y[j][1] *= ea;
      y[j][2] *= eb;
      y[j][3] *= eb;
    }
    if (tile > 0) __syncthreads();  // C_t is read: its region takes x_1
  }
  const double cuma = ta < len ? cum[ta] : 0.0, cumb = tb < len ? cum[tb] : 0.0;
  const int fa = ta < len ? first[ta] & (kCarries - 1) : kMaxChunk;  // no column reaches a row past the end
  const int fb = tb < len ? first[tb] & (kCarries - 1) : kMaxChunk;
  // The first token of the last row's document when the tile is full (first only grows).
  const int flast = tvalid == kTile ? first[t0 + kTile - 1] & (kCarries - 1) : kMaxChunk;
  for (int st = 0; st <= tile; ++st) {
    const int s0 = st * kTile;
    if (st < tile)
      load_rows(xb[(st + 1) & 1], ldx, a.x + d.x(bi, c0 + s0 + kTile, hh), xstride, kTile,
                min(kTile, len - s0 - kTile), P);
    const float tra = static_cast<float>((cuma - cum[s0]) * kLog2e), trb = static_cast<float>((cumb - cum[s0]) * kLog2e);
    const bool full = st < tile && flast <= s0;
    uint32_t pa[4][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      float l[4];
      row_decay(l, s0 + 8 * j + 2 * (lane & 3), full, ta, tb, fa, fb, tra, trb, crel, dts);
      pa[j / 2][(j & 1) * 2] = pack_bf16(g[j][0] * l[0], g[j][1] * l[1]);
      pa[j / 2][(j & 1) * 2 + 1] = pack_bf16(g[j][2] * l[2], g[j][3] * l[3]);
    }
    if (st < tile) read_cb(g, cb_tile(d, cbt, 1, bi, c, gg, tile, st + 1, 0));  // in flight during the product
    warp_frag_b<NP>(y, pa, xb[st & 1], ldx);
    if (st < tile) tile_sync();  // x_{s+1} is here, and x_s is read before x_{s+2} replaces it
  }
  // xb[tile % 2] holds the block's own tile: y + D x, times silu(z).
  const bf16* xs = xb[tile & 1];
  const float* Dh = a.D ? a.D + (d.D_hp ? hh * P : hh) : nullptr;
  const int dstep = d.D_hp ? 1 : 0;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = half ? tb : ta;
    if (t >= len) continue;
    const int64_t off = d.x(bi, c0 + t, hh);
    const bf16* xrow = xs + (t - t0) * ldx;
    __nv_bfloat162 zv[NP];
    if (a.z) load_row_pairs<NP>(zv, a.z, off);
#pragma unroll
    for (int j = 0; j < NP; ++j) {
      const int pi = 8 * j + 2 * (lane & 3);
      float v0 = y[j][2 * half], v1 = y[j][2 * half + 1];
      if (Dh) {
        v0 = fmaf(__ldg(Dh + pi * dstep), to_f32(xrow[pi]), v0);
        v1 = fmaf(__ldg(Dh + (pi + 1) * dstep), to_f32(xrow[pi + 1]), v1);
      }
      if (a.z) {
        const float z0 = __low2float(zv[j]), z1 = __high2float(zv[j]);
        v0 *= z0 * sigmoid<Math::fast>(z0);
        v1 *= z1 * sigmoid<Math::fast>(z1);
      }
      *reinterpret_cast<__nv_bfloat162*>(out + off + pi) = __floats2bfloat162_rn(v0, v1);
    }
  }
}

}  // namespace

void launch_tokens(const Dims& d, const SsdArgs<bf16, float>& a, const TokenInfo& ti, float* decay,
                   cudaStream_t stream) {
  tokens_kernel<bf16><<<dim3(d.h, d.nc, d.b), kThreads, 0, stream>>>(d, a, ti, decay);
  SSM_CUDA_CHECK_LAUNCH();
}

// Forward (1) or backward (1) on tensor cores: the block tile (PB, NB) of the (p, n) state
// and the warps' share NTW of it, from p and n.
template <bool kGrad>
void launch_chunk_state_tc(const Dims& d, const SsdArgs<bf16, float>& a, const bf16* dout, const TokenInfo& ti,
                           float* out, cudaStream_t stream) {
  const int pb = d.p < 64 ? 32 : 64, nb = d.n < 128 ? static_cast<int>(d.n) : 128;
  const int wc = 4 / (pb / 16), ntw = nb / (8 * wc);
  const dim3 grid(static_cast<unsigned>(d.h * (d.p / pb) * (d.n / nb)), static_cast<unsigned>(d.nc),
                  static_cast<unsigned>(d.b));
  auto go = [&](auto kernel) {
    kernel<<<grid, kTcThreads, 0, stream>>>(d, a, dout, ti, out);
    SSM_CUDA_CHECK_LAUNCH();
  };
  if (pb == 64) {
    switch (ntw) {
      case 2: go(chunk_state_tc_kernel<64, 2, kGrad>); break;
      case 4: go(chunk_state_tc_kernel<64, 4, kGrad>); break;
      case 8: go(chunk_state_tc_kernel<64, 8, kGrad>); break;
      default: go(chunk_state_tc_kernel<64, 16, kGrad>); break;
    }
  } else {
    switch (ntw) {
      case 1: go(chunk_state_tc_kernel<32, 1, kGrad>); break;
      case 2: go(chunk_state_tc_kernel<32, 2, kGrad>); break;
      case 4: go(chunk_state_tc_kernel<32, 4, kGrad>); break;
      default: go(chunk_state_tc_kernel<32, 8, kGrad>); break;
    }
  }
}
template void launch_chunk_state_tc<false>(const Dims&, const SsdArgs<bf16, float>&, const bf16*, const TokenInfo&,
                                           float*, cudaStream_t);
template void launch_chunk_state_tc<true>(const Dims&, const SsdArgs<bf16, float>&, const bf16*, const TokenInfo&,
                                          float*, cudaStream_t);

// C B^T of every tile pair of every chunk and group, into the tiles ssd.cu's take_cb sizes:
// one layout for the forward, two for the backward (cb_tc_kernel's both).
void launch_cb(const Dims& d, const SsdArgs<bf16, float>& a, bool both, float* cb, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(cb_pairs(d.ntt)), static_cast<unsigned>(d.nc * d.g), static_cast<unsigned>(d.b));
  auto go = [&](auto kernel) {
    kernel<<<grid, kTcThreads, 0, stream>>>(d, a, both, cb);
    SSM_CUDA_CHECK_LAUNCH();
  };
  switch (d.n) {
    case 16: go(cb_tc_kernel<16>); break;
    case 32: go(cb_tc_kernel<32>); break;
    case 64: go(cb_tc_kernel<64>); break;
    default: go(cb_tc_kernel<128>); break;  // 128 and 256
  }
}

void launch_chunk_scan_tc(const Dims& d, const SsdArgs<bf16, float>& a, const TokenInfo& ti,
                          const float* chunk_states, const float* cbt, bf16* out, cudaStream_t stream) {
  dispatch_p(d.p, [&](auto pc) {
    constexpr int P = decltype(pc)::value;
    auto kernel = chunk_scan_tc_kernel<P>;
    const size_t smem = scan_tc_smem(d.n, P).total;
    allow_smem(kernel, smem);
    kernel<<<dim3(d.ntt * d.h, d.nc, d.b), kTcThreads, smem, stream>>>(d, a, ti, chunk_states, cbt, out);
    SSM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace ssmtrain::kernels::ssd_detail
