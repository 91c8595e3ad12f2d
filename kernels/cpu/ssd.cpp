// The fp32 (and f64) reference of kernels/ssd.h: the sequential recurrence, the chunked
// decomposition (the GPU's algorithm, spelled out), the backward (sequential, with every state
// of a head stored) and the single-token decoding step. Parallel over (batch, head), or over
// (batch, group) in the backward so that the sums over the heads of a group have a fixed order.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cpu/activations.h"
#include "kernels/ssd.h"

namespace ssmtrain::kernels::cpu {
namespace {

void check_shape(const SsdShape& s, const char* op) {
  if (s.batch < 0 || s.seq_len < 0 || s.n_heads < 1 || s.head_dim < 1 || s.d_state < 1 || s.ngroups < 1 ||
      s.n_heads % s.ngroups != 0 || s.chunk_size < 1 || !(s.dt_min <= s.dt_max))
    throw KernelError(std::string(op) + ": bad shape (b " + std::to_string(s.batch) + ", l " +
                      std::to_string(s.seq_len) + ", h " + std::to_string(s.n_heads) + ", p " +
                      std::to_string(s.head_dim) + ", n " + std::to_string(s.d_state) + ", g " +
                      std::to_string(s.ngroups) + ", chunk " + std::to_string(s.chunk_size) + ", dt range [" +
                      std::to_string(s.dt_min) + ", " + std::to_string(s.dt_max) + "]); g must divide h");
}

// Element offsets of one token's rows in the (b, l, ...) layouts.
struct Index {
  const SsdShape& s;
  int64_t x(int64_t b, int64_t t, int64_t hh) const { return ((b * s.seq_len + t) * s.n_heads + hh) * s.head_dim; }
  int64_t dt(int64_t b, int64_t t, int64_t hh) const { return (b * s.seq_len + t) * s.n_heads + hh; }
  int64_t bc(int64_t b, int64_t t, int64_t gg) const { return ((b * s.seq_len + t) * s.ngroups + gg) * s.d_state; }
  int64_t state(int64_t b, int64_t hh) const { return (b * s.n_heads + hh) * s.head_dim * s.d_state; }
  int64_t group_of(int64_t hh) const { return hh / (s.n_heads / s.ngroups); }
};

// True when token t starts a new document (the state restarts from zero).
bool resets_at(const int32_t* doc_index, int64_t b, int64_t l, int64_t t) {
  return doc_index && t > 0 && doc_index[b * l + t] != doc_index[b * l + t - 1];
}

// dt after bias, softplus and clamp, and d(value) / d(raw dt).
template <typename T>
struct Dt {
  T value;
  T grad;
};
template <typename T>
Dt<T> process_dt(const SsdShape& s, T raw) {
  Dt<T> d{raw, T(1)};
  if (s.dt_softplus) d = {softplus(raw), sigmoid(raw)};
  if (s.has_dt_limit()) {
    const T lo = T(s.dt_min), hi = T(s.dt_max);
    if (!(d.value > lo && d.value < hi)) d.grad = T(0);
    d.value = std::clamp(d.value, lo, hi);
  }
  return d;
}

template <typename T>
T D_at(const SsdShape& s, const T* D, int64_t hh, int64_t pi) {
  if (!D) return T(0);
  return s.D_has_head_dim ? D[hh * s.head_dim + pi] : D[hh];
}

// The output epilogue: y = y_ssm + D x, times silu(z) when z is given.
template <typename T>
T finish_output(T y_ssm, T D, T x, const T* z) {
  const T y = y_ssm + D * x;
  return z ? y * silu(*z) : y;
}

// One token of one head: S (p, n) <- decay S + dt x ⊗ B; y (p) = finish(S C). Serves the
// sequential forward and the decoding step.
template <typename T>
void token_update(const SsdShape& s, const SsdArgs<T, T>& a, int64_t hh, T dt, const T* x, const T* B,
                  const T* C, const T* z, T* S, T* y) {
  const int64_t p = s.head_dim, n = s.d_state;
  const T decay = std::exp(dt * a.A[hh]);
  for (int64_t pi = 0; pi < p; ++pi) {
    T* Sp = S + pi * n;  // (n)
    T acc = 0;
    for (int64_t k = 0; k < n; ++k) {
      Sp[k] = decay * Sp[k] + dt * x[pi] * B[k];
      acc += Sp[k] * C[k];
    }
    y[pi] = finish_output(acc, D_at(s, a.D, hh, pi), x[pi], z ? z + pi : nullptr);
  }
}

template <typename T>
void load_initial(const SsdShape& s, const SsdArgs<T, T>& a, int64_t b, int64_t hh, T* S) {
  const int64_t pn = s.head_dim * s.d_state;
  const int64_t at = Index{s}.state(b, hh);
  for (int64_t i = 0; i < pn; ++i) S[i] = a.initial_states ? a.initial_states[at + i] : T(0);
}

}  // namespace

template <typename T>
void ssd_forward_sequential(const SsdShape& s, const SsdArgs<T, T>& a, T* out, T* final_states) {
  check_shape(s, "ssd_forward_sequential");
  const Index ix{s};
  const int64_t pn = s.head_dim * s.d_state;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t hh = 0; hh < s.n_heads; ++hh) {
      const int64_t gg = ix.group_of(hh);
      const T bias = a.dt_bias ? a.dt_bias[hh] : T(0);
      std::vector<T> S(pn);  // (p, n)
      load_initial(s, a, b, hh, S.data());
      for (int64_t t = 0; t < s.seq_len; ++t) {
        if (resets_at(a.doc_index, b, s.seq_len, t)) std::fill(S.begin(), S.end(), T(0));
        const T dt = process_dt(s, a.dt[ix.dt(b, t, hh)] + bias).value;
        token_update(s, a, hh, dt, a.x + ix.x(b, t, hh), a.B + ix.bc(b, t, gg), a.C + ix.bc(b, t, gg),
                     a.z ? a.z + ix.x(b, t, hh) : nullptr, S.data(), out + ix.x(b, t, hh));
      }
      if (final_states) std::copy(S.begin(), S.end(), final_states + ix.state(b, hh));
    }
  }
}

template <typename T>
void ssd_forward_chunked(const SsdShape& s, const SsdArgs<T, T>& a, T* out, T* final_states) {
  check_shape(s, "ssd_forward_chunked");
  const Index ix{s};
  const int64_t l = s.seq_len, p = s.head_dim, n = s.d_state, pn = p * n, Q = s.chunk_size;
  const int64_t nchunks = (l + Q - 1) / Q;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t hh = 0; hh < s.n_heads; ++hh) {
      const int64_t gg = ix.group_of(hh);
      const T A = a.A[hh], bias = a.dt_bias ? a.dt_bias[hh] : T(0);
      // Per token: dt, the log-decay summed from its chunk's start through itself, the first
      // token of its document inside its chunk, and whether the state entering the chunk
      // reaches it (no document starts in [chunk start, t]).
      std::vector<T> dt(l), cum(l);
      std::vector<int64_t> first(l);
      std::vector<char> carries(l);
      for (int64_t c = 0; c < nchunks; ++c) {
        const int64_t c0 = c * Q, c1 = std::min(l, c0 + Q);
        for (int64_t t = c0; t < c1; ++t) {
          dt[t] = process_dt(s, a.dt[ix.dt(b, t, hh)] + bias).value;
          cum[t] = (t > c0 ? cum[t - 1] : T(0)) + dt[t] * A;
          const bool reset = resets_at(a.doc_index, b, l, t);
          first[t] = reset ? t : (t > c0 ? first[t - 1] : c0);
          carries[t] = !reset && (t == c0 || carries[t - 1]);
        }
      }

      // Step 1, per-chunk states: what each chunk adds to the state by its end, starting
      // from zero. own (nchunks, p, n).
      std::vector<T> own(nchunks * pn, T(0));
      for (int64_t c = 0; c < nchunks; ++c) {
        const int64_t last = std::min(l, (c + 1) * Q) - 1;
        T* Oc = own.data() + c * pn;  // (p, n)
        for (int64_t t = first[last]; t <= last; ++t) {
          const T w = std::exp(cum[last] - cum[t]) * dt[t];
          const T* xt = a.x + ix.x(b, t, hh);  // (p)
          const T* Bt = a.B + ix.bc(b, t, gg);  // (n)
          for (int64_t pi = 0; pi < p; ++pi)
            for (int64_t k = 0; k < n; ++k) Oc[pi * n + k] += w * xt[pi] * Bt[k];
        }
      }

      // Step 2, state passing: entering (nchunks + 1, p, n), entering[c] the state before
      // chunk c; entering[c + 1] = decay of chunk c * entering[c] + own[c].
      std::vector<T> entering((nchunks + 1) * pn);
      load_initial(s, a, b, hh, entering.data());
      for (int64_t c = 0; c < nchunks; ++c) {
        const int64_t last = std::min(l, (c + 1) * Q) - 1;
        const T chunk_decay = carries[last] ? std::exp(cum[last]) : T(0);
        for (int64_t i = 0; i < pn; ++i)
          entering[(c + 1) * pn + i] = chunk_decay * entering[c * pn + i] + own[c * pn + i];
      }
      if (final_states)
        std::copy(entering.begin() + nchunks * pn, entering.end(), final_states + ix.state(b, hh));

      // Steps 3 and 4, outputs: within the chunk y_t = sum_s (C_t . B_s) L[t, s] dt_s x_s with
      // the decay mask L[t, s] = exp(cum_t - cum_s) for first[t] <= s <= t (else 0); plus the
      // entering state's part exp(cum_t) S C_t where it carries.
      std::vector<T> scores(Q * Q), y(p);  // scores (t, s) = (C_t . B_s) L[t, s] dt_s
      for (int64_t c = 0; c < nchunks; ++c) {
        const int64_t c0 = c * Q, c1 = std::min(l, c0 + Q);
        const T* Sc = entering.data() + c * pn;  // (p, n)
        for (int64_t t = c0; t < c1; ++t) {
          const T* Ct = a.C + ix.bc(b, t, gg);  // (n)
          for (int64_t j = c0; j < c1; ++j) {
            T cb = 0;
            if (j >= first[t] && j <= t) {
              const T* Bj = a.B + ix.bc(b, j, gg);
              for (int64_t k = 0; k < n; ++k) cb += Ct[k] * Bj[k];
              cb *= std::exp(cum[t] - cum[j]) * dt[j];
            }
            scores[(t - c0) * Q + (j - c0)] = cb;
          }
        }
        for (int64_t t = c0; t < c1; ++t) {
          std::fill(y.begin(), y.end(), T(0));
          for (int64_t j = first[t]; j <= t; ++j) {  // intra-chunk: scores @ x
            const T w = scores[(t - c0) * Q + (j - c0)];
            const T* xj = a.x + ix.x(b, j, hh);
            for (int64_t pi = 0; pi < p; ++pi) y[pi] += w * xj[pi];
          }
          const T* Ct = a.C + ix.bc(b, t, gg);
          if (carries[t]) {  // state to output
            const T decay = std::exp(cum[t]);
            for (int64_t pi = 0; pi < p; ++pi) {
              T acc = 0;
              for (int64_t k = 0; k < n; ++k) acc += Sc[pi * n + k] * Ct[k];
              y[pi] += decay * acc;
            }
          }
          const T* xt = a.x + ix.x(b, t, hh);
          for (int64_t pi = 0; pi < p; ++pi)
            out[ix.x(b, t, hh) + pi] = finish_output(y[pi], D_at(s, a.D, hh, pi), xt[pi],
                                                     a.z ? a.z + ix.x(b, t, hh) + pi : nullptr);
        }
      }
    }
  }
}

template <typename T>
void ssd_backward(const SsdShape& s, const SsdArgs<T, T>& a, const SsdGrads<T, T>& gr) {
  check_shape(s, "ssd_backward");
  const Index ix{s};
  const int64_t l = s.seq_len, h = s.n_heads, p = s.head_dim, n = s.d_state, pn = p * n;
  const int64_t heads_per_group = h / s.ngroups;
  const int64_t d_size = s.D_has_head_dim ? h * p : h;  // elements of D
  std::fill(gr.dB, gr.dB + s.batch * l * s.ngroups * n, T(0));
  std::fill(gr.dC, gr.dC + s.batch * l * s.ngroups * n, T(0));
  // dA, dD and ddt_bias sum over the batch: per-batch partials, added in batch order.
  std::vector<T> dA_part(s.batch * h, T(0)), dbias_part(s.batch * h, T(0)), dD_part(s.batch * d_size, T(0));

#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t gg = 0; gg < s.ngroups; ++gg) {
      std::vector<T> states((l + 1) * pn);  // states[t + 1] = S_t (p, n); states[0] = initial
      std::vector<T> dS(pn);                // dL / dS_t (p, n)
      for (int64_t hh = gg * heads_per_group; hh < (gg + 1) * heads_per_group; ++hh) {
        const T A = a.A[hh], bias = a.dt_bias ? a.dt_bias[hh] : T(0);
        // Forward again, keeping every state.
        load_initial(s, a, b, hh, states.data());
        for (int64_t t = 0; t < l; ++t) {
          const bool reset = resets_at(a.doc_index, b, l, t);
          const T dt = process_dt(s, a.dt[ix.dt(b, t, hh)] + bias).value;
          const T decay = std::exp(dt * A);
          const T* xt = a.x + ix.x(b, t, hh);
          const T* Bt = a.B + ix.bc(b, t, gg);
          const T* prev = states.data() + t * pn;
          T* cur = states.data() + (t + 1) * pn;
          for (int64_t pi = 0; pi < p; ++pi)
            for (int64_t k = 0; k < n; ++k)
              cur[pi * n + k] = (reset ? T(0) : decay * prev[pi * n + k]) + dt * xt[pi] * Bt[k];
        }
        // Backward through time.
        for (int64_t i = 0; i < pn; ++i)
          dS[i] = gr.dfinal_states ? gr.dfinal_states[ix.state(b, hh) + i] : T(0);
        for (int64_t t = l - 1; t >= 0; --t) {
          const bool reset = resets_at(a.doc_index, b, l, t);
          const int64_t xo = ix.x(b, t, hh), bo = ix.bc(b, t, gg);
          const Dt<T> dt = process_dt(s, a.dt[ix.dt(b, t, hh)] + bias);
          const T decay = std::exp(dt.value * A);
          const T* xt = a.x + xo;  // (p)
          const T* Bt = a.B + bo;  // (n)
          const T* Ct = a.C + bo;  // (n)
          const T* St = states.data() + (t + 1) * pn;
          const T* Sprev = states.data() + t * pn;
          // Output: y = (S_t C_t + D x) * silu(z).
          for (int64_t pi = 0; pi < p; ++pi) {
            const T Dv = D_at(s, a.D, hh, pi);
            T dy = gr.dout[xo + pi];
            if (a.z) {
              const T z = a.z[xo + pi];
              T y_pre = Dv * xt[pi];
              for (int64_t k = 0; k < n; ++k) y_pre += St[pi * n + k] * Ct[k];
              gr.dz[xo + pi] = dy * y_pre * silu_grad(z);
              dy *= silu(z);
            }
            if (a.D) dD_part[b * d_size + (s.D_has_head_dim ? hh * p + pi : hh)] += dy * xt[pi];
            gr.dx[xo + pi] = dy * Dv;
            for (int64_t k = 0; k < n; ++k) {
              gr.dC[bo + k] += dy * St[pi * n + k];
              dS[pi * n + k] += dy * Ct[k];
            }
          }
          // State: S_t = decay * S_{t-1} + dt x ⊗ B.
          T d_decay = 0, d_dt = 0;
          for (int64_t pi = 0; pi < p; ++pi) {
            T dx_state = 0;
            for (int64_t k = 0; k < n; ++k) {
              const T g = dS[pi * n + k];
              if (!reset) d_decay += g * Sprev[pi * n + k];
              d_dt += g * xt[pi] * Bt[k];
              dx_state += g * Bt[k];
              gr.dB[bo + k] += dt.value * g * xt[pi];
            }
            gr.dx[xo + pi] += dt.value * dx_state;
          }
          d_dt += d_decay * decay * A;
          dA_part[b * h + hh] += d_decay * decay * dt.value;
          const T d_raw = d_dt * dt.grad;
          gr.ddt[ix.dt(b, t, hh)] = d_raw;
          dbias_part[b * h + hh] += d_raw;
          for (int64_t i = 0; i < pn; ++i) dS[i] = reset ? T(0) : dS[i] * decay;
        }
        // A reset at t = 0 cannot happen (resets need t > 0), so dS is dL / d initial state.
        if (gr.dinitial_states) std::copy(dS.begin(), dS.end(), gr.dinitial_states + ix.state(b, hh));
      }
    }
  }
  std::fill(gr.dA, gr.dA + h, T(0));
  if (gr.dD) std::fill(gr.dD, gr.dD + d_size, T(0));
  if (gr.ddt_bias) std::fill(gr.ddt_bias, gr.ddt_bias + h, T(0));
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t hh = 0; hh < h; ++hh) {
      gr.dA[hh] += dA_part[b * h + hh];
      if (gr.ddt_bias) gr.ddt_bias[hh] += dbias_part[b * h + hh];
    }
    if (gr.dD)
      for (int64_t i = 0; i < d_size; ++i) gr.dD[i] += dD_part[b * d_size + i];
  }
}

template <typename T>
void ssd_step(const SsdShape& s, const SsdArgs<T, T>& a, T* states, T* out) {
  check_shape(s, "ssd_step");
  const int64_t h = s.n_heads, p = s.head_dim, g = s.ngroups, n = s.d_state;
  const Index ix{s};
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t hh = 0; hh < h; ++hh) {
      const int64_t gg = ix.group_of(hh);
      const int64_t row = (b * h + hh) * p;  // (b, h, :) in x, z, out
      const T dt = process_dt(s, a.dt[b * h + hh] + (a.dt_bias ? a.dt_bias[hh] : T(0))).value;
      token_update(s, a, hh, dt, a.x + row, a.B + (b * g + gg) * n, a.C + (b * g + gg) * n,
                   a.z ? a.z + row : nullptr, states + ix.state(b, hh), out + row);
    }
  }
}

#define SSM_INSTANTIATE(T)                                                                          \
  template void ssd_forward_sequential<T>(const SsdShape&, const SsdArgs<T, T>&, T*, T*);           \
  template void ssd_forward_chunked<T>(const SsdShape&, const SsdArgs<T, T>&, T*, T*);              \
  template void ssd_backward<T>(const SsdShape&, const SsdArgs<T, T>&, const SsdGrads<T, T>&);      \
  template void ssd_step<T>(const SsdShape&, const SsdArgs<T, T>&, T*, T*);
SSM_INSTANTIATE(float)
SSM_INSTANTIATE(double)
#undef SSM_INSTANTIATE

}  // namespace ssmtrain::kernels::cpu
