// CPU reference of the mixture-of-experts pieces (kernels/moe.h): plain loops in T (f32 or
// f64) with double accumulation where a sum runs over tokens or features, OpenBLAS for the
// per-expert GEMMs and kernels/swiglu.h for the activation.
#include "kernels/moe.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/gemm.h"
#include "kernels/swiglu.h"

namespace ssmtrain::kernels {

void check_moe_shape(const char* op, const MoeShape& s) {
  auto fail = [&](const std::string& what) { throw KernelError(std::string(op) + ": " + what); };
  if (s.tokens < 0) fail("tokens must be >= 0, got " + std::to_string(s.tokens));
  if (s.experts < 1 || s.experts > kMoeMaxExperts)
    fail("experts must be in [1, " + std::to_string(kMoeMaxExperts) + "], got " + std::to_string(s.experts));
  if (s.top_k < 1 || s.top_k > std::min(kMoeMaxTopK, s.experts))
    fail("top_k must be in [1, min(" + std::to_string(kMoeMaxTopK) + ", experts " + std::to_string(s.experts) +
         ")], got " + std::to_string(s.top_k));
  if (s.assignments() > std::numeric_limits<int32_t>::max())
    fail("tokens * top_k = " + std::to_string(s.assignments()) + " does not fit in int32");
}

void moe_offsets_from_counts(int64_t experts, const int32_t* counts, int64_t* offsets) {
  offsets[0] = 0;
  for (int64_t g = 0; g < experts; ++g) offsets[g + 1] = offsets[g] + counts[g];
}

namespace cpu {
namespace {

void check_expert_shape(const char* op, const MoeExpertShape& s) {
  if (s.experts < 1 || s.experts > kMoeMaxExperts || s.d_model < 1 || s.d_ff < 1)
    throw KernelError(std::string(op) + ": needs 1 <= experts <= 64, d_model >= 1, d_ff >= 1; got experts " +
                      std::to_string(s.experts) + ", d_model " + std::to_string(s.d_model) + ", d_ff " +
                      std::to_string(s.d_ff));
}

// C[rows of g] (m_g, n) = alpha A[rows of g] (m_g, k) op(B_g) + beta C[rows of g], for every
// expert g; B_g = b + g * stride_b is (n, k) when trans_b, else (k, n).
template <typename T>
void gemm_rows(int64_t experts, const int64_t* offsets, int64_t n, int64_t k, bool trans_b, double alpha,
               const T* a, int64_t lda, const T* b, int64_t ldb, int64_t stride_b, double beta, T* c,
               int64_t ldc) {
  for (int64_t g = 0; g < experts; ++g) {
    GemmShape shape;
    shape.trans_b = trans_b;
    shape.m = offsets[g + 1] - offsets[g];
    shape.n = n, shape.k = k, shape.lda = lda, shape.ldb = ldb, shape.ldc = ldc;
    gemm<T>(shape, alpha, a + offsets[g] * lda, b + g * stride_b, beta, c + offsets[g] * ldc);
  }
}

// C_g (n1, n2) = A[rows of g]^T (n1, m_g) B[rows of g] (m_g, n2) for every expert g, written
// (zero for an expert with no rows); C_g = c + g * n1 * n2, packed.
template <typename T>
void gemm_reduce_rows(int64_t experts, const int64_t* offsets, int64_t n1, int64_t n2, const T* a, int64_t lda,
                      const T* b, int64_t ldb, T* c) {
  for (int64_t g = 0; g < experts; ++g) {
    GemmShape shape;
    shape.trans_a = true;
    shape.m = n1, shape.n = n2, shape.k = offsets[g + 1] - offsets[g];
    shape.lda = lda, shape.ldb = ldb, shape.ldc = n2;
    gemm<T>(shape, 1.0, a + offsets[g] * lda, b + offsets[g] * ldb, 0.0, c + g * n1 * n2);
  }
}

}  // namespace

template <typename T>
void moe_router_forward(const MoeShape& s, const T* logits, T* probs, T* lse, int32_t* topk_index, T* topk_weight) {
  check_moe_shape("moe_router_forward", s);
  const int64_t e = s.experts, k = s.top_k;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < s.tokens; ++t) {
    const T* row = logits + t * e;  // (e)
    T* p = probs + t * e;           // (e)
    T max_logit = row[0];
    for (int64_t i = 1; i < e; ++i) max_logit = std::max(max_logit, row[i]);
    double sum = 0;
    for (int64_t i = 0; i < e; ++i) sum += std::exp(double(row[i]) - double(max_logit));
    for (int64_t i = 0; i < e; ++i) p[i] = static_cast<T>(std::exp(double(row[i]) - double(max_logit)) / sum);
    lse[t] = static_cast<T>(double(max_logit) + std::log(sum));
    // Top-k by selection: the largest remaining logit, the lower index on ties.
    bool taken[kMoeMaxExperts] = {};
    double weight_sum = 0;
    for (int64_t slot = 0; slot < k; ++slot) {
      int64_t best = -1;
      for (int64_t i = 0; i < e; ++i)
        if (!taken[i] && (best < 0 || row[i] > row[best])) best = i;
      taken[best] = true;
      topk_index[t * k + slot] = static_cast<int32_t>(best);
      topk_weight[t * k + slot] = p[best];
      weight_sum += double(p[best]);
    }
    if (s.normalize_topk)
      for (int64_t slot = 0; slot < k; ++slot)
        topk_weight[t * k + slot] = static_cast<T>(double(topk_weight[t * k + slot]) / weight_sum);
  }
}

template <typename T>
void moe_router_backward(const MoeShape& s, const T* probs, const int32_t* topk_index, const T* topk_weight,
                         const T* dweight, T* dlogits) {
  check_moe_shape("moe_router_backward", s);
  const int64_t e = s.experts, k = s.top_k;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < s.tokens; ++t) {
    const T* p = probs + t * e;           // (e)
    const int32_t* idx = topk_index + t * k;  // (k)
    const T* w = topk_weight + t * k;     // (k)
    const T* dw = dweight + t * k;        // (k)
    double dp[kMoeMaxExperts] = {};       // gradient w.r.t. the probabilities
    if (s.normalize_topk) {
      // w_s = p_s / S: dp_s = (dw_s - sum_r dw_r w_r) / S
      double sum_p = 0, dot = 0;
      for (int64_t slot = 0; slot < k; ++slot) {
        sum_p += double(p[idx[slot]]);
        dot += double(dw[slot]) * double(w[slot]);
      }
      for (int64_t slot = 0; slot < k; ++slot) dp[idx[slot]] = (double(dw[slot]) - dot) / sum_p;
    } else {
      for (int64_t slot = 0; slot < k; ++slot) dp[idx[slot]] = double(dw[slot]);
    }
    double dot = 0;  // sum_i p_i dp_i
    for (int64_t i = 0; i < e; ++i) dot += double(p[i]) * dp[i];
    for (int64_t i = 0; i < e; ++i) dlogits[t * e + i] = static_cast<T>(double(p[i]) * (dp[i] - dot));
  }
}

void moe_dispatch(const MoeShape& s, const int32_t* topk_index, int32_t* counts, int32_t* offsets,
                  int32_t* row_of_assignment, int32_t* assignment_of_row) {
  check_moe_shape("moe_dispatch", s);
  const int64_t e = s.experts, a = s.assignments();
  std::fill(counts, counts + e, 0);
  for (int64_t i = 0; i < a; ++i) {
    const int32_t g = topk_index[i];
    if (g < 0 || g >= e)
      throw KernelError("moe_dispatch: expert index " + std::to_string(g) + " of assignment " + std::to_string(i) +
                        " is outside [0, " + std::to_string(e) + ")");
    ++counts[g];
  }
  offsets[0] = 0;
  for (int64_t g = 0; g < e; ++g) offsets[g + 1] = offsets[g] + counts[g];
  std::vector<int32_t> next(offsets, offsets + e);  // next free row of each expert
  for (int64_t i = 0; i < a; ++i) {
    const int32_t row = next[topk_index[i]]++;
    row_of_assignment[i] = row;
    assignment_of_row[row] = static_cast<int32_t>(i);
  }
}

template <typename T>
void moe_router_losses(const MoeShape& s, const T* probs, const T* lse, const int32_t* counts, T* mean_probs,
                       T* aux_loss, T* z_loss) {
  check_moe_shape("moe_router_losses", s);
  const int64_t e = s.experts;
  double aux = 0, z = 0;
  for (int64_t i = 0; i < e; ++i) {
    double sum = 0;
    for (int64_t t = 0; t < s.tokens; ++t) sum += double(probs[t * e + i]);
    const double mean = s.tokens > 0 ? sum / double(s.tokens) : 0.0;
    mean_probs[i] = static_cast<T>(mean);
    const double fraction = s.tokens > 0 ? double(counts[i]) / double(s.assignments()) : 0.0;
    aux += fraction * mean;
  }
  for (int64_t t = 0; t < s.tokens; ++t) z += double(lse[t]) * double(lse[t]);
  *aux_loss = static_cast<T>(double(e) * aux);
  *z_loss = static_cast<T>(s.tokens > 0 ? z / double(s.tokens) : 0.0);
}

template <typename T>
void moe_router_losses_backward(const MoeShape& s, const T* probs, const T* lse, const int32_t* counts, T daux,
                                T dz, T* dlogits) {
  check_moe_shape("moe_router_losses_backward", s);
  const int64_t e = s.experts;
  if (s.tokens == 0) return;
  // d aux / d probs[t, i] = e f_i / t, the same for every token.
  double dprob[kMoeMaxExperts];
  for (int64_t i = 0; i < e; ++i)
    dprob[i] = double(daux) * double(e) * (double(counts[i]) / double(s.assignments())) / double(s.tokens);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < s.tokens; ++t) {
    const T* p = probs + t * e;  // (e)
    double dot = 0;
    for (int64_t i = 0; i < e; ++i) dot += double(p[i]) * dprob[i];
    // d lse_t^2 / d logits = 2 lse_t p
    const double z_scale = 2.0 * double(dz) * double(lse[t]) / double(s.tokens);
    for (int64_t i = 0; i < e; ++i)
      dlogits[t * e + i] = static_cast<T>(double(p[i]) * (dprob[i] - dot) + z_scale * double(p[i]));
  }
}

template <typename T>
void moe_permute(const MoeShape& s, int64_t d, const T* x, const int32_t* assignment_of_row, T* xp) {
  check_moe_shape("moe_permute", s);
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < s.assignments(); ++row) {
    const T* src = x + (assignment_of_row[row] / s.top_k) * d;  // (d)
    std::copy(src, src + d, xp + row * d);
  }
}

template <typename T>
void moe_permute_backward(const MoeShape& s, int64_t d, const T* dxp, const int32_t* row_of_assignment, T* dx) {
  check_moe_shape("moe_permute_backward", s);
  const int64_t k = s.top_k;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < s.tokens; ++t)
    for (int64_t j = 0; j < d; ++j) {
      double sum = 0;
      for (int64_t slot = 0; slot < k; ++slot) sum += double(dxp[int64_t(row_of_assignment[t * k + slot]) * d + j]);
      dx[t * d + j] = static_cast<T>(sum);
    }
}

template <typename T>
void moe_unpermute(const MoeShape& s, int64_t d, const T* yp, const int32_t* row_of_assignment, const T* weight,
                   T* out) {
  check_moe_shape("moe_unpermute", s);
  const int64_t k = s.top_k;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < s.tokens; ++t)
    for (int64_t j = 0; j < d; ++j) {
      double sum = 0;
      for (int64_t slot = 0; slot < k; ++slot)
        sum += double(weight[t * k + slot]) * double(yp[int64_t(row_of_assignment[t * k + slot]) * d + j]);
      out[t * d + j] = static_cast<T>(sum);
    }
}

template <typename T>
void moe_unpermute_backward(const MoeShape& s, int64_t d, const T* dout, const T* yp, const int32_t* row_of_assignment,
                            const T* weight, T* dyp, T* dweight) {
  check_moe_shape("moe_unpermute_backward", s);
  const int64_t k = s.top_k;
#pragma omp parallel for schedule(static)
  for (int64_t a = 0; a < s.assignments(); ++a) {
    const T* g = dout + (a / k) * d;                          // (d)
    const int64_t row = row_of_assignment[a];
    double dot = 0;
    for (int64_t j = 0; j < d; ++j) {
      dot += double(g[j]) * double(yp[row * d + j]);
      dyp[row * d + j] = static_cast<T>(double(weight[a]) * double(g[j]));
    }
    dweight[a] = static_cast<T>(dot);
  }
}

template <typename T>
void moe_experts_forward(const MoeExpertShape& s, const int64_t* offsets, const T* xp, const T* w_gate,
                         const T* w_up, const T* w_down, T* gate_up, T* act, T* yp) {
  check_expert_shape("moe_experts_forward", s);
  const int64_t e = s.experts, d = s.d_model, f = s.d_ff, rows = offsets[e];
  // gate_up[:, :f] = xp w_gate[g]^T; gate_up[:, f:] = xp w_up[g]^T            (rows, 2f)
  gemm_rows<T>(e, offsets, f, d, true, 1.0, xp, d, w_gate, d, f * d, 0.0, gate_up, 2 * f);
  gemm_rows<T>(e, offsets, f, d, true, 1.0, xp, d, w_up, d, f * d, 0.0, gate_up + f, 2 * f);
  swiglu_forward<T>(gate_up, rows, f, act);  // (rows, f)
  gemm_rows<T>(e, offsets, d, f, true, 1.0, act, f, w_down, f, d * f, 0.0, yp, d);  // (rows, d)
}

template <typename T>
void moe_experts_backward(const MoeExpertShape& s, const int64_t* offsets, const T* xp, const T* w_gate,
                          const T* w_up, const T* w_down, const T* gate_up, const T* dyp, T* act, T* dgate_up,
                          T* dxp, T* dw_gate, T* dw_up, T* dw_down) {
  check_expert_shape("moe_experts_backward", s);
  const int64_t e = s.experts, d = s.d_model, f = s.d_ff, rows = offsets[e];
  swiglu_forward<T>(gate_up, rows, f, act);                          // recomputed (rows, f)
  gemm_reduce_rows<T>(e, offsets, d, f, dyp, d, act, f, dw_down);     // dyp^T act (e, d, f)
  gemm_rows<T>(e, offsets, f, d, false, 1.0, dyp, d, w_down, f, d * f, 0.0, act, f);  // d act (rows, f)
  swiglu_backward<T>(gate_up, act, rows, f, dgate_up);               // (rows, 2f)
  // dxp = dgate w_gate[g] + dup w_up[g]                                 (rows, d)
  gemm_rows<T>(e, offsets, d, f, false, 1.0, dgate_up, 2 * f, w_gate, d, f * d, 0.0, dxp, d);
  gemm_rows<T>(e, offsets, d, f, false, 1.0, dgate_up + f, 2 * f, w_up, d, f * d, 1.0, dxp, d);
  gemm_reduce_rows<T>(e, offsets, f, d, dgate_up, 2 * f, xp, d, dw_gate);      // (e, f, d)
  gemm_reduce_rows<T>(e, offsets, f, d, dgate_up + f, 2 * f, xp, d, dw_up);    // (e, f, d)
}

#define SSM_INSTANTIATE(T)                                                                                        \
  template void moe_router_forward<T>(const MoeShape&, const T*, T*, T*, int32_t*, T*);                           \
  template void moe_router_backward<T>(const MoeShape&, const T*, const int32_t*, const T*, const T*, T*);        \
  template void moe_router_losses<T>(const MoeShape&, const T*, const T*, const int32_t*, T*, T*, T*);            \
  template void moe_router_losses_backward<T>(const MoeShape&, const T*, const T*, const int32_t*, T, T, T*);     \
  template void moe_permute<T>(const MoeShape&, int64_t, const T*, const int32_t*, T*);                           \
  template void moe_permute_backward<T>(const MoeShape&, int64_t, const T*, const int32_t*, T*);                  \
  template void moe_unpermute<T>(const MoeShape&, int64_t, const T*, const int32_t*, const T*, T*);               \
  template void moe_unpermute_backward<T>(const MoeShape&, int64_t, const T*, const T*, const int32_t*, const T*, \
                                          T*, T*);                                                                \
  template void moe_experts_forward<T>(const MoeExpertShape&, const int64_t*, const T*, const T*, const T*,       \
                                       const T*, T*, T*, T*);                                                     \
  template void moe_experts_backward<T>(const MoeExpertShape&, const int64_t*, const T*, const T*, const T*,      \
                                        const T*, const T*, const T*, T*, T*, T*, T*, T*, T*);
SSM_INSTANTIATE(float)
SSM_INSTANTIATE(double)
#undef SSM_INSTANTIATE

}  // namespace cpu
}  // namespace ssmtrain::kernels
