// Finite-difference gradients (f64, CPU) of the gated RMSNorm node, with and without z, over
// one group and several.
#include <stdexcept>
#include <gtest/gtest.h>

#include "autograd/gated_rmsnorm_ops.h"
#include "autograd/ops.h"
#include "tests/support/gradcheck.h"

namespace ssmtrain {
namespace {

using testing::gradcheck;
using testing::random_f64;
using V = std::vector<Tensor>;

TEST(GatedRmsNormGrad, WithAndWithoutGate) {
  const int64_t rows = 3, d = 8;
  for (int64_t group_size : {0, 4, 2})
    for (bool gate : {false, true}) {
      const V inputs{random_f64({rows, d}, 21), random_f64({d}, 22, 0.5, 1.0), random_f64({rows, d}, 23)};
      EXPECT_TRUE(gradcheck([&](const V& x) {
        return gated_rmsnorm(x[0], gate ? x[2] : Tensor(), x[1], 1e-5, group_size);
      }, inputs)) << "group_size " << group_size << " gate " << gate;
    }
}

TEST(GatedRmsNormGrad, GroupMustDivide) {
  EXPECT_THROW(gated_rmsnorm(random_f64({2, 6}, 1), Tensor(), random_f64({6}, 2), 1e-5, 4), std::invalid_argument);
}

}  // namespace
}  // namespace ssmtrain
