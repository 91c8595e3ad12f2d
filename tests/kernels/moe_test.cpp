// The CPU mixture-of-experts pieces against naive formulas written here: softmax + top-k with
// ties (the lower expert index wins) and renormalisation, the load-balancing and z losses,
// dispatch (counts, offsets, stable expert-contiguous order, the permutation round trip), the
// weighted combine, and the expert SwiGLU against a per-token loop; plus shape errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/moe.h"
#include "kernels/philox.h"

namespace ssmtrain::kernels {
namespace {

std::vector<double> rnd(int64_t n, uint64_t seed, double std = 1.0) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = philox_normal_at(seed, 0, i, 0.0f, float(std));
  return v;
}

struct Router {
  std::vector<double> probs, lse, weight;
  std::vector<int32_t> index;
};

Router route(const MoeShape& s, const std::vector<double>& logits) {
  Router r;
  r.probs.resize(s.tokens * s.experts);
  r.lse.resize(s.tokens);
  r.index.resize(s.assignments());
  r.weight.resize(s.assignments());
  cpu::moe_router_forward<double>(s, logits.data(), r.probs.data(), r.lse.data(), r.index.data(), r.weight.data());
  return r;
}

TEST(MoeRouter, SoftmaxTopKWithTiesAndRenormalisation) {
  const MoeShape base{3, 6, 3, false};
  // Token 0: ties between experts 1, 3 and 4 (value 2) above expert 5; token 1: all equal;
  // token 2: distinct values.
  const std::vector<double> logits{0.5, 2.0, -1.0, 2.0, 2.0, 1.0,  //
                                   0.3, 0.3, 0.3, 0.3, 0.3, 0.3,   //
                                   -0.2, 1.5, 0.7, -3.0, 2.5, 0.1};
  for (bool normalize : {false, true}) {
    MoeShape s = base;
    s.normalize_topk = normalize;
    const Router r = route(s, logits);
    const std::vector<int32_t> expected{1, 3, 4, 0, 1, 2, 4, 1, 2};
    EXPECT_EQ(r.index, expected) << "normalize " << normalize;
    for (int64_t t = 0; t < s.tokens; ++t) {
      const double* row = logits.data() + t * s.experts;
      double max_logit = *std::max_element(row, row + s.experts), sum = 0;
      for (int64_t i = 0; i < s.experts; ++i) sum += std::exp(row[i] - max_logit);
      EXPECT_NEAR(r.lse[t], max_logit + std::log(sum), 1e-12);
      double chosen_sum = 0;
      for (int64_t slot = 0; slot < s.top_k; ++slot) chosen_sum += std::exp(row[r.index[t * 3 + slot]] - max_logit) / sum;
      for (int64_t i = 0; i < s.experts; ++i) EXPECT_NEAR(r.probs[t * 6 + i], std::exp(row[i] - max_logit) / sum, 1e-12);
      for (int64_t slot = 0; slot < s.top_k; ++slot) {
        const double p = std::exp(row[r.index[t * 3 + slot]] - max_logit) / sum;
        EXPECT_NEAR(r.weight[t * 3 + slot], normalize ? p / chosen_sum : p, 1e-12);
      }
    }
  }
}

TEST(MoeRouter, TopKMatchesAStableSortOnRandomLogits) {
  const MoeShape s{37, 64, 8, false};
  std::vector<double> logits = rnd(s.tokens * s.experts, 7);
  for (double& v : logits) v = std::round(v * 4) / 4;  // many exact ties
  const Router r = route(s, logits);
  for (int64_t t = 0; t < s.tokens; ++t) {
    std::vector<int32_t> order(s.experts);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return logits[t * s.experts + a] > logits[t * s.experts + b]; });
    for (int64_t slot = 0; slot < s.top_k; ++slot) EXPECT_EQ(r.index[t * s.top_k + slot], order[slot]) << t;
  }
}

TEST(MoeRouter, LossesMatchTheirFormulas) {
  const MoeShape s{11, 5, 2, false};
  const std::vector<double> logits = rnd(s.tokens * s.experts, 3, 2.0);
  const Router r = route(s, logits);
  std::vector<int32_t> counts(s.experts), offsets(s.experts + 1), row_of(s.assignments()), assignment_of(s.assignments());
  cpu::moe_dispatch(s, r.index.data(), counts.data(), offsets.data(), row_of.data(), assignment_of.data());
  std::vector<double> mean_probs(s.experts);
  double aux = 0, z = 0;
  cpu::moe_router_losses<double>(s, r.probs.data(), r.lse.data(), counts.data(), mean_probs.data(), &aux, &z);
  double expect_aux = 0, expect_z = 0;
  for (int64_t i = 0; i < s.experts; ++i) {
    int64_t count = 0;
    double p = 0;
    for (int64_t a = 0; a < s.assignments(); ++a) count += r.index[a] == i;
    for (int64_t t = 0; t < s.tokens; ++t) p += r.probs[t * s.experts + i] / double(s.tokens);
    EXPECT_EQ(counts[i], count);
    EXPECT_NEAR(mean_probs[i], p, 1e-12);
    expect_aux += double(count) / double(s.assignments()) * p;
  }
  expect_aux *= double(s.experts);
  for (int64_t t = 0; t < s.tokens; ++t) {
    double sum = 0;
    for (int64_t i = 0; i < s.experts; ++i) sum += std::exp(logits[t * s.experts + i]);
    expect_z += std::log(sum) * std::log(sum) / double(s.tokens);
  }
  EXPECT_NEAR(aux, expect_aux, 1e-12);
  EXPECT_NEAR(z, expect_z, 1e-12);
  // A perfectly balanced router gives aux = 1.
  const MoeShape u{8, 4, 1, false};
  std::vector<double> uniform_probs(32, 0.25), lse(8, 0.0), means(4);
  const std::vector<int32_t> even{2, 2, 2, 2};
  cpu::moe_router_losses<double>(u, uniform_probs.data(), lse.data(), even.data(), means.data(), &aux, &z);
  EXPECT_NEAR(aux, 1.0, 1e-15);
  EXPECT_EQ(z, 0.0);
}

TEST(MoeDispatch, StableExpertContiguousOrderAndRoundTrip) {
  const MoeShape s{9, 5, 2, false};
  // Expert 2 receives nothing; expert 4 appears in both slots of different tokens.
  const std::vector<int32_t> index{4, 0, 1, 4, 0, 3, 3, 4, 1, 0, 4, 1, 0, 1, 3, 0, 4, 3};
  std::vector<int32_t> counts(5), offsets(6), row_of(18), assignment_of(18);
  cpu::moe_dispatch(s, index.data(), counts.data(), offsets.data(), row_of.data(), assignment_of.data());
  EXPECT_EQ(counts, (std::vector<int32_t>{5, 4, 0, 4, 5}));
  EXPECT_EQ(offsets, (std::vector<int32_t>{0, 5, 9, 9, 13, 18}));
  // Rows hold the assignments sorted by (expert, assignment index).
  std::vector<int32_t> expected(18);
  std::iota(expected.begin(), expected.end(), 0);
  std::stable_sort(expected.begin(), expected.end(), [&](int32_t a, int32_t b) { return index[a] < index[b]; });
  EXPECT_EQ(assignment_of, expected);
  for (int32_t a = 0; a < 18; ++a) EXPECT_EQ(assignment_of[row_of[a]], a);

  // permute then combine with weights w gives sum_slot w * x; permute_backward sums the k rows.
  const int64_t d = 3;
  const std::vector<double> x = rnd(s.tokens * d, 5), w = rnd(s.assignments(), 6);
  std::vector<double> xp(s.assignments() * d), out(s.tokens * d), back(s.tokens * d);
  cpu::moe_permute<double>(s, d, x.data(), assignment_of.data(), xp.data());
  for (int64_t row = 0; row < s.assignments(); ++row)
    for (int64_t j = 0; j < d; ++j) EXPECT_EQ(xp[row * d + j], x[(assignment_of[row] / 2) * d + j]);
  cpu::moe_unpermute<double>(s, d, xp.data(), row_of.data(), w.data(), out.data());
  cpu::moe_permute_backward<double>(s, d, xp.data(), row_of.data(), back.data());
  for (int64_t t = 0; t < s.tokens; ++t)
    for (int64_t j = 0; j < d; ++j) {
      EXPECT_NEAR(out[t * d + j], (w[2 * t] + w[2 * t + 1]) * x[t * d + j], 1e-12);
      EXPECT_NEAR(back[t * d + j], 2 * x[t * d + j], 1e-12);
    }
  // unpermute backward: dyp = w * dout, dweight = <dout, yp>.
  const std::vector<double> dout = rnd(s.tokens * d, 8);
  std::vector<double> dyp(s.assignments() * d), dweight(s.assignments());
  cpu::moe_unpermute_backward<double>(s, d, dout.data(), xp.data(), row_of.data(), w.data(), dyp.data(), dweight.data());
  for (int64_t a = 0; a < s.assignments(); ++a) {
    double dot = 0;
    for (int64_t j = 0; j < d; ++j) {
      dot += dout[(a / 2) * d + j] * x[(a / 2) * d + j];
      EXPECT_NEAR(dyp[row_of[a] * d + j], w[a] * dout[(a / 2) * d + j], 1e-12);
    }
    EXPECT_NEAR(dweight[a], dot, 1e-12);
  }
}

TEST(MoeExperts, ForwardMatchesAPerRowLoop) {
  const MoeExpertShape es{4, 5, 3};
  const std::vector<int64_t> offsets{0, 3, 3, 7, 8};  // expert 1 has no rows
  const int64_t rows = 8, d = 5, f = 3;
  const std::vector<double> xp = rnd(rows * d, 1), wg = rnd(4 * f * d, 2), wu = rnd(4 * f * d, 3),
                            wd = rnd(4 * d * f, 4);
  std::vector<double> gate_up(rows * 2 * f), act(rows * f), yp(rows * d);
  cpu::moe_experts_forward<double>(es, offsets.data(), xp.data(), wg.data(), wu.data(), wd.data(), gate_up.data(),
                                   act.data(), yp.data());
  for (int64_t g = 0; g < 4; ++g)
    for (int64_t r = offsets[g]; r < offsets[g + 1]; ++r) {
      double h[3];
      for (int64_t i = 0; i < f; ++i) {
        double gate = 0, up = 0;
        for (int64_t j = 0; j < d; ++j) {
          gate += wg[(g * f + i) * d + j] * xp[r * d + j];
          up += wu[(g * f + i) * d + j] * xp[r * d + j];
        }
        h[i] = gate / (1 + std::exp(-gate)) * up;
      }
      for (int64_t j = 0; j < d; ++j) {
        double y = 0;
        for (int64_t i = 0; i < f; ++i) y += wd[(g * d + j) * f + i] * h[i];
        EXPECT_NEAR(yp[r * d + j], y, 1e-12) << "expert " << g << " row " << r;
      }
    }
  // The backward of an expert without rows gives zero weight gradients.
  std::vector<double> dyp = rnd(rows * d, 9), dgate_up(rows * 2 * f), dxp(rows * d);
  std::vector<double> dwg(4 * f * d, 7.0), dwu(4 * f * d, 7.0), dwd(4 * d * f, 7.0);
  cpu::moe_experts_backward<double>(es, offsets.data(), xp.data(), wg.data(), wu.data(), wd.data(), gate_up.data(),
                                    dyp.data(), act.data(), dgate_up.data(), dxp.data(), dwg.data(), dwu.data(),
                                    dwd.data());
  for (int64_t i = 0; i < f * d; ++i) {
    EXPECT_EQ(dwg[f * d + i], 0.0);
    EXPECT_EQ(dwu[f * d + i], 0.0);
    EXPECT_EQ(dwd[d * f + i], 0.0);
  }
}

TEST(MoeShapeCheck, BadSizesAreClearErrors) {
  std::vector<double> logits(4 * 65), probs(4 * 65), lse(4), w(4 * 9);
  std::vector<int32_t> index(4 * 9);
  try {
    cpu::moe_router_forward<double>({4, 65, 2, false}, logits.data(), probs.data(), lse.data(), index.data(), w.data());
    FAIL() << "65 experts accepted";
  } catch (const KernelError& e) {
    EXPECT_NE(std::string(e.what()).find("experts must be in [1, 64], got 65"), std::string::npos) << e.what();
  }
  try {
    cpu::moe_router_forward<double>({4, 4, 5, false}, logits.data(), probs.data(), lse.data(), index.data(), w.data());
    FAIL() << "top_k 5 of 4 experts accepted";
  } catch (const KernelError& e) {
    EXPECT_NE(std::string(e.what()).find("top_k must be in"), std::string::npos) << e.what();
  }
  std::vector<int32_t> bad{0, 7}, counts(4), offsets(5), rows(2), back(2);
  EXPECT_THROW(cpu::moe_dispatch({2, 4, 1, false}, bad.data(), counts.data(), offsets.data(), rows.data(), back.data()),
               KernelError);
}

}  // namespace
}  // namespace ssmtrain::kernels
