// The fp32 (and f64) reference of kernels/causal_conv1d.h: the window sum written out, one
// (batch, channel) row at a time, for both layouts (only the element offsets differ). The
// backward runs one channel per OpenMP iteration and walks its rows in batch order, so dweight
// and dbias are summed in a fixed order, the same in both layouts.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/causal_conv1d.h"
#include "kernels/cpu/activations.h"

namespace ssmtrain::kernels::cpu {
namespace {

void check_shape(const Conv1dShape& s, const char* op) {
  if (s.batch < 0 || s.dim < 0 || s.seq_len < 0 || s.width < 2 || s.width > 4)
    throw KernelError(std::string(op) + ": bad shape (b " + std::to_string(s.batch) + ", d " +
                      std::to_string(s.dim) + ", l " + std::to_string(s.seq_len) + ", w " +
                      std::to_string(s.width) + "); the width must be 2, 3 or 4");
  if (s.channel_last && s.x_stride != 0 && s.x_stride < s.dim)
    throw KernelError(std::string(op) + ": x_stride " + std::to_string(s.x_stride) +
                      " is below the channel count d " + std::to_string(s.dim) + " (channel-last x)");
}

// Element offsets of x and of the dense out / dout / dx at (b, c, t) in either layout.
struct Offsets {
  int64_t x_b, x_c, x_t;  // x
  int64_t o_b, o_c, o_t;  // out, dout, dx
  explicit Offsets(const Conv1dShape& s) {
    const int64_t d = s.dim, l = s.seq_len;
    if (s.channel_last) {
      const int64_t stride = s.x_stride ? s.x_stride : d;
      x_b = l * stride, x_c = 1, x_t = stride;
      o_b = l * d, o_c = 1, o_t = d;
    } else {
      x_b = o_b = d * l, x_c = o_c = l, x_t = o_t = 1;
    }
  }
  int64_t x(int64_t b, int64_t c, int64_t t) const { return b * x_b + c * x_c + t * x_t; }
  int64_t o(int64_t b, int64_t c, int64_t t) const { return b * o_b + c * o_c + t * o_t; }
};

// True when input position s (negative: the initial state) counts for output t >= s of row
// b: the document index does not change in (s, t]. Changes happen only at tokens >= 1.
bool reaches(const int32_t* doc_index, int64_t b, int64_t l, int64_t s, int64_t t) {
  if (!doc_index) return true;
  const int32_t* doc = doc_index + b * l;  // (l)
  for (int64_t u = std::max<int64_t>(s + 1, 1); u <= t; ++u)
    if (doc[u] != doc[u - 1]) return false;
  return true;
}

// x at position s of row (b, c): the row, or the initial state before t = 0, or zero.
template <typename T>
T input_at(const Conv1dShape& s, const Conv1dArgs<T, T>& a, int64_t b, int64_t c, int64_t pos) {
  const int64_t row = b * s.dim + c;
  if (pos >= 0) return a.x[Offsets(s).x(b, c, pos)];
  if (!a.initial_state) return T(0);
  return a.initial_state[row * (s.width - 1) + (s.width - 1) + pos];
}

// The pre-activation at token t of row (b, c).
template <typename T>
T pre_activation(const Conv1dShape& s, const Conv1dArgs<T, T>& a, int64_t b, int64_t c, int64_t t) {
  const int64_t w = s.width;
  T acc = a.bias ? a.bias[c] : T(0);
  for (int64_t k = 0; k < w; ++k) {
    const int64_t pos = t - (w - 1) + k;
    if (reaches(a.doc_index, b, s.seq_len, pos, t)) acc += a.weight[c * w + k] * input_at(s, a, b, c, pos);
  }
  return acc;
}

}  // namespace

template <typename T>
void causal_conv1d_forward(const Conv1dShape& s, const Conv1dArgs<T, T>& a, T* out, T* final_state) {
  check_shape(s, "causal_conv1d_forward");
  const int64_t l = s.seq_len, w = s.width;
  const Offsets at(s);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t c = 0; c < s.dim; ++c) {
      const int64_t row = b * s.dim + c;
      for (int64_t t = 0; t < l; ++t) {
        const T pre = pre_activation(s, a, b, c, t);
        out[at.o(b, c, t)] = s.silu ? pre * sigmoid(pre) : pre;
      }
      if (final_state) {
        // The next segment's first token is l; it continues the document of token l - 1.
        for (int64_t i = 0; i < w - 1; ++i) {
          const int64_t pos = l - (w - 1) + i;
          const bool kept = reaches(a.doc_index, b, l, pos, l - 1);
          final_state[row * (w - 1) + i] = kept ? input_at(s, a, b, c, pos) : T(0);
        }
      }
    }
  }
}

template <typename T>
void causal_conv1d_backward(const Conv1dShape& s, const Conv1dArgs<T, T>& a, const Conv1dGrads<T, T>& g) {
  check_shape(s, "causal_conv1d_backward");
  const int64_t l = s.seq_len, w = s.width;
  if (a.bias && !g.dbias) throw KernelError("causal_conv1d_backward: dbias is required when bias is given");
  if (a.initial_state && !g.dinitial_state)
    throw KernelError("causal_conv1d_backward: dinitial_state is required when initial_state is given");
  const Offsets at(s);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < s.dim; ++c) {
    std::vector<T> dweight(w, T(0));
    T dbias = 0;
    std::vector<T> dpre(l);  // dL / d pre-activation of one row
    for (int64_t b = 0; b < s.batch; ++b) {
      const int64_t row = b * s.dim + c;
      for (int64_t t = 0; t < l; ++t) {
        const T dy = g.dout[at.o(b, c, t)];
        if (s.silu) {
          const T pre = pre_activation(s, a, b, c, t), sg = sigmoid(pre);
          dpre[t] = dy * sg * (T(1) + pre * (T(1) - sg));
        } else {
          dpre[t] = dy;
        }
        dbias += dpre[t];
        for (int64_t k = 0; k < w; ++k) {
          const int64_t pos = t - (w - 1) + k;
          if (reaches(a.doc_index, b, l, pos, t)) dweight[k] += dpre[t] * input_at(s, a, b, c, pos);
        }
      }
      // d x[pos] gathers the outputs t = pos .. pos + w - 1 whose window holds pos.
      auto grad_at = [&](int64_t pos) {
        T sum = 0;
        for (int64_t t = std::max<int64_t>(pos, 0); t <= std::min(pos + w - 1, l - 1); ++t)
          if (reaches(a.doc_index, b, l, pos, t)) sum += dpre[t] * a.weight[c * w + (pos - t + w - 1)];
        return sum;
      };
      for (int64_t pos = 0; pos < l; ++pos) g.dx[at.o(b, c, pos)] = grad_at(pos);
      if (g.dinitial_state)
        for (int64_t i = 0; i < w - 1; ++i) g.dinitial_state[row * (w - 1) + i] = grad_at(i - (w - 1));
    }
    for (int64_t k = 0; k < w; ++k) g.dweight[c * w + k] = dweight[k];
    if (g.dbias) g.dbias[c] = dbias;
  }
}

template <typename T>
void causal_conv1d_step(const Conv1dShape& s, const Conv1dArgs<T, T>& a, const T* x, T* state, T* out) {
  check_shape(s, "causal_conv1d_step");
  const int64_t w = s.width;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t c = 0; c < s.dim; ++c) {
      const int64_t i = b * s.dim + c;
      T* st = state + i * (w - 1);  // (w-1): inputs at t-(w-1) .. t-1
      T acc = a.bias ? a.bias[c] : T(0);
      for (int64_t k = 0; k < w - 1; ++k) acc += a.weight[c * w + k] * st[k];
      acc += a.weight[c * w + w - 1] * x[i];
      out[i] = s.silu ? acc * sigmoid(acc) : acc;
      for (int64_t k = 0; k + 1 < w - 1; ++k) st[k] = st[k + 1];
      st[w - 2] = x[i];
    }
  }
}

template void causal_conv1d_forward<float>(const Conv1dShape&, const Conv1dArgs<float, float>&, float*, float*);
template void causal_conv1d_forward<double>(const Conv1dShape&, const Conv1dArgs<double, double>&, double*,
                                            double*);
template void causal_conv1d_backward<float>(const Conv1dShape&, const Conv1dArgs<float, float>&,
                                            const Conv1dGrads<float, float>&);
template void causal_conv1d_backward<double>(const Conv1dShape&, const Conv1dArgs<double, double>&,
                                             const Conv1dGrads<double, double>&);
template void causal_conv1d_step<float>(const Conv1dShape&, const Conv1dArgs<float, float>&, const float*, float*,
                                        float*);
template void causal_conv1d_step<double>(const Conv1dShape&, const Conv1dArgs<double, double>&, const double*,
                                         double*, double*);

}  // namespace ssmtrain::kernels::cpu
