// The fp32 (and f64) reference of kernels/selective_scan.h: the sequential recurrence, one
// (batch, channel) at a time. The backward keeps every state of a channel ((l, n) values)
// and walks time in reverse. Parallel over (batch, group); channels of a group run in
// order, so the dB / dC sums over channels have a fixed order.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/activations.h"
#include "kernels/selective_scan.h"

namespace ssmtrain::kernels::cpu {
namespace {

void check_shape(const ScanShape& s, const char* op) {
  if (s.batch < 0 || s.dim < 0 || s.seq_len < 0 || s.d_state < 1 || s.ngroups < 1 ||
      s.dim % s.ngroups != 0)
    throw KernelError(std::string(op) + ": bad shape (b " + std::to_string(s.batch) + ", d " +
                      std::to_string(s.dim) + ", l " + std::to_string(s.seq_len) + ", n " +
                      std::to_string(s.d_state) + ", g " + std::to_string(s.ngroups) + ")");
}

// True when token t starts a new document (the state restarts from zero).
bool resets_at(const int32_t* doc_index, int64_t b, int64_t l, int64_t t) {
  return doc_index && t > 0 && doc_index[b * l + t] != doc_index[b * l + t - 1];
}

}  // namespace

template <typename T>
void selective_scan_forward(const ScanShape& s, const ScanArgs<T, T>& a, T* out, T* final_state) {
  check_shape(s, "selective_scan_forward");
  const int64_t d_total = s.dim, l = s.seq_len, n = s.d_state, g_total = s.ngroups;
  const int64_t per_group = d_total / g_total;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t d = 0; d < d_total; ++d) {
      const int64_t g = d / per_group;
      const int64_t row = (b * d_total + d) * l;        // (b, d, :)
      const T* Bg = a.B + (b * g_total + g) * n * l;    // (n, l)
      const T* Cg = a.C + (b * g_total + g) * n * l;    // (n, l)
      std::vector<T> x(n, T(0));                        // state (n)
      if (a.initial_state)
        for (int64_t k = 0; k < n; ++k) x[k] = a.initial_state[(b * d_total + d) * n + k];
      for (int64_t t = 0; t < l; ++t) {
        if (resets_at(a.doc_index, b, l, t)) std::fill(x.begin(), x.end(), T(0));
        T dt = a.delta[row + t] + (a.delta_bias ? a.delta_bias[d] : T(0));
        if (s.delta_softplus) dt = softplus(dt);
        const T u = a.u[row + t];
        T y = 0;
        for (int64_t k = 0; k < n; ++k) {
          x[k] = std::exp(dt * a.A[d * n + k]) * x[k] + dt * Bg[k * l + t] * u;
          y += Cg[k * l + t] * x[k];
        }
        if (a.D) y += a.D[d] * u;
        if (a.z) {
          const T z = a.z[row + t];
          y *= z * sigmoid(z);
        }
        out[row + t] = y;
      }
      if (final_state)
        for (int64_t k = 0; k < n; ++k) final_state[(b * d_total + d) * n + k] = x[k];
    }
  }
}

template <typename T>
void selective_scan_backward(const ScanShape& s, const ScanArgs<T, T>& a, const ScanGrads<T, T>& gr) {
  check_shape(s, "selective_scan_backward");
  const int64_t d_total = s.dim, l = s.seq_len, n = s.d_state, g_total = s.ngroups;
  const int64_t per_group = d_total / g_total;
  std::fill(gr.dA, gr.dA + d_total * n, T(0));
  if (gr.dD) std::fill(gr.dD, gr.dD + d_total, T(0));
  if (gr.ddelta_bias) std::fill(gr.ddelta_bias, gr.ddelta_bias + d_total, T(0));
  std::fill(gr.dB, gr.dB + s.batch * g_total * n * l, T(0));
  std::fill(gr.dC, gr.dC + s.batch * g_total * n * l, T(0));
  // dA, dD and ddelta_bias sum over the batch: per-batch partials, added in batch order.
  std::vector<T> dA_part(s.batch * d_total * n, T(0));
  std::vector<T> dD_part(s.batch * d_total, T(0)), dbias_part(s.batch * d_total, T(0));

#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t g = 0; g < g_total; ++g) {
      std::vector<T> states((l + 1) * n);  // states[t + 1] = x_t; states[0] = initial
      std::vector<T> dx(n);
      T* dBg = gr.dB + (b * g_total + g) * n * l;
      T* dCg = gr.dC + (b * g_total + g) * n * l;
      const T* Bg = a.B + (b * g_total + g) * n * l;
      const T* Cg = a.C + (b * g_total + g) * n * l;
      for (int64_t d = g * per_group; d < (g + 1) * per_group; ++d) {
        const int64_t row = (b * d_total + d) * l;
        const T bias = a.delta_bias ? a.delta_bias[d] : T(0);
        auto dt_at = [&](int64_t t) {
          const T raw = a.delta[row + t] + bias;
          return s.delta_softplus ? softplus(raw) : raw;
        };
        // Forward again, keeping every state.
        for (int64_t k = 0; k < n; ++k)
          states[k] = a.initial_state ? a.initial_state[(b * d_total + d) * n + k] : T(0);
        for (int64_t t = 0; t < l; ++t) {
          const bool reset = resets_at(a.doc_index, b, l, t);
          const T dt = dt_at(t), u = a.u[row + t];
          for (int64_t k = 0; k < n; ++k) {
            const T prev = reset ? T(0) : states[t * n + k];
            states[(t + 1) * n + k] = std::exp(dt * a.A[d * n + k]) * prev + dt * Bg[k * l + t] * u;
          }
        }
        // Backward through time.
        for (int64_t k = 0; k < n; ++k)
          dx[k] = gr.dfinal_state ? gr.dfinal_state[(b * d_total + d) * n + k] : T(0);
        for (int64_t t = l - 1; t >= 0; --t) {
          const bool reset = resets_at(a.doc_index, b, l, t);
          const T dt = dt_at(t), u = a.u[row + t];
          T dy = gr.dout[row + t];
          if (a.z) {
            const T z = a.z[row + t], sz = sigmoid(z);
            // y_pre = C . x_t + D u
            T y_pre = a.D ? a.D[d] * u : T(0);
            for (int64_t k = 0; k < n; ++k) y_pre += Cg[k * l + t] * states[(t + 1) * n + k];
            gr.dz[row + t] = dy * y_pre * sz * (T(1) + z * (T(1) - sz));
            dy *= z * sz;
          }
          T du = 0, ddt = 0;
          if (a.D) {
            dD_part[b * d_total + d] += dy * u;
            du += dy * a.D[d];
          }
          for (int64_t k = 0; k < n; ++k) {
            const T x_t = states[(t + 1) * n + k];
            const T x_prev = reset ? T(0) : states[t * n + k];
            dCg[k * l + t] += dy * x_t;
            dx[k] += dy * Cg[k * l + t];
            const T decay = std::exp(dt * a.A[d * n + k]);
            const T d_decay = dx[k] * x_prev;  // dL / d decay
            ddt += d_decay * decay * a.A[d * n + k];
            dA_part[(b * d_total + d) * n + k] += d_decay * decay * dt;
            dBg[k * l + t] += dx[k] * dt * u;
            ddt += dx[k] * Bg[k * l + t] * u;
            du += dx[k] * Bg[k * l + t] * dt;
            dx[k] = reset ? T(0) : dx[k] * decay;
          }
          if (s.delta_softplus) ddt *= sigmoid(a.delta[row + t] + bias);
          gr.ddelta[row + t] = ddt;
          gr.du[row + t] = du;
          dbias_part[b * d_total + d] += ddt;
        }
        if (gr.dinitial_state) {
          // A reset at t = 0 cannot happen (resets need t > 0), so dx is dL/d initial state.
          for (int64_t k = 0; k < n; ++k) gr.dinitial_state[(b * d_total + d) * n + k] = dx[k];
        }
      }
    }
  }
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t i = 0; i < d_total * n; ++i) gr.dA[i] += dA_part[b * d_total * n + i];
    for (int64_t d = 0; d < d_total; ++d) {
      if (gr.dD) gr.dD[d] += dD_part[b * d_total + d];
      if (gr.ddelta_bias) gr.ddelta_bias[d] += dbias_part[b * d_total + d];
    }
  }
}

template <typename T>
void selective_scan_step(const ScanShape& s, const ScanArgs<T, T>& a, T* state, T* out) {
  check_shape(s, "selective_scan_step");
  const int64_t d_total = s.dim, n = s.d_state, g_total = s.ngroups;
  const int64_t per_group = d_total / g_total;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t d = 0; d < d_total; ++d) {
      const int64_t g = d / per_group;
      const int64_t i = b * d_total + d;
      const T* Bg = a.B + (b * g_total + g) * n;  // (n)
      const T* Cg = a.C + (b * g_total + g) * n;
      T dt = a.delta[i] + (a.delta_bias ? a.delta_bias[d] : T(0));
      if (s.delta_softplus) dt = softplus(dt);
      const T u = a.u[i];
      T y = 0;
      for (int64_t k = 0; k < n; ++k) {
        T& x = state[i * n + k];
        x = std::exp(dt * a.A[d * n + k]) * x + dt * Bg[k] * u;
        y += Cg[k] * x;
      }
      if (a.D) y += a.D[d] * u;
      if (a.z) y *= a.z[i] * sigmoid(a.z[i]);
      out[i] = y;
    }
  }
}

template void selective_scan_forward<float>(const ScanShape&, const ScanArgs<float, float>&, float*, float*);
template void selective_scan_forward<double>(const ScanShape&, const ScanArgs<double, double>&, double*, double*);
template void selective_scan_backward<float>(const ScanShape&, const ScanArgs<float, float>&,
                                             const ScanGrads<float, float>&);
template void selective_scan_backward<double>(const ScanShape&, const ScanArgs<double, double>&,
                                              const ScanGrads<double, double>&);
template void selective_scan_step<float>(const ScanShape&, const ScanArgs<float, float>&, float*, float*);
template void selective_scan_step<double>(const ScanShape&, const ScanArgs<double, double>&, double*, double*);

}  // namespace ssmtrain::kernels::cpu
