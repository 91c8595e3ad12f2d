// The CPU selective scan against an independent closed form in double precision
// (y_t = sum_{s<=t} C_t . prod_{s<r<=t} exp(dt_r A) dt_s B_s u_s), the decode step against
// the parallel scan, and document resets against separate runs.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/philox.h"
#include "kernels/selective_scan.h"
#include "tests/support/compare.h"

namespace ssmtrain::kernels {
namespace {

struct Problem {
  ScanShape s;
  std::vector<double> u, delta, A, B, C, D, z, bias, init;
  std::vector<int32_t> doc;
};

std::vector<double> rnd(int64_t n, uint64_t seed, double std = 1.0, double mean = 0.0) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = philox_normal_at(seed, 0, i, float(mean), float(std));
  return v;
}

Problem make(int64_t b, int64_t d, int64_t l, int64_t n, int64_t g, uint64_t seed, bool optional) {
  Problem p;
  p.s = {b, d, l, n, g, true};
  p.u = rnd(b * d * l, seed);
  p.delta = rnd(b * d * l, seed + 1, 0.5, -1.0);
  p.A = rnd(d * n, seed + 2, 0.5, -1.0);
  p.B = rnd(b * g * n * l, seed + 3);
  p.C = rnd(b * g * n * l, seed + 4);
  if (optional) {
    p.D = rnd(d, seed + 5);
    p.z = rnd(b * d * l, seed + 6);
    p.bias = rnd(d, seed + 7, 0.1);
    p.init = rnd(b * d * n, seed + 8);
  }
  return p;
}

const double* opt(const std::vector<double>& v) { return v.empty() ? nullptr : v.data(); }

ScanArgs<double, double> args(const Problem& p) {
  return {p.u.data(), p.delta.data(), p.A.data(), p.B.data(), p.C.data(), opt(p.D), opt(p.z),
          opt(p.bias), opt(p.init), p.doc.empty() ? nullptr : p.doc.data()};
}

// The closed form, O(l^2 n) per channel; documents handled by restricting s to t's document.
std::vector<double> closed_form(const Problem& p) {
  const auto& s = p.s;
  const int64_t per_group = s.dim / s.ngroups;
  std::vector<double> out(s.batch * s.dim * s.seq_len);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t d = 0; d < s.dim; ++d) {
      const int64_t g = d / per_group, row = (b * s.dim + d) * s.seq_len;
      auto dt = [&](int64_t t) {
        const double raw = p.delta[row + t] + (p.bias.empty() ? 0.0 : p.bias[d]);
        return raw > 20 ? raw : std::log1p(std::exp(raw));
      };
      auto Bv = [&](int64_t k, int64_t t) { return p.B[((b * s.ngroups + g) * s.d_state + k) * s.seq_len + t]; };
      auto Cv = [&](int64_t k, int64_t t) { return p.C[((b * s.ngroups + g) * s.d_state + k) * s.seq_len + t]; };
      for (int64_t t = 0; t < s.seq_len; ++t) {
        int64_t first = 0;  // first token of t's document
        if (!p.doc.empty())
          while (p.doc[b * s.seq_len + first] != p.doc[b * s.seq_len + t]) ++first;
        double y = 0;
        for (int64_t k = 0; k < s.d_state; ++k) {
          const double a = p.A[d * s.d_state + k];
          double sum_dt = 0;  // sum of dt over (s, t]
          double acc = 0;
          for (int64_t j = t; j >= first; --j) {
            acc += std::exp(a * sum_dt) * dt(j) * Bv(k, j) * p.u[row + j];
            sum_dt += dt(j);
          }
          if (!p.init.empty() && first == 0) acc += std::exp(a * sum_dt) * p.init[(b * s.dim + d) * s.d_state + k];
          y += Cv(k, t) * acc;
        }
        if (!p.D.empty()) y += p.D[d] * p.u[row + t];
        if (!p.z.empty()) {
          const double z = p.z[row + t];
          y *= z / (1 + std::exp(-z));
        }
        out[row + t] = y;
      }
    }
  return out;
}

void expect_close(const std::vector<double>& got, const std::vector<double>& ref, double tol) {
  ASSERT_EQ(got.size(), ref.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    diff += (got[i] - ref[i]) * (got[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  EXPECT_LT(std::sqrt(diff / norm), tol);
}

TEST(SelectiveScanCpu, MatchesClosedForm) {
  for (bool optional : {false, true})
    for (int64_t g : {1, 2})
      for (int64_t l : {1, 7, 33}) {
        Problem p = make(2, 4, l, 5, g, 100 + l, optional);
        std::vector<double> out(p.u.size());
        cpu::selective_scan_forward<double>(p.s, args(p), out.data(), nullptr);
        SCOPED_TRACE("l " + std::to_string(l) + " g " + std::to_string(g) + " optional " + std::to_string(optional));
        expect_close(out, closed_form(p), 1e-12);
      }
}

TEST(SelectiveScanCpu, DocumentBoundariesResetTheState) {
  Problem p = make(2, 3, 20, 4, 1, 7, true);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 20; ++t) p.doc.push_back(b == 0 ? (t < 6 ? 0 : t < 13 ? 1 : 2) : int32_t(t / 10));
  std::vector<double> out(p.u.size());
  cpu::selective_scan_forward<double>(p.s, args(p), out.data(), nullptr);
  expect_close(out, closed_form(p), 1e-12);
}

TEST(SelectiveScanCpu, FinalStateContinuesTheScan) {
  // Scanning [0, l) at once equals scanning [0, k) then [k, l) from the first final state.
  Problem whole = make(1, 3, 16, 4, 1, 11, true);
  std::vector<double> out(whole.u.size()), state(3 * 4);
  cpu::selective_scan_forward<double>(whole.s, args(whole), out.data(), state.data());
  auto part = [&](int64_t from, int64_t len, const std::vector<double>& init, std::vector<double>* final_state) {
    Problem p = whole;
    p.s.seq_len = len;
    auto slice = [&](const std::vector<double>& v, int64_t rows) {
      std::vector<double> r;
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t t = from; t < from + len; ++t) r.push_back(v[i * 16 + t]);
      return r;
    };
    p.u = slice(whole.u, 3);
    p.delta = slice(whole.delta, 3);
    p.z = slice(whole.z, 3);
    p.B = slice(whole.B, 4);
    p.C = slice(whole.C, 4);
    p.init = init;
    std::vector<double> o(3 * len);
    cpu::selective_scan_forward<double>(p.s, args(p), o.data(), final_state->data());
    return o;
  };
  std::vector<double> mid(12), end(12);
  std::vector<double> first = part(0, 9, whole.init, &mid);
  std::vector<double> second = part(9, 7, mid, &end);
  for (int64_t d = 0; d < 3; ++d)
    for (int64_t t = 0; t < 16; ++t) {
      const double got = t < 9 ? first[d * 9 + t] : second[d * 7 + t - 9];
      EXPECT_NEAR(got, out[d * 16 + t], 1e-12);
    }
  for (int i = 0; i < 12; ++i) EXPECT_NEAR(end[i], state[i], 1e-12);
}

TEST(SelectiveScanCpu, StepByStepEqualsParallelScan) {
  for (int64_t g : {1, 3}) {
    Problem p = make(2, 6, 12, 8, g, 21, true);
    std::vector<double> out(p.u.size()), final_state(2 * 6 * 8);
    cpu::selective_scan_forward<double>(p.s, args(p), out.data(), final_state.data());
    std::vector<double> state = p.init;
    ScanShape step = p.s;
    step.seq_len = 1;
    for (int64_t t = 0; t < 12; ++t) {
      std::vector<double> u, delta, z, B, C, o(12);
      for (int64_t i = 0; i < 12; ++i) {  // (b, d)
        u.push_back(p.u[i * 12 + t]);
        delta.push_back(p.delta[i * 12 + t]);
        z.push_back(p.z[i * 12 + t]);
      }
      for (int64_t i = 0; i < 2 * g * 8; ++i) {  // (b, g, n)
        B.push_back(p.B[i * 12 + t]);
        C.push_back(p.C[i * 12 + t]);
      }
      ScanArgs<double, double> a{u.data(), delta.data(), p.A.data(), B.data(), C.data(),
                                 p.D.data(), z.data(), p.bias.data(), nullptr, nullptr};
      cpu::selective_scan_step<double>(step, a, state.data(), o.data());
      for (int64_t i = 0; i < 12; ++i) EXPECT_NEAR(o[i], out[i * 12 + t], 1e-12) << "t " << t;
    }
    for (size_t i = 0; i < state.size(); ++i) EXPECT_NEAR(state[i], final_state[i], 1e-12);
  }
}

TEST(SelectiveScanCpu, FloatMatchesDouble) {
  Problem p = make(2, 5, 129, 16, 1, 31, true);
  std::vector<double> ref(p.u.size());
  cpu::selective_scan_forward<double>(p.s, args(p), ref.data(), nullptr);
  auto f = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
  std::vector<float> u = f(p.u), delta = f(p.delta), A = f(p.A), B = f(p.B), C = f(p.C), D = f(p.D),
                     z = f(p.z), bias = f(p.bias), init = f(p.init), out(p.u.size());
  ScanArgs<float, float> a{u.data(), delta.data(), A.data(), B.data(), C.data(), D.data(), z.data(),
                           bias.data(), init.data(), nullptr};
  cpu::selective_scan_forward<float>(p.s, a, out.data(), nullptr);
  EXPECT_TRUE(testing::close(out, f(ref), DType::f32, 16));
}

TEST(SelectiveScanCpu, RejectsBadShapes) {
  Problem p = make(1, 4, 3, 2, 1, 1, false);
  p.s.ngroups = 3;  // does not divide d
  std::vector<double> out(p.u.size());
  EXPECT_THROW(cpu::selective_scan_forward<double>(p.s, args(p), out.data(), nullptr), KernelError);
}

}  // namespace
}  // namespace ssmtrain::kernels
