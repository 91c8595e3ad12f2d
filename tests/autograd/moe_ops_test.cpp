// Finite-difference gradients (f64, CPU) of the whole MoE op: out, aux_loss and z_loss together,
// with respect to x, the router and every expert weight; top-k 1, 2 and all experts, with and
// without renormalisation (random inputs: no top-k ties within the perturbation). Plus the
// forward against a dense per-token formula, the counts output and clear shape errors.
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "autograd/moe_ops.h"
#include "autograd/ops.h"
#include "tests/support/gradcheck.h"

namespace ssmtrain {
namespace {

using testing::gradcheck;
using testing::random_f64;
using V = std::vector<Tensor>;

V make_inputs(int64_t t, int64_t d, int64_t e, int64_t f, uint64_t seed) {
  return {random_f64({t, d}, seed), random_f64({e, d}, seed + 1, 0.8), random_f64({e, f, d}, seed + 2, 0.5),
          random_f64({e, f, d}, seed + 3, 0.5), random_f64({e, d, f}, seed + 4, 0.5)};
}

struct Case {
  int64_t t, d, e, f, k;
  bool normalize;
};

class MoeGrad : public ::testing::TestWithParam<Case> {};

TEST_P(MoeGrad, AllInputsThroughAllOutputs) {
  const Case c = GetParam();
  const V inputs = make_inputs(c.t, c.d, c.e, c.f, 100 + c.e * 10 + c.k);
  EXPECT_TRUE(gradcheck([&](const V& x) {
    MoeOutputs o = moe_swiglu(x[0], x[1], x[2], x[3], x[4], MoeOptions{c.k, c.normalize});
    return concat({reshape(o.out, {-1}), reshape(mul(o.aux_loss, 0.7), {1}), reshape(mul(o.z_loss, 0.3), {1})}, 0);
  }, inputs));
}

INSTANTIATE_TEST_SUITE_P(Shapes, MoeGrad,
                         ::testing::Values(Case{7, 5, 4, 3, 2, false}, Case{7, 5, 4, 3, 2, true},
                                           Case{6, 4, 3, 5, 1, false}, Case{5, 3, 4, 2, 4, true},
                                           Case{9, 4, 8, 3, 3, false}));

TEST(MoeOp, ForwardMatchesADenseFormula) {
  const int64_t t = 6, d = 4, e = 5, f = 3, k = 2;
  const V in = make_inputs(t, d, e, f, 7);
  const MoeOutputs o = moe_swiglu(in[0], in[1], in[2], in[3], in[4], MoeOptions{k, false});
  const auto x = in[0].values<double>(), wr = in[1].values<double>(), wg = in[2].values<double>(),
             wu = in[3].values<double>(), wd = in[4].values<double>(), out = o.out.values<double>();
  const auto counts = o.expert_counts.values<int64_t>();
  std::vector<int64_t> expect_counts(e, 0);
  for (int64_t tok = 0; tok < t; ++tok) {
    std::vector<double> logit(e), p(e);
    double max_logit = -1e300, sum = 0;
    for (int64_t g = 0; g < e; ++g) {
      for (int64_t j = 0; j < d; ++j) logit[g] += wr[g * d + j] * x[tok * d + j];
      max_logit = std::max(max_logit, logit[g]);
    }
    for (int64_t g = 0; g < e; ++g) sum += std::exp(logit[g] - max_logit);
    for (int64_t g = 0; g < e; ++g) p[g] = std::exp(logit[g] - max_logit) / sum;
    std::vector<double> y(d, 0.0);
    std::vector<bool> taken(e, false);
    for (int64_t slot = 0; slot < k; ++slot) {
      int64_t best = -1;
      for (int64_t g = 0; g < e; ++g)
        if (!taken[g] && (best < 0 || logit[g] > logit[best])) best = g;
      taken[best] = true;
      ++expect_counts[best];
      for (int64_t j = 0; j < d; ++j) {
        double acc = 0;
        for (int64_t i = 0; i < f; ++i) {
          double gate = 0, up = 0;
          for (int64_t m = 0; m < d; ++m) {
            gate += wg[(best * f + i) * d + m] * x[tok * d + m];
            up += wu[(best * f + i) * d + m] * x[tok * d + m];
          }
          acc += wd[(best * d + j) * f + i] * gate / (1 + std::exp(-gate)) * up;
        }
        y[j] += p[best] * acc;
      }
    }
    for (int64_t j = 0; j < d; ++j) EXPECT_NEAR(out[tok * d + j], y[j], 1e-12) << tok << ", " << j;
  }
  EXPECT_EQ(counts, expect_counts);
  EXPECT_EQ(o.expert_counts.dtype(), DType::i32);
  EXPECT_EQ(o.aux_loss.shape(), Shape{});
  EXPECT_EQ(o.z_loss.shape(), Shape{});
}

TEST(MoeOp, BadShapesAreClearErrors) {
  const V in = make_inputs(4, 3, 4, 2, 1);
  try {
    moe_swiglu(in[0], in[1], in[2], in[3], random_f64({4, 2, 3}, 9), MoeOptions{});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("w_down must be [4, 3, 2]"), std::string::npos) << e.what();
  }
  try {
    moe_swiglu(in[0], in[1], in[2], in[3], in[4], MoeOptions{5, false});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("top_k"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ssmtrain
