// The SSD's tensor-core backward (kernels/cuda/ssd.cu has the overview and the dispatch):
// backward (3a) and (3b) as mma.sync m16n8k16 bf16 with f32 accumulation, blocks looping over
// a slice of a group's heads, and the in-order sum of the slices' dB / dC partials.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/check.h"
#include "kernels/cuda/ssd_common.cuh"
#include "kernels/cuda/ssd_tc.cuh"
#include "kernels/cuda/sum_partials.cuh"

namespace ssmtrain::kernels::ssd_detail {
namespace {

// ---------------------------------------------------------------------------------------
// Backward (3a, 3b) on tensor cores. Heads are split into slices of hslice heads; a block
// loops over its slice and accumulates dC (rows) or dB (cols) over those heads in registers.
// With several slices, each writes an f32 partial (slices, b, l, g, n) that sum_partials
// adds in slice order. N is the state size (64 or 128 here: dC and dB live in registers).

// Shared memory of the backward tensor-core kernels, in bytes. Rows kernel: big0 / big1 the
// double-buffered B_s (big1 first holds S_in), tile_n C_t, xa / xb the double-buffered x_s,
// xc dy_t. Cols kernel: big0 / big1 the double-buffered C_t (big1 first holds dS_out), tile_n
// B_s, xa / xb the double-buffered dy_t, xc x_s. cbf: each thread's 32 f32 of the current
// C B^T tile pair, copied from the precomputed tiles (cb_tc_kernel) in accumulator-fragment
// order.
struct BwdTcSmem {
  int cum, dt, first, crel, big0, big1, tile_n, xa, xb, xc, red, cbf, total;
};
__host__ __device__ inline BwdTcSmem bwd_tc_smem(int n, int p) {
  BwdTcSmem s;
  const int ldn = n + kTcPad, ldx = p + kTcPad;
  s.cum = 0;
  s.dt = s.cum + 8 * kMaxChunk;
  s.first = s.dt + 4 * kMaxChunk;
  s.crel = s.first + 4 * kMaxChunk;
  s.big0 = s.crel + 4 * kMaxChunk;                      // (64, n)
  s.big1 = s.big0 + 2 * kTile * ldn;                    // (max(64, p), n)
  s.tile_n = s.big1 + 2 * (kTile > p ? kTile : p) * ldn;  // (64, n)
  s.xa = s.tile_n + 2 * kTile * ldn;                    // (64, p) each
  s.xb = s.xa + 2 * kTile * ldx;
  s.xc = s.xb + 2 * kTile * ldx;
  s.red = s.xc + 2 * kTile * ldx;                       // (4 warps, p) f32
  s.cbf = s.red + 4 * 4 * p;                            // (64, 64) f32 in fragment order
  s.total = s.cbf + 4 * kTile * kTile;
  return s;
}

// dy = dout silu(z), (b, l, h, p) bf16, 8 elements per thread.
__global__ void dy_kernel(const bf16* dout, const bf16* z, int64_t count8, bf16* dy) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count8) return;
  uint4 v = reinterpret_cast<const uint4*>(dout)[i];
  const uint4 zr = reinterpret_cast<const uint4*>(z)[i];
  bf16* o = reinterpret_cast<bf16*>(&v);
  const bf16* zv = reinterpret_cast<const bf16*>(&zr);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float zj = to_f32(zv[j]);
    o[j] = from_f32<bf16>(to_f32(o[j]) * (zj * sigmoid<Math::fast>(zj)));
  }
  reinterpret_cast<uint4*>(dy)[i] = v;
}

// Sum over the 4 lanes of an accumulator row (lane / 4).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

// Writes a (16, N) warp tile of dC or dB (rows ra, ra + 8 of the chunk): bf16 when there is
// one slice, else the slice's f32 partial.
template <int NJ>
__device__ __forceinline__ void store_group_rows(const Dims& d, const float (&acc)[NJ][4], int64_t bi, int64_t c0,
                                                 int64_t gg, int ra, int len, int slice, int nslices, bf16* dst,
                                                 float* part) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = ra + 8 * half;
    if (t >= len) continue;
    const int64_t off = d.bc(bi, c0 + t, gg);
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      const int k = 8 * j + 2 * (lane & 3);
      if (nslices == 1)
        *reinterpret_cast<__nv_bfloat162*>(dst + off + k) = __floats2bfloat162_rn(acc[j][2 * half], acc[j][2 * half + 1]);
      else
        *reinterpret_cast<float2*>(part + slice * d.b * d.l * d.g * d.n + off + k) =
            make_float2(acc[j][2 * half], acc[j][2 * half + 1]);
    }
  }
}

// Backward (3a) on tensor cores: grid (ntt * nslices, nc * g, b), rows are output tokens t
// of the block's tile, warp w its rows 16 w ..; per head of the slice:
//   Y = e_t C_t S_in^T + sum_s (CB ∘ L dt_s) X_s (the forward's pre-gate output, for dz),
//   W = L ∘ dt_s (dy_t . x_s), d cum_t = sum_s W ∘ CB + dy_t . (e_t C_t S_in^T),
//   dC_t += W B_s + e_t dy_t S_in, and dD's partial sum_t dy_t x_t.
// dy is dout silu(z) (or dout), (b, l, h, p) bf16.
// C_t B_s^T comes from cbt (cb_tc_kernel).
template <int P, int N>
__global__ void __launch_bounds__(kTcThreads) bwd_rows_tc_kernel(Dims d, SsdArgs<bf16, float> a,
                                                                 SsdGrads<bf16, float> gr, const bf16* dy,
                                                                 TokenInfo ti, const float* chunk_states,
                                                                 BwdScratch sc, int hslice, float* dC_part,
                                                                 const float* cbt) {
  using namespace mma;
  constexpr int NP = P / 8, NJ = N / 8, ldx = P + kTcPad, ldn = N + kTcPad;
  extern __shared__ __align__(16) unsigned char smem_tc[];
  const BwdTcSmem L = bwd_tc_smem(N, P);
  double* cum = reinterpret_cast<double*>(smem_tc + L.cum);
  float* dts = reinterpret_cast<float*>(smem_tc + L.dt);
  int* first = reinterpret_cast<int*>(smem_tc + L.first);
  float* crel = reinterpret_cast<float*>(smem_tc + L.crel);
  const TilePair bb{reinterpret_cast<bf16*>(smem_tc + L.big0), reinterpret_cast<bf16*>(smem_tc + L.big1)};
  const TilePair xb{reinterpret_cast<bf16*>(smem_tc + L.xa), reinterpret_cast<bf16*>(smem_tc + L.xb)};
  bf16* ct = reinterpret_cast<bf16*>(smem_tc + L.tile_n);  // (64, N) C_t
  bf16* dyt = reinterpret_cast<bf16*>(smem_tc + L.xc);     // (64, p) dy_t
  float* red = reinterpret_cast<float*>(smem_tc + L.red);  // (4, p)
  float* cbs = reinterpret_cast<float*>(smem_tc + L.cbf);  // (64, 64) C_t B_s^T, fragment order
  const int ntt = static_cast<int>(d.ntt), nslices = static_cast<int>(d.hpg / hslice);
  const int tile = blockIdx.x % ntt, slice = blockIdx.x / ntt;
  const int64_t c = blockIdx.y / d.g, gg = blockIdx.y % d.g, bi = blockIdx.z, c0 = c * d.Q;
  const int len = static_cast<int>(min(d.Q, d.l - c0));
  const int t0 = tile * kTile;
  if (t0 >= len) return;
  const int tvalid = min(kTile, len - t0);
  const int64_t bcstride = d.g * d.n, xstride = d.h * d.p;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int rw = warp * 16, ta = t0 + rw + (lane >> 2), tb = ta + 8;
  load_rows(ct, ldn, a.C + d.bc(bi, c0 + t0, gg), bcstride, kTile, tvalid, N);
  float dC[NJ][4] = {};
  const int64_t h0 = gg * d.hpg + slice * hslice;
  for (int64_t hh = h0; hh < h0 + hslice; ++hh) {
    const int64_t tok0 = d.tok(bi, hh, c);
    const bool carry = (ti.first[tok0 + t0] & kCarries) != 0;
    auto prefetch = [&](int st) {  // B_s and x_s of input tile st into buffer st % 2
      const int s0 = st * kTile, valid = min(kTile, len - s0);
      load_rows(bb[st & 1], ldn, a.B + d.bc(bi, c0 + s0, gg), bcstride, kTile, valid, N);
      load_rows(xb[st & 1], ldx, a.x + d.x(bi, c0 + s0, hh), xstride, kTile, valid, P);
      cp_async_commit();
    };
    tile_sync();  // the previous head's tiles are read
    load_rows(dyt, ldx, dy + d.x(bi, c0 + t0, hh), xstride, kTile, tvalid, P);
    cp_async_commit();
    prefetch(0);
    load_cb(cbs, cb_tile(d, cbt, 2, bi, c, gg, tile, 0, 0));
    load_tokens(ti, tok0, t0 + tvalid, cum, dts, first, crel);
    if (carry) load_state_bf16(bb[1], ldn, chunk_states + d.st(bi, c, hh), P, N);
    cp_async_wait<2>();  // C_t and dy_t are here
    __syncthreads();
    float y[NP][4] = {};
    float dcum_a = 0.0f, dcum_b = 0.0f;
    if (carry) {
      const bf16* S = bb[1];  // (p, N)
      warp_abt<N, NP>(y, ct, ldn, rw, S, ldn);
      const float ea = ta < len && (first[ta] & kCarries) ? expf(static_cast<float>(cum[ta])) : 0.0f;
      const float eb = tb < len && (first[tb] & kCarries) ? expf(static_cast<float>(cum[tb])) : 0.0f;
      const bf16* dya = dyt + (ta - t0) * ldx;
      const bf16* dyb = dyt + (tb - t0) * ldx;
#pragma unroll
      for (int j = 0; j < NP; ++j) {
        const int pi = 8 * j + 2 * (lane & 3);
        y[j][0] *= ea;
        y[j][1] *= ea;
        y[j][2] *= eb;
        y[j][3] *= eb;
        dcum_a = fmaf(to_f32(dya[pi]), y[j][0], fmaf(to_f32(dya[pi + 1]), y[j][1], dcum_a));
        dcum_b = fmaf(to_f32(dyb[pi]), y[j][2], fmaf(to_f32(dyb[pi + 1]), y[j][3], dcum_b));
      }
      // dC += (e dy) S_in, e_t dy_t rounded to bf16 in the A fragments.
      warp_scaled_ab<P, NJ>(dC, dyt, ldx, rw, ea, eb, S, ldn);
    }
    __syncthreads();  // S_in is read: its buffer takes the next tiles
    const double cuma = ta < len ? cum[ta] : 0.0, cumb = tb < len ? cum[tb] : 0.0;
    const int fa = ta < len ? first[ta] & (kCarries - 1) : kMaxChunk;
    const int fb = tb < len ? first[tb] & (kCarries - 1) : kMaxChunk;
    const int flast = tvalid == kTile ? first[t0 + kTile - 1] & (kCarries - 1) : kMaxChunk;  // as in the forward
    float rowz_a = 0.0f, rowz_b = 0.0f;
    for (int st = 0; st <= tile; ++st) {
      const int s0 = st * kTile;
      if (st < tile) {
        prefetch(st + 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const bf16* sbuf = bb[st & 1];
      const bf16* xs = xb[st & 1];
      float g[8][4] = {}, dx[8][4] = {};  // C_t B_s^T and dy_t x_s^T, (16 rows, 64 columns s)
      read_cb(g, cbs);
      warp_abt<P>(dx, dyt, ldx, rw, xs, ldx);
      const float tra = static_cast<float>((cuma - cum[s0]) * kLog2e);
      const float trb = static_cast<float>((cumb - cum[s0]) * kLog2e);
      const bool full = st < tile && flast <= s0;
      uint32_t pa[4][4], wa[4][4];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float l[4], pm[4], wm[4];
        row_decay(l, s0 + 8 * j + 2 * (lane & 3), full, ta, tb, fa, fb, tra, trb, crel, dts);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          pm[e] = g[j][e] * l[e];
          wm[e] = dx[j][e] * l[e];
        }
        rowz_a = fmaf(wm[0], g[j][0], fmaf(wm[1], g[j][1], rowz_a));
        rowz_b = fmaf(wm[2], g[j][2], fmaf(wm[3], g[j][3], rowz_b));
        pa[j / 2][(j & 1) * 2] = pack_bf16(pm[0], pm[1]);
        pa[j / 2][(j & 1) * 2 + 1] = pack_bf16(pm[2], pm[3]);
        wa[j / 2][(j & 1) * 2] = pack_bf16(wm[0], wm[1]);
        wa[j / 2][(j & 1) * 2 + 1] = pack_bf16(wm[2], wm[3]);
      }
      // The next pair's scores, while this one's products run. The warp's reads of cbs are
      // done (__syncwarp orders them before the copy's writes; each thread copies only the
      // floats it reads itself).
      if (st < tile) {
        __syncwarp();
        load_cb(cbs, cb_tile(d, cbt, 2, bi, c, gg, tile, st + 1, 0));
      }
      warp_frag_b<NP>(y, pa, xs, ldx);
      warp_frag_b<NJ>(dC, wa, sbuf, ldn);
      __syncthreads();  // this buffer is read before the next prefetch refills it
    }
    const float dcta = quad_sum(rowz_a) + quad_sum(dcum_a), dctb = quad_sum(rowz_b) + quad_sum(dcum_b);
    if ((lane & 3) == 0) {
      if (ta < len) sc.dcum_t[tok0 + ta] = dcta;
      if (tb < len) sc.dcum_t[tok0 + tb] = dctb;
    }
    // dz = dout (y + D x) silu'(z); dD's partial sums dy x over the tile's rows, dy in f32.
    const bf16* xs = xb[tile & 1];  // the block's own x tile (the last s tile)
    const float* Dh = a.D ? a.D + (d.D_hp ? hh * P : hh) : nullptr;
    const int dstep = d.D_hp ? 1 : 0;
    float dd[NP][2] = {};
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int t = half ? tb : ta;
      if (t >= len) continue;
      const int64_t off = d.x(bi, c0 + t, hh);
      const bf16* xrow = xs + (t - t0) * ldx;
      __nv_bfloat162 dov[NP], zv[NP];
      load_row_pairs<NP>(dov, gr.dout, off);
      if (a.z) load_row_pairs<NP>(zv, a.z, off);
#pragma unroll
      for (int j = 0; j < NP; ++j) {
        const int pi = 8 * j + 2 * (lane & 3);
        const float x0 = to_f32(xrow[pi]), x1 = to_f32(xrow[pi + 1]);
        float dy0 = __low2float(dov[j]), dy1 = __high2float(dov[j]);
        if (a.z) {
          const float z0 = __low2float(zv[j]), z1 = __high2float(zv[j]);
          float v0 = y[j][2 * half], v1 = y[j][2 * half + 1];
          if (Dh) {
            v0 = fmaf(__ldg(Dh + pi * dstep), x0, v0);
            v1 = fmaf(__ldg(Dh + (pi + 1) * dstep), x1, v1);
          }
          const float sg0 = sigmoid<Math::fast>(z0), sg1 = sigmoid<Math::fast>(z1);
          *reinterpret_cast<__nv_bfloat162*>(gr.dz + off + pi) =
              __floats2bfloat162_rn(dy0 * v0 * silu_grad_from(z0, sg0), dy1 * v1 * silu_grad_from(z1, sg1));
          dy0 *= z0 * sg0;
          dy1 *= z1 * sg1;
        }
        dd[j][0] = fmaf(dy0, x0, dd[j][0]);
        dd[j][1] = fmaf(dy1, x1, dd[j][1]);
      }
    }
    if (a.D) {
#pragma unroll
      for (int j = 0; j < NP; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float v = dd[j][e];
          v += __shfl_xor_sync(0xffffffffu, v, 4);
          v += __shfl_xor_sync(0xffffffffu, v, 8);
          v += __shfl_xor_sync(0xffffffffu, v, 16);
          if (lane < 4) red[warp * P + 8 * j + 2 * lane + e] = v;
        }
      __syncthreads();
      for (int pi = threadIdx.x; pi < P; pi += kTcThreads)
        sc.dD_part[(((bi * d.nc + c) * d.ntt + tile) * d.h + hh) * P + pi] =
            red[pi] + red[P + pi] + red[2 * P + pi] + red[3 * P + pi];
    }
  }
  store_group_rows(d, dC, bi, c0, gg, ta, len, slice, nslices, gr.dC, dC_part);
}

// Backward (3b) on tensor cores: grid (ntt * nslices, nc * g, b), rows are input tokens s
// of the block's tile; per head of the slice, with M = L^T ∘ (B_s C_t^T) and
// W^T = L^T ∘ dt_s (x_s . dy_t):
//   q_s = f_s dS_out B_s + sum_t M dy_t, dx_s = dt_s q_s + D dy_s, ddt_expl_s = x_s . q_s,
//   v_s = f_s dt_s x_s . (dS_out B_s), d cum_s = -(column sums of M dt_s DX) - v_s,
//   dB_s += sum_t W^T C_t + (f_s dt_s x_s) dS_out.
// B_s C_t^T comes from cbt, as in the rows kernel.
template <int P, int N>
__global__ void __launch_bounds__(kTcThreads) bwd_cols_tc_kernel(Dims d, SsdArgs<bf16, float> a,
                                                                 SsdGrads<bf16, float> gr, const bf16* dy,
                                                                 TokenInfo ti, BwdScratch sc, int hslice,
                                                                 float* dB_part, const float* cbt) {
  using namespace mma;
  constexpr int NP = P / 8, NJ = N / 8, ldx = P + kTcPad, ldn = N + kTcPad;
  extern __shared__ __align__(16) unsigned char smem_tc[];
  const BwdTcSmem L = bwd_tc_smem(N, P);
  double* cum = reinterpret_cast<double*>(smem_tc + L.cum);
  float* dts = reinterpret_cast<float*>(smem_tc + L.dt);
  int* first = reinterpret_cast<int*>(smem_tc + L.first);
  float* crel = reinterpret_cast<float*>(smem_tc + L.crel);
  const TilePair cb{reinterpret_cast<bf16*>(smem_tc + L.big0), reinterpret_cast<bf16*>(smem_tc + L.big1)};
  const TilePair yb{reinterpret_cast<bf16*>(smem_tc + L.xa), reinterpret_cast<bf16*>(smem_tc + L.xb)};
  bf16* bs = reinterpret_cast<bf16*>(smem_tc + L.tile_n);  // (64, N) B_s
  bf16* xs = reinterpret_cast<bf16*>(smem_tc + L.xc);      // (64, p) x_s
  float* cbs = reinterpret_cast<float*>(smem_tc + L.cbf);  // (64, 64) B_s C_t^T, fragment order
  const int ntt = static_cast<int>(d.ntt), nslices = static_cast<int>(d.hpg / hslice);
  const int tile = blockIdx.x % ntt, slice = blockIdx.x / ntt;
  const int64_t c = blockIdx.y / d.g, gg = blockIdx.y % d.g, bi = blockIdx.z, c0 = c * d.Q;
  const int len = static_cast<int>(min(d.Q, d.l - c0));
  const int s0 = tile * kTile;
  if (s0 >= len) return;
  const int svalid = min(kTile, len - s0), ntiles = (len + kTile - 1) / kTile;
  const int64_t bcstride = d.g * d.n, xstride = d.h * d.p;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int rw = warp * 16, sa = s0 + rw + (lane >> 2), sb = sa + 8;
  load_rows(bs, ldn, a.B + d.bc(bi, c0 + s0, gg), bcstride, kTile, svalid, N);
  float dB[NJ][4] = {};
  const int64_t h0 = gg * d.hpg + slice * hslice;
  for (int64_t hh = h0; hh < h0 + hslice; ++hh) {
    const int64_t tok0 = d.tok(bi, hh, c);
    auto prefetch = [&](int tt) {  // C_t and dy_t of output tile tt into buffer (tt - tile) % 2
      const int t0 = tt * kTile, valid = min(kTile, len - t0), buf = (tt - tile) & 1;
      load_rows(cb[buf], ldn, a.C + d.bc(bi, c0 + t0, gg), bcstride, kTile, valid, N);
      load_rows(yb[buf], ldx, dy + d.x(bi, c0 + t0, hh), xstride, kTile, valid, P);
      cp_async_commit();
    };
    tile_sync();  // the previous head's tiles are read
    load_rows(xs, ldx, a.x + d.x(bi, c0 + s0, hh), xstride, kTile, svalid, P);
    cp_async_commit();
    prefetch(tile);
    load_cb(cbs, cb_tile(d, cbt, 2, bi, c, gg, tile, tile, 1));
    load_tokens(ti, tok0, len, cum, dts, first, crel);
    load_state_bf16(cb[1], ldn, sc.dstates + d.st(bi, c, hh), P, N);
    cp_async_wait<2>();  // B_s and x_s are here
    __syncthreads();
    const double cum_last = cum[len - 1];
    const int first_last = first[len - 1] & (kCarries - 1);
    const bool va = sa < len, vb = sb < len;
    const double cuma = va ? cum[sa] : 0.0, cumb = vb ? cum[sb] : 0.0;
    const float dta = va ? dts[sa] : 0.0f, dtb = vb ? dts[sb] : 0.0f;
    const float fa = va && sa >= first_last ? expf(static_cast<float>(cum_last - cuma)) : 0.0f;
    const float fb = vb && sb >= first_last ? expf(static_cast<float>(cum_last - cumb)) : 0.0f;
    // q = f_s (B_s dS_out^T); v_s = dt_s x_s . q.
    const bf16* dS = cb[1];  // (p, N)
    float q[NP][4] = {};
    warp_abt<N, NP>(q, bs, ldn, rw, dS, ldn);
    float xdsb_a = 0.0f, xdsb_b = 0.0f;
    {
      const bf16* xa = xs + (sa - s0) * ldx;
      const bf16* xb = xs + (sb - s0) * ldx;
#pragma unroll
      for (int j = 0; j < NP; ++j) {
        const int pi = 8 * j + 2 * (lane & 3);
        q[j][0] *= fa;
        q[j][1] *= fa;
        q[j][2] *= fb;
        q[j][3] *= fb;
        xdsb_a = fmaf(to_f32(xa[pi]), q[j][0], fmaf(to_f32(xa[pi + 1]), q[j][1], xdsb_a));
        xdsb_b = fmaf(to_f32(xb[pi]), q[j][2], fmaf(to_f32(xb[pi + 1]), q[j][3], xdsb_b));
      }
    }
    // dB += (f dt x) dS_out, f_s dt_s x_s rounded to bf16 in the A fragments.
    warp_scaled_ab<P, NJ>(dB, xs, ldx, rw, fa * dta, fb * dtb, dS, ldn);
    __syncthreads();  // dS_out is read: its buffer takes the next tiles
    float colz_a = 0.0f, colz_b = 0.0f;
    for (int tt = tile; tt < ntiles; ++tt) {
      const int t0 = tt * kTile;
      if (tt + 1 < ntiles) {
        prefetch(tt + 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const bf16* ct = cb[(tt - tile) & 1];
      const bf16* dyt = yb[(tt - tile) & 1];
      float g[8][4] = {}, dx[8][4] = {};  // B_s C_t^T and x_s dy_t^T, (16 rows s, 64 columns t)
      read_cb(g, cbs);
      warp_abt<P>(dx, xs, ldx, rw, dyt, ldx);
      // exp(cum_t - cum_s) = exp2(crel_t - (cum_s - cum_t0) log2(e)).
      const float sra = static_cast<float>((cuma - cum[t0]) * kLog2e);
      const float srb = static_cast<float>((cumb - cum[t0]) * kLog2e);
      // Every column reaches every row: a later full tile with no document start after s0.
      const bool full = tt > tile && svalid == kTile && t0 + kTile <= len &&
                        (first[t0 + kTile - 1] & (kCarries - 1)) <= s0;
      uint32_t ma[4][4], wa[4][4];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float l[4], mm[4], wm[4];
        col_decay(l, t0 + 8 * j + 2 * (lane & 3), full, sa, sb, va, vb, len, sra, srb, crel, first);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          mm[e] = l[e] * g[j][e];
          wm[e] = l[e] * (e < 2 ? dta : dtb) * dx[j][e];
        }
        colz_a = fmaf(wm[0], g[j][0], fmaf(wm[1], g[j][1], colz_a));
        colz_b = fmaf(wm[2], g[j][2], fmaf(wm[3], g[j][3], colz_b));
        ma[j / 2][(j & 1) * 2] = pack_bf16(mm[0], mm[1]);
        ma[j / 2][(j & 1) * 2 + 1] = pack_bf16(mm[2], mm[3]);
        wa[j / 2][(j & 1) * 2] = pack_bf16(wm[0], wm[1]);
        wa[j / 2][(j & 1) * 2 + 1] = pack_bf16(wm[2], wm[3]);
      }
      if (tt + 1 < ntiles) {  // the next pair's scores (see the rows kernel)
        __syncwarp();
        load_cb(cbs, cb_tile(d, cbt, 2, bi, c, gg, tt + 1, tile, 1));
      }
      warp_frag_b<NP>(q, ma, dyt, ldx);
      warp_frag_b<NJ>(dB, wa, ct, ldn);
      __syncthreads();  // this buffer is read before the next prefetch refills it
    }
    // dx_s = dt_s q_s + D dy_s; ddt_expl_s = x_s . q_s.
    const float* Dh = a.D ? a.D + (d.D_hp ? hh * P : hh) : nullptr;
    const int dstep = d.D_hp ? 1 : 0;
    float xq_a = 0.0f, xq_b = 0.0f;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int s = half ? sb : sa;
      if (s >= len) continue;
      const float dts_ = half ? dtb : dta;
      const int64_t off = d.x(bi, c0 + s, hh);
      const bf16* xrow = xs + (s - s0) * ldx;
      __nv_bfloat162 dov[NP], zv[NP];
      if (Dh) {
        load_row_pairs<NP>(dov, gr.dout, off);
        if (a.z) load_row_pairs<NP>(zv, a.z, off);
      }
      float xq = 0.0f;
#pragma unroll
      for (int j = 0; j < NP; ++j) {
        const int pi = 8 * j + 2 * (lane & 3);
        const float q0 = q[j][2 * half], q1 = q[j][2 * half + 1];
        xq = fmaf(to_f32(xrow[pi]), q0, fmaf(to_f32(xrow[pi + 1]), q1, xq));
        float v0 = dts_ * q0, v1 = dts_ * q1;
        if (Dh) {
          float dy0 = __low2float(dov[j]), dy1 = __high2float(dov[j]);
          if (a.z) {
            const float z0 = __low2float(zv[j]), z1 = __high2float(zv[j]);
            dy0 *= z0 * sigmoid<Math::fast>(z0);
            dy1 *= z1 * sigmoid<Math::fast>(z1);
          }
          v0 = fmaf(__ldg(Dh + pi * dstep), dy0, v0);
          v1 = fmaf(__ldg(Dh + (pi + 1) * dstep), dy1, v1);
        }
        *reinterpret_cast<__nv_bfloat162*>(gr.dx + off + pi) = __floats2bfloat162_rn(v0, v1);
      }
      if (half) xq_b = xq;
      else xq_a = xq;
    }
    xq_a = quad_sum(xq_a);
    xq_b = quad_sum(xq_b);
    xdsb_a = quad_sum(xdsb_a);
    xdsb_b = quad_sum(xdsb_b);
    colz_a = quad_sum(colz_a);
    colz_b = quad_sum(colz_b);
    if ((lane & 3) == 0) {
      if (va) {
        const float v = dta * xdsb_a;
        sc.ddt_expl[tok0 + sa] = xq_a;
        sc.vend[tok0 + sa] = v;
        sc.dcum_s[tok0 + sa] = -colz_a - v;
      }
      if (vb) {
        const float v = dtb * xdsb_b;
        sc.ddt_expl[tok0 + sb] = xq_b;
        sc.vend[tok0 + sb] = v;
        sc.dcum_s[tok0 + sb] = -colz_b - v;
      }
    }
  }
  store_group_rows(d, dB, bi, c0, gg, sa, len, slice, nslices, gr.dB, dB_part);
}


}  // namespace

void launch_dy(const Dims& d, const bf16* dout, const bf16* z, bf16* dy, cudaStream_t stream) {
  const int64_t count8 = d.b * d.l * d.h * d.p / 8;
  dy_kernel<<<cuda_detail::grid_for(count8, 256), 256, 0, stream>>>(dout, z, count8, dy);
  SSM_CUDA_CHECK_LAUNCH();
}

void launch_bwd_rows_cols_tc(const Dims& d, const SsdArgs<bf16, float>& a, const SsdGrads<bf16, float>& g,
                             const bf16* dy, const TokenInfo& ti, const float* chunk_states, const BwdScratch& sc,
                             int hslice, int64_t nslices, float* dB_part, float* dC_part, const float* cbt,
                             cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(d.ntt * nslices), static_cast<unsigned>(d.nc * d.g),
                  static_cast<unsigned>(d.b));
  dispatch_p(d.p, [&](auto pc) {
    constexpr int P = decltype(pc)::value;
    auto go = [&](auto nc_) {
      constexpr int N = decltype(nc_)::value;
      const size_t smem = bwd_tc_smem(N, P).total;
      auto rows = bwd_rows_tc_kernel<P, N>;
      allow_smem(rows, smem);
      rows<<<grid, kTcThreads, smem, stream>>>(d, a, g, dy, ti, chunk_states, sc, hslice, dC_part, cbt);
      SSM_CUDA_CHECK_LAUNCH();
      auto cols = bwd_cols_tc_kernel<P, N>;
      allow_smem(cols, smem);
      cols<<<grid, kTcThreads, smem, stream>>>(d, a, g, dy, ti, sc, hslice, dB_part, cbt);
      SSM_CUDA_CHECK_LAUNCH();
    };
    if (d.n == 64) go(std::integral_constant<int, 64>{});
    else go(std::integral_constant<int, 128>{});
  });
  if (nslices > 1) {
    const int64_t count = d.b * d.l * d.g * d.n;
    // out (count) = the slices' partials (slices, count) summed in slice order, as bf16.
    cuda_detail::sum_partials_by_thread(dB_part, 1, nslices, count, g.dB, stream);
    cuda_detail::sum_partials_by_thread(dC_part, 1, nslices, count, g.dC, stream);
  }
}

}  // namespace ssmtrain::kernels::ssd_detail
