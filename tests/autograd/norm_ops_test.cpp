// The add_rmsnorm node of autograd/norm_ops.h on the CPU: forward values against the same math
// composed from unfused ops (add, rmsnorm), and every gradient against finite differences in
// f64, with and without a residual, odd and even widths.
#include "autograd/norm_ops.h"

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

TEST(AddRmsnorm, ForwardMatchesAddThenRmsnorm) {
  for (int64_t d : {1, 7, 64}) {
    const Tensor x = random_f64({2, 3, d}, 1 + d), residual = random_f64({2, 3, d}, 2 + d);
    const Tensor weight = random_f64({d}, 3 + d, 0.5, 1.0);
    const AddRmsnormOutputs out = add_rmsnorm(x, residual, weight, 1e-5);
    const Tensor sum = add(x, residual);
    expect_equal_values(out.sum, sum, 1e-15, "sum d " + std::to_string(d));
    expect_equal_values(out.normed, rmsnorm(sum, weight, 1e-5), 1e-12, "normed d " + std::to_string(d));
    const AddRmsnormOutputs alone = add_rmsnorm(x, Tensor(), weight, 1e-5);
    expect_equal_values(alone.sum, x, 0, "sum without residual");
    expect_equal_values(alone.normed, rmsnorm(x, weight, 1e-5), 1e-12, "normed without residual");
  }
}

TEST(AddRmsnorm, ForwardMatchesFormulaInFloat) {
  const int64_t rows = 5, d = 33;
  const Tensor x = cast(random_f64({rows, d}, 7), DType::f32), r = cast(random_f64({rows, d}, 8), DType::f32);
  const Tensor w = cast(random_f64({d}, 9, 0.5, 1.0), DType::f32);
  const AddRmsnormOutputs out = add_rmsnorm(x, r, w, 1e-5);
  const std::vector<float> xs = x.values<float>(), rs = r.values<float>(), ws = w.values<float>();
  const std::vector<float> normed = out.normed.values<float>();
  for (int64_t i = 0; i < rows; ++i) {
    double ms = 0;
    for (int64_t j = 0; j < d; ++j) ms += double(xs[i * d + j] + rs[i * d + j]) * (xs[i * d + j] + rs[i * d + j]) / d;
    for (int64_t j = 0; j < d; ++j) {
      const double ref = double(xs[i * d + j] + rs[i * d + j]) / std::sqrt(ms + 1e-5) * ws[j];
      EXPECT_NEAR(normed[i * d + j], ref, 1e-5 * (std::fabs(ref) + 1e-3)) << i << "," << j;
    }
  }
}

// Both outputs feed the checked loss (concatenated), so the backward sums the gradient that
// reaches sum directly with the one through the norm.
TEST(AddRmsnorm, GradientsOfBothOutputs) {
  for (int64_t d : {1, 6, 17}) {
    const V inputs{random_f64({3, d}, 11 + d), random_f64({3, d}, 12 + d), random_f64({d}, 13 + d, 0.5, 1.0)};
    EXPECT_TRUE(gradcheck([](const V& in) {
      const AddRmsnormOutputs out = add_rmsnorm(in[0], in[1], in[2], 1e-5);
      return concat({out.sum, out.normed}, -1);
    }, inputs)) << "d " << d;
    EXPECT_TRUE(gradcheck([](const V& in) { return add_rmsnorm(in[0], in[1], in[2], 1e-5).normed; }, inputs))
        << "normed only, d " << d;
    const V no_residual{inputs[0], inputs[2]};
    EXPECT_TRUE(gradcheck([](const V& in) {
      const AddRmsnormOutputs out = add_rmsnorm(in[0], Tensor(), in[1], 1e-5);
      return concat({out.sum, out.normed}, -1);
    }, no_residual)) << "no residual, d " << d;
  }
}

TEST(AddRmsnorm, BadShapesAreClearErrors) {
  try {
    add_rmsnorm(random_f64({2, 4}, 1), random_f64({2, 5}, 2), random_f64({4}, 3));
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("residual"), std::string::npos) << e.what();
  }
  EXPECT_THROW(add_rmsnorm(random_f64({2, 4}, 1), Tensor(), random_f64({5}, 3)), std::invalid_argument);
}

}  // namespace
}  // namespace ssmtrain
