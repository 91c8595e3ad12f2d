// Mixture-of-experts pieces on the GPU (kernels/moe.h). Router, losses and their backwards: one
// warp per token (e <= 64: two experts per lane), fixed butterfly reductions. Dispatch: a
// stable counting sort in three launches (per-chunk histograms, a scan per expert over chunks,
// ranks inside each chunk from warp matches), integer-exact. Gather / combine: f32 sums in slot
// order. Expert SwiGLU: per-expert GEMMs over contiguous rows (cublasGemmGroupedBatchedEx, or
// one cuBLASLt call per expert through kernels/gemm.h) around kernels/swiglu.h.
#include "kernels/moe.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/vector_io.cuh"
#include "kernels/gemm.h"
#include "kernels/swiglu.h"

namespace ssmtrain::kernels::cuda {
namespace {

using cuda_detail::block_sum;
using cuda_detail::ceil_div;
using cuda_detail::dispatch_f32_bf16;
using cuda_detail::grid_for;
using cuda_detail::load_items;
using cuda_detail::MaxOp;
using cuda_detail::store_items;
using cuda_detail::SumOp;
using cuda_detail::warp_allreduce;

constexpr int kWarpsPerBlock = 8;  // warp-per-token kernels: 256 threads
constexpr int kChunk = 256;        // dispatch: assignments per block (8 warps)
constexpr int kScanThreads = 1024;

__host__ __device__ inline int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// Router

// probs, lse, top-k of one token per warp. Lane l holds experts l and l + 32.
__global__ void router_forward_kernel(MoeShape s, const float* logits, float* probs, float* lse, int32_t* topk_index,
                                      float* topk_weight) {
  const int64_t token = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (token >= s.tokens) return;  // uniform per warp
  const int e = int(s.experts), k = int(s.top_k);
  const float* row = logits + token * e;  // (e)
  const bool has0 = lane < e, has1 = lane + 32 < e;
  const float v0 = has0 ? row[lane] : -INFINITY, v1 = has1 ? row[lane + 32] : -INFINITY;
  const float max_logit = warp_allreduce(fmaxf(v0, v1), MaxOp{});
  const float ex0 = has0 ? expf(v0 - max_logit) : 0.0f, ex1 = has1 ? expf(v1 - max_logit) : 0.0f;
  const float sum = warp_allreduce(ex0 + ex1, SumOp{});
  const float p0 = ex0 / sum, p1 = ex1 / sum;
  if (has0) probs[token * e + lane] = p0;
  if (has1) probs[token * e + lane + 32] = p1;
  if (lane == 0) lse[token] = max_logit + logf(sum);

  // Top-k: k rounds of a warp arg-max over (logit, -index); the winner is marked taken.
  constexpr int kNone = 1 << 30;
  bool taken0 = !has0, taken1 = !has1;
  float weights[kMoeMaxTopK];
  int chosen[kMoeMaxTopK];
  float weight_sum = 0.0f;
  for (int slot = 0; slot < k; ++slot) {
    float best = -INFINITY;
    int best_index = kNone;
    if (!taken0) best = v0, best_index = lane;
    if (!taken1 && (best_index == kNone || v1 > best)) best = v1, best_index = lane + 32;
    for (int mask = 16; mask > 0; mask >>= 1) {
      const float other = __shfl_xor_sync(0xffffffffu, best, mask);
      const int other_index = __shfl_xor_sync(0xffffffffu, best_index, mask);
      if (other > best || (other == best && other_index < best_index)) best = other, best_index = other_index;
    }
    const float q0 = __shfl_sync(0xffffffffu, p0, best_index % 32);
    const float q1 = __shfl_sync(0xffffffffu, p1, best_index % 32);
    const float p = best_index < 32 ? q0 : q1;
    if (best_index == lane) taken0 = true;
    if (best_index == lane + 32) taken1 = true;
    chosen[slot] = best_index;
    weights[slot] = p;
    weight_sum += p;
  }
  if (lane == 0) {
    for (int slot = 0; slot < k; ++slot) {
      topk_index[token * k + slot] = chosen[slot];
      topk_weight[token * k + slot] = s.normalize_topk ? weights[slot] / weight_sum : weights[slot];
    }
  }
}

// dlogits of one token per warp from the gradient of its k routing weights.
__global__ void router_backward_kernel(MoeShape s, const float* probs, const int32_t* topk_index,
                                       const float* topk_weight, const float* dweight, float* dlogits) {
  const int64_t token = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (token >= s.tokens) return;
  const int e = int(s.experts), k = int(s.top_k);
  const float* p = probs + token * e;  // (e)
  const bool has0 = lane < e, has1 = lane + 32 < e;
  const float p0 = has0 ? p[lane] : 0.0f, p1 = has1 ? p[lane + 32] : 0.0f;
  float sum_p = 0.0f, dot_w = 0.0f;
  if (s.normalize_topk)
    for (int slot = 0; slot < k; ++slot) {
      sum_p += p[topk_index[token * k + slot]];
      dot_w += dweight[token * k + slot] * topk_weight[token * k + slot];
    }
  float dp0 = 0.0f, dp1 = 0.0f;  // gradient w.r.t. this lane's probabilities
  for (int slot = 0; slot < k; ++slot) {
    const int index = topk_index[token * k + slot];
    const float dw = dweight[token * k + slot];
    const float dp = s.normalize_topk ? (dw - dot_w) / sum_p : dw;
    if (index == lane) dp0 = dp;
    if (index == lane + 32) dp1 = dp;
  }
  const float dot = warp_allreduce(p0 * dp0 + p1 * dp1, SumOp{});
  if (has0) dlogits[token * e + lane] = p0 * (dp0 - dot);
  if (has1) dlogits[token * e + lane + 32] = p1 * (dp1 - dot);
}

// ---------------------------------------------------------------------------------------------
// Dispatch: a stable counting sort of the assignments by expert.

// counts of each expert in each chunk of kChunk assignments -> chunk_counts (e, chunks)
__global__ void chunk_count_kernel(MoeShape s, const int32_t* topk_index, int64_t chunks, int32_t* chunk_counts) {
  __shared__ int counts[kMoeMaxExperts];
  if (threadIdx.x < kMoeMaxExperts) counts[threadIdx.x] = 0;
  __syncthreads();
  const int64_t a = int64_t(blockIdx.x) * kChunk + threadIdx.x;
  if (a < s.assignments()) {
    const int expert = topk_index[a];
    if (expert >= 0 && expert < s.experts) atomicAdd(&counts[expert], 1);  // integer: exact in any order
  }
  __syncthreads();
  if (threadIdx.x < s.experts) chunk_counts[threadIdx.x * chunks + blockIdx.x] = counts[threadIdx.x];
}

// One block per expert: chunk_counts[g, :] becomes its exclusive prefix sums; counts[g] the total.
__global__ void chunk_scan_kernel(int64_t chunks, int32_t* chunk_counts, int32_t* counts) {
  __shared__ int partial[kScanThreads];
  int32_t* row = chunk_counts + int64_t(blockIdx.x) * chunks;  // (chunks)
  const int64_t per = div_up(chunks, kScanThreads);
  const int64_t begin = min(chunks, threadIdx.x * per), end = min(chunks, begin + per);
  int local = 0;
  for (int64_t c = begin; c < end; ++c) local += row[c];
  partial[threadIdx.x] = local;
  __syncthreads();
  for (int stride = 1; stride < kScanThreads; stride *= 2) {  // inclusive Hillis-Steele scan
    const int add = threadIdx.x >= stride ? partial[threadIdx.x - stride] : 0;
    __syncthreads();
    partial[threadIdx.x] += add;
    __syncthreads();
  }
  int running = partial[threadIdx.x] - local;  // exclusive
  for (int64_t c = begin; c < end; ++c) {
    const int v = row[c];
    row[c] = running;
    running += v;
  }
  if (threadIdx.x == kScanThreads - 1) counts[blockIdx.x] = partial[threadIdx.x];
}

// Rows of the assignments of one chunk: expert offset + earlier chunks + rank inside the chunk.
__global__ void scatter_rows_kernel(MoeShape s, const int32_t* topk_index, int64_t chunks,
                                    const int32_t* chunk_base, const int32_t* counts, int32_t* offsets,
                                    int32_t* row_of_assignment, int32_t* assignment_of_row) {
  __shared__ int base[kMoeMaxExperts];
  __shared__ int warp_counts[kChunk / 32][kMoeMaxExperts];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int e = int(s.experts);
  if (threadIdx.x == 0) {
    int running = 0;
    for (int g = 0; g < e; ++g) {
      base[g] = running + chunk_base[g * chunks + blockIdx.x];
      if (blockIdx.x == 0) offsets[g] = running;
      running += counts[g];
    }
    if (blockIdx.x == 0) offsets[e] = running;
  }
  for (int i = threadIdx.x; i < (kChunk / 32) * kMoeMaxExperts; i += blockDim.x) (&warp_counts[0][0])[i] = 0;
  const int64_t a = int64_t(blockIdx.x) * kChunk + threadIdx.x;
  int expert = a < s.assignments() ? topk_index[a] : -1;
  if (expert >= e) expert = -1;  // out of range: not placed
  const bool valid = expert >= 0;
  const unsigned same = __match_any_sync(0xffffffffu, expert);  // lanes of this warp with this expert
  const int rank_in_warp = __popc(same & ((1u << lane) - 1u));
  __syncthreads();
  if (valid && rank_in_warp == 0) warp_counts[warp][expert] = __popc(same);
  __syncthreads();
  if (!valid) return;
  int row = base[expert] + rank_in_warp;
  for (int w = 0; w < warp; ++w) row += warp_counts[w][expert];
  row_of_assignment[a] = row;
  assignment_of_row[row] = int32_t(a);
}

// ---------------------------------------------------------------------------------------------
// Losses

// Block g < e: mean_probs[g] = mean_t probs[t, g]; block e: z = mean_t lse_t^2.
__global__ void loss_sums_kernel(MoeShape s, const float* probs, const float* lse, float* mean_probs, float* z_loss) {
  const int64_t e = s.experts;
  float local = 0.0f;
  if (blockIdx.x < e) {
    for (int64_t t = threadIdx.x; t < s.tokens; t += blockDim.x) local += probs[t * e + blockIdx.x];
  } else {
    for (int64_t t = threadIdx.x; t < s.tokens; t += blockDim.x) local += lse[t] * lse[t];
  }
  const float total = block_sum(local);
  if (threadIdx.x != 0) return;
  const float mean = s.tokens > 0 ? total / float(s.tokens) : 0.0f;
  if (blockIdx.x < e) mean_probs[blockIdx.x] = mean;
  else *z_loss = mean;
}

// aux = e * sum_g f_g P_g (one warp).
__global__ void aux_loss_kernel(MoeShape s, const int32_t* counts, const float* mean_probs, float* aux_loss) {
  const int lane = threadIdx.x;
  const int e = int(s.experts);
  const float scale = s.tokens > 0 ? 1.0f / float(s.assignments()) : 0.0f;
  float local = 0.0f;
  if (lane < e) local += float(counts[lane]) * scale * mean_probs[lane];
  if (lane + 32 < e) local += float(counts[lane + 32]) * scale * mean_probs[lane + 32];
  const float total = warp_allreduce(local, SumOp{});
  if (lane == 0) *aux_loss = float(e) * total;
}

__global__ void losses_backward_kernel(MoeShape s, const float* probs, const float* lse, const int32_t* counts,
                                       const float* daux, const float* dz, float* dlogits) {
  const int64_t token = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (token >= s.tokens) return;
  const int e = int(s.experts);
  const float g_aux = daux ? *daux : 0.0f, g_z = dz ? *dz : 0.0f;
  const float tokens = float(s.tokens);
  // d aux / d probs[t, g] = e f_g / t
  const float scale = g_aux * float(e) / float(s.assignments()) / tokens;
  const bool has0 = lane < e, has1 = lane + 32 < e;
  const float* p = probs + token * e;
  const float p0 = has0 ? p[lane] : 0.0f, p1 = has1 ? p[lane + 32] : 0.0f;
  const float dp0 = has0 ? scale * float(counts[lane]) : 0.0f, dp1 = has1 ? scale * float(counts[lane + 32]) : 0.0f;
  const float dot = warp_allreduce(p0 * dp0 + p1 * dp1, SumOp{});
  const float z_scale = 2.0f * g_z * lse[token] / tokens;
  if (has0) dlogits[token * e + lane] = p0 * (dp0 - dot) + z_scale * p0;
  if (has1) dlogits[token * e + lane + 32] = p1 * (dp1 - dot) + z_scale * p1;
}

// ---------------------------------------------------------------------------------------------
// Gather and combine. Each thread takes K consecutive columns of one row (16-byte vectors when
// rows and pointers allow).

template <typename T> constexpr int items() { return 16 / sizeof(T); }

bool aligned16(int64_t d, int elem_size, std::initializer_list<const void*> ptrs) {
  if ((d * elem_size) % 16 != 0) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

template <typename T>
__global__ void permute_kernel(MoeShape s, int64_t d, const T* x, const int32_t* assignment_of_row, bool aligned,
                               T* xp) {
  constexpr int K = items<T>();
  const int64_t groups = div_up(d, K);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < s.assignments() * groups;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / groups, col = (i % groups) * K;
    const int64_t token = assignment_of_row[row] / s.top_k;
    float v[K];
    load_items<K>(x + token * d, col, d, aligned, v);
    store_items<K>(xp + row * d, col, d, aligned, v);
  }
}

// out[t] = sum_slot weight[t, slot] * src[row_of(t, slot)] (weight null: 1), in slot order.
template <typename T>
__global__ void combine_kernel(MoeShape s, int64_t d, const T* src, const int32_t* row_of_assignment,
                               const float* weight, bool aligned, T* out) {
  constexpr int K = items<T>();
  const int64_t groups = div_up(d, K);
  const int k = int(s.top_k);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < s.tokens * groups;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t token = i / groups, col = (i % groups) * K;
    float acc[K] = {};
    for (int slot = 0; slot < k; ++slot) {
      const int64_t row = row_of_assignment[token * k + slot];
      const float w = weight ? weight[token * k + slot] : 1.0f;
      float v[K];
      load_items<K>(src + row * d, col, d, aligned, v);
#pragma unroll
      for (int j = 0; j < K; ++j) acc[j] += w * v[j];
    }
    store_items<K>(out + token * d, col, d, aligned, acc);
  }
}

// One warp per assignment: dyp[row] = weight * dout[t]; dweight = <dout[t], yp[row]>.
template <typename T>
__global__ void unpermute_backward_kernel(MoeShape s, int64_t d, const T* dout, const T* yp,
                                          const int32_t* row_of_assignment, const float* weight, bool aligned, T* dyp,
                                          float* dweight) {
  constexpr int K = items<T>();
  const int64_t a = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (a >= s.assignments()) return;
  const int64_t row = row_of_assignment[a];
  const float w = weight[a];
  const T* g = dout + (a / s.top_k) * d;  // (d)
  float dot = 0.0f;
  for (int64_t col = int64_t(lane) * K; col < d; col += 32 * K) {
    float gv[K], yv[K], out[K];
    load_items<K>(g, col, d, aligned, gv);
    load_items<K>(yp + row * d, col, d, aligned, yv);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      dot += gv[j] * yv[j];
      out[j] = w * gv[j];
    }
    store_items<K>(dyp + row * d, col, d, aligned, out);
  }
  dot = warp_allreduce(dot, SumOp{});
  if (lane == 0) dweight[a] = dot;
}

// ---------------------------------------------------------------------------------------------
// Per-expert GEMMs

// One row-major product C = alpha op(A) op(B) + beta C of kernels/gemm.h (batch 1).
struct Problem {
  GemmShape g;
  const void* a;
  const void* b;
  void* c;
};

// Pointer arrays for cublasGemmGroupedBatchedEx, passed by value and written to device memory.
struct PointerArrays {
  const void* a[kMoeMaxExperts];
  const void* b[kMoeMaxExperts];
  void* c[kMoeMaxExperts];
};

__global__ void write_pointers_kernel(PointerArrays p, int count, void** out) {
  const int i = threadIdx.x;
  if (i >= count) return;
  out[i] = const_cast<void*>(p.a[i]);
  out[kMoeMaxExperts + i] = const_cast<void*>(p.b[i]);
  out[2 * kMoeMaxExperts + i] = p.c[i];
}

#define SSM_MOE_CUBLAS_CHECK(expr)                                                                            \
  do {                                                                                                        \
    const cublasStatus_t ssm_status_ = (expr);                                                                \
    if (ssm_status_ != CUBLAS_STATUS_SUCCESS)                                                                 \
      throw KernelError(std::string("cuda::moe: ") + #expr + " failed: " + cublasGetStatusName(ssm_status_)); \
  } while (0)

struct StreamKeyHash {
  size_t operator()(const std::pair<int, cudaStream_t>& key) const {
    return std::hash<const void*>{}(key.second) ^ (std::hash<int>{}(key.first) << 1);
  }
};

// A cuBLAS handle bound to each (device, stream) and a device array of 3 x 64 pointers for it.
// Kept until the process exits (see kernels/cuda/gemm.cu on static destructors).
struct GroupedState {
  cublasHandle_t handle = nullptr;
  void** pointers = nullptr;  // a (64), b (64), c (64)
};

GroupedState grouped_state(cudaStream_t stream) {
  static std::mutex mutex;
  static auto* states = new std::unordered_map<std::pair<int, cudaStream_t>, GroupedState, StreamKeyHash>();
  int device = 0;
  SSM_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  auto it = states->find({device, stream});
  if (it != states->end()) return it->second;
  GroupedState state;
  SSM_MOE_CUBLAS_CHECK(cublasCreate(&state.handle));
  SSM_MOE_CUBLAS_CHECK(cublasSetStream(state.handle, stream));
  SSM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&state.pointers), 3 * kMoeMaxExperts * sizeof(void*)));
  states->emplace(std::make_pair(device, stream), state);
  return state;
}

cudaDataType_t cuda_type(DType dtype) { return dtype == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F; }

// Runs every problem (at most 64, none empty) with one alpha and beta. Grouped: one cuBLAS call
// where each problem is its own group (row-major C = op(A) op(B) as the column-major
// C^T = op(B)^T op(A)^T, as in kernels/cuda/gemm.cu). Falls back to per-expert cuBLASLt calls
// where cuBLAS does not support the grouped call.
void run_problems(const std::vector<Problem>& problems, DType dtype, float alpha, float beta, MoeGemm mode,
                  cudaStream_t stream) {
  if (problems.empty()) return;
  if (mode == MoeGemm::grouped) {
    const int count = int(problems.size());
    const GroupedState state = grouped_state(stream);
    PointerArrays arrays{};
    std::vector<cublasOperation_t> trans_first(count), trans_second(count);
    std::vector<int> m(count), n(count), k(count), ld_first(count), ld_second(count), ldc(count), sizes(count, 1);
    std::vector<float> alphas(count, alpha), betas(count, beta);
    for (int i = 0; i < count; ++i) {
      const Problem& p = problems[i];
      arrays.a[i] = p.b;  // operand 1 of the column-major problem is B
      arrays.b[i] = p.a;
      arrays.c[i] = p.c;
      trans_first[i] = p.g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
      trans_second[i] = p.g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
      m[i] = int(p.g.n), n[i] = int(p.g.m), k[i] = int(p.g.k);
      ld_first[i] = int(p.g.ldb), ld_second[i] = int(p.g.lda), ldc[i] = int(p.g.ldc);
    }
    write_pointers_kernel<<<1, kMoeMaxExperts, 0, stream>>>(arrays, count, state.pointers);
    SSM_CUDA_CHECK_LAUNCH();
    const cudaDataType_t type = cuda_type(dtype);
    const cublasStatus_t status = cublasGemmGroupedBatchedEx(
        state.handle, trans_first.data(), trans_second.data(), m.data(), n.data(), k.data(), alphas.data(),
        state.pointers, type, ld_first.data(), state.pointers + kMoeMaxExperts, type, ld_second.data(),
        betas.data(), state.pointers + 2 * kMoeMaxExperts,
        type, ldc.data(), count, sizes.data(), CUBLAS_COMPUTE_32F);
    if (status == CUBLAS_STATUS_SUCCESS) return;
    if (status != CUBLAS_STATUS_NOT_SUPPORTED)
      throw KernelError(std::string("cuda::moe: cublasGemmGroupedBatchedEx failed: ") + cublasGetStatusName(status) +
                        " (" + std::to_string(count) + " problems, " + dtype_name(dtype) + ")");
  }
  for (const Problem& p : problems) gemm(p.g, dtype, dtype, alpha, p.a, p.b, beta, p.c, stream);
}

// C[rows of g] (m_g, n) = A[rows of g] (m_g, k) op(B_g) + beta C[rows of g] for every expert
// with rows; B_g = b + g * stride_b elements, (n, k) when trans_b else (k, n).
void gemm_rows(DType dtype, int64_t experts, const int64_t* offsets, int64_t n, int64_t k, bool trans_b,
               const void* a, int64_t lda, const void* b, int64_t ldb, int64_t stride_b, float beta, void* c,
               int64_t ldc, MoeGemm mode, cudaStream_t stream) {
  const int64_t es = dtype_size(dtype);
  std::vector<Problem> problems;
  for (int64_t g = 0; g < experts; ++g) {
    const int64_t m = offsets[g + 1] - offsets[g];
    if (m == 0) continue;
    Problem p;
    p.g.trans_b = trans_b;
    p.g.m = m, p.g.n = n, p.g.k = k, p.g.lda = lda, p.g.ldb = ldb, p.g.ldc = ldc;
    p.a = static_cast<const char*>(a) + offsets[g] * lda * es;
    p.b = static_cast<const char*>(b) + g * stride_b * es;
    p.c = static_cast<char*>(c) + offsets[g] * ldc * es;
    problems.push_back(p);
  }
  run_problems(problems, dtype, 1.0f, beta, mode, stream);
}

// C_g (n1, n2) = A[rows of g]^T (n1, m_g) B[rows of g] (m_g, n2), written; zero for an expert
// without rows. C_g = c + g * n1 * n2 elements, packed.
void gemm_reduce_rows(DType dtype, int64_t experts, const int64_t* offsets, int64_t n1, int64_t n2, const void* a,
                      int64_t lda, const void* b, int64_t ldb, void* c, MoeGemm mode, cudaStream_t stream) {
  const int64_t es = dtype_size(dtype);
  std::vector<Problem> problems;
  for (int64_t g = 0; g < experts; ++g) {
    const int64_t m = offsets[g + 1] - offsets[g];
    void* cg = static_cast<char*>(c) + g * n1 * n2 * es;
    if (m == 0) {
      SSM_CUDA_CHECK(cudaMemsetAsync(cg, 0, size_t(n1 * n2 * es), stream));
      continue;
    }
    Problem p;
    p.g.trans_a = true;
    p.g.m = n1, p.g.n = n2, p.g.k = m, p.g.lda = lda, p.g.ldb = ldb, p.g.ldc = n2;
    p.a = static_cast<const char*>(a) + offsets[g] * lda * es;
    p.b = static_cast<const char*>(b) + offsets[g] * ldb * es;
    p.c = cg;
    problems.push_back(p);
  }
  run_problems(problems, dtype, 1.0f, 0.0f, mode, stream);
}

void check_expert_args(const char* op, const MoeExpertShape& s, DType dtype, const int64_t* offsets) {
  if (s.experts < 1 || s.experts > kMoeMaxExperts || s.d_model < 1 || s.d_ff < 1)
    throw KernelError(std::string("cuda::") + op + ": needs 1 <= experts <= 64, d_model >= 1, d_ff >= 1; got experts " +
                      std::to_string(s.experts) + ", d_model " + std::to_string(s.d_model) + ", d_ff " +
                      std::to_string(s.d_ff));
  if (dtype != DType::f32 && dtype != DType::bf16)
    cuda_detail::unsupported_dtype(op, dtype, "f32, bf16");
  for (int64_t g = 0; g < s.experts; ++g)
    if (offsets[g + 1] < offsets[g] || offsets[g + 1] - offsets[g] > INT32_MAX)
      throw KernelError(std::string("cuda::") + op + ": host offsets are not increasing at expert " + std::to_string(g));
}

unsigned warp_blocks(int64_t warps) { return unsigned(div_up(warps, kWarpsPerBlock)); }

}  // namespace

// ---------------------------------------------------------------------------------------------

void moe_router_forward(const MoeShape& s, const float* logits, float* probs, float* lse, int32_t* topk_index,
                        float* topk_weight, cudaStream_t stream) {
  check_moe_shape("cuda::moe_router_forward", s);
  if (s.tokens == 0) return;
  router_forward_kernel<<<warp_blocks(s.tokens), 32 * kWarpsPerBlock, 0, stream>>>(s, logits, probs, lse, topk_index,
                                                                                   topk_weight);
  SSM_CUDA_CHECK_LAUNCH();
}

void moe_router_backward(const MoeShape& s, const float* probs, const int32_t* topk_index, const float* topk_weight,
                         const float* dweight, float* dlogits, cudaStream_t stream) {
  check_moe_shape("cuda::moe_router_backward", s);
  if (s.tokens == 0) return;
  router_backward_kernel<<<warp_blocks(s.tokens), 32 * kWarpsPerBlock, 0, stream>>>(s, probs, topk_index,
                                                                                    topk_weight, dweight, dlogits);
  SSM_CUDA_CHECK_LAUNCH();
}

int64_t moe_dispatch_scratch_elems(const MoeShape& s) {
  return std::max<int64_t>(1, s.experts * div_up(s.assignments(), kChunk));
}

void moe_dispatch(const MoeShape& s, const int32_t* topk_index, int32_t* counts, int32_t* offsets,
                  int32_t* row_of_assignment, int32_t* assignment_of_row, int32_t* scratch, cudaStream_t stream) {
  check_moe_shape("cuda::moe_dispatch", s);
  const int64_t chunks = div_up(s.assignments(), kChunk);
  if (chunks == 0) {
    SSM_CUDA_CHECK(cudaMemsetAsync(counts, 0, size_t(s.experts) * sizeof(int32_t), stream));
    SSM_CUDA_CHECK(cudaMemsetAsync(offsets, 0, size_t(s.experts + 1) * sizeof(int32_t), stream));
    return;
  }
  chunk_count_kernel<<<unsigned(chunks), kChunk, 0, stream>>>(s, topk_index, chunks, scratch);
  SSM_CUDA_CHECK_LAUNCH();
  chunk_scan_kernel<<<unsigned(s.experts), kScanThreads, 0, stream>>>(chunks, scratch, counts);
  SSM_CUDA_CHECK_LAUNCH();
  scatter_rows_kernel<<<unsigned(chunks), kChunk, 0, stream>>>(s, topk_index, chunks, scratch, counts, offsets,
                                                               row_of_assignment, assignment_of_row);
  SSM_CUDA_CHECK_LAUNCH();
}

void moe_router_losses(const MoeShape& s, const float* probs, const float* lse, const int32_t* counts,
                       float* mean_probs, float* aux_loss, float* z_loss, cudaStream_t stream) {
  check_moe_shape("cuda::moe_router_losses", s);
  loss_sums_kernel<<<unsigned(s.experts + 1), 256, 0, stream>>>(s, probs, lse, mean_probs, z_loss);
  SSM_CUDA_CHECK_LAUNCH();
  aux_loss_kernel<<<1, 32, 0, stream>>>(s, counts, mean_probs, aux_loss);
  SSM_CUDA_CHECK_LAUNCH();
}

void moe_router_losses_backward(const MoeShape& s, const float* probs, const float* lse, const int32_t* counts,
                                const float* daux, const float* dz, float* dlogits, cudaStream_t stream) {
  check_moe_shape("cuda::moe_router_losses_backward", s);
  if (s.tokens == 0) return;
  losses_backward_kernel<<<warp_blocks(s.tokens), 32 * kWarpsPerBlock, 0, stream>>>(s, probs, lse, counts, daux, dz,
                                                                                    dlogits);
  SSM_CUDA_CHECK_LAUNCH();
}

void moe_permute(const MoeShape& s, int64_t d, DType dtype, const void* x, const int32_t* assignment_of_row,
                 void* xp, cudaStream_t stream) {
  check_moe_shape("cuda::moe_permute", s);
  dispatch_f32_bf16(dtype, "moe_permute", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t work = s.assignments() * div_up(d, items<T>());
    if (work == 0) return;
    permute_kernel<T><<<grid_for(work, 256), 256, 0, stream>>>(s, d, static_cast<const T*>(x), assignment_of_row,
                                                               aligned16(d, sizeof(T), {x, xp}), static_cast<T*>(xp));
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void moe_permute_backward(const MoeShape& s, int64_t d, DType dtype, const void* dxp, const int32_t* row_of_assignment,
                          void* dx, cudaStream_t stream) {
  check_moe_shape("cuda::moe_permute_backward", s);
  dispatch_f32_bf16(dtype, "moe_permute_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t work = s.tokens * div_up(d, items<T>());
    if (work == 0) return;
    combine_kernel<T><<<grid_for(work, 256), 256, 0, stream>>>(s, d, static_cast<const T*>(dxp), row_of_assignment,
                                                               nullptr, aligned16(d, sizeof(T), {dxp, dx}),
                                                               static_cast<T*>(dx));
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void moe_unpermute(const MoeShape& s, int64_t d, DType dtype, const void* yp, const int32_t* row_of_assignment,
                   const float* weight, void* out, cudaStream_t stream) {
  check_moe_shape("cuda::moe_unpermute", s);
  dispatch_f32_bf16(dtype, "moe_unpermute", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t work = s.tokens * div_up(d, items<T>());
    if (work == 0) return;
    combine_kernel<T><<<grid_for(work, 256), 256, 0, stream>>>(s, d, static_cast<const T*>(yp), row_of_assignment,
                                                               weight, aligned16(d, sizeof(T), {yp, out}),
                                                               static_cast<T*>(out));
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void moe_unpermute_backward(const MoeShape& s, int64_t d, DType dtype, const void* dout, const void* yp,
                            const int32_t* row_of_assignment, const float* weight, void* dyp, float* dweight,
                            cudaStream_t stream) {
  check_moe_shape("cuda::moe_unpermute_backward", s);
  dispatch_f32_bf16(dtype, "moe_unpermute_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (s.assignments() == 0) return;
    unpermute_backward_kernel<T><<<warp_blocks(s.assignments()), 32 * kWarpsPerBlock, 0, stream>>>(
        s, d, static_cast<const T*>(dout), static_cast<const T*>(yp), row_of_assignment, weight,
        aligned16(d, sizeof(T), {dout, yp, dyp}), static_cast<T*>(dyp), dweight);
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void moe_experts_forward(const MoeExpertShape& s, DType dtype, const int64_t* offsets, const void* xp,
                         const void* w_gate, const void* w_up, const void* w_down, void* gate_up, void* act, void* yp,
                         cudaStream_t stream, MoeGemm mode) {
  check_expert_args("moe_experts_forward", s, dtype, offsets);
  const int64_t e = s.experts, d = s.d_model, f = s.d_ff, rows = offsets[e];
  if (rows == 0) return;
  char* gate_up_bytes = static_cast<char*>(gate_up);
  // gate_up[:, :f] = xp w_gate[g]^T; gate_up[:, f:] = xp w_up[g]^T       (rows, 2f)
  gemm_rows(dtype, e, offsets, f, d, true, xp, d, w_gate, d, f * d, 0.0f, gate_up, 2 * f, mode, stream);
  gemm_rows(dtype, e, offsets, f, d, true, xp, d, w_up, d, f * d, 0.0f, gate_up_bytes + f * dtype_size(dtype), 2 * f,
            mode, stream);
  swiglu_forward(dtype, gate_up, rows, f, act, stream);  // (rows, f)
  gemm_rows(dtype, e, offsets, d, f, true, act, f, w_down, f, d * f, 0.0f, yp, d, mode, stream);  // (rows, d)
}

void moe_experts_backward(const MoeExpertShape& s, DType dtype, const int64_t* offsets, const void* xp,
                          const void* w_gate, const void* w_up, const void* w_down, const void* gate_up,
                          const void* dyp, void* act, void* dgate_up, void* dxp, void* dw_gate, void* dw_up,
                          void* dw_down, cudaStream_t stream, MoeGemm mode) {
  check_expert_args("moe_experts_backward", s, dtype, offsets);
  const int64_t e = s.experts, d = s.d_model, f = s.d_ff, rows = offsets[e];
  const int64_t up_offset = f * dtype_size(dtype);  // bytes to the up half of a packed row
  if (rows > 0) swiglu_forward(dtype, gate_up, rows, f, act, stream);  // recomputed (rows, f)
  gemm_reduce_rows(dtype, e, offsets, d, f, dyp, d, act, f, dw_down, mode, stream);  // dyp^T act (e, d, f)
  if (rows > 0) {
    gemm_rows(dtype, e, offsets, f, d, false, dyp, d, w_down, f, d * f, 0.0f, act, f, mode, stream);  // d act
    swiglu_backward(dtype, gate_up, act, rows, f, dgate_up, stream);  // (rows, 2f)
    // dxp = dgate w_gate[g] + dup w_up[g]                                (rows, d)
    gemm_rows(dtype, e, offsets, d, f, false, dgate_up, 2 * f, w_gate, d, f * d, 0.0f, dxp, d, mode, stream);
    gemm_rows(dtype, e, offsets, d, f, false, static_cast<const char*>(dgate_up) + up_offset, 2 * f, w_up, d, f * d,
              1.0f, dxp, d, mode, stream);
  }
  gemm_reduce_rows(dtype, e, offsets, f, d, dgate_up, 2 * f, xp, d, dw_gate, mode, stream);  // (e, f, d)
  gemm_reduce_rows(dtype, e, offsets, f, d, static_cast<const char*>(dgate_up) + up_offset, 2 * f, xp, d, dw_up, mode,
                   stream);  // (e, f, d)
}

}  // namespace ssmtrain::kernels::cuda
