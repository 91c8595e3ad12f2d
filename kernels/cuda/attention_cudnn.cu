// cuDNN 9's fused flash attention, built through the backend (graph) API: the forward graph
// matmul -> scale -> causal mask -> softmax with stats -> matmul, and the backward graph that
// cuDNN's fused SDPA-backward engine recognises in its deterministic ("dP workspace") form,
// with dQ written by its matmul rather than accumulated with atomics. Plans are built once per
// (device, shape, dtype) and cached with their workspace sizes.
#include <cuda_runtime.h>
#include <cudnn_graph.h>

#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cuda/attention_cudnn.cuh"
#include "kernels/cuda/check.h"

namespace ssmtrain::kernels::cuda_detail {
namespace {

// A failed backend call while building a graph: the case is unsupported, not an error.
struct GraphRejected {
  std::string what;
};

#define SSM_CUDNN_BUILD(expr)                                                                        \
  do {                                                                                               \
    cudnnStatus_t ssm_st_ = (expr);                                                                  \
    if (ssm_st_ != CUDNN_STATUS_SUCCESS)                                                             \
      throw GraphRejected{std::string(#expr) + ": " + cudnnGetErrorString(ssm_st_)};                 \
  } while (0)

#define SSM_CUDNN_RUN(expr)                                                                          \
  do {                                                                                               \
    cudnnStatus_t ssm_st_ = (expr);                                                                  \
    if (ssm_st_ != CUDNN_STATUS_SUCCESS)                                                             \
      throw KernelError(std::string("cuDNN attention: ") + #expr + " failed at " + __FILE__ + ":" +  \
                        std::to_string(__LINE__) + ": " + cudnnGetErrorString(ssm_st_));            \
  } while (0)

using Desc = std::shared_ptr<void>;  // owns one cudnnBackendDescriptor_t

Desc make_desc(cudnnBackendDescriptorType_t type) {
  cudnnBackendDescriptor_t d = nullptr;
  SSM_CUDNN_BUILD(cudnnBackendCreateDescriptor(type, &d));
  return Desc(d, [](void* p) { cudnnBackendDestroyDescriptor(static_cast<cudnnBackendDescriptor_t>(p)); });
}
cudnnBackendDescriptor_t raw(const Desc& d) { return static_cast<cudnnBackendDescriptor_t>(d.get()); }

template <typename T>
void set(const Desc& d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, const T& value) {
  SSM_CUDNN_BUILD(cudnnBackendSetAttribute(raw(d), name, type, 1, &value));
}
void set_desc(const Desc& d, cudnnBackendAttributeName_t name, const Desc& value) {
  cudnnBackendDescriptor_t v = raw(value);
  SSM_CUDNN_BUILD(cudnnBackendSetAttribute(raw(d), name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v));
}
void finalize(const Desc& d) { SSM_CUDNN_BUILD(cudnnBackendFinalize(raw(d))); }

using Dims = std::array<int64_t, 4>;

Dims dense_strides(const Dims& d) { return {d[1] * d[2] * d[3], d[2] * d[3], d[3], 1}; }

// Tensor uids of the graphs' real (non-virtual) operands; virtual ones count up from kFirstVirtual.
enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kStats, kScale, kNegInf, kDO, kDQ, kDK, kDV, kSoftmaxSum, kOne, kFirstVirtual = 100
};

// Collects the operations of one graph.
class Graph {
 public:
  Desc tensor(int64_t uid, cudnnDataType_t type, const Dims& dims, const Dims& strides, bool is_virtual,
              bool by_value = false) {
    Desc t = make_desc(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, type);
    SSM_CUDNN_BUILD(cudnnBackendSetAttribute(raw(t), CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data()));
    SSM_CUDNN_BUILD(cudnnBackendSetAttribute(raw(t), CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data()));
    set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, uid);
    set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, int64_t{16});
    set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, is_virtual);
    set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, by_value);
    finalize(t);
    return t;
  }
  Desc virt(cudnnDataType_t type, const Dims& dims, const Dims& strides) {
    return tensor(next_uid_++, type, dims, strides, true);
  }
  Desc virt(cudnnDataType_t type, const Dims& dims) { return virt(type, dims, dense_strides(dims)); }
  Desc scalar(int64_t uid) { return tensor(uid, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true); }

  // y = mode(x, b, t); b and t may be null. axis >= 0 for GEN_INDEX.
  void pointwise(cudnnPointwiseMode_t mode, const Desc& x, const Desc& b, const Desc& y, const Desc& t = nullptr,
                 cudnnDataType_t math = CUDNN_DATA_FLOAT, int64_t axis = -1) {
    Desc pw = make_desc(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, mode);
    set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, math);
    if (axis >= 0) set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, axis);
    finalize(pw);
    Desc op = make_desc(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw);
    set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
    if (b) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b);
    set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
    if (t) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t);
    finalize(op);
    add(op, pw);
  }
  void reduction(cudnnReduceTensorOp_t reduce, const Desc& x, const Desc& y) {
    Desc r = make_desc(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    set(r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, reduce);
    set(r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, CUDNN_DATA_FLOAT);
    finalize(r);
    Desc op = make_desc(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x);
    set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y);
    set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, r);
    finalize(op);
    add(op, r);
  }
  void matmul(const Desc& a, const Desc& b, const Desc& c) {
    Desc m = make_desc(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    set(m, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, CUDNN_DATA_FLOAT);
    finalize(m);
    Desc op = make_desc(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a);
    set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b);
    set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c);
    set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, m);
    finalize(op);
    add(op, m);
  }
  void reshape(const Desc& x, const Desc& y) {
    Desc op = make_desc(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x);
    set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y);
    finalize(op);
    add(op, nullptr);
  }

  // Keeps s where row >= col (causal), else the mask value. Returns the masked scores.
  Desc causal_mask(const Desc& s, const Dims& dims, const Desc& neg_inf) {
    Desc row = virt(CUDNN_DATA_INT32, dims), col = virt(CUDNN_DATA_INT32, dims);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, row, nullptr, CUDNN_DATA_FLOAT, 2);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, col, nullptr, CUDNN_DATA_FLOAT, 3);
    Desc keep = virt(CUDNN_DATA_BOOLEAN, dims);
    pointwise(CUDNN_POINTWISE_CMP_GE, row, col, keep, nullptr, CUDNN_DATA_BOOLEAN);
    Desc masked = virt(CUDNN_DATA_FLOAT, dims);
    pointwise(CUDNN_POINTWISE_BINARY_SELECT, s, neg_inf, masked, keep);
    return masked;
  }

  std::vector<cudnnBackendDescriptor_t> ops() const {
    std::vector<cudnnBackendDescriptor_t> out;
    for (const Desc& op : ops_) out.push_back(raw(op));
    return out;
  }

 private:
  void add(const Desc& op, const Desc& inner) {
    ops_.push_back(op);
    if (inner) keep_.push_back(inner);
  }
  std::vector<Desc> ops_, keep_;
  int64_t next_uid_ = kFirstVirtual;
};

struct Plan {
  Desc plan;
  int64_t workspace = 0;
};

// Layouts of the (b, l, heads, dh) tensors seen as (b, heads, l, dh).
struct Layouts {
  int64_t b, l, h, hk, d;
  Dims q_dims() const { return {b, h, l, d}; }
  Dims q_strides() const { return {l * h * d, d, h * d, 1}; }
  Dims kv_dims() const { return {b, hk, l, d}; }
  Dims kv_strides() const { return {l * hk * d, d, hk * d, 1}; }
  Dims kvt_dims() const { return {b, hk, d, l}; }  // K^T, V^T: the same memory
  Dims kvt_strides() const { return {l * hk * d, d, 1, hk * d}; }
  Dims s_dims() const { return {b, h, l, l}; }
  Dims st_strides() const { return {h * l * l, l * l, 1, l}; }  // (b, h, l_kv, l_q) over S's memory
  Dims row_dims() const { return {b, h, l, 1}; }
  Dims row_strides() const { return {h * l, l, 1, 1}; }
};

Layouts layouts(const AttentionShape& s) { return {s.batch, s.seqlen, s.heads, s.kv_heads, s.head_dim}; }

void build_forward(Graph& g, const AttentionShape& sh, cudnnDataType_t io) {
  const Layouts L = layouts(sh);
  Desc q = g.tensor(kQ, io, L.q_dims(), L.q_strides(), false);
  Desc kt = g.tensor(kK, io, L.kvt_dims(), L.kvt_strides(), false);
  Desc v = g.tensor(kV, io, L.kv_dims(), L.kv_strides(), false);
  Desc o = g.tensor(kO, io, L.q_dims(), L.q_strides(), false);
  Desc stats = g.tensor(kStats, CUDNN_DATA_FLOAT, L.row_dims(), L.row_strides(), false);
  Desc scale = g.scalar(kScale), neg_inf = g.scalar(kNegInf);

  Desc s = g.virt(CUDNN_DATA_FLOAT, L.s_dims());  // (b, h, l, l)
  g.matmul(q, kt, s);
  Desc scaled = g.virt(CUDNN_DATA_FLOAT, L.s_dims());
  g.pointwise(CUDNN_POINTWISE_MUL, s, scale, scaled);
  Desc masked = g.causal_mask(scaled, L.s_dims(), neg_inf);
  Desc row_max = g.virt(CUDNN_DATA_FLOAT, L.row_dims(), L.row_strides());  // (b, h, l, 1)
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, masked, row_max);
  Desc centred = g.virt(CUDNN_DATA_FLOAT, L.s_dims());
  g.pointwise(CUDNN_POINTWISE_SUB, masked, row_max, centred);
  Desc e = g.virt(CUDNN_DATA_FLOAT, L.s_dims());
  g.pointwise(CUDNN_POINTWISE_EXP, centred, nullptr, e);
  Desc row_sum = g.virt(CUDNN_DATA_FLOAT, L.row_dims(), L.row_strides());
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, row_sum);
  Desc log_sum = g.virt(CUDNN_DATA_FLOAT, L.row_dims(), L.row_strides());
  g.pointwise(CUDNN_POINTWISE_LOG, row_sum, nullptr, log_sum);
  g.pointwise(CUDNN_POINTWISE_ADD, row_max, log_sum, stats);
  Desc p = g.virt(io, L.s_dims());
  g.pointwise(CUDNN_POINTWISE_DIV, e, row_sum, p);
  g.matmul(p, v, o);
}

void build_backward(Graph& g, const AttentionShape& sh, cudnnDataType_t io) {
  const Layouts L = layouts(sh);
  const bool grouped = L.h != L.hk;
  Desc q = g.tensor(kQ, io, L.q_dims(), L.q_strides(), false);
  Desc kt = g.tensor(kK, io, L.kvt_dims(), L.kvt_strides(), false);
  Desc vt = g.tensor(kV, io, L.kvt_dims(), L.kvt_strides(), false);
  Desc o = g.tensor(kO, io, L.q_dims(), L.q_strides(), false);
  Desc d_o = g.tensor(kDO, io, L.q_dims(), L.q_strides(), false);
  Desc stats = g.tensor(kStats, CUDNN_DATA_FLOAT, L.row_dims(), L.row_strides(), false);
  Desc dq = g.tensor(kDQ, io, L.q_dims(), L.q_strides(), false);
  Desc dk = g.tensor(kDK, io, L.kv_dims(), L.kv_strides(), false);
  Desc dv = g.tensor(kDV, io, L.kv_dims(), L.kv_strides(), false);
  Desc softmax_sum = g.tensor(kSoftmaxSum, CUDNN_DATA_FLOAT, L.row_dims(), L.row_strides(), false);
  Desc scale = g.scalar(kScale), neg_inf = g.scalar(kNegInf), one = g.scalar(kOne);

  // softmax_sum = rowsum(dO * O)
  Desc do_o = g.virt(CUDNN_DATA_FLOAT, L.q_dims(), L.q_strides());
  g.pointwise(CUDNN_POINTWISE_MUL, d_o, o, do_o);
  Desc do_o_sum = g.virt(CUDNN_DATA_FLOAT, L.row_dims(), L.row_strides());
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, do_o, do_o_sum);
  g.pointwise(CUDNN_POINTWISE_MUL, do_o_sum, one, softmax_sum);

  // P = exp(scale * Q K^T - stats), masked; dV = P^T dO
  Desc s = g.virt(CUDNN_DATA_FLOAT, L.s_dims());
  g.matmul(q, kt, s);
  Desc scaled = g.virt(CUDNN_DATA_FLOAT, L.s_dims());
  g.pointwise(CUDNN_POINTWISE_MUL, s, scale, scaled);
  Desc centred = g.virt(CUDNN_DATA_FLOAT, L.s_dims());
  g.pointwise(CUDNN_POINTWISE_SUB, scaled, stats, centred);
  Desc masked = g.causal_mask(centred, L.s_dims(), neg_inf);
  Desc p = g.virt(CUDNN_DATA_FLOAT, L.s_dims());
  g.pointwise(CUDNN_POINTWISE_EXP, masked, nullptr, p);
  Desc pt = g.virt(io, {L.b, L.h, L.l, L.l}, L.st_strides());
  g.reshape(p, pt);
  const Dims full_kv{L.b, L.h, L.l, L.d};  // per query head, before summing a group
  if (!grouped) {
    g.matmul(pt, d_o, dv);
  } else {
    Desc dv_full = g.virt(io, full_kv);
    g.matmul(pt, d_o, dv_full);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, dv_full, dv);
  }

  // dS = P * (dO V^T - softmax_sum) * scale; dK = dS^T Q; dQ = dS K
  Desc dp = g.virt(CUDNN_DATA_FLOAT, L.s_dims());
  g.matmul(d_o, vt, dp);
  Desc dp_centred = g.virt(CUDNN_DATA_FLOAT, L.s_dims());
  g.pointwise(CUDNN_POINTWISE_SUB, dp, softmax_sum, dp_centred);
  Desc ds_unscaled = g.virt(CUDNN_DATA_FLOAT, L.s_dims());
  g.pointwise(CUDNN_POINTWISE_MUL, dp_centred, p, ds_unscaled);
  Desc ds = g.virt(CUDNN_DATA_FLOAT, L.s_dims());
  g.pointwise(CUDNN_POINTWISE_MUL, ds_unscaled, scale, ds);
  Desc dst = g.virt(io, {L.b, L.h, L.l, L.l}, L.st_strides());
  g.reshape(ds, dst);
  if (!grouped) {
    g.matmul(dst, q, dk);
  } else {
    Desc dk_full = g.virt(io, full_kv);
    g.matmul(dst, q, dk_full);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, dk_full, dk);
  }
  Desc k = g.virt(io, L.kv_dims(), L.kv_strides());
  g.reshape(kt, k);
  g.matmul(ds, k, dq);
}

bool is_deterministic(const Desc& engine_cfg) {
  cudnnBackendDescriptor_t engine_raw = nullptr;
  Desc engine = make_desc(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
  engine_raw = raw(engine);
  int64_t count = 0;
  SSM_CUDNN_BUILD(cudnnBackendGetAttribute(raw(engine_cfg), CUDNN_ATTR_ENGINECFG_ENGINE,
                                           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &count, &engine_raw));
  std::array<cudnnBackendNumericalNote_t, CUDNN_NUMERICAL_NOTE_TYPE_COUNT> notes{};
  int64_t n_notes = 0;
  SSM_CUDNN_BUILD(cudnnBackendGetAttribute(engine_raw, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                           static_cast<int64_t>(notes.size()), &n_notes, notes.data()));
  for (int64_t i = 0; i < n_notes; ++i)
    if (notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) return false;
  return true;
}

// The first engine configuration of heuristics mode A that finalizes (deterministic ones only).
Plan make_plan(cudnnHandle_t handle, const Graph& g) {
  Desc graph = make_desc(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  std::vector<cudnnBackendDescriptor_t> ops = g.ops();
  SSM_CUDNN_BUILD(cudnnBackendSetAttribute(raw(graph), CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                           static_cast<int64_t>(ops.size()), ops.data()));
  set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, handle);
  finalize(graph);

  Desc heur = make_desc(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
  set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
  set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, CUDNN_HEUR_MODE_A);
  finalize(heur);
  constexpr int kMaxConfigs = 16;
  std::vector<Desc> configs;
  std::vector<cudnnBackendDescriptor_t> config_raw;
  for (int i = 0; i < kMaxConfigs; ++i) {
    configs.push_back(make_desc(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
    config_raw.push_back(raw(configs.back()));
  }
  int64_t n_configs = 0;
  SSM_CUDNN_BUILD(cudnnBackendGetAttribute(raw(heur), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                           kMaxConfigs, &n_configs, config_raw.data()));
  std::string reasons;
  for (int64_t i = 0; i < n_configs; ++i) {
    try {
      if (!is_deterministic(configs[i])) {
        reasons += " [config " + std::to_string(i) + ": nondeterministic]";
        continue;
      }
      Plan p;
      p.plan = make_desc(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      set(p.plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, handle);
      set_desc(p.plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, configs[i]);
      finalize(p.plan);
      int64_t count = 0;
      SSM_CUDNN_BUILD(cudnnBackendGetAttribute(raw(p.plan), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                               CUDNN_TYPE_INT64, 1, &count, &p.workspace));
      return p;
    } catch (const GraphRejected& e) {
      reasons += " [config " + std::to_string(i) + ": " + e.what + "]";
    }
  }
  throw GraphRejected{"no engine configuration of " + std::to_string(n_configs) + " finalized:" + reasons};
}

struct Entry {
  bool supported = false;
  std::string why;  // when unsupported
  Plan forward, backward;
};

using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int>;  // device, b, l, h, h_kv, dh, dtype

// Process-wide state: one handle per device, plans by shape. Lives until the process exits.
struct State {
  std::mutex mutex;
  std::map<int, cudnnHandle_t> handles;
  std::map<Key, Entry> entries;
};
State& state() {
  static State* s = new State;  // never destroyed: handles outlive static destructors' order
  return *s;
}

cudnnHandle_t handle_for(State& st, int device) {
  auto it = st.handles.find(device);
  if (it != st.handles.end()) return it->second;
  cudnnHandle_t h = nullptr;
  SSM_CUDNN_RUN(cudnnCreate(&h));
  st.handles.emplace(device, h);
  return h;
}

// The cached entry for this shape, building it on first use. Caller holds the mutex.
Entry& entry_for(State& st, const AttentionShape& s, DType dtype) {
  int device = 0;
  SSM_CUDA_CHECK(cudaGetDevice(&device));
  const Key key{device, s.batch, s.seqlen, s.heads, s.kv_heads, s.head_dim, static_cast<int>(dtype)};
  auto it = st.entries.find(key);
  if (it != st.entries.end()) return it->second;
  Entry e;
  if (dtype != DType::bf16 || (s.head_dim != 64 && s.head_dim != 128) || s.batch < 1 || s.seqlen < 1) {
    e.why = "cuDNN attention covers bf16 with head dim 64 or 128";
  } else if (cudnnGetVersion() < 90000) {
    e.why = "cuDNN attention needs cuDNN 9, found " + std::to_string(cudnnGetVersion());
  } else {
    try {
      cudnnHandle_t h = handle_for(st, device);
      Graph fwd, bwd;
      build_forward(fwd, s, CUDNN_DATA_BFLOAT16);
      e.forward = make_plan(h, fwd);
      build_backward(bwd, s, CUDNN_DATA_BFLOAT16);
      e.backward = make_plan(h, bwd);
      e.supported = true;
    } catch (const GraphRejected& r) {
      e.why = r.what;
    }
  }
  return st.entries.emplace(key, std::move(e)).first->second;
}

float mask_value() {
  // cuDNN before 9.10 prefers the lowest finite float as the masked score.
  return cudnnGetVersion() < 91000 ? std::numeric_limits<float>::lowest() : -std::numeric_limits<float>::infinity();
}

void execute(cudnnHandle_t handle, const Plan& plan, std::vector<int64_t> uids, std::vector<void*> ptrs,
             int64_t extra_bytes, int64_t extra_uid, cudaStream_t stream) {
  // One stream-ordered allocation holds cuDNN's workspace and our non-virtual intermediate.
  const int64_t ws_bytes = (plan.workspace + 255) / 256 * 256;
  void* block = nullptr;
  if (ws_bytes + extra_bytes > 0) SSM_CUDA_CHECK(cudaMallocAsync(&block, ws_bytes + extra_bytes, stream));
  if (extra_bytes > 0) {
    uids.push_back(extra_uid);
    ptrs.push_back(static_cast<char*>(block) + ws_bytes);
  }
  try {
    Desc pack = make_desc(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    SSM_CUDNN_BUILD(cudnnBackendSetAttribute(raw(pack), CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
                                             static_cast<int64_t>(uids.size()), uids.data()));
    SSM_CUDNN_BUILD(cudnnBackendSetAttribute(raw(pack), CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                                             static_cast<int64_t>(ptrs.size()), ptrs.data()));
    void* ws = plan.workspace > 0 ? block : nullptr;
    SSM_CUDNN_BUILD(cudnnBackendSetAttribute(raw(pack), CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws));
    finalize(pack);
    SSM_CUDNN_RUN(cudnnSetStream(handle, stream));
    SSM_CUDNN_RUN(cudnnBackendExecute(handle, raw(plan.plan), raw(pack)));
  } catch (const GraphRejected& r) {
    if (block) cudaFreeAsync(block, stream);
    throw KernelError("cuDNN attention: variant pack rejected: " + r.what);
  } catch (...) {
    if (block) cudaFreeAsync(block, stream);
    throw;
  }
  if (block) SSM_CUDA_CHECK(cudaFreeAsync(block, stream));
}

[[noreturn]] void unsupported(const AttentionShape& s, const Entry& e) {
  throw KernelError("cuDNN attention does not run b " + std::to_string(s.batch) + ", l " + std::to_string(s.seqlen) +
                    ", h " + std::to_string(s.heads) + ", h_kv " + std::to_string(s.kv_heads) + ", dh " +
                    std::to_string(s.head_dim) + ": " + e.why);
}

}  // namespace

bool cudnn_attention_supported(const AttentionShape& s, DType dtype) {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mutex);
  return entry_for(st, s, dtype).supported;
}

void cudnn_attention_forward(const AttentionShape& s, DType dtype, const void* q, const void* k, const void* v,
                             void* out, float* lse, cudaStream_t stream) {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mutex);
  const Entry& e = entry_for(st, s, dtype);
  if (!e.supported) unsupported(s, e);
  int device = 0;
  SSM_CUDA_CHECK(cudaGetDevice(&device));
  float scale = static_cast<float>(attention_scale(s)), neg_inf = mask_value();
  execute(handle_for(st, device), e.forward, {kQ, kK, kV, kO, kStats, kScale, kNegInf},
          {const_cast<void*>(q), const_cast<void*>(k), const_cast<void*>(v), out, lse, &scale, &neg_inf}, 0, 0,
          stream);
}

void cudnn_attention_backward(const AttentionShape& s, DType dtype, const void* q, const void* k, const void* v,
                              const void* out, const float* lse, const void* dout, void* dq, void* dk, void* dv,
                              cudaStream_t stream) {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mutex);
  const Entry& e = entry_for(st, s, dtype);
  if (!e.supported) unsupported(s, e);
  int device = 0;
  SSM_CUDA_CHECK(cudaGetDevice(&device));
  float scale = static_cast<float>(attention_scale(s)), neg_inf = mask_value(), one = 1.0f;
  const int64_t softmax_sum_bytes = s.batch * s.heads * s.seqlen * static_cast<int64_t>(sizeof(float));
  execute(handle_for(st, device), e.backward,
          {kQ, kK, kV, kO, kDO, kStats, kDQ, kDK, kDV, kScale, kNegInf, kOne},
          {const_cast<void*>(q), const_cast<void*>(k), const_cast<void*>(v), const_cast<void*>(out),
           const_cast<void*>(dout), const_cast<float*>(lse), dq, dk, dv, &scale, &neg_inf, &one},
          softmax_sum_bytes, kSoftmaxSum, stream);
}

}  // namespace ssmtrain::kernels::cuda_detail
