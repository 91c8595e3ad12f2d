// Finite-difference gradients (f64, CPU) of the SSD node, with every optional input, groups,
// document boundaries, D as (h) and (h, p), the dt clamp and the final states as a second
// output.
#include <stdexcept>
#include <gtest/gtest.h>

#include "autograd/ops.h"
#include "autograd/ssd_ops.h"
#include "tests/support/gradcheck.h"

namespace ssmtrain {
namespace {

using testing::gradcheck;
using testing::random_f64;
using V = std::vector<Tensor>;

constexpr int64_t b = 2, l = 9, h = 4, p = 3, n = 2, g = 2;

Tensor documents() {
  return Tensor::from_vector(std::vector<int64_t>{0, 0, 0, 1, 1, 1, 1, 2, 2, 5, 5, 5, 5, 5, 5, 5, 6, 6}, {b, l},
                             DType::i32);
}

// x, dt, A, B, C, D, z, dt_bias, initial_states.
V all_inputs(bool D_has_head_dim) {
  return {random_f64({b, l, h, p}, 1),  random_f64({b, l, h}, 2, 0.5, -0.5), random_f64({h}, 3, 0.3, -0.8),
          random_f64({b, l, g, n}, 4),  random_f64({b, l, g, n}, 5),
          D_has_head_dim ? random_f64({h, p}, 6) : random_f64({h}, 6),
          random_f64({b, l, h, p}, 7),  random_f64({h}, 8, 0.1),                random_f64({b, h, p, n}, 9)};
}

TEST(SsdGrad, AllInputsWithFinalStates) {
  for (bool D_has_head_dim : {false, true})
    for (bool with_doc : {false, true}) {
      EXPECT_TRUE(gradcheck([&](const V& x) {
        SsdInputs in{x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], with_doc ? documents() : Tensor()};
        SsdOutputs out = ssd(in, true);
        // Both outputs feed the loss: out and the final states.
        return concat({reshape(out.out, {-1}), reshape(mul(out.final_states, 0.7), {-1})}, 0);
      }, all_inputs(D_has_head_dim))) << "D (h, p) " << D_has_head_dim << " doc " << with_doc;
    }
}

TEST(SsdGrad, DtClamp) {
  // softplus(N(-0.5, 0.5) + bias) spreads over about 0.2 .. 0.9: both ends of [0.35, 0.6] clamp.
  EXPECT_TRUE(gradcheck([&](const V& x) {
    SsdInputs in{x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], documents()};
    in.dt_min = 0.35;
    in.dt_max = 0.6;
    SsdOutputs out = ssd(in, true);
    return concat({reshape(out.out, {-1}), reshape(out.final_states, {-1})}, 0);
  }, all_inputs(false)));
}

TEST(SsdGrad, MinimalInputsWithoutSoftplus) {
  const V inputs{random_f64({1, 6, 2, 3}, 11), random_f64({1, 6, 2}, 12, 0.2, 0.5), random_f64({2}, 13, 0.3, -0.5),
                 random_f64({1, 6, 1, 2}, 14), random_f64({1, 6, 1, 2}, 15)};
  EXPECT_TRUE(gradcheck([](const V& x) {
    SsdInputs in{x[0], x[1], x[2], x[3], x[4]};
    in.dt_softplus = false;
    return ssd(in).out;
  }, inputs));
}

TEST(SsdGrad, BadShapesAreClearErrors) {
  SsdInputs in{random_f64({1, 6, 2, 3}, 1), random_f64({1, 5, 2}, 2), random_f64({2}, 3),
               random_f64({1, 6, 1, 2}, 4), random_f64({1, 6, 1, 2}, 5)};
  try {
    ssd(in);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("dt must be [1, 6, 2]"), std::string::npos) << e.what();
  }
  in.dt = random_f64({1, 6, 2}, 2);
  in.B = random_f64({1, 6, 3, 2}, 4);  // 3 groups do not divide 2 heads
  in.C = random_f64({1, 6, 3, 2}, 5);
  EXPECT_THROW(ssd(in), std::invalid_argument);
}

}  // namespace
}  // namespace ssmtrain
