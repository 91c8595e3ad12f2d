// CUDA attention (kernels/attention.h): the dispatcher between cuDNN's fused SDPA
// (attention_cudnn.cu) and the fallback, which covers what cuDNN does not (document masking, f32,
// head dims other than 64 / 128), and the single-token decode kernel. The fallback runs the
// tensor-core flash kernels (attention_flash.cu) for bf16 with head dims 64 and 128, and the
// scalar kernels here for everything else (f32, other head dims, unaligned pointers).
//
// Scalar fallback layout: a block owns 16 rows (queries, or keys in the dk/dv kernel) of one head;
// each row is spread over 8 consecutive lanes, lane `sub` holding elements sub, sub + 8, ...
// of the head dim (EPT = elements per thread, dh <= 8 * EPT), and dot products are finished
// with 3 shuffles. Keys (or queries) stream through shared memory in tiles of 32 rows as f32.
// The forward keeps an online softmax per row (one rescale per tile). The backward is two
// kernels, dk/dv looping over query tiles and the heads of a group, dq looping over key
// tiles, so every sum has a fixed order and no atomics are needed; both backward paths share
// the delta kernel.
#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <type_traits>

#include "kernels/attention.h"
#include "kernels/cuda/attention_cudnn.cuh"
#include "kernels/cuda/attention_flash.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"

namespace ssmtrain::kernels {
namespace cuda_detail {
namespace {

constexpr int kRows = 16;         // rows of a block
constexpr int kLanesPerRow = 8;   // lanes sharing one row
constexpr int kThreads = kRows * kLanesPerRow;
constexpr int kTile = 32;         // streamed rows per shared-memory tile
constexpr int kMaxHeadDim = 128;

struct Dims {
  int64_t b, l, h, hk, dh;
  float scale;
  __host__ __device__ int group() const { return static_cast<int>(h / hk); }
  // element offsets of a row in the (b, l, heads, dh) layouts
  __device__ int64_t q_row(int64_t bi, int64_t t, int64_t hh) const { return ((bi * l + t) * h + hh) * dh; }
  __device__ int64_t kv_row(int64_t bi, int64_t t, int64_t g) const { return ((bi * l + t) * hk + g) * dh; }
};

// Sum over the 8 lanes of a row.
__device__ __forceinline__ float row_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 4);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v;
}

// Loads `count` rows (starting at token t0) of a (b, l, heads, dh) tensor into tile[kTile][dh]
// as f32, zero past the sequence end.
template <typename T>
__device__ void load_tile(float (*tile)[kMaxHeadDim], const T* src, const Dims& d, int64_t bi, int64_t t0,
                          int64_t head, int64_t heads) {
  for (int idx = threadIdx.x; idx < kTile * d.dh; idx += blockDim.x) {
    const int r = idx / static_cast<int>(d.dh), e = idx % static_cast<int>(d.dh);
    const int64_t t = t0 + r;
    tile[r][e] = t < d.l ? to_f32(src[((bi * d.l + t) * heads + head) * d.dh + e]) : 0.0f;
  }
}

template <int EPT>
__device__ __forceinline__ float dot_row(const float (&x)[EPT], const float* row, int sub, int dh) {
  float acc = 0.0f;
#pragma unroll
  for (int t = 0; t < EPT; ++t) {
    const int e = sub + kLanesPerRow * t;
    if (e < dh) acc += x[t] * row[e];
  }
  return row_sum(acc);
}

template <typename T, int EPT>
__device__ void load_row(float (&x)[EPT], const T* src, int sub, int dh, bool valid) {
#pragma unroll
  for (int t = 0; t < EPT; ++t) {
    const int e = sub + kLanesPerRow * t;
    x[t] = valid && e < dh ? to_f32(src[e]) : 0.0f;
  }
}

template <typename T, int EPT>
__device__ void store_row(T* dst, const float (&x)[EPT], int sub, int dh, float mul) {
#pragma unroll
  for (int t = 0; t < EPT; ++t) {
    const int e = sub + kLanesPerRow * t;
    if (e < dh) dst[e] = from_f32<T>(x[t] * mul);
  }
}

// grid (ceil(l / 16), h, b). out (b, l, h, dh); lse (b, h, l).
template <typename T, int EPT>
__global__ void __launch_bounds__(kThreads) fallback_forward_kernel(Dims d, const T* q, const T* k, const T* v,
                                                                    const int32_t* doc, T* out, float* lse) {
  __shared__ float ks[kTile][kMaxHeadDim];
  __shared__ float vs[kTile][kMaxHeadDim];
  __shared__ int32_t kdoc[kTile];
  const int64_t bi = blockIdx.z, hh = blockIdx.y, g = hh / d.group();
  const int r = threadIdx.x / kLanesPerRow, sub = threadIdx.x % kLanesPerRow, dh = static_cast<int>(d.dh);
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kRows, i = q0 + r;
  const bool valid = i < d.l;
  float qr[EPT], o[EPT];
  load_row<T, EPT>(qr, q + d.q_row(bi, valid ? i : 0, hh), sub, dh, valid);
#pragma unroll
  for (int t = 0; t < EPT; ++t) o[t] = 0.0f;
  const int32_t my_doc = doc && valid ? doc[bi * d.l + i] : 0;
  float m = -INFINITY, lsum = 0.0f;
  const int64_t last_key = min(q0 + kRows, d.l) - 1;  // causal: no key past the block's last query
  for (int64_t j0 = 0; j0 <= last_key; j0 += kTile) {
    __syncthreads();
    load_tile<T>(ks, k, d, bi, j0, g, d.hk);
    load_tile<T>(vs, v, d, bi, j0, g, d.hk);
    if (threadIdx.x < kTile) kdoc[threadIdx.x] = doc && j0 + threadIdx.x < d.l ? doc[bi * d.l + j0 + threadIdx.x] : 0;
    __syncthreads();
    float sc[kTile];
    float tile_max = -INFINITY;
#pragma unroll 4
    for (int jj = 0; jj < kTile; ++jj) {
      const float s = dot_row<EPT>(qr, ks[jj], sub, dh) * d.scale;
      const int64_t j = j0 + jj;
      const bool seen = valid && j <= i && (!doc || kdoc[jj] == my_doc);
      sc[jj] = seen ? s : -INFINITY;
      tile_max = fmaxf(tile_max, sc[jj]);
    }
    if (tile_max == -INFINITY) continue;  // nothing visible to this row in the tile
    const float m_new = fmaxf(m, tile_max);
    const float corr = expf(m - m_new);  // 0 on the first visible tile
    lsum *= corr;
#pragma unroll
    for (int t = 0; t < EPT; ++t) o[t] *= corr;
    for (int jj = 0; jj < kTile; ++jj) {
      if (sc[jj] == -INFINITY) continue;
      const float p = expf(sc[jj] - m_new);
      lsum += p;
#pragma unroll
      for (int t = 0; t < EPT; ++t) {
        const int e = sub + kLanesPerRow * t;
        if (e < dh) o[t] += p * vs[jj][e];
      }
    }
    m = m_new;
  }
  if (!valid) return;
  store_row<T, EPT>(out + d.q_row(bi, i, hh), o, sub, dh, 1.0f / lsum);
  if (sub == 0) lse[(bi * d.h + hh) * d.l + i] = m + logf(lsum);
}

// delta (b, h, l) = rowsum(dout * out); one warp per row.
template <typename T>
__global__ void delta_kernel(Dims d, const T* out, const T* dout, float* delta) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;  // over (b, l, h)
  const int lane = threadIdx.x % 32;
  if (row >= d.b * d.l * d.h) return;
  float acc = 0.0f;
  for (int e = lane; e < d.dh; e += 32) acc += to_f32(out[row * d.dh + e]) * to_f32(dout[row * d.dh + e]);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) {
    const int64_t hh = row % d.h, t = (row / d.h) % d.l, bi = row / (d.h * d.l);
    delta[(bi * d.h + hh) * d.l + t] = acc;
  }
}

// grid (ceil(l / 16), h_kv, b): dk, dv of 16 keys, summed over the heads of the group in order.
template <typename T, int EPT>
__global__ void __launch_bounds__(kThreads) fallback_dkdv_kernel(Dims d, const T* q, const T* k, const T* v,
                                                                 const int32_t* doc, const float* lse,
                                                                 const float* delta, const T* dout, T* dk, T* dv) {
  __shared__ float qs[kTile][kMaxHeadDim];
  __shared__ float dos[kTile][kMaxHeadDim];
  __shared__ float lse_s[kTile], delta_s[kTile];
  __shared__ int32_t qdoc[kTile];
  const int64_t bi = blockIdx.z, g = blockIdx.y;
  const int r = threadIdx.x / kLanesPerRow, sub = threadIdx.x % kLanesPerRow, dh = static_cast<int>(d.dh);
  const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kRows, j = k0 + r;
  const bool valid = j < d.l;
  float kr[EPT], vr[EPT], dkr[EPT], dvr[EPT];
  load_row<T, EPT>(kr, k + d.kv_row(bi, valid ? j : 0, g), sub, dh, valid);
  load_row<T, EPT>(vr, v + d.kv_row(bi, valid ? j : 0, g), sub, dh, valid);
#pragma unroll
  for (int t = 0; t < EPT; ++t) dkr[t] = dvr[t] = 0.0f;
  const int32_t my_doc = doc && valid ? doc[bi * d.l + j] : 0;
  for (int64_t hh = g * d.group(); hh < (g + 1) * d.group(); ++hh)
    for (int64_t i0 = k0 / kTile * kTile; i0 < d.l; i0 += kTile) {  // causal: queries from the block's first key
      __syncthreads();
      load_tile<T>(qs, q, d, bi, i0, hh, d.h);
      load_tile<T>(dos, dout, d, bi, i0, hh, d.h);
      if (threadIdx.x < kTile) {
        const int64_t i = i0 + threadIdx.x;
        const bool in = i < d.l;
        lse_s[threadIdx.x] = in ? lse[(bi * d.h + hh) * d.l + i] : 0.0f;
        delta_s[threadIdx.x] = in ? delta[(bi * d.h + hh) * d.l + i] : 0.0f;
        qdoc[threadIdx.x] = doc && in ? doc[bi * d.l + i] : 0;
      }
      __syncthreads();
      for (int ii = 0; ii < kTile; ++ii) {
        const int64_t i = i0 + ii;
        const float s = dot_row<EPT>(kr, qs[ii], sub, dh) * d.scale;
        const float dp = dot_row<EPT>(vr, dos[ii], sub, dh);
        const bool seen = valid && i < d.l && j <= i && (!doc || qdoc[ii] == my_doc);
        if (!seen) continue;
        const float p = expf(s - lse_s[ii]);
        const float ds = p * (dp - delta_s[ii]) * d.scale;
#pragma unroll
        for (int t = 0; t < EPT; ++t) {
          const int e = sub + kLanesPerRow * t;
          if (e < dh) {
            dvr[t] += p * dos[ii][e];
            dkr[t] += ds * qs[ii][e];
          }
        }
      }
    }
  if (!valid) return;
  store_row<T, EPT>(dk + d.kv_row(bi, j, g), dkr, sub, dh, 1.0f);
  store_row<T, EPT>(dv + d.kv_row(bi, j, g), dvr, sub, dh, 1.0f);
}

// grid (ceil(l / 16), h, b): dq of 16 queries, looping over key tiles.
template <typename T, int EPT>
__global__ void __launch_bounds__(kThreads) fallback_dq_kernel(Dims d, const T* q, const T* k, const T* v,
                                                               const int32_t* doc, const float* lse,
                                                               const float* delta, const T* dout, T* dq) {
  __shared__ float ks[kTile][kMaxHeadDim];
  __shared__ float vs[kTile][kMaxHeadDim];
  __shared__ int32_t kdoc[kTile];
  const int64_t bi = blockIdx.z, hh = blockIdx.y, g = hh / d.group();
  const int r = threadIdx.x / kLanesPerRow, sub = threadIdx.x % kLanesPerRow, dh = static_cast<int>(d.dh);
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kRows, i = q0 + r;
  const bool valid = i < d.l;
  float qr[EPT], dor[EPT], dqr[EPT];
  load_row<T, EPT>(qr, q + d.q_row(bi, valid ? i : 0, hh), sub, dh, valid);
  load_row<T, EPT>(dor, dout + d.q_row(bi, valid ? i : 0, hh), sub, dh, valid);
#pragma unroll
  for (int t = 0; t < EPT; ++t) dqr[t] = 0.0f;
  const int32_t my_doc = doc && valid ? doc[bi * d.l + i] : 0;
  const float my_lse = valid ? lse[(bi * d.h + hh) * d.l + i] : 0.0f;
  const float my_delta = valid ? delta[(bi * d.h + hh) * d.l + i] : 0.0f;
  const int64_t last_key = min(q0 + kRows, d.l) - 1;
  for (int64_t j0 = 0; j0 <= last_key; j0 += kTile) {
    __syncthreads();
    load_tile<T>(ks, k, d, bi, j0, g, d.hk);
    load_tile<T>(vs, v, d, bi, j0, g, d.hk);
    if (threadIdx.x < kTile) kdoc[threadIdx.x] = doc && j0 + threadIdx.x < d.l ? doc[bi * d.l + j0 + threadIdx.x] : 0;
    __syncthreads();
    for (int jj = 0; jj < kTile; ++jj) {
      const int64_t j = j0 + jj;
      const float s = dot_row<EPT>(qr, ks[jj], sub, dh) * d.scale;
      const float dp = dot_row<EPT>(dor, vs[jj], sub, dh);
      const bool seen = valid && j <= i && (!doc || kdoc[jj] == my_doc);
      if (!seen) continue;
      const float ds = expf(s - my_lse) * (dp - my_delta) * d.scale;
#pragma unroll
      for (int t = 0; t < EPT; ++t) {
        const int e = sub + kLanesPerRow * t;
        if (e < dh) dqr[t] += ds * ks[jj][e];
      }
    }
  }
  if (!valid) return;
  store_row<T, EPT>(dq + d.q_row(bi, i, hh), dqr, sub, dh, 1.0f);
}

// grid (h, b), 16 warps: warp w takes cached positions w, w + 16, ...; lanes split dh (4 each at
// most); the warps' partial softmaxes are merged in warp order.
constexpr int kDecodeWarps = 16;
template <typename T>
__global__ void __launch_bounds__(kDecodeWarps * 32) decode_kernel(Dims d, const T* q, const T* k_cache,
                                                                  const T* v_cache, const int32_t* lengths, T* out) {
  constexpr int kPerLane = kMaxHeadDim / 32;
  __shared__ float part_m[kDecodeWarps], part_l[kDecodeWarps];
  __shared__ float part_o[kDecodeWarps][kMaxHeadDim];
  const int64_t bi = blockIdx.y, hh = blockIdx.x, g = hh / d.group();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, dh = static_cast<int>(d.dh);
  const int64_t len = lengths[bi];
  float qr[kPerLane], o[kPerLane];
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) {
    const int e = lane + 32 * t;
    qr[t] = e < dh ? to_f32(q[(bi * d.h + hh) * d.dh + e]) : 0.0f;
    o[t] = 0.0f;
  }
  float m = -INFINITY, lsum = 0.0f;
  for (int64_t j = warp; j < len; j += kDecodeWarps) {
    const T* kr = k_cache + d.kv_row(bi, j, g);
    const T* vr = v_cache + d.kv_row(bi, j, g);
    float acc = 0.0f;
#pragma unroll
    for (int t = 0; t < kPerLane; ++t) {
      const int e = lane + 32 * t;
      if (e < dh) acc += qr[t] * to_f32(kr[e]);
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    const float s = acc * d.scale;
    const float m_new = fmaxf(m, s);
    const float corr = expf(m - m_new), p = expf(s - m_new);
    lsum = lsum * corr + p;
#pragma unroll
    for (int t = 0; t < kPerLane; ++t) {
      const int e = lane + 32 * t;
      o[t] = o[t] * corr + (e < dh ? p * to_f32(vr[e]) : 0.0f);
    }
    m = m_new;
  }
  if (lane == 0) {
    part_m[warp] = m;
    part_l[warp] = lsum;
  }
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) part_o[warp][lane + 32 * t] = o[t];
  __syncthreads();
  if (warp != 0) return;
  float gm = -INFINITY;
  for (int w = 0; w < kDecodeWarps; ++w) gm = fmaxf(gm, part_m[w]);
  float gl = 0.0f, go[kPerLane] = {};
  for (int w = 0; w < kDecodeWarps; ++w) {
    if (part_m[w] == -INFINITY) continue;  // a warp that saw no position
    const float c = expf(part_m[w] - gm);
    gl += part_l[w] * c;
#pragma unroll
    for (int t = 0; t < kPerLane; ++t) go[t] += part_o[w][lane + 32 * t] * c;
  }
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) {
    const int e = lane + 32 * t;
    if (e < dh) out[(bi * d.h + hh) * d.dh + e] = from_f32<T>(go[t] / gl);
  }
}

Dims dims_of(const AttentionShape& s) {
  return {s.batch, s.seq_len, s.n_heads, s.n_kv_heads, s.head_dim, static_cast<float>(attention_scale(s))};
}

// Calls fn(std::integral_constant<int, EPT>) for the smallest EPT with dh <= 8 * EPT.
template <typename Fn>
void dispatch_ept(int64_t dh, Fn&& fn) {
  if (dh <= 16) fn(std::integral_constant<int, 2>{});
  else if (dh <= 32) fn(std::integral_constant<int, 4>{});
  else if (dh <= 64) fn(std::integral_constant<int, 8>{});
  else fn(std::integral_constant<int, 16>{});
}

void check_fallback(const AttentionShape& s, const char* op) {
  if (s.head_dim > kMaxHeadDim)
    throw KernelError(std::string("cuda::") + op + ": head dim " + std::to_string(s.head_dim) +
                      " is over the GPU kernels' limit of " + std::to_string(kMaxHeadDim));
}

dim3 row_grid(const AttentionShape& s, int64_t heads) {
  return dim3(static_cast<unsigned>(ceil_div(s.seq_len, kRows)), static_cast<unsigned>(heads),
              static_cast<unsigned>(s.batch));
}

void fallback_forward(const AttentionShape& s, DType dtype, const void* q, const void* k, const void* v,
                      const int32_t* doc, void* out, float* lse, cudaStream_t stream) {
  check_fallback(s, "attention_forward");
  if (flash_attention_applies(s, dtype, {q, k, v, out})) {
    flash_attention_forward(s, q, k, v, doc, out, lse, stream);
    return;
  }
  const Dims d = dims_of(s);
  dispatch_f32_bf16(dtype, "attention_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_ept(s.head_dim, [&](auto ept) {
      fallback_forward_kernel<T, decltype(ept)::value><<<row_grid(s, s.n_heads), kThreads, 0, stream>>>(
          d, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), doc, static_cast<T*>(out),
          lse);
      SSM_CUDA_CHECK_LAUNCH();
    });
  });
}

void fallback_backward(const AttentionShape& s, DType dtype, const void* q, const void* k, const void* v,
                       const int32_t* doc, const void* out, const float* lse, const void* dout, void* dq, void* dk,
                       void* dv, cudaStream_t stream) {
  check_fallback(s, "attention_backward");
  const Dims d = dims_of(s);
  float* delta = nullptr;  // (b, h, l)
  SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&delta), s.batch * s.n_heads * s.seq_len * sizeof(float), stream));
  dispatch_f32_bf16(dtype, "attention_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t rows = s.batch * s.seq_len * s.n_heads;
    delta_kernel<T><<<grid_for(rows * 32, 256), 256, 0, stream>>>(d, static_cast<const T*>(out),
                                                                   static_cast<const T*>(dout), delta);
    SSM_CUDA_CHECK_LAUNCH();
    if (flash_attention_applies(s, dtype, {q, k, v, out, dout, dq, dk, dv})) {
      flash_attention_backward(s, q, k, v, doc, lse, delta, dout, dq, dk, dv, stream);
      return;
    }
    dispatch_ept(s.head_dim, [&](auto ept) {
      constexpr int E = decltype(ept)::value;
      fallback_dkdv_kernel<T, E><<<row_grid(s, s.n_kv_heads), kThreads, 0, stream>>>(
          d, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), doc, lse, delta,
          static_cast<const T*>(dout), static_cast<T*>(dk), static_cast<T*>(dv));
      SSM_CUDA_CHECK_LAUNCH();
      fallback_dq_kernel<T, E><<<row_grid(s, s.n_heads), kThreads, 0, stream>>>(
          d, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), doc, lse, delta,
          static_cast<const T*>(dout), static_cast<T*>(dq));
      SSM_CUDA_CHECK_LAUNCH();
    });
  });
  SSM_CUDA_CHECK(cudaFreeAsync(delta, stream));
}

// True when cuDNN runs this call; throws when cuDNN was asked for and cannot.
bool use_cudnn(const AttentionShape& s, DType dtype, const int32_t* doc, cuda::AttentionBackend backend,
               const char* op) {
  if (backend == cuda::AttentionBackend::fallback) return false;
  const bool ok = doc == nullptr && cudnn_attention_supported(s, dtype);
  if (backend == cuda::AttentionBackend::cudnn && !ok)
    throw KernelError(std::string("cuda::") + op + ": the cuDNN backend was asked for but does not cover this case" +
                      (doc ? " (document masking)" : " (needs bf16, head dim 64 or 128, and cuDNN accepting the graph)"));
  return ok;
}

}  // namespace
}  // namespace cuda_detail

namespace cuda {

bool attention_cudnn_supported(const AttentionShape& s, DType dtype, bool has_doc_index) {
  check_attention_shape(s);
  return !has_doc_index && s.batch > 0 && s.seq_len > 0 && cuda_detail::cudnn_attention_supported(s, dtype);
}

std::string attention_cudnn_engines(const AttentionShape& s, DType dtype) {
  check_attention_shape(s);
  return cuda_detail::cudnn_attention_engines(s, dtype);
}

void attention_forward(const AttentionShape& s, DType dtype, const void* q, const void* k, const void* v,
                       const int32_t* doc_index, void* out, float* lse, cudaStream_t stream,
                       AttentionBackend backend) {
  check_attention_shape(s);
  if (s.batch == 0 || s.seq_len == 0) return;
  if (cuda_detail::use_cudnn(s, dtype, doc_index, backend, "attention_forward"))
    cuda_detail::cudnn_attention_forward(s, dtype, q, k, v, out, lse, stream);
  else
    cuda_detail::fallback_forward(s, dtype, q, k, v, doc_index, out, lse, stream);
}

void attention_backward(const AttentionShape& s, DType dtype, const void* q, const void* k, const void* v,
                        const int32_t* doc_index, const void* out, const float* lse, const void* dout, void* dq,
                        void* dk, void* dv, cudaStream_t stream, AttentionBackend backend) {
  check_attention_shape(s);
  if (s.batch == 0 || s.seq_len == 0) return;
  if (cuda_detail::use_cudnn(s, dtype, doc_index, backend, "attention_backward"))
    cuda_detail::cudnn_attention_backward(s, dtype, q, k, v, out, lse, dout, dq, dk, dv, stream);
  else
    cuda_detail::fallback_backward(s, dtype, q, k, v, doc_index, out, lse, dout, dq, dk, dv, stream);
}

void attention_decode(const AttentionShape& s, DType dtype, const void* q, const void* k_cache, const void* v_cache,
                      const int32_t* lengths, void* out, cudaStream_t stream) {
  check_attention_shape(s);
  cuda_detail::check_fallback(s, "attention_decode");
  if (s.batch == 0) return;
  const cuda_detail::Dims d = cuda_detail::dims_of(s);
  cuda_detail::dispatch_f32_bf16(dtype, "attention_decode", [&](auto tag) {
    using T = typename decltype(tag)::type;
    cuda_detail::decode_kernel<T><<<dim3(static_cast<unsigned>(s.n_heads), static_cast<unsigned>(s.batch)),
                                    cuda_detail::kDecodeWarps * 32, 0, stream>>>(
        d, static_cast<const T*>(q), static_cast<const T*>(k_cache), static_cast<const T*>(v_cache), lengths,
        static_cast<T*>(out));
    SSM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cuda
}  // namespace ssmtrain::kernels
