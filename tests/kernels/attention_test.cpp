// The CPU attention reference (kernels/attention.h) against a naive f64 formula written here
// (full score matrix, explicit mask, exact softmax; the backward by the chain rule through the
// softmax Jacobian), over MHA and GQA, documents, odd head dims and lengths, l = 1; and the
// decode step against the parallel forward, token by token.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/attention.h"
#include "tests/support/reference.h"

namespace ssmtrain::kernels {
namespace {

using testing::matches;
using testing::random_values;

struct Naive {
  std::vector<double> out, lse, dq, dk, dv;
};

// The formula, one (b, head) at a time, with every score and probability materialised.
Naive naive(const AttentionShape& s, const std::vector<double>& q, const std::vector<double>& k,
            const std::vector<double>& v, const std::vector<int32_t>& doc, const std::vector<double>& dout) {
  const int64_t b = s.batch, l = s.seq_len, h = s.n_heads, hk = s.n_kv_heads, dh = s.head_dim, grp = h / hk;
  const double scale = s.scale != 0 ? s.scale : 1.0 / std::sqrt(double(dh));
  Naive r;
  r.out.assign(q.size(), 0);
  r.dq.assign(q.size(), 0);
  r.dk.assign(k.size(), 0);
  r.dv.assign(v.size(), 0);
  r.lse.assign(size_t(b * h * l), 0);
  auto qi = [&](int64_t bi, int64_t t, int64_t hh, int64_t e) { return ((bi * l + t) * h + hh) * dh + e; };
  auto ki = [&](int64_t bi, int64_t t, int64_t g, int64_t e) { return ((bi * l + t) * hk + g) * dh + e; };
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t hh = 0; hh < h; ++hh) {
      const int64_t g = hh / grp;
      std::vector<double> P(size_t(l * l), 0.0);  // (l, l)
      for (int64_t i = 0; i < l; ++i) {
        std::vector<double> sc(size_t(l), -std::numeric_limits<double>::infinity());
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < l; ++j) {
          const bool allowed = j <= i && (doc.empty() || doc[size_t(bi * l + i)] == doc[size_t(bi * l + j)]);
          if (!allowed) continue;
          double acc = 0;
          for (int64_t e = 0; e < dh; ++e) acc += q[size_t(qi(bi, i, hh, e))] * k[size_t(ki(bi, j, g, e))];
          sc[size_t(j)] = scale * acc;
          mx = std::max(mx, sc[size_t(j)]);
        }
        double z = 0;
        for (int64_t j = 0; j < l; ++j) z += std::exp(sc[size_t(j)] - mx);
        r.lse[size_t((bi * h + hh) * l + i)] = mx + std::log(z);
        for (int64_t j = 0; j < l; ++j) P[size_t(i * l + j)] = std::exp(sc[size_t(j)] - mx) / z;
        for (int64_t e = 0; e < dh; ++e) {
          double acc = 0;
          for (int64_t j = 0; j < l; ++j) acc += P[size_t(i * l + j)] * v[size_t(ki(bi, j, g, e))];
          r.out[size_t(qi(bi, i, hh, e))] = acc;
        }
      }
      if (dout.empty()) continue;
      // dP = dO V^T; dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik); dQ = scale dS K; dK = scale dS^T Q; dV = P^T dO
      for (int64_t i = 0; i < l; ++i) {
        std::vector<double> dP(size_t(l), 0.0);
        double row = 0;
        for (int64_t j = 0; j < l; ++j) {
          for (int64_t e = 0; e < dh; ++e) dP[size_t(j)] += dout[size_t(qi(bi, i, hh, e))] * v[size_t(ki(bi, j, g, e))];
          row += P[size_t(i * l + j)] * dP[size_t(j)];
        }
        for (int64_t j = 0; j < l; ++j) {
          const double p = P[size_t(i * l + j)], dS = p * (dP[size_t(j)] - row);
          for (int64_t e = 0; e < dh; ++e) {
            r.dq[size_t(qi(bi, i, hh, e))] += scale * dS * k[size_t(ki(bi, j, g, e))];
            r.dk[size_t(ki(bi, j, g, e))] += scale * dS * q[size_t(qi(bi, i, hh, e))];
            r.dv[size_t(ki(bi, j, g, e))] += p * dout[size_t(qi(bi, i, hh, e))];
          }
        }
      }
    }
  return r;
}

// Documents: batch 0 switches at tokens 1, 4 and 9; batch 1 every 5 tokens.
std::vector<int32_t> documents(int64_t b, int64_t l) {
  std::vector<int32_t> doc;
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t t = 0; t < l; ++t)
      doc.push_back(bi % 2 == 0 ? int32_t((t >= 1) + (t >= 4) + (t >= 9)) : int32_t(t / 5));
  return doc;
}

struct Case {
  int64_t b, l, h, hk, dh;
  bool docs;
  double scale;
};

template <typename T>
void check_case(const Case& c) {
  AttentionShape s{c.b, c.l, c.h, c.hk, c.dh, c.scale};
  const int64_t nq = c.b * c.l * c.h * c.dh, nk = c.b * c.l * c.hk * c.dh;
  const auto q = random_values<double>(nq, 11), k = random_values<double>(nk, 12), v = random_values<double>(nk, 13),
             dout = random_values<double>(nq, 14);
  const std::vector<int32_t> doc = c.docs ? documents(c.b, c.l) : std::vector<int32_t>{};
  const Naive ref = naive(s, q, k, v, doc, dout);

  auto cast = [](const std::vector<double>& x) { return std::vector<T>(x.begin(), x.end()); };
  const std::vector<T> qt = cast(q), kt = cast(k), vt = cast(v), dot = cast(dout);
  std::vector<T> out(static_cast<size_t>(nq)), lse(static_cast<size_t>(c.b * c.h * c.l)), dq(static_cast<size_t>(nq)),
      dk(static_cast<size_t>(nk)), dv(static_cast<size_t>(nk));
  const int32_t* docp = c.docs ? doc.data() : nullptr;
  cpu::attention_forward<T>(s, qt.data(), kt.data(), vt.data(), docp, out.data(), lse.data());
  // f32: the inputs hold rounded values, so the reference sees different data; allow for it.
  const double tol = std::is_same_v<T, float> ? 20.0 : 10.0;
  EXPECT_TRUE(matches(out, ref.out, tol)) << "out";
  EXPECT_TRUE(matches(lse, ref.lse, tol)) << "lse";
  cpu::attention_backward<T>(s, qt.data(), kt.data(), vt.data(), docp, out.data(), lse.data(), dot.data(), dq.data(),
                             dk.data(), dv.data());
  EXPECT_TRUE(matches(dq, ref.dq, 10 * tol, 1e-2)) << "dq";
  EXPECT_TRUE(matches(dk, ref.dk, 10 * tol, 1e-2)) << "dk";
  EXPECT_TRUE(matches(dv, ref.dv, 10 * tol, 1e-2)) << "dv";
}

class AttentionCpu : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionCpu, DoubleMatchesFormula) { check_case<double>(GetParam()); }
TEST_P(AttentionCpu, FloatMatchesFormula) { check_case<float>(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionCpu,
                         ::testing::Values(Case{2, 13, 4, 4, 8, false, 0}, Case{2, 13, 4, 2, 8, false, 0},
                                           Case{1, 17, 6, 2, 5, false, 0.3}, Case{2, 16, 4, 1, 7, true, 0},
                                           Case{3, 12, 2, 2, 3, true, 0}, Case{2, 1, 3, 1, 4, false, 0},
                                           Case{2, 1, 2, 2, 4, true, 0}));

// A token never sees a later key or another document: changing them leaves its output alone.
TEST(AttentionCpu, MasksHideFutureAndOtherDocuments) {
  AttentionShape s{1, 10, 2, 1, 4, 0};
  auto q = random_values<double>(10 * 2 * 4, 1), k = random_values<double>(10 * 4, 2), v = random_values<double>(10 * 4, 3);
  const std::vector<int32_t> doc{0, 0, 0, 1, 1, 1, 1, 2, 2, 2};
  std::vector<double> out1(q.size()), out2(q.size()), lse(20);
  cpu::attention_forward<double>(s, q.data(), k.data(), v.data(), doc.data(), out1.data(), lse.data());
  // Perturb keys and values 0..2 (document 0) and 7..9 (later, other document).
  for (int64_t t : {0, 1, 2, 7, 8, 9})
    for (int64_t e = 0; e < 4; ++e) {
      k[size_t(t * 4 + e)] += 1.5;
      v[size_t(t * 4 + e)] -= 2.0;
    }
  cpu::attention_forward<double>(s, q.data(), k.data(), v.data(), doc.data(), out2.data(), lse.data());
  for (int64_t t = 0; t < 10; ++t)
    for (int64_t e = 0; e < 8; ++e) {
      const bool unchanged = t >= 3 && t <= 6;  // document 1 saw none of the perturbed tokens
      if (unchanged) EXPECT_EQ(out1[size_t(t * 8 + e)], out2[size_t(t * 8 + e)]) << "token " << t;
      else EXPECT_NE(out1[size_t(t * 8 + e)], out2[size_t(t * 8 + e)]) << "token " << t;
    }
}

// Decoding token by token over a cache equals the parallel forward's rows.
TEST(AttentionCpu, DecodeMatchesParallelForward) {
  const int64_t b = 2, l = 9, h = 4, hk = 2, dh = 6, cap = 12;
  AttentionShape s{b, l, h, hk, dh, 0};
  const auto q = random_values<double>(b * l * h * dh, 5), k = random_values<double>(b * l * hk * dh, 6),
             v = random_values<double>(b * l * hk * dh, 7);
  std::vector<double> out(q.size()), lse(static_cast<size_t>(b * h * l));
  cpu::attention_forward<double>(s, q.data(), k.data(), v.data(), nullptr, out.data(), lse.data());
  std::vector<double> kc(size_t(b * cap * hk * dh), 0.0), vc(kc.size(), 0.0);
  AttentionShape ds{b, cap, h, hk, dh, 0};
  for (int64_t t = 0; t < l; ++t) {
    std::vector<double> qt(static_cast<size_t>(b * h * dh)), ot(qt.size());
    for (int64_t bi = 0; bi < b; ++bi) {
      for (int64_t x = 0; x < hk * dh; ++x) {
        kc[size_t((bi * cap + t) * hk * dh + x)] = k[size_t((bi * l + t) * hk * dh + x)];
        vc[size_t((bi * cap + t) * hk * dh + x)] = v[size_t((bi * l + t) * hk * dh + x)];
      }
      for (int64_t x = 0; x < h * dh; ++x) qt[size_t(bi * h * dh + x)] = q[size_t((bi * l + t) * h * dh + x)];
    }
    const std::vector<int32_t> lengths(size_t(b), int32_t(t + 1));
    cpu::attention_decode<double>(ds, qt.data(), kc.data(), vc.data(), lengths.data(), ot.data());
    std::vector<double> want(qt.size());
    for (int64_t bi = 0; bi < b; ++bi)
      for (int64_t x = 0; x < h * dh; ++x) want[size_t(bi * h * dh + x)] = out[size_t((bi * l + t) * h * dh + x)];
    EXPECT_TRUE(matches(ot, want, 10.0)) << "token " << t;
  }
}

TEST(AttentionCpu, BadShapesAreErrors) {
  std::vector<float> x(64), out(64), lse(64);
  AttentionShape s{1, 4, 3, 2, 4, 0};  // 2 kv heads do not divide 3
  EXPECT_THROW(cpu::attention_forward<float>(s, x.data(), x.data(), x.data(), nullptr, out.data(), lse.data()),
               KernelError);
  AttentionShape d{1, 4, 2, 1, 4, 0};
  const std::vector<int32_t> bad_len{5};
  EXPECT_THROW(cpu::attention_decode<float>(d, x.data(), x.data(), x.data(), bad_len.data(), out.data()), KernelError);
}

}  // namespace
}  // namespace ssmtrain::kernels
