// CUDA Mamba-2 SSD (kernels/ssd.h), the chunked form of kernels/cpu/ssd.cpp step by step.
// Forward: (1) chunk_state: each chunk's own state (p, n) = x^T diag(decay-to-end * dt) B;
// (2) pass_states: the state entering each chunk, sequential over chunks, saved to
// chunk_states; (3) chunk_scan: per 64-token tile, y = (C B^T ∘ L ∘ dt) x + e_t C S_in + D x,
// times silu(z).
// Backward: (1) the chunk-local part of the state gradient, sum_t e_t dy_t ⊗ C_t; (2) the
// reverse state passing (state gradient leaving each chunk, dinitial_states); (3a) per
// output tile t: dz, dC, dD and the row part of d cum; (3b) per input tile s: dx, dB, the
// explicit part of ddt and the column part of d cum; (4) per chunk: the reverse cumsum of
// d cum into ddt and dA. dA, dD and ddt_bias are per-block partials summed in a fixed order
// (no float atomics).
// Two implementations of (1), (3a), (3b) and forward (3):
// - bf16 with 16-byte aligned pointers (and n in {64, 128} for the backward): tensor cores,
//   mma.sync m16n8k16 bf16 with f32 accumulation (kernels/cuda/mma.cuh), 4-warp blocks;
//   C B^T is computed once per (chunk, tile pair, group) by cb_tc_kernel and read by every
//   head; the forward scan runs one block per (64-token tile, chunk, head); the backward
//   blocks loop over a slice of a group's heads, summing dB / dC over the slice in registers
//   and over slices in order (kernels/cuda/sum_partials.cuh).
// - otherwise (f32, and the remaining bf16 shapes): f32 CUDA cores from shared memory, one
//   block per (tile, chunk, group) looping over the group's heads (C B^T computed once).
// Glossary: b batch, l length, h heads, p head dim, n state size, g groups, Q chunk length.
// Files: ssd_common.cuh (shared sizes, token quantities, launcher declarations), ssd_simt.cu
// (the f32 CUDA-core kernels), ssd_tc.cuh (tensor-core tile helpers), ssd_tc_forward.cu and
// ssd_tc_backward.cu (the tensor-core kernels); this file keeps the kernels both paths share
// (state passing, backward (4), the decode step) and the dispatch. The per-block partials of
// dA, dD and ddt_bias are summed by kernels/cuda/sum_partials.cuh.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/ssd_common.cuh"
#include "kernels/cuda/sum_partials.cuh"
#include "kernels/ssd.h"

namespace ssmtrain::kernels::ssd_detail {
namespace {

// ---------------------------------------------------------------------------------------
// Forward (2): states (b, nc, h, p, n) hold each chunk's own state on entry and the state
// entering each chunk on exit; the final state is the one leaving the last chunk.
// Backward (2): states hold each chunk's gradient part on entry and the gradient of the state
// leaving each chunk on exit; dinit gets the gradient of the initial state. dot_partial
// (b, h, nc, gridDim.x) gets this block's share of <dS_out, S_in> per chunk.
// Grid (p n / (4 kPassThreads), h, b); each thread owns 4 consecutive elements (float4 when
// every pointer is 16-byte aligned) and loads the next chunk's values before it stores the
// current one, so the sequential walk over chunks keeps two loads in flight.
constexpr int kPassThreads = 128;
constexpr int kPassElems = 4 * kPassThreads;  // state elements per block; divides p * n

__device__ __forceinline__ float4 load4(const float* p, bool vec) {
  if (vec) return *reinterpret_cast<const float4*>(p);
  return make_float4(p[0], p[1], p[2], p[3]);
}
__device__ __forceinline__ void store4(float* p, float4 v, bool vec) {
  if (vec) {
    *reinterpret_cast<float4*>(p) = v;
    return;
  }
  p[0] = v.x;
  p[1] = v.y;
  p[2] = v.z;
  p[3] = v.w;
}

template <bool kGrad>
__global__ void __launch_bounds__(kPassThreads) pass_states_kernel(Dims d, float* states, const float* decay,
                                                                   const float* init, float* last,
                                                                   const float* chunk_states, float* dot_partial,
                                                                   bool vec) {
  const int64_t hh = blockIdx.y, bi = blockIdx.z;
  const int64_t e = (blockIdx.x * int64_t(kPassThreads) + threadIdx.x) * 4;  // element of (p, n)
  const int64_t pn = d.p * d.n;
  float4 running = init ? load4(init + (bi * d.h + hh) * pn + e, vec) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  auto chunk_of = [&](int64_t i) { return kGrad ? d.nc - 1 - i : i; };
  float4 own_next = load4(states + d.st(bi, chunk_of(0), hh) + e, vec);
  float4 in_next = kGrad ? load4(chunk_states + d.st(bi, chunk_of(0), hh) + e, vec) : own_next;
  for (int64_t i = 0; i < d.nc; ++i) {
    const int64_t c = chunk_of(i);
    const float4 own = own_next, in = in_next;
    if (i + 1 < d.nc) {
      own_next = load4(states + d.st(bi, chunk_of(i + 1), hh) + e, vec);
      if (kGrad) in_next = load4(chunk_states + d.st(bi, chunk_of(i + 1), hh) + e, vec);
    }
    const float dc = decay[(bi * d.nc + c) * d.h + hh];
    store4(states + d.st(bi, c, hh) + e, running, vec);
    if (kGrad) {
      const float prod = running.x * in.x + running.y * in.y + running.z * in.z + running.w * in.w;
      const float sum = cuda_detail::block_sum(prod);
      if (threadIdx.x == 0) dot_partial[((bi * d.h + hh) * d.nc + c) * gridDim.x + blockIdx.x] = sum;
    }
    running = make_float4(fmaf(dc, running.x, own.x), fmaf(dc, running.y, own.y), fmaf(dc, running.z, own.z),
                          fmaf(dc, running.w, own.w));
  }
  if (last) store4(last + (bi * d.h + hh) * pn + e, running, vec);
}

// Backward (4): grid (h, nc, b), one thread per token of the chunk. d cum_t from both sides,
// plus at the chunk's last token sum_s v_s and the chunk decay's term d_c <dS_out, S_in>; its
// reverse cumsum r_u = sum_{t >= u} d cum_t gives ddt_u = ddt_expl_u + A r_u and dA's share
// dt_u r_u; the raw ddt goes through softplus and the clamp.
template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_dt_kernel(Dims d, SsdArgs<T, float> a, SsdGrads<T, float> gr,
                                                          BwdScratch sc) {
  __shared__ ChunkTokens tk;
  __shared__ float rev[kThreads];
  const int64_t hh = blockIdx.x, c = blockIdx.y, bi = blockIdx.z, c0 = c * d.Q;
  prep_chunk(d, a, bi, c, hh, tk);
  const int tid = threadIdx.x;
  const int64_t at = d.tok(bi, hh, c) + tid;
  const bool valid = tid < tk.len;
  const float vsum = cuda_detail::block_sum(valid ? sc.vend[at] : 0.0f);
  float dcum = valid ? sc.dcum_t[at] + sc.dcum_s[at] : 0.0f;
  if (tid == tk.len - 1) {
    float dot = 0.0f;
    for (int i = 0; i < sc.splits; ++i) dot += sc.dot_partial[((bi * d.h + hh) * d.nc + c) * sc.splits + i];
    dcum += vsum + chunk_decay(tk) * dot;
  }
  // Reverse inclusive sum (Hillis-Steele).
  rev[tid] = dcum;
  __syncthreads();
  for (int off = 1; off < kThreads; off *= 2) {
    const float v = tid + off < kThreads ? rev[tid + off] : 0.0f;
    __syncthreads();
    rev[tid] += v;
    __syncthreads();
  }
  const float A = a.A[hh];
  float dA = 0.0f, dbias = 0.0f;
  if (valid) {
    const float r = rev[tid];
    const float ddt = fmaf(A, r, sc.ddt_expl[at]);
    const float raw = ddt * tk.grad[tid];
    gr.ddt[(bi * d.l + c0 + tid) * d.h + hh] = from_f32<T>(raw);
    dA = tk.dt[tid] * r;
    dbias = raw;
  }
  dA = cuda_detail::block_sum(dA);
  dbias = cuda_detail::block_sum(dbias);
  if (tid == 0) {
    sc.dA_part[(bi * d.nc + c) * d.h + hh] = dA;
    sc.dbias_part[(bi * d.nc + c) * d.h + hh] = dbias;
  }
}

// ---------------------------------------------------------------------------------------
// Decode step: one warp per (b, h, p) row of the state; lane l takes states l, l + 32, ... so
// a warp's loads and stores are coalesced, and y is summed by a fixed shuffle tree.
constexpr int kStepWarps = 4;
template <typename T>
__global__ void __launch_bounds__(kStepWarps * 32) ssd_step_kernel(Dims d, SsdArgs<T, float> a, float* states, T* out) {
  const int64_t i = blockIdx.x * int64_t(kStepWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= d.b * d.h * d.p) return;
  const int64_t pi = i % d.p, hh = (i / d.p) % d.h, bi = i / (d.p * d.h), gg = hh / d.hpg;
  float dt = to_f32(a.dt[bi * d.h + hh]) + (a.dt_bias ? a.dt_bias[hh] : 0.0f);
  if (d.softplus) dt = softplus(dt);
  if (d.limit) dt = fminf(fmaxf(dt, d.dt_min), d.dt_max);
  const float decay = expf(dt * a.A[hh]);
  const float xv = to_f32(a.x[i]);
  const T* Bv = a.B + (bi * d.g + gg) * d.n;
  const T* Cv = a.C + (bi * d.g + gg) * d.n;
  float* S = states + i * d.n;
  float y = 0.0f;
  for (int64_t k = lane; k < d.n; k += 32) {
    const float s = fmaf(decay, S[k], dt * xv * to_f32(Bv[k]));
    S[k] = s;
    y = fmaf(s, to_f32(Cv[k]), y);
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) y += __shfl_xor_sync(0xffffffffu, y, off);
  if (lane != 0) return;
  if (a.D) y = fmaf(d.D_hp ? a.D[hh * d.p + pi] : a.D[hh], xv, y);
  if (a.z) y *= silu(to_f32(a.z[i]));
  out[i] = from_f32<T>(y);
}

Dims make_dims(const SsdShape& s, const char* op) {
  const bool p_ok = s.head_dim == 32 || s.head_dim == 64 || s.head_dim == 128;
  const bool n_ok = s.d_state == 16 || s.d_state == 32 || s.d_state == 64 || s.d_state == 128 || s.d_state == 256;
  if (s.batch < 0 || s.seq_len < 0 || s.n_heads < 1 || s.ngroups < 1 || s.n_heads % s.ngroups != 0 || !p_ok || !n_ok ||
      s.chunk_size < 64 || s.chunk_size > kMaxChunk || !(s.dt_min <= s.dt_max))
    throw KernelError(std::string("cuda::") + op + ": unsupported shape (h " + std::to_string(s.n_heads) + ", p " +
                      std::to_string(s.head_dim) + ", n " + std::to_string(s.d_state) + ", g " +
                      std::to_string(s.ngroups) + ", chunk " + std::to_string(s.chunk_size) +
                      "); needs p in {32, 64, 128}, n in {16, 32, 64, 128, 256}, g dividing h, chunk in 64..256 and "
                      "dt_min <= dt_max");
  Dims d{};
  d.b = s.batch;
  d.l = s.seq_len;
  d.h = s.n_heads;
  d.p = s.head_dim;
  d.n = s.d_state;
  d.g = s.ngroups;
  d.hpg = s.n_heads / s.ngroups;
  d.Q = s.chunk_size;
  d.nc = (s.seq_len + d.Q - 1) / d.Q;
  d.ntt = (d.Q + kTile - 1) / kTile;
  d.cbld = d.ntt * kTile + 1;
  d.softplus = s.dt_softplus;
  d.limit = s.has_dt_limit();
  d.D_hp = s.D_has_head_dim;
  d.dt_min = static_cast<float>(s.dt_min);
  d.dt_max = static_cast<float>(std::min(s.dt_max, 3.0e38));
  return d;
}

template <typename T> SsdArgs<T, float> typed(const SsdArgs<void, float>& a) {
  return {static_cast<const T*>(a.x), static_cast<const T*>(a.dt), a.A, static_cast<const T*>(a.B),
          static_cast<const T*>(a.C), a.D, static_cast<const T*>(a.z), a.dt_bias, a.initial_states, a.doc_index};
}
template <typename T> SsdGrads<T, float> typed(const SsdGrads<void, float>& g) {
  return {static_cast<const T*>(g.dout), g.dfinal_states, static_cast<T*>(g.dx), static_cast<T*>(g.ddt), g.dA,
          static_cast<T*>(g.dB), static_cast<T*>(g.dC), g.dD, static_cast<T*>(g.dz), g.ddt_bias,
          g.dinitial_states};
}

// Pieces of one device allocation, each 16-byte aligned. Run a carving once with base null to
// size the allocation, then again over the allocation.
struct Carver {
  char* base = nullptr;
  int64_t bytes = 0;
  template <typename E> E* take(int64_t count) {
    E* p = base ? reinterpret_cast<E*>(base + bytes) : nullptr;
    bytes += (static_cast<int64_t>(sizeof(E)) * count + 15) / 16 * 16;
    return p;
  }
};

// (b, h, nc * Q) per-token scratch of the tensor-core path.
TokenInfo token_info(Carver& cv, const Dims& d) {
  const int64_t tok = d.b * d.h * d.nc * d.Q;
  TokenInfo ti;
  ti.cum = cv.take<double>(tok);
  ti.dt = cv.take<float>(tok);
  ti.grad = cv.take<float>(tok);
  ti.first = cv.take<int>(tok);
  ti.crel = cv.take<float>(tok);
  return ti;
}

bool aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// The tensor-core kernels take bf16 activations whose pointers are 16-byte aligned (they load
// 8 elements at a time); other calls take the SIMT kernels.
bool use_tensor_cores(DType dtype, const SsdArgs<void, float>& a, std::initializer_list<const void*> more) {
  if (dtype != DType::bf16) return false;
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  for (const void* p : {static_cast<const void*>(a.x), a.B, a.C, a.z, static_cast<const void*>(a.initial_states)})
    if (!aligned(p)) return false;
  for (const void* p : more)
    if (!aligned(p)) return false;
  return true;
}

// Heads per slice of the backward tensor-core kernels: the fewest slices (a divisor of the
// heads per group) that give about 4 blocks per multiprocessor.
int head_slice(const Dims& d) {
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t base = d.ntt * d.nc * d.g * d.b;
  const int64_t wanted = (4 * sms + base - 1) / base;
  for (int64_t ns = 1; ns <= d.hpg; ++ns)
    if (d.hpg % ns == 0 && ns >= wanted) return static_cast<int>(d.hpg / ns);
  return 1;
}

// C B^T of every tile pair of every chunk and group, (b, nc, g, pairs, layouts, 64 * 64) f32:
// one layout for the forward, two for the backward (cb_tc_kernel's both).
float* take_cb(Carver& cv, const Dims& d, int layouts) {
  return cv.take<float>(d.b * d.nc * d.g * cb_pairs(d.ntt) * layouts * kCbTile);
}

}  // namespace
}  // namespace ssmtrain::kernels::ssd_detail

namespace ssmtrain::kernels {
namespace cuda {
using namespace ssd_detail;

int64_t ssd_num_chunks(const SsdShape& s) { return make_dims(s, "ssd_num_chunks").nc; }

void ssd_forward(const SsdShape& shape, DType dtype, const SsdArgs<void, float>& a, void* out, float* final_states,
                 float* chunk_states, cudaStream_t stream) {
  const Dims d = make_dims(shape, "ssd_forward");
  const int64_t state_elems = d.b * d.h * d.p * d.n;
  if (d.b == 0 || d.l == 0) {
    if (final_states && state_elems > 0)
      SSM_CUDA_CHECK(a.initial_states ? cudaMemcpyAsync(final_states, a.initial_states, 4 * state_elems,
                                                        cudaMemcpyDeviceToDevice, stream)
                                      : cudaMemsetAsync(final_states, 0, 4 * state_elems, stream));
    return;
  }
  const bool tc = use_tensor_cores(dtype, a, {out, chunk_states});
  float* states = chunk_states;
  float* decay = nullptr;
  const bool vec = aligned16({chunk_states, a.initial_states, final_states});
  TokenInfo ti{};
  float* cbt = nullptr;
  auto carve = [&](Carver& cv) {
    if (!chunk_states) states = cv.take<float>(d.nc * state_elems);
    decay = cv.take<float>(d.b * d.nc * d.h);
    if (tc) {
      ti = token_info(cv, d);
      cbt = take_cb(cv, d, 1);
    }
  };
  Carver sizing;
  carve(sizing);
  void* pool = nullptr;
  SSM_CUDA_CHECK(cudaMallocAsync(&pool, sizing.bytes, stream));
  Carver cv{static_cast<char*>(pool)};
  carve(cv);
  cuda_detail::dispatch_f32_bf16(dtype, "ssd_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const SsdArgs<T, float> args = typed<T>(a);
    if constexpr (std::is_same_v<T, bf16>) {
      if (tc) {
        launch_tokens(d, args, ti, decay, stream);
        launch_chunk_state_tc<false>(d, args, nullptr, ti, states, stream);
        launch_cb(d, args, false, cbt, stream);
        pass_states_kernel<false><<<dim3(d.p * d.n / kPassElems, d.h, d.b), kPassThreads, 0, stream>>>(
            d, states, decay, a.initial_states, final_states, nullptr, nullptr, vec);
        SSM_CUDA_CHECK_LAUNCH();
        launch_chunk_scan_tc(d, args, ti, states, cbt, static_cast<T*>(out), stream);
        return;
      }
    }
    launch_chunk_state<false, T>(d, args, nullptr, states, decay, stream);
    pass_states_kernel<false><<<dim3(d.p * d.n / kPassElems, d.h, d.b), kPassThreads, 0, stream>>>(
        d, states, decay, a.initial_states, final_states, nullptr, nullptr, vec);
    SSM_CUDA_CHECK_LAUNCH();
    launch_chunk_scan<T>(d, args, states, static_cast<T*>(out), stream);
  });
  SSM_CUDA_CHECK(cudaFreeAsync(pool, stream));
}

void ssd_backward(const SsdShape& shape, DType dtype, const SsdArgs<void, float>& a, const SsdGrads<void, float>& g,
                  const float* chunk_states, cudaStream_t stream) {
  const Dims d = make_dims(shape, "ssd_backward");
  if ((a.D && !g.dD) || (a.z && !g.dz) || (a.dt_bias && !g.ddt_bias) || (a.initial_states && !g.dinitial_states))
    throw KernelError("cuda::ssd_backward: a gradient buffer is missing for an optional input");
  const int64_t state_elems = d.b * d.h * d.p * d.n;
  const int64_t d_size = d.D_hp ? d.h * d.p : d.h;
  if (d.b == 0 || d.l == 0) {
    SSM_CUDA_CHECK(cudaMemsetAsync(g.dA, 0, 4 * d.h, stream));
    if (g.dD) SSM_CUDA_CHECK(cudaMemsetAsync(g.dD, 0, 4 * d_size, stream));
    if (g.ddt_bias) SSM_CUDA_CHECK(cudaMemsetAsync(g.ddt_bias, 0, 4 * d.h, stream));
    if (g.dinitial_states && state_elems > 0)
      SSM_CUDA_CHECK(g.dfinal_states ? cudaMemcpyAsync(g.dinitial_states, g.dfinal_states, 4 * state_elems,
                                                       cudaMemcpyDeviceToDevice, stream)
                                     : cudaMemsetAsync(g.dinitial_states, 0, 4 * state_elems, stream));
    return;
  }
  if (!chunk_states) throw KernelError("cuda::ssd_backward: chunk_states from the forward are required");
  const bool tc = use_tensor_cores(dtype, a, {chunk_states, g.dout, g.dx, g.dB, g.dC, g.dz, g.dinitial_states}) &&
                  (d.n == 64 || d.n == 128);
  const int hslice = tc ? head_slice(d) : 0;
  const int64_t nslices = tc ? d.hpg / hslice : 0;
  BwdScratch sc{};
  sc.splits = static_cast<int>(d.p * d.n / kPassElems);
  const bool vec = aligned16({chunk_states, g.dfinal_states, g.dinitial_states});
  TokenInfo ti{};
  float* dB_part = nullptr;
  float* dC_part = nullptr;
  bf16* dy_buf = nullptr;  // dout silu(z) when z is given
  float* cbt = nullptr;    // C B^T of every tile pair (take_cb)
  auto carve = [&](Carver& cv) {
    const int64_t tok = d.b * d.h * d.nc * d.Q;
    const int64_t per_chunk = d.b * d.nc * d.h;
    sc.dstates = cv.take<float>(d.nc * state_elems);
    sc.decay = cv.take<float>(per_chunk);
    sc.dot_partial = cv.take<float>(per_chunk * sc.splits);
    sc.dcum_t = cv.take<float>(tok);
    sc.dcum_s = cv.take<float>(tok);
    sc.ddt_expl = cv.take<float>(tok);
    sc.vend = cv.take<float>(tok);
    sc.dA_part = cv.take<float>(per_chunk);
    sc.dbias_part = cv.take<float>(per_chunk);
    sc.dD_part = cv.take<float>(per_chunk * d.ntt * d.p);
    sc.dD_hp = cv.take<float>(d.h * d.p);
    if (tc) {
      ti = token_info(cv, d);
      if (a.z) dy_buf = cv.take<bf16>(d.b * d.l * d.h * d.p);
      cbt = take_cb(cv, d, 2);
      if (nslices > 1) {
        dB_part = cv.take<float>(nslices * d.b * d.l * d.g * d.n);
        dC_part = cv.take<float>(nslices * d.b * d.l * d.g * d.n);
      }
    }
  };
  Carver sizing;
  carve(sizing);
  void* pool = nullptr;
  SSM_CUDA_CHECK(cudaMallocAsync(&pool, sizing.bytes, stream));
  Carver cv{static_cast<char*>(pool)};
  carve(cv);
  // tiles past the end stay 0
  if (a.D) SSM_CUDA_CHECK(cudaMemsetAsync(sc.dD_part, 0, 4 * d.b * d.nc * d.h * d.ntt * d.p, stream));
  cuda_detail::dispatch_f32_bf16(dtype, "ssd_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const SsdArgs<T, float> args = typed<T>(a);
    const SsdGrads<T, float> grads = typed<T>(g);
    if constexpr (std::is_same_v<T, bf16>) {
      if (tc) {
        launch_tokens(d, args, ti, sc.decay, stream);
        launch_chunk_state_tc<true>(d, args, grads.dout, ti, sc.dstates, stream);
        const bf16* dy = grads.dout;
        if (a.z) {
          launch_dy(d, grads.dout, args.z, dy_buf, stream);
          dy = dy_buf;
        }
        pass_states_kernel<true><<<dim3(d.p * d.n / kPassElems, d.h, d.b), kPassThreads, 0, stream>>>(
            d, sc.dstates, sc.decay, g.dfinal_states, g.dinitial_states, chunk_states, sc.dot_partial, vec);
        SSM_CUDA_CHECK_LAUNCH();
        launch_cb(d, args, true, cbt, stream);
        launch_bwd_rows_cols_tc(d, args, grads, dy, ti, chunk_states, sc, hslice, nslices, dB_part, dC_part, cbt,
                                stream);
        bwd_dt_kernel<T><<<dim3(d.h, d.nc, d.b), kThreads, 0, stream>>>(d, args, grads, sc);
        SSM_CUDA_CHECK_LAUNCH();
        return;
      }
    }
    launch_chunk_state<true, T>(d, args, grads.dout, sc.dstates, sc.decay, stream);
    pass_states_kernel<true><<<dim3(d.p * d.n / kPassElems, d.h, d.b), kPassThreads, 0, stream>>>(
        d, sc.dstates, sc.decay, g.dfinal_states, g.dinitial_states, chunk_states, sc.dot_partial, vec);
    SSM_CUDA_CHECK_LAUNCH();
    launch_bwd_rows_cols<T>(d, args, grads, chunk_states, sc, stream);
    bwd_dt_kernel<T><<<dim3(d.h, d.nc, d.b), kThreads, 0, stream>>>(d, args, grads, sc);
    SSM_CUDA_CHECK_LAUNCH();
  });
  const int64_t outer = d.b * d.nc;
  // Per-block partials in a fixed order, one block per output (kernels/cuda/sum_partials.cuh).
  cuda_detail::sum_partials_by_block(sc.dA_part, 1, outer, d.h, g.dA, kThreads, stream);
  if (g.ddt_bias) cuda_detail::sum_partials_by_block(sc.dbias_part, 1, outer, d.h, g.ddt_bias, kThreads, stream);
  if (g.dD) {
    // Over (b, nc, tile) per element of (h, p), then over p for D of shape (h).
    float* dD_hp = d.D_hp ? g.dD : sc.dD_hp;
    cuda_detail::sum_partials_by_block(sc.dD_part, 1, outer * d.ntt, d.h * d.p, dD_hp, kThreads, stream);
    if (!d.D_hp) cuda_detail::sum_partials_by_block(dD_hp, d.h, d.p, 1, g.dD, kThreads, stream);
  }
  SSM_CUDA_CHECK(cudaFreeAsync(pool, stream));
}

void ssd_step(const SsdShape& shape, DType dtype, const SsdArgs<void, float>& a, float* states, void* out,
              cudaStream_t stream) {
  const Dims d = make_dims(shape, "ssd_step");
  if (d.b == 0) return;
  cuda_detail::dispatch_f32_bf16(dtype, "ssd_step", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t rows = d.b * d.h * d.p;
    ssd_step_kernel<T><<<unsigned((rows + kStepWarps - 1) / kStepWarps), kStepWarps * 32, 0, stream>>>(
        d, typed<T>(a), states, static_cast<T*>(out));
    SSM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cuda
}  // namespace ssmtrain::kernels
