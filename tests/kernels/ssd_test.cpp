// The CPU SSD references in double: sequential against chunked over lengths that are and are
// not multiples of the chunk, each p, n, g and optional input; sequential against an
// independent O(l^2) closed form; the decoding step against the parallel result.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/ssd.h"
#include "tests/support/compare.h"
#include "tests/support/reference.h"

namespace ssmtrain::kernels {
namespace {

using testing::random_values;

struct Options {
  bool initial_states = false;
  bool doc = false;
  bool D = false;
  bool D_has_head_dim = false;
  bool z = false;
  bool dt_bias = false;
  bool dt_limit = false;
};

struct Problem {
  SsdShape s;
  std::vector<double> x, dt, A, B, C, D, z, dt_bias, init;
  std::vector<int32_t> doc;
};

// Document boundaries: batch 0 at fixed places (around and on chunk starts of 64), batch 1
// every 37 tokens.
std::vector<int32_t> documents(int64_t b, int64_t l) {
  std::vector<int32_t> doc;
  const std::vector<int64_t> starts{3, 5, 63, 64, 100, 128, 129, 200};
  for (int64_t bi = 0; bi < b; ++bi) {
    int32_t id = 0;
    for (int64_t t = 0; t < l; ++t) {
      if (bi % 2 == 0) {
        for (int64_t st : starts) id += (st == t);
      } else {
        id = int32_t(t / 37);
      }
      doc.push_back(id);
    }
  }
  return doc;
}

Problem make(int64_t b, int64_t l, int64_t h, int64_t p, int64_t n, int64_t g, uint64_t seed, const Options& o) {
  Problem pr;
  pr.s.batch = b;
  pr.s.seq_len = l;
  pr.s.n_heads = h;
  pr.s.head_dim = p;
  pr.s.d_state = n;
  pr.s.ngroups = g;
  pr.s.chunk_size = 64;
  pr.s.dt_softplus = true;
  pr.s.D_has_head_dim = o.D_has_head_dim;
  if (o.dt_limit) {
    pr.s.dt_min = 0.2;  // softplus(N(-1, 0.5)) spreads over about 0.15 .. 0.6
    pr.s.dt_max = 0.45;
  }
  pr.x = random_values<double>(b * l * h * p, seed);
  pr.dt = random_values<double>(b * l * h, seed + 1, 0.5, -1.0);
  pr.A = random_values<double>(h, seed + 2, 0.5);
  for (double& a : pr.A) a = -std::exp(a);  // A = -exp(A_log)
  pr.B = random_values<double>(b * l * g * n, seed + 3);
  pr.C = random_values<double>(b * l * g * n, seed + 4);
  if (o.D) pr.D = random_values<double>(o.D_has_head_dim ? h * p : h, seed + 5);
  if (o.z) pr.z = random_values<double>(b * l * h * p, seed + 6);
  if (o.dt_bias) pr.dt_bias = random_values<double>(h, seed + 7, 0.1);
  if (o.initial_states) pr.init = random_values<double>(b * h * p * n, seed + 8);
  if (o.doc) pr.doc = documents(b, l);
  return pr;
}

const double* opt(const std::vector<double>& v) { return v.empty() ? nullptr : v.data(); }

SsdArgs<double, double> args(const Problem& pr) {
  return {pr.x.data(), pr.dt.data(), pr.A.data(), pr.B.data(), pr.C.data(), opt(pr.D), opt(pr.z),
          opt(pr.dt_bias), opt(pr.init), pr.doc.empty() ? nullptr : pr.doc.data()};
}

struct Result {
  std::vector<double> out, final_states;
};

template <typename Fn>
Result run(const Problem& pr, Fn forward) {
  const auto& s = pr.s;
  Result r{std::vector<double>(s.batch * s.seq_len * s.n_heads * s.head_dim),
           std::vector<double>(s.batch * s.n_heads * s.head_dim * s.d_state)};
  forward(s, args(pr), r.out.data(), r.final_states.data());
  return r;
}

// The closed form: y_t = sum_{s in t's document, s <= t} (C_t . B_s) exp(A sum_{s<r<=t} dt_r)
// dt_s x_s (+ the initial state decayed to t, in the first document), then D and z; the final
// state likewise. O(l^2 (p + n)) per head.
Result closed_form(const Problem& pr) {
  const auto& s = pr.s;
  const int64_t b_n = s.batch, l = s.seq_len, h = s.n_heads, p = s.head_dim, n = s.d_state, g = s.ngroups;
  Result r{std::vector<double>(b_n * l * h * p), std::vector<double>(b_n * h * p * n)};
  for (int64_t b = 0; b < b_n; ++b)
    for (int64_t hh = 0; hh < h; ++hh) {
      const int64_t gg = hh / (h / g);
      auto dt = [&](int64_t t) {
        double v = pr.dt[(b * l + t) * h + hh] + (pr.dt_bias.empty() ? 0.0 : pr.dt_bias[hh]);
        v = std::log1p(std::exp(v));
        if (s.has_dt_limit()) v = std::min(std::max(v, s.dt_min), s.dt_max);
        return v;
      };
      auto x = [&](int64_t t, int64_t pi) { return pr.x[((b * l + t) * h + hh) * p + pi]; };
      auto Bv = [&](int64_t t, int64_t k) { return pr.B[((b * l + t) * g + gg) * n + k]; };
      auto Cv = [&](int64_t t, int64_t k) { return pr.C[((b * l + t) * g + gg) * n + k]; };
      auto init = [&](int64_t pi, int64_t k) { return pr.init[((b * h + hh) * p + pi) * n + k]; };
      auto first_of = [&](int64_t t) {  // first token of t's document
        int64_t f = t;
        if (!pr.doc.empty())
          while (f > 0 && pr.doc[b * l + f - 1] == pr.doc[b * l + t]) --f;
        else
          f = 0;
        return f;
      };
      // The state after token t, element (pi, k), summed in closed form.
      auto state = [&](int64_t t, int64_t pi, int64_t k) {
        const int64_t first = first_of(t);
        double sum_dt = 0, acc = 0;  // sum of dt over (j, t]
        for (int64_t j = t; j >= first; --j) {
          acc += std::exp(pr.A[hh] * sum_dt) * dt(j) * x(j, pi) * Bv(j, k);
          sum_dt += dt(j);
        }
        if (!pr.init.empty() && first == 0) acc += std::exp(pr.A[hh] * sum_dt) * init(pi, k);
        return acc;
      };
      for (int64_t t = 0; t < l; ++t) {
        const int64_t first = first_of(t);
        for (int64_t pi = 0; pi < p; ++pi) {
          double y = 0, sum_dt = 0;
          for (int64_t j = t; j >= first; --j) {  // sum over tokens, C_t . B_j as one number
            double cb = 0;
            for (int64_t k = 0; k < n; ++k) cb += Cv(t, k) * Bv(j, k);
            y += cb * std::exp(pr.A[hh] * sum_dt) * dt(j) * x(j, pi);
            sum_dt += dt(j);
          }
          if (!pr.init.empty() && first == 0)
            for (int64_t k = 0; k < n; ++k) y += Cv(t, k) * std::exp(pr.A[hh] * sum_dt) * init(pi, k);
          if (!pr.D.empty()) y += (s.D_has_head_dim ? pr.D[hh * p + pi] : pr.D[hh]) * x(t, pi);
          if (!pr.z.empty()) {
            const double zv = pr.z[((b * l + t) * h + hh) * p + pi];
            y *= zv / (1 + std::exp(-zv));
          }
          r.out[((b * l + t) * h + hh) * p + pi] = y;
        }
      }
      if (l > 0)
        for (int64_t pi = 0; pi < p; ++pi)
          for (int64_t k = 0; k < n; ++k) r.final_states[((b * h + hh) * p + pi) * n + k] = state(l - 1, pi, k);
    }
  return r;
}

// ||got - ref|| / ||ref|| < tol.
::testing::AssertionResult close(const std::vector<double>& got, const std::vector<double>& ref, double tol) {
  if (got.size() != ref.size()) return ::testing::AssertionFailure() << "size mismatch";
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    diff += (got[i] - ref[i]) * (got[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  const double err = std::sqrt(diff / std::max(norm, 1e-300));
  if (err < tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "normalised error " << err << " >= " << tol;
}

std::string describe(const Problem& pr, const Options& o) {
  const auto& s = pr.s;
  return "l " + std::to_string(s.seq_len) + " p " + std::to_string(s.head_dim) + " n " + std::to_string(s.d_state) +
         " g " + std::to_string(s.ngroups) + " chunk " + std::to_string(s.chunk_size) + " init " +
         std::to_string(o.initial_states) + " doc " + std::to_string(o.doc) + " D " + std::to_string(o.D) +
         (o.D_has_head_dim ? "(h,p)" : "(h)") + " z " + std::to_string(o.z) + " bias " + std::to_string(o.dt_bias) +
         " clamp " + std::to_string(o.dt_limit);
}

// The options from the bits of i: each shape of the sweep gets all off, all on and a mix.
Options options_from_bits(int bits) {
  return {bool(bits & 1), bool(bits & 2), bool(bits & 4), bool(bits & 8), bool(bits & 16), bool(bits & 32),
          bool(bits & 64)};
}

TEST(SsdCpu, SequentialMatchesChunked) {
  int shape_index = 0;
  for (int64_t l : {1, 7, 64, 100, 257})
    for (int64_t p : {32, 64})
      for (int64_t n : {16, 32})
        for (int64_t g : {1, 2}) {
          ++shape_index;
          const int mixed = (shape_index * 37) % 127 + 1;  // not 0 or 127: a different mix per shape
          for (int bits : {0, 127, mixed}) {
            const Options o = options_from_bits(bits);
            const Problem pr = make(2, l, 4, p, n, g, 1000 + 10 * shape_index + bits, o);
            SCOPED_TRACE(describe(pr, o));
            const Result seq = run(pr, cpu::ssd_forward_sequential<double>);
            const Result chunked = run(pr, cpu::ssd_forward_chunked<double>);
            EXPECT_TRUE(close(chunked.out, seq.out, 1e-12));
            EXPECT_TRUE(close(chunked.final_states, seq.final_states, 1e-12));
          }
        }
}

TEST(SsdCpu, ChunkedAnyChunkSize) {
  const Options all = options_from_bits(127);
  for (int64_t chunk : {1, 5, 16, 128, 256, 300}) {
    Problem pr = make(2, 257, 4, 8, 4, 2, 77, all);
    pr.s.chunk_size = chunk;
    SCOPED_TRACE(describe(pr, all));
    const Result seq = run(pr, cpu::ssd_forward_sequential<double>);
    const Result chunked = run(pr, cpu::ssd_forward_chunked<double>);
    EXPECT_TRUE(close(chunked.out, seq.out, 1e-12));
    EXPECT_TRUE(close(chunked.final_states, seq.final_states, 1e-12));
  }
}

TEST(SsdCpu, SequentialMatchesClosedForm) {
  for (int bits : {0, 127, 1 + 4 + 16, 2 + 8 + 4 + 64, 32 + 2})
    for (int64_t g : {1, 2})
      for (int64_t l : {1, 7, 33, 70}) {
        const Options o = options_from_bits(bits);
        const Problem pr = make(2, l, 4, 3, 5, g, 300 + l + bits, o);
        SCOPED_TRACE(describe(pr, o));
        const Result seq = run(pr, cpu::ssd_forward_sequential<double>);
        const Result ref = closed_form(pr);
        EXPECT_TRUE(close(seq.out, ref.out, 1e-12));
        EXPECT_TRUE(close(seq.final_states, ref.final_states, 1e-12));
      }
}

TEST(SsdCpu, DocumentsEqualSeparateRuns) {
  // A packed row of three documents gives what three separate runs from zero give.
  Options o = options_from_bits(4 + 16 + 32);  // D, z, dt_bias
  Problem packed = make(1, 30, 2, 3, 4, 1, 5, o);
  packed.doc.assign(30, 0);
  for (int64_t t = 0; t < 30; ++t) packed.doc[t] = t < 11 ? 4 : t < 12 ? 9 : 2;
  const Result whole = run(packed, cpu::ssd_forward_chunked<double>);
  auto slice = [](const std::vector<double>& v, int64_t per_token, int64_t from, int64_t len) {
    return std::vector<double>(v.begin() + from * per_token, v.begin() + (from + len) * per_token);
  };
  for (auto [from, len] : {std::pair<int64_t, int64_t>{0, 11}, {11, 1}, {12, 18}}) {
    Problem part = packed;
    part.doc.clear();
    part.s.seq_len = len;
    part.x = slice(packed.x, 2 * 3, from, len);
    part.z = slice(packed.z, 2 * 3, from, len);
    part.dt = slice(packed.dt, 2, from, len);
    part.B = slice(packed.B, 4, from, len);
    part.C = slice(packed.C, 4, from, len);
    const Result alone = run(part, cpu::ssd_forward_sequential<double>);
    EXPECT_TRUE(close(alone.out, slice(whole.out, 2 * 3, from, len), 1e-12)) << "document at " << from;
  }
}

TEST(SsdCpu, StepByStepEqualsParallel) {
  for (int64_t g : {1, 2})
    for (bool d_headdim : {false, true}) {
      Options o = options_from_bits(1 + 4 + 16 + 32 + 64);  // init, D, z, dt_bias, clamp
      o.D_has_head_dim = d_headdim;
      const int64_t b = 2, l = 12, h = 4, p = 5, n = 3;
      const Problem pr = make(b, l, h, p, n, g, 21 + g, o);
      SCOPED_TRACE(describe(pr, o));
      const Result par = run(pr, cpu::ssd_forward_chunked<double>);
      std::vector<double> states = pr.init;  // (b, h, p, n)
      SsdShape step = pr.s;
      step.seq_len = 1;
      for (int64_t t = 0; t < l; ++t) {
        std::vector<double> x, z, dt, B, C, out(b * h * p);
        for (int64_t bi = 0; bi < b; ++bi) {
          const int64_t xo = (bi * l + t) * h * p, bo = (bi * l + t) * g * n;
          x.insert(x.end(), pr.x.begin() + xo, pr.x.begin() + xo + h * p);
          z.insert(z.end(), pr.z.begin() + xo, pr.z.begin() + xo + h * p);
          dt.insert(dt.end(), pr.dt.begin() + (bi * l + t) * h, pr.dt.begin() + (bi * l + t + 1) * h);
          B.insert(B.end(), pr.B.begin() + bo, pr.B.begin() + bo + g * n);
          C.insert(C.end(), pr.C.begin() + bo, pr.C.begin() + bo + g * n);
        }
        SsdArgs<double, double> a{x.data(), dt.data(), pr.A.data(), B.data(), C.data(), pr.D.data(),
                                  z.data(), pr.dt_bias.data(), nullptr, nullptr};
        cpu::ssd_step<double>(step, a, states.data(), out.data());
        for (int64_t bi = 0; bi < b; ++bi)
          for (int64_t i = 0; i < h * p; ++i)
            EXPECT_NEAR(out[bi * h * p + i], par.out[(bi * l + t) * h * p + i], 1e-12) << "t " << t;
      }
      EXPECT_TRUE(close(states, par.final_states, 1e-13));
    }
}

TEST(SsdCpu, FloatMatchesDouble) {
  const Options o = options_from_bits(127);
  const Problem pr = make(2, 257, 4, 32, 16, 2, 31, o);
  const Result ref = run(pr, cpu::ssd_forward_sequential<double>);
  auto f = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
  std::vector<float> x = f(pr.x), dt = f(pr.dt), A = f(pr.A), B = f(pr.B), C = f(pr.C), D = f(pr.D), z = f(pr.z),
                     bias = f(pr.dt_bias), init = f(pr.init);
  SsdArgs<float, float> a{x.data(), dt.data(), A.data(), B.data(), C.data(), D.data(), z.data(),
                          bias.data(), init.data(), pr.doc.data()};
  for (auto forward : {cpu::ssd_forward_sequential<float>, cpu::ssd_forward_chunked<float>}) {
    std::vector<float> out(pr.x.size()), final_states(pr.init.size());
    forward(pr.s, a, out.data(), final_states.data());
    EXPECT_TRUE(testing::close(out, f(ref.out), DType::f32, 64));
    EXPECT_TRUE(testing::close(final_states, f(ref.final_states), DType::f32, 64));
  }
}

TEST(SsdCpu, BackwardIsDeterministic) {
  const Options o = options_from_bits(127);
  const Problem pr = make(2, 40, 4, 8, 4, 2, 41, o);
  const auto& s = pr.s;
  const std::vector<double> dout = random_values<double>(pr.x.size(), 42);
  const std::vector<double> dfinal = random_values<double>(pr.init.size(), 43);
  auto backward = [&]() {
    std::vector<std::vector<double>> g{
        std::vector<double>(pr.x.size()),  std::vector<double>(pr.dt.size()), std::vector<double>(pr.A.size()),
        std::vector<double>(pr.B.size()),  std::vector<double>(pr.C.size()),  std::vector<double>(pr.D.size()),
        std::vector<double>(pr.z.size()),  std::vector<double>(pr.dt_bias.size()),
        std::vector<double>(pr.init.size())};
    SsdGrads<double, double> gr{dout.data(), dfinal.data(), g[0].data(), g[1].data(), g[2].data(), g[3].data(),
                                g[4].data(), g[5].data(), g[6].data(), g[7].data(), g[8].data()};
    cpu::ssd_backward<double>(s, args(pr), gr);
    return g;
  };
  const auto first = backward();
  const auto second = backward();
  for (size_t i = 0; i < first.size(); ++i) EXPECT_EQ(first[i], second[i]) << "gradient " << i;
}

TEST(SsdCpu, RejectsBadShapes) {
  Problem pr = make(1, 4, 4, 2, 2, 1, 1, {});
  pr.s.ngroups = 3;  // does not divide h
  EXPECT_THROW(run(pr, cpu::ssd_forward_sequential<double>), KernelError);
  pr.s.ngroups = 1;
  pr.s.chunk_size = 0;
  EXPECT_THROW(run(pr, cpu::ssd_forward_chunked<double>), KernelError);
}

}  // namespace
}  // namespace ssmtrain::kernels
