// Row-major (batched) GEMM on the GPU through cuBLASLt. cuBLASLt is column-major, so the
// row-major C (m, n) = op(A) op(B) is computed as the column-major C^T (n, m) = op(B)^T op(A)^T:
// the operands swap places and m, n swap. f32 is strict fp32 (no TF32); bf16 / f16 accumulate
// in f32. One handle per device, one 32 MiB workspace per (device, stream), the heuristic's
// algorithm cached per problem description.
#include "kernels/gemm.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"

namespace ssmtrain::kernels::cuda {
namespace {

using cuda_detail::ceil_div;
using cuda_detail::dispatch_float;
using cuda_detail::from_f32;
using cuda_detail::grid_for;
using cuda_detail::to_f32;

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

std::string describe(const GemmShape& g, DType ab, DType c) {
  return std::string("ab ") + dtype_name(ab) + ", c " + dtype_name(c) + ", trans_a " +
         (g.trans_a ? "1" : "0") + ", trans_b " + (g.trans_b ? "1" : "0") + ", m " +
         std::to_string(g.m) + ", n " + std::to_string(g.n) + ", k " + std::to_string(g.k) +
         ", lda " + std::to_string(g.lda) + ", ldb " + std::to_string(g.ldb) + ", ldc " +
         std::to_string(g.ldc) + ", batch " + std::to_string(g.batch) + ", strides " +
         std::to_string(g.stride_a) + "/" + std::to_string(g.stride_b) + "/" +
         std::to_string(g.stride_c);
}

#define SSM_CUBLAS_CHECK(expr, context)                                                     \
  do {                                                                                      \
    cublasStatus_t ssm_status_ = (expr);                                                    \
    if (ssm_status_ != CUBLAS_STATUS_SUCCESS)                                               \
      throw KernelError(std::string("cuda::gemm: ") + #expr + " failed: " +                 \
                        cublasLtGetStatusName(ssm_status_) + " (" +                         \
                        cublasLtGetStatusString(ssm_status_) + ") for " + (context));       \
  } while (0)

// ---- the problem description that keys the algorithm cache ----

struct GemmKey {
  int device = 0;
  DType ab = DType::f32, c = DType::f32;
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldc = 0, batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;
  uint32_t align_a = 0, align_b = 0, align_c = 0;  // pointer alignment in bytes (<= 256)
  bool operator==(const GemmKey&) const = default;
};

struct GemmKeyHash {
  size_t operator()(const GemmKey& key) const {
    size_t h = 0;
    auto mix = [&h](uint64_t v) { h ^= std::hash<uint64_t>{}(v) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2); };
    mix(uint64_t(key.device));
    mix(uint64_t(key.ab) | uint64_t(key.c) << 8 | uint64_t(key.trans_a) << 16 |
        uint64_t(key.trans_b) << 17);
    for (int64_t v : {key.m, key.n, key.k, key.lda, key.ldb, key.ldc, key.batch, key.stride_a,
                      key.stride_b, key.stride_c})
      mix(uint64_t(v));
    mix(uint64_t(key.align_a) | uint64_t(key.align_b) << 16 | uint64_t(key.align_c) << 32);
    return h;
  }
};

struct StreamKeyHash {
  size_t operator()(const std::pair<int, cudaStream_t>& key) const {
    return std::hash<const void*>{}(key.second) ^ (std::hash<int>{}(key.first) << 1);
  }
};

// Process-wide cuBLASLt state. Handles and workspaces live until the process exits (freeing
// them from a static destructor could run after the CUDA driver has shut down).
struct GemmState {
  std::mutex mutex;
  std::unordered_map<int, cublasLtHandle_t> handles;                             // per device
  std::unordered_map<std::pair<int, cudaStream_t>, void*, StreamKeyHash> workspaces;
  std::unordered_map<GemmKey, cublasLtMatmulAlgo_t, GemmKeyHash> algos;
};

GemmState& state() {
  static GemmState* s = new GemmState();  // never destroyed, see above
  return *s;
}

// The handle for `device` and the workspace for (device, stream); created on first use. A
// workspace per stream, because matmuls on two streams may run at the same time.
std::pair<cublasLtHandle_t, void*> handle_and_workspace(int device, cudaStream_t stream,
                                                        const std::string& context) {
  GemmState& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto handle_it = s.handles.find(device);
  if (handle_it == s.handles.end()) {
    cublasLtHandle_t handle = nullptr;
    SSM_CUBLAS_CHECK(cublasLtCreate(&handle), context);
    handle_it = s.handles.emplace(device, handle).first;
  }
  auto workspace_it = s.workspaces.find({device, stream});
  if (workspace_it == s.workspaces.end()) {
    void* workspace = nullptr;
    SSM_CUDA_CHECK(cudaMalloc(&workspace, kWorkspaceBytes));
    workspace_it = s.workspaces.emplace(std::make_pair(device, stream), workspace).first;
  }
  return {handle_it->second, workspace_it->second};
}

// ---- RAII wrappers for the per-call descriptors ----

struct MatmulDesc {
  cublasLtMatmulDesc_t desc = nullptr;
  ~MatmulDesc() {
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};
struct MatrixLayout {
  cublasLtMatrixLayout_t layout = nullptr;
  ~MatrixLayout() {
    if (layout) cublasLtMatrixLayoutDestroy(layout);
  }
};
struct Preference {
  cublasLtMatmulPreference_t pref = nullptr;
  ~Preference() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
  }
};

cudaDataType_t cuda_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return CUDA_R_32F;
    case DType::bf16: return CUDA_R_16BF;
    case DType::f16: return CUDA_R_16F;
    default: cuda_detail::unsupported_dtype("gemm", dtype, "f32, bf16, f16");
  }
}

// Column-major layout of rows x cols with leading dimension ld, batched when batch > 1.
void make_layout(MatrixLayout& out, DType dtype, int64_t rows, int64_t cols, int64_t ld,
                 int64_t batch, int64_t batch_stride, const std::string& context) {
  SSM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&out.layout, cuda_type(dtype), uint64_t(rows),
                                              uint64_t(cols), ld),
                   context);
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    SSM_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(out.layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                      &count, sizeof(count)),
                     context);
    SSM_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(out.layout,
                                                      CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                      &batch_stride, sizeof(batch_stride)),
                     context);
  }
}

// The largest power of two (at most 256) dividing the address of every batch's matrix.
uint32_t alignment(const void* ptr, int64_t batch, int64_t stride_elems, int64_t elem_size) {
  uint64_t bits = reinterpret_cast<uintptr_t>(ptr) | 256u;
  if (batch > 1 && stride_elems != 0) bits |= uint64_t(stride_elems * elem_size);
  return static_cast<uint32_t>(bits & (~bits + 1));  // lowest set bit
}

// ---- k == 0: C = beta * C (alpha * an empty sum) ----

// c (batch, m, n) with row stride ldc and batch stride stride_c: c = beta * c (0 when beta is 0,
// so NaN in an unread C does not spread, as in BLAS).
template <typename T>
__global__ void scale_c_kernel(T* c, int64_t batch, int64_t m, int64_t n, int64_t ldc,
                               int64_t stride_c, float beta) {
  const int64_t total = batch * m * n;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / (m * n), row = (idx / n) % m, col = idx % n;
    T& value = c[b * stride_c + row * ldc + col];
    value = from_f32<T>(beta == 0.0f ? 0.0f : beta * to_f32(value));
  }
}

void check_shape(const GemmShape& g, DType ab, DType c, const std::string& context) {
  auto fail = [&](const std::string& what) {
    throw KernelError("cuda::gemm: " + what + " (" + context + ")");
  };
  if (ab != DType::f32 && ab != DType::bf16 && ab != DType::f16)
    fail("ab_dtype must be f32, bf16 or f16");
  if (c != ab && c != DType::f32) fail("c_dtype must be ab_dtype or f32");
  if (g.m < 0 || g.n < 0 || g.k < 0 || g.batch < 0) fail("negative size");
  const int64_t a_width = g.trans_a ? g.m : g.k;  // row length of A as stored
  const int64_t b_width = g.trans_b ? g.k : g.n;
  if (g.lda < a_width) fail("lda smaller than A's row length");
  if (g.ldb < b_width) fail("ldb smaller than B's row length");
  if (g.ldc < g.n) fail("ldc smaller than n");
  if (g.batch > INT32_MAX) fail("batch does not fit in int32");
}

}  // namespace

void gemm(const GemmShape& g, DType ab_dtype, DType c_dtype, double alpha, const void* a,
          const void* b, double beta, void* c, cudaStream_t s) {
  const std::string context = describe(g, ab_dtype, c_dtype);
  check_shape(g, ab_dtype, c_dtype, context);
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  const float alpha_f = static_cast<float>(alpha), beta_f = static_cast<float>(beta);

  if (g.k == 0) {  // nothing to multiply: C = beta * C
    if (beta_f == 1.0f) return;
    dispatch_float(c_dtype, "gemm", [&](auto tag) {
      using T = typename decltype(tag)::type;
      scale_c_kernel<T><<<grid_for(g.batch * g.m * g.n, 256), 256, 0, s>>>(
          static_cast<T*>(c), g.batch, g.m, g.n, g.ldc, g.stride_c, beta_f);
      SSM_CUDA_CHECK_LAUNCH();
    });
    return;
  }

  int device = 0;
  SSM_CUDA_CHECK(cudaGetDevice(&device));
  auto [handle, workspace] = handle_and_workspace(device, s, context);

  // Column-major problem: C^T (n, m) = op1 (n, k) x op2 (k, m), where operand 1 is B and
  // operand 2 is A as they lie in memory.
  const cublasOperation_t op_first = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  MatmulDesc desc;
  SSM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), context);
  SSM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                                  &op_first, sizeof(op_first)),
                   context);
  SSM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                                  &op_second, sizeof(op_second)),
                   context);

  MatrixLayout first, second, out;
  // B as stored: (k, n) row-major = (n, k) column-major; transposed, (n, k) = (k, n).
  make_layout(first, ab_dtype, g.trans_b ? g.k : g.n, g.trans_b ? g.n : g.k, g.ldb, g.batch,
              g.stride_b, context);
  // A as stored: (m, k) row-major = (k, m) column-major; transposed, (k, m) = (m, k).
  make_layout(second, ab_dtype, g.trans_a ? g.m : g.k, g.trans_a ? g.k : g.m, g.lda, g.batch,
              g.stride_a, context);
  // C (m, n) row-major = (n, m) column-major.
  make_layout(out, c_dtype, g.n, g.m, g.ldc, g.batch, g.stride_c, context);

  GemmKey key;
  key.device = device;
  key.ab = ab_dtype;
  key.c = c_dtype;
  key.trans_a = g.trans_a;
  key.trans_b = g.trans_b;
  key.m = g.m, key.n = g.n, key.k = g.k;
  key.lda = g.lda, key.ldb = g.ldb, key.ldc = g.ldc;
  key.batch = g.batch;
  key.stride_a = g.batch > 1 ? g.stride_a : 0;
  key.stride_b = g.batch > 1 ? g.stride_b : 0;
  key.stride_c = g.batch > 1 ? g.stride_c : 0;
  key.align_a = alignment(a, g.batch, g.stride_a, dtype_size(ab_dtype));
  key.align_b = alignment(b, g.batch, g.stride_b, dtype_size(ab_dtype));
  key.align_c = alignment(c, g.batch, g.stride_c, dtype_size(c_dtype));

  cublasLtMatmulAlgo_t algo;
  bool cached = false;
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    auto it = state().algos.find(key);
    if (it != state().algos.end()) {
      algo = it->second;
      cached = true;
    }
  }
  if (!cached) {
    Preference pref;
    SSM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.pref), context);
    const uint64_t workspace_bytes = kWorkspaceBytes;
    SSM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
                         pref.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                         sizeof(workspace_bytes)),
                     context);
    // Operand 1 of the column-major problem is B, operand 2 is A; D is C.
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> alignments[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_c}};
    for (const auto& [attribute, bytes] : alignments)
      SSM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, attribute, &bytes,
                                                            sizeof(bytes)),
                       context);
    cublasLtMatmulHeuristicResult_t result = {};
    int returned = 0;
    SSM_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle, desc.desc, first.layout, second.layout,
                                                    out.layout, out.layout, pref.pref, 1, &result,
                                                    &returned),
                     context);
    if (returned == 0 || result.state != CUBLAS_STATUS_SUCCESS)
      throw KernelError("cuda::gemm: cuBLASLt found no algorithm for " + context);
    algo = result.algo;
    std::lock_guard<std::mutex> lock(state().mutex);
    state().algos.emplace(key, algo);
  }

  SSM_CUBLAS_CHECK(cublasLtMatmul(handle, desc.desc, &alpha_f, b, first.layout, a, second.layout,
                                  &beta_f, c, out.layout, c, out.layout, &algo, workspace,
                                  kWorkspaceBytes, s),
                   context);
}

}  // namespace ssmtrain::kernels::cuda
