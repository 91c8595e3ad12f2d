// cuDNN 9's fused flash attention, built through the backend (graph) API: the forward graph
// matmul -> scale -> causal mask -> softmax with stats -> matmul, and the backward graph that
// cuDNN's fused SDPA-backward engine recognises. The backward has two forms (the pattern that
// cudnn-frontend's SDPA backward node emits, include/cudnn_frontend/node/
// scaled_dot_product_flash_attention.h): the deterministic "dP workspace" form, dQ written by its
// matmul, and the faster form where dQ = dS K goes into a non-virtual f32 accumulator that the
// engine fills with float atomics, then converted to dQ by an identity pointwise op; the second
// is used only when the shape allows nondeterminism (AttentionShape::deterministic = false).
// Each graph keeps up to kMaxCandidates engine configurations from heuristics modes A, B and
// fallback; on first use they are timed on the caller's stream and buffers and the fastest is
// kept (SSMTRAIN_ATTENTION_TUNE=0: the first; SSMTRAIN_ATTENTION_VERBOSE=1 prints them).
#include <cuda_runtime.h>
#include <cudnn_graph.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
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

// n fresh descriptors of one type, and their raw handles (for array-valued attributes).
std::vector<Desc> make_descs(cudnnBackendDescriptorType_t type, int n, std::vector<cudnnBackendDescriptor_t>& raws) {
  std::vector<Desc> descs;
  raws.clear();
  for (int i = 0; i < n; ++i) {
    descs.push_back(make_desc(type));
    raws.push_back(raw(descs.back()));
  }
  return descs;
}

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
  kQ = 1, kK, kV, kO, kStats, kScale, kNegInf, kDO, kDQ, kDK, kDV, kSoftmaxSum, kOne, kDQAccum, kFirstVirtual = 100
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

// One finalized engine configuration of a graph, and what we know of it.
struct Candidate {
  Desc plan;
  int64_t workspace = 0;   // bytes cuDNN asks for
  bool atomic_dq = false;  // from the backward graph with the f32 dQ accumulator
  std::string engine;      // "engine 6 (heuristics A) knobs {...}"
  double ms = -1;          // mean time of one run when tuned, else -1
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

Layouts layouts(const AttentionShape& s) { return {s.batch, s.seq_len, s.n_heads, s.n_kv_heads, s.head_dim}; }

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

// atomic_dq: dQ = dS K goes to an f32 accumulator (b, h, l, dh), dense, that the engine fills with
// atomics, then to dQ by an identity op; else the matmul writes dQ (the deterministic form).
void build_backward(Graph& g, const AttentionShape& sh, cudnnDataType_t io, bool atomic_dq) {
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
  if (!atomic_dq) {
    g.matmul(ds, k, dq);
  } else {
    Desc dq_accum = g.tensor(kDQAccum, CUDNN_DATA_FLOAT, L.q_dims(), dense_strides(L.q_dims()), false);
    g.matmul(ds, k, dq_accum);
    g.pointwise(CUDNN_POINTWISE_IDENTITY, dq_accum, nullptr, dq);
  }
}

// ---- Engine configurations: collected from the heuristics, finalized, described ----

constexpr int kMaxCandidates = 8;      // finalized plans kept per graph
constexpr int kMaxFinalizeTries = 16;  // finalize attempts per graph (each may compile a kernel)
constexpr int kHeuristicResults = 16;  // configurations asked of each heuristics mode

// An environment switch such as SSMTRAIN_ATTENTION_TUNE: unset or empty gives `fallback`,
// "0" false, anything else true.
bool env_flag(const char* name, bool fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return std::string(v) != "0";
}
bool tuning_enabled() {
  static const bool on = env_flag("SSMTRAIN_ATTENTION_TUNE", true);
  return on;
}
bool verbose() {
  static const bool on = env_flag("SSMTRAIN_ATTENTION_VERBOSE", false);
  return on;
}

std::string knob_name(int64_t type) {
  switch (type) {
    case CUDNN_KNOB_TYPE_SWIZZLE: return "SWIZZLE";
    case CUDNN_KNOB_TYPE_TILE_SIZE: return "TILE_SIZE";
    case CUDNN_KNOB_TYPE_EDGE: return "EDGE";
    case CUDNN_KNOB_TYPE_SPLIT_K_BUF: return "SPLIT_K_BUF";
    case CUDNN_KNOB_TYPE_STAGES: return "STAGES";
    case CUDNN_KNOB_TYPE_KERNEL_CFG: return "KERNEL_CFG";
    case CUDNN_KNOB_TYPE_WORKSPACE: return "WORKSPACE";
    case CUDNN_KNOB_TYPE_TILE_CGA_M: return "TILE_CGA_M";
    case CUDNN_KNOB_TYPE_TILE_CGA_N: return "TILE_CGA_N";
    case CUDNN_KNOB_TYPE_STREAM_K: return "STREAM_K";
    case CUDNN_KNOB_TYPE_TILE_M: return "TILE_M";
    case CUDNN_KNOB_TYPE_TILE_N: return "TILE_N";
    case CUDNN_KNOB_TYPE_WARP_SPEC_CFG: return "WARP_SPEC_CFG";
    default: return "knob" + std::to_string(type);  // a cudnnBackendKnobType_t value
  }
}

// What an engine configuration is: its engine's global index, its knob choices, and whether
// the engine says it is nondeterministic. Reading the knobs never rejects the configuration.
struct ConfigInfo {
  int64_t engine = -1;
  std::string knobs;  // "{STAGES=2 KERNEL_CFG=5}"
  bool deterministic = true;
};

ConfigInfo read_config(const Desc& cfg) {
  ConfigInfo info;
  Desc engine = make_desc(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
  cudnnBackendDescriptor_t engine_raw = raw(engine);
  int64_t count = 0;
  SSM_CUDNN_BUILD(cudnnBackendGetAttribute(raw(cfg), CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                           &count, &engine_raw));
  SSM_CUDNN_BUILD(
      cudnnBackendGetAttribute(engine_raw, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &count, &info.engine));
  std::array<cudnnBackendNumericalNote_t, CUDNN_NUMERICAL_NOTE_TYPE_COUNT> notes{};
  int64_t n_notes = 0;
  SSM_CUDNN_BUILD(cudnnBackendGetAttribute(engine_raw, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                           static_cast<int64_t>(notes.size()), &n_notes, notes.data()));
  for (int64_t i = 0; i < n_notes; ++i)
    if (notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) info.deterministic = false;

  std::vector<cudnnBackendDescriptor_t> choices_raw;
  const std::vector<Desc> choices = make_descs(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR, CUDNN_KNOB_TYPE_COUNTS, choices_raw);
  int64_t n_choices = 0;
  if (cudnnBackendGetAttribute(raw(cfg), CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                               static_cast<int64_t>(choices_raw.size()), &n_choices,
                               choices_raw.data()) != CUDNN_STATUS_SUCCESS) {
    info.knobs = "{?}";
    return info;
  }
  info.knobs = "{";
  for (int64_t i = 0; i < n_choices; ++i) {
    cudnnBackendKnobType_t type{};
    int64_t value = 0;
    const bool ok = cudnnBackendGetAttribute(choices_raw[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, CUDNN_TYPE_KNOB_TYPE, 1,
                                             &count, &type) == CUDNN_STATUS_SUCCESS &&
                    cudnnBackendGetAttribute(choices_raw[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1,
                                             &count, &value) == CUDNN_STATUS_SUCCESS;
    if (i > 0) info.knobs += " ";
    info.knobs += ok ? knob_name(type) + "=" + std::to_string(value) : "?";
  }
  info.knobs += "}";
  return info;
}

// Up to kHeuristicResults engine configurations that heuristics `mode` proposes for `graph`.
std::vector<Desc> heuristic_configs(const Desc& graph, cudnnBackendHeurMode_t mode) {
  Desc heur = make_desc(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
  set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
  set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, mode);
  finalize(heur);
  std::vector<cudnnBackendDescriptor_t> configs_raw;
  std::vector<Desc> configs = make_descs(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, kHeuristicResults, configs_raw);
  int64_t n = 0;
  SSM_CUDNN_BUILD(cudnnBackendGetAttribute(raw(heur), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                           kHeuristicResults, &n, configs_raw.data()));
  configs.resize(static_cast<size_t>(std::min<int64_t>(n, kHeuristicResults)));
  return configs;
}

// The distinct engine configurations of heuristics modes A, B and fallback (in that order)
// that finalize, at most kMaxCandidates; nondeterministic ones only when allowed. `label`
// names the graph in verbose output and errors. Throws GraphRejected when none finalizes.
std::vector<Candidate> make_candidates(cudnnHandle_t handle, const Graph& g, bool allow_nondeterministic,
                                       bool atomic_dq, const std::string& label) {
  Desc graph = make_desc(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  std::vector<cudnnBackendDescriptor_t> ops = g.ops();
  SSM_CUDNN_BUILD(cudnnBackendSetAttribute(raw(graph), CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                           static_cast<int64_t>(ops.size()), ops.data()));
  set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, handle);
  finalize(graph);

  const std::array<std::pair<cudnnBackendHeurMode_t, const char*>, 3> modes{
      {{CUDNN_HEUR_MODE_A, "A"}, {CUDNN_HEUR_MODE_B, "B"}, {CUDNN_HEUR_MODE_FALLBACK, "fallback"}}};
  std::vector<Candidate> out;
  std::vector<std::string> seen;  // engine and knobs of every configuration already considered
  std::string reasons;
  int tries = 0;
  const auto note = [&](const std::string& what) {
    reasons += " [" + what + "]";
    if (verbose()) std::fprintf(stderr, "ssmtrain attention: %s: %s\n", label.c_str(), what.c_str());
  };
  for (const auto& [mode, mode_name] : modes) {
    std::vector<Desc> configs;
    try {
      configs = heuristic_configs(graph, mode);
    } catch (const GraphRejected& e) {
      note(std::string("heuristics ") + mode_name + ": " + e.what);
      continue;
    }
    for (size_t i = 0; i < configs.size(); ++i) {
      if (static_cast<int>(out.size()) == kMaxCandidates || tries == kMaxFinalizeTries) break;
      const std::string where = std::string("heuristics ") + mode_name + " #" + std::to_string(i);
      try {
        const ConfigInfo info = read_config(configs[i]);
        const std::string id = "engine " + std::to_string(info.engine) + " " + info.knobs;
        if (std::find(seen.begin(), seen.end(), id) != seen.end()) continue;  // proposed by an earlier mode
        seen.push_back(id);
        if (!info.deterministic && !allow_nondeterministic) {
          note(where + " " + id + ": nondeterministic, skipped");
          continue;
        }
        ++tries;
        Candidate c;
        c.plan = make_desc(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
        set(c.plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, handle);
        set_desc(c.plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, configs[i]);
        finalize(c.plan);
        int64_t count = 0;
        SSM_CUDNN_BUILD(cudnnBackendGetAttribute(raw(c.plan), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                                 CUDNN_TYPE_INT64, 1, &count, &c.workspace));
        c.atomic_dq = atomic_dq;
        c.engine = id + (atomic_dq ? " atomic-dQ graph" : "") + (info.deterministic ? "" : " nondeterministic");
        if (verbose())
          std::fprintf(stderr, "ssmtrain attention: %s: %s %s: candidate, workspace %lld bytes\n", label.c_str(),
                       where.c_str(), c.engine.c_str(), static_cast<long long>(c.workspace));
        out.push_back(std::move(c));
      } catch (const GraphRejected& e) {
        note(where + ": " + e.what);
      }
    }
  }
  if (out.empty())
    throw GraphRejected{"no engine configuration finalized for the " + label + " graph:" + reasons};
  return out;
}

// ---- Plans by shape ----

// The graphs a shape may run. backward_any: the candidates of the atomic-dQ graph and of the
// deterministic one together, for shapes that allow nondeterminism.
enum class GraphKind : int { forward, backward_deterministic, backward_any };

const char* kind_name(GraphKind k) {
  switch (k) {
    case GraphKind::forward: return "forward";
    case GraphKind::backward_deterministic: return "backward (deterministic)";
    case GraphKind::backward_any: return "backward (nondeterministic allowed)";
  }
  return "?";
}

GraphKind backward_kind(const AttentionShape& s) {
  return s.deterministic ? GraphKind::backward_deterministic : GraphKind::backward_any;
}

// The candidate plans of one graph for one shape, and the one chosen on first use.
struct GraphPlans {
  bool supported = false;
  std::string why;  // when unsupported
  std::vector<Candidate> candidates;
  int chosen = -1;  // index into candidates, -1 until the first run
  std::string how;  // how the choice was made
};

// device, b, l, h, h_kv, dh, dtype, graph kind
using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int, int>;

// Process-wide state: one handle per device, plans by shape. Lives until the process exits.
struct State {
  std::mutex mutex;
  std::map<int, cudnnHandle_t> handles;
  std::map<Key, GraphPlans> plans;
};
State& state() {
  static State* s = new State;  // never destroyed: handles outlive static destructors' order
  return *s;
}

int current_device() {
  int device = 0;
  SSM_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

cudnnHandle_t handle_for(State& st, int device) {
  auto it = st.handles.find(device);
  if (it != st.handles.end()) return it->second;
  cudnnHandle_t h = nullptr;
  SSM_CUDNN_RUN(cudnnCreate(&h));
  st.handles.emplace(device, h);
  return h;
}

std::string shape_text(const AttentionShape& s) {
  return "b " + std::to_string(s.batch) + ", l " + std::to_string(s.seq_len) + ", h " + std::to_string(s.n_heads) +
         ", h_kv " + std::to_string(s.n_kv_heads) + ", dh " + std::to_string(s.head_dim);
}

// The plans of one graph for this shape, built on first use. Caller holds the mutex.
GraphPlans& plans_for(State& st, const AttentionShape& s, DType dtype, GraphKind kind) {
  const int device = current_device();
  const Key key{device, s.batch, s.seq_len, s.n_heads, s.n_kv_heads, s.head_dim, static_cast<int>(dtype),
                static_cast<int>(kind)};
  auto it = st.plans.find(key);
  if (it != st.plans.end()) return it->second;
  GraphPlans p;
  const std::string label = std::string(kind_name(kind)) + " " + shape_text(s);
  if (dtype != DType::bf16 || (s.head_dim != 64 && s.head_dim != 128) || s.batch < 1 || s.seq_len < 1) {
    p.why = "cuDNN attention covers bf16 with head dim 64 or 128";
  } else if (cudnnGetVersion() < 90000) {
    p.why = "cuDNN attention needs cuDNN 9, found " + std::to_string(cudnnGetVersion());
  } else if (kind == GraphKind::backward_any) {
    // The atomic-dQ graph's candidates first, then the deterministic graph's: both may run.
    try {
      Graph g;
      build_backward(g, s, CUDNN_DATA_BFLOAT16, /*atomic_dq=*/true);
      p.candidates = make_candidates(handle_for(st, device), g, /*allow_nondeterministic=*/true,
                                     /*atomic_dq=*/true, label + " atomic-dQ");
    } catch (const GraphRejected& r) {
      p.why = r.what;  // kept as a note when the deterministic graph still runs
      if (verbose()) std::fprintf(stderr, "ssmtrain attention: %s: %s\n", label.c_str(), r.what.c_str());
    }
    const GraphPlans& det = plans_for(st, s, dtype, GraphKind::backward_deterministic);
    const int room = kMaxCandidates - static_cast<int>(p.candidates.size());
    for (int i = 0; i < static_cast<int>(det.candidates.size()) && i < room; ++i)
      p.candidates.push_back(det.candidates[i]);
    p.supported = !p.candidates.empty();
    if (!p.supported) p.why += (p.why.empty() ? "" : "; ") + det.why;
  } else {
    try {
      Graph g;
      if (kind == GraphKind::forward)
        build_forward(g, s, CUDNN_DATA_BFLOAT16);
      else
        build_backward(g, s, CUDNN_DATA_BFLOAT16, /*atomic_dq=*/false);
      p.candidates = make_candidates(handle_for(st, device), g, /*allow_nondeterministic=*/false,
                                     /*atomic_dq=*/false, label);
      p.supported = true;
    } catch (const GraphRejected& r) {
      p.why = r.what;
    }
  }
  return st.plans.emplace(key, std::move(p)).first->second;
}

float mask_value() {
  // cuDNN before 9.10 prefers the lowest finite float as the masked score.
  return cudnnGetVersion() < 91000 ? std::numeric_limits<float>::lowest() : -std::numeric_limits<float>::infinity();
}

// ---- Execution ----

// A non-virtual intermediate of a graph, placed by us in scratch memory beside cuDNN's workspace.
struct Scratch {
  int64_t uid;
  int64_t bytes;
  bool zero_first;  // must hold zeros when the plan starts
};

// The variant pack of one call: user tensors and by-value scalars, and the scratch tensors.
struct Operands {
  std::vector<int64_t> uids;
  std::vector<void*> ptrs;
  std::vector<Scratch> scratch;
};

int64_t round_up_256(int64_t bytes) { return (bytes + 255) / 256 * 256; }

void execute(cudnnHandle_t handle, const Candidate& plan, Operands ops, cudaStream_t stream) {
  // One stream-ordered allocation holds cuDNN's workspace and the scratch tensors.
  int64_t total = round_up_256(plan.workspace);
  for (const Scratch& x : ops.scratch) total += round_up_256(x.bytes);
  void* block = nullptr;
  if (total > 0) SSM_CUDA_CHECK(cudaMallocAsync(&block, total, stream));
  try {
    int64_t offset = round_up_256(plan.workspace);
    for (const Scratch& x : ops.scratch) {
      void* p = static_cast<char*>(block) + offset;
      if (x.zero_first) SSM_CUDA_CHECK(cudaMemsetAsync(p, 0, x.bytes, stream));
      ops.uids.push_back(x.uid);
      ops.ptrs.push_back(p);
      offset += round_up_256(x.bytes);
    }
    Desc pack = make_desc(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    SSM_CUDNN_BUILD(cudnnBackendSetAttribute(raw(pack), CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
                                             static_cast<int64_t>(ops.uids.size()), ops.uids.data()));
    SSM_CUDNN_BUILD(cudnnBackendSetAttribute(raw(pack), CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                                             static_cast<int64_t>(ops.ptrs.size()), ops.ptrs.data()));
    void* ws = plan.workspace > 0 ? block : nullptr;
    SSM_CUDNN_BUILD(
        cudnnBackendSetAttribute(raw(pack), CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws));
    finalize(pack);
    SSM_CUDNN_RUN(cudnnSetStream(handle, stream));
    SSM_CUDNN_RUN(cudnnBackendExecute(handle, raw(plan.plan), raw(pack)));
  } catch (const GraphRejected& r) {
    if (block) cudaFreeAsync(block, stream);
    throw KernelError("cuDNN attention: variant pack rejected for " + plan.engine + ": " + r.what);
  } catch (...) {
    if (block) cudaFreeAsync(block, stream);
    throw;
  }
  if (block) SSM_CUDA_CHECK(cudaFreeAsync(block, stream));
}

// A CUDA event owned for the scope of a timing.
class Event {
 public:
  Event() { SSM_CUDA_CHECK(cudaEventCreate(&e_)); }
  ~Event() { cudaEventDestroy(e_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

std::string ms_text(double ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4f ms", ms);
  return buf;
}

constexpr int kTuneWarmups = 2;
constexpr int kTuneRuns = 5;
// A candidate later in heuristic order replaces the current best only when this much faster,
// so timing noise between near-equal engines rarely changes the choice (and the bits) between runs.
constexpr double kSwitchMargin = 0.03;

// The candidate of `p` to run, chosen on the first call: each candidate runs kTuneWarmups +
// kTuneRuns times through `run` on the caller's stream (outputs are overwritten; the caller then
// runs the chosen one for real), and the fastest is kept. Not timed when tuning is off, when
// there is one candidate, or when the stream is capturing a CUDA graph: then the first.
const Candidate& choose(GraphPlans& p, const std::function<void(const Candidate&)>& run, cudaStream_t stream,
                        const std::string& label) {
  if (p.chosen >= 0) return p.candidates[static_cast<size_t>(p.chosen)];
  const std::string of_n = " of " + std::to_string(p.candidates.size());
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  SSM_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  int best = 0;
  if (p.candidates.size() == 1) {
    p.how = "the only candidate";
  } else if (!tuning_enabled()) {
    p.how = "first" + of_n + ", not timed (SSMTRAIN_ATTENTION_TUNE=0)";
  } else if (capture != cudaStreamCaptureStatusNone) {
    p.how = "first" + of_n + ", not timed (the stream was capturing a CUDA graph)";
  } else {
    Event start, stop;
    best = -1;
    for (size_t i = 0; i < p.candidates.size(); ++i) {
      Candidate& c = p.candidates[i];
      try {
        for (int w = 0; w < kTuneWarmups; ++w) run(c);
        SSM_CUDA_CHECK(cudaEventRecord(start.get(), stream));
        for (int r = 0; r < kTuneRuns; ++r) run(c);
        SSM_CUDA_CHECK(cudaEventRecord(stop.get(), stream));
        SSM_CUDA_CHECK(cudaEventSynchronize(stop.get()));
        float elapsed = 0;
        SSM_CUDA_CHECK(cudaEventElapsedTime(&elapsed, start.get(), stop.get()));
        c.ms = elapsed / kTuneRuns;
      } catch (const KernelError& e) {
        c.ms = -1;
        if (verbose())
          std::fprintf(stderr, "ssmtrain attention: %s: %s failed: %s\n", label.c_str(), c.engine.c_str(), e.what());
        continue;
      }
      if (verbose())
        std::fprintf(stderr, "ssmtrain attention: %s: candidate %zu %s: %s\n", label.c_str(), i, c.engine.c_str(),
                     ms_text(c.ms).c_str());
      if (best < 0 || c.ms < p.candidates[static_cast<size_t>(best)].ms * (1.0 - kSwitchMargin))
        best = static_cast<int>(i);
    }
    if (best < 0)
      throw KernelError("cuDNN attention: every candidate engine failed to run for the " + label + " graph");
    p.how = "fastest" + of_n + " timed";
  }
  p.chosen = best;
  const Candidate& c = p.candidates[static_cast<size_t>(best)];
  if (verbose())
    std::fprintf(stderr, "ssmtrain attention: %s: chose %s (%s)\n", label.c_str(), c.engine.c_str(), p.how.c_str());
  return c;
}

std::string describe(const GraphPlans& p) {
  if (!p.supported) return "unsupported: " + p.why;
  if (p.chosen < 0) return std::to_string(p.candidates.size()) + " candidates, not yet run";
  const Candidate& c = p.candidates[static_cast<size_t>(p.chosen)];
  return c.engine + (c.ms >= 0 ? ", " + ms_text(c.ms) : std::string()) + " (" + p.how + ")";
}

[[noreturn]] void unsupported(const AttentionShape& s, GraphKind kind, const GraphPlans& p) {
  throw KernelError("cuDNN attention does not run the " + std::string(kind_name(kind)) + " graph of " +
                    shape_text(s) + ": " + p.why);
}

}  // namespace

bool cudnn_attention_supported(const AttentionShape& s, DType dtype) {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mutex);
  return plans_for(st, s, dtype, GraphKind::forward).supported &&
         plans_for(st, s, dtype, backward_kind(s)).supported;
}

std::string cudnn_attention_engines(const AttentionShape& s, DType dtype) {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mutex);
  const GraphKind bwd = backward_kind(s);
  return "forward: " + describe(plans_for(st, s, dtype, GraphKind::forward)) + "; " + kind_name(bwd) + ": " +
         describe(plans_for(st, s, dtype, bwd));
}

void cudnn_attention_forward(const AttentionShape& s, DType dtype, const void* q, const void* k, const void* v,
                             void* out, float* lse, cudaStream_t stream) {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mutex);
  GraphPlans& p = plans_for(st, s, dtype, GraphKind::forward);
  if (!p.supported) unsupported(s, GraphKind::forward, p);
  const cudnnHandle_t handle = handle_for(st, current_device());
  float scale = static_cast<float>(attention_scale(s)), neg_inf = mask_value();
  const Operands ops{{kQ, kK, kV, kO, kStats, kScale, kNegInf},
                     {const_cast<void*>(q), const_cast<void*>(k), const_cast<void*>(v), out, lse, &scale, &neg_inf},
                     {}};
  const auto run = [&](const Candidate& c) { execute(handle, c, ops, stream); };
  run(choose(p, run, stream, std::string(kind_name(GraphKind::forward)) + " " + shape_text(s)));
}

void cudnn_attention_backward(const AttentionShape& s, DType dtype, const void* q, const void* k, const void* v,
                              const void* out, const float* lse, const void* dout, void* dq, void* dk, void* dv,
                              cudaStream_t stream) {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mutex);
  const GraphKind kind = backward_kind(s);
  GraphPlans& p = plans_for(st, s, dtype, kind);
  if (!p.supported) unsupported(s, kind, p);
  const cudnnHandle_t handle = handle_for(st, current_device());
  float scale = static_cast<float>(attention_scale(s)), neg_inf = mask_value(), one = 1.0f;
  const int64_t rows = s.batch * s.n_heads * s.seq_len;
  const Operands ops{{kQ, kK, kV, kO, kDO, kStats, kDQ, kDK, kDV, kScale, kNegInf, kOne},
                     {const_cast<void*>(q), const_cast<void*>(k), const_cast<void*>(v), const_cast<void*>(out),
                      const_cast<void*>(dout), const_cast<float*>(lse), dq, dk, dv, &scale, &neg_inf, &one},
                     {{kSoftmaxSum, rows * static_cast<int64_t>(sizeof(float)), false}}};
  const auto run = [&](const Candidate& c) {
    if (!c.atomic_dq) return execute(handle, c, ops, stream);
    // The f32 dQ accumulator: cuDNN zeroes it itself from 9.6 on, before that it must start at zero
    // (cudnn-frontend's SDPA backward node does the same).
    Operands with_accum = ops;
    with_accum.scratch.push_back({kDQAccum, rows * s.head_dim * static_cast<int64_t>(sizeof(float)),
                                  cudnnGetVersion() < 90600});
    execute(handle, c, with_accum, stream);
  };
  run(choose(p, run, stream, std::string(kind_name(kind)) + " " + shape_text(s)));
}

}  // namespace ssmtrain::kernels::cuda_detail
