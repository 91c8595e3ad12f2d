// The f32 (and f64) reference of kernels/attention.h: causal attention with grouped-query heads
// and document masking, written as the formula (scores row by row, exact softmax), its
// backward, and the single-token decode step. Parallel over (b, h), or over (b, h_kv) in the
// backward so that dk and dv sum the query heads of a group in a fixed order.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/attention.h"

namespace ssmtrain::kernels {

double attention_scale(const AttentionShape& s) {
  return s.scale != 0.0 ? s.scale : 1.0 / std::sqrt(static_cast<double>(s.head_dim));
}

void check_attention_shape(const AttentionShape& s) {
  if (s.batch < 0 || s.seq_len < 0 || s.n_heads < 1 || s.n_kv_heads < 1 || s.head_dim < 1 ||
      s.n_heads % s.n_kv_heads != 0 || !std::isfinite(s.scale))
    throw KernelError("attention: bad shape (b " + std::to_string(s.batch) + ", l " + std::to_string(s.seq_len) +
                      ", h " + std::to_string(s.n_heads) + ", h_kv " + std::to_string(s.n_kv_heads) + ", dh " +
                      std::to_string(s.head_dim) + ", scale " + std::to_string(s.scale) +
                      "); sizes must be positive and h_kv must divide h");
}

namespace cpu {
namespace {

// Element offsets in the (b, l, heads, dh) layouts.
struct Index {
  const AttentionShape& s;
  int64_t q(int64_t b, int64_t t, int64_t hh) const { return ((b * s.seq_len + t) * s.n_heads + hh) * s.head_dim; }
  int64_t kv(int64_t b, int64_t t, int64_t g) const { return ((b * s.seq_len + t) * s.n_kv_heads + g) * s.head_dim; }
  int64_t lse(int64_t b, int64_t hh, int64_t t) const { return (b * s.n_heads + hh) * s.seq_len + t; }
  int64_t group_of(int64_t hh) const { return hh / (s.n_heads / s.n_kv_heads); }
};

// True when query i may attend to key j (j <= i is the caller's loop bound).
bool visible(const int32_t* doc_index, int64_t b, int64_t l, int64_t i, int64_t j) {
  return !doc_index || doc_index[b * l + i] == doc_index[b * l + j];
}

template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  T acc = 0;
  for (int64_t e = 0; e < n; ++e) acc += a[e] * b[e];
  return acc;
}

// Scores of query row i against keys 0..i (masked ones -inf) and their log-sum-exp.
template <typename T>
T score_row(const AttentionShape& s, const Index& ix, const T* q, const T* k, const int32_t* doc_index,
            int64_t b, int64_t hh, int64_t i, T scale, std::vector<T>& scores) {
  const int64_t g = ix.group_of(hh);
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j <= i; ++j) {
    scores[j] = visible(doc_index, b, s.seq_len, i, j)
                    ? scale * dot(q + ix.q(b, i, hh), k + ix.kv(b, j, g), s.head_dim)
                    : -std::numeric_limits<T>::infinity();
    mx = std::max(mx, scores[j]);
  }
  T sum = 0;
  for (int64_t j = 0; j <= i; ++j) sum += std::exp(scores[j] - mx);
  return mx + std::log(sum);  // key i is always visible, so mx is finite
}

}  // namespace

template <typename T>
void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, const int32_t* doc_index,
                       T* out, T* lse) {
  check_attention_shape(s);
  const Index ix{s};
  const T scale = static_cast<T>(attention_scale(s));
  const int64_t dh = s.head_dim;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t hh = 0; hh < s.n_heads; ++hh) {
      std::vector<T> scores(s.seq_len);  // (l)
      const int64_t g = ix.group_of(hh);
      for (int64_t i = 0; i < s.seq_len; ++i) {
        const T row_lse = score_row(s, ix, q, k, doc_index, b, hh, i, scale, scores);
        T* o = out + ix.q(b, i, hh);  // (dh)
        std::fill(o, o + dh, T(0));
        for (int64_t j = 0; j <= i; ++j) {
          const T p = std::exp(scores[j] - row_lse);
          if (p == T(0)) continue;
          const T* vj = v + ix.kv(b, j, g);
          for (int64_t e = 0; e < dh; ++e) o[e] += p * vj[e];
        }
        lse[ix.lse(b, hh, i)] = row_lse;
      }
    }
}

template <typename T>
void attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const int32_t* doc_index,
                        const T* out, const T* lse, const T* dout, T* dq, T* dk, T* dv) {
  check_attention_shape(s);
  const Index ix{s};
  const T scale = static_cast<T>(attention_scale(s));
  const int64_t dh = s.head_dim, group = s.n_heads / s.n_kv_heads;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t g = 0; g < s.n_kv_heads; ++g) {
      for (int64_t j = 0; j < s.seq_len; ++j) {
        std::fill(dk + ix.kv(b, j, g), dk + ix.kv(b, j, g) + dh, T(0));
        std::fill(dv + ix.kv(b, j, g), dv + ix.kv(b, j, g) + dh, T(0));
      }
      for (int64_t hh = g * group; hh < (g + 1) * group; ++hh)
        for (int64_t i = 0; i < s.seq_len; ++i) {
          const T* qi = q + ix.q(b, i, hh);      // (dh)
          const T* doi = dout + ix.q(b, i, hh);  // (dh)
          T* dqi = dq + ix.q(b, i, hh);          // (dh)
          std::fill(dqi, dqi + dh, T(0));
          const T delta = dot(doi, out + ix.q(b, i, hh), dh);  // sum_j p_ij dp_ij
          const T row_lse = lse[ix.lse(b, hh, i)];
          for (int64_t j = 0; j <= i; ++j) {
            if (!visible(doc_index, b, s.seq_len, i, j)) continue;
            const T* kj = k + ix.kv(b, j, g);
            const T* vj = v + ix.kv(b, j, g);
            const T p = std::exp(scale * dot(qi, kj, dh) - row_lse);
            const T dp = dot(doi, vj, dh);
            const T ds = p * (dp - delta) * scale;  // d loss / d (q_i . k_j)
            T* dkj = dk + ix.kv(b, j, g);
            T* dvj = dv + ix.kv(b, j, g);
            for (int64_t e = 0; e < dh; ++e) {
              dqi[e] += ds * kj[e];
              dkj[e] += ds * qi[e];
              dvj[e] += p * doi[e];
            }
          }
        }
    }
}

template <typename T>
void attention_decode(const AttentionShape& s, const T* q, const T* k_cache, const T* v_cache,
                      const int32_t* lengths, T* out) {
  check_attention_shape(s);
  const Index ix{s};  // seq_len is the cache capacity L
  const T scale = static_cast<T>(attention_scale(s));
  const int64_t dh = s.head_dim;
  for (int64_t b = 0; b < s.batch; ++b)
    if (lengths[b] < 1 || lengths[b] > s.seq_len)
      throw KernelError("attention_decode: length " + std::to_string(lengths[b]) + " of sequence " +
                        std::to_string(b) + " is outside 1.." + std::to_string(s.seq_len));
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t hh = 0; hh < s.n_heads; ++hh) {
      const int64_t len = lengths[b];
      const int64_t g = ix.group_of(hh);
      const T* qb = q + (b * s.n_heads + hh) * dh;  // (dh)
      std::vector<T> scores(len);
      T mx = -std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < len; ++j) {
        scores[j] = scale * dot(qb, k_cache + ix.kv(b, j, g), dh);
        mx = std::max(mx, scores[j]);
      }
      T sum = 0;
      for (int64_t j = 0; j < len; ++j) sum += (scores[j] = std::exp(scores[j] - mx));
      T* o = out + (b * s.n_heads + hh) * dh;  // (dh)
      std::fill(o, o + dh, T(0));
      for (int64_t j = 0; j < len; ++j) {
        const T* vj = v_cache + ix.kv(b, j, g);
        for (int64_t e = 0; e < dh; ++e) o[e] += scores[j] / sum * vj[e];
      }
    }
}

#define SSM_INSTANTIATE(T)                                                                                    \
  template void attention_forward<T>(const AttentionShape&, const T*, const T*, const T*, const int32_t*, T*, \
                                     T*);                                                                     \
  template void attention_backward<T>(const AttentionShape&, const T*, const T*, const T*, const int32_t*,   \
                                      const T*, const T*, const T*, T*, T*, T*);                             \
  template void attention_decode<T>(const AttentionShape&, const T*, const T*, const T*, const int32_t*, T*);
SSM_INSTANTIATE(float)
SSM_INSTANTIATE(double)
#undef SSM_INSTANTIATE

}  // namespace cpu
}  // namespace ssmtrain::kernels
