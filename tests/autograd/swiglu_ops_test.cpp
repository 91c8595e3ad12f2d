// The swiglu node of autograd/swiglu_ops.h on the CPU: forward values against silu(gate) * up
// composed from unfused ops (silu, narrow, mul), and the gradient against finite differences
// in f64.
#include "autograd/swiglu_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/node.h"
#include "autograd/ops.h"
#include "tests/support/gradcheck.h"

namespace ssmtrain {
namespace {

using testing::gradcheck;
using testing::random_f64;
using V = std::vector<Tensor>;

void expect_equal_values(const Tensor& got, const Tensor& ref, double tol, const std::string& what) {
  ASSERT_EQ(got.shape(), ref.shape()) << what;
  const std::vector<double> g = got.values<double>(), r = ref.values<double>();
  for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(g[i], r[i], tol * (1 + std::fabs(r[i]))) << what << " at " << i;
}

TEST(Swiglu, ForwardMatchesSiluTimesUp) {
  for (int64_t f : {1, 5, 64}) {
    const Tensor gate_up = random_f64({2, 3, 2 * f}, 21 + f, 2.0);
    const Tensor ref = mul(silu(narrow(gate_up, -1, 0, f)), narrow(gate_up, -1, f, f));
    expect_equal_values(swiglu(gate_up), ref, 1e-14, "f " + std::to_string(f));
  }
}

TEST(Swiglu, GradientMatchesFiniteDifferences) {
  for (int64_t f : {1, 4, 9}) {
    const V inputs{random_f64({3, 2 * f}, 31 + f, 2.0)};
    EXPECT_TRUE(gradcheck([](const V& in) { return swiglu(in[0]); }, inputs)) << "f " << f;
  }
  const V batched{random_f64({2, 3, 10}, 41)};
  EXPECT_TRUE(gradcheck([](const V& in) { return swiglu(in[0]); }, batched)) << "batched";
}

TEST(Swiglu, OddLastDimensionIsAClearError) {
  try {
    swiglu(random_f64({2, 5}, 1));
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("even last dimension"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ssmtrain
