// Tests of kernels/norm.h on the CPU: RMSNorm forward (y, rstd) and backward (dx, dweight)
// against formulas written here in double, and the backward against finite differences of
// the test's own forward; float and double, odd and even row widths.
#include "tests/support/reference.h"
#include "kernels/norm.h"

#include <algorithm>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;
using ssmtrain::testing::matches;
using ssmtrain::testing::random_values;

// The test's own RMSNorm forward in double: y (rows, d), rstd (rows).
void ref_forward(const std::vector<double>& x, const std::vector<double>& w, int64_t rows,
                 int64_t d, double eps, std::vector<double>& y, std::vector<double>& rstd) {
  y.assign(size_t(rows * d), 0.0);
  rstd.assign(size_t(rows), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double mean_sq = 0;
    for (int64_t j = 0; j < d; ++j) mean_sq += x[r * d + j] * x[r * d + j] / double(d);
    rstd[r] = 1.0 / std::sqrt(mean_sq + eps);
    for (int64_t j = 0; j < d; ++j) y[r * d + j] = x[r * d + j] * rstd[r] * w[j];
  }
}

template <typename T> std::vector<double> to_double(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

template <typename T> class RmsNorm : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(RmsNorm, FloatTypes);

TYPED_TEST(RmsNorm, ForwardMatchesFormula) {
  using T = TypeParam;
  for (int64_t rows : {1, 7, 64})
    for (int64_t d : {1, 7, 64, 129}) {
      const std::vector<T> x = random_values<T>(rows * d, 1 + d, 2.0);
      const std::vector<T> w = random_values<T>(d, 2 + d, 0.5, 1.0);
      std::vector<T> y(x.size());
      std::vector<float> rstd(static_cast<size_t>(rows));
      cpu::rmsnorm_forward(x.data(), w.data(), rows, d, 1e-5, y.data(), rstd.data());
      std::vector<double> ref_y, ref_rstd;
      ref_forward(to_double(x), to_double(w), rows, d, 1e-5, ref_y, ref_rstd);
      EXPECT_TRUE(matches(y, ref_y)) << rows << "x" << d;
      EXPECT_TRUE(matches(rstd, ref_rstd)) << rows << "x" << d;  // stored as float
    }
}

TYPED_TEST(RmsNorm, EpsilonDominatesForZeroRows) {
  using T = TypeParam;
  const std::vector<T> x(8, T(0)), w(8, T(1));
  std::vector<T> y(8, T(7));
  float rstd = 0;
  cpu::rmsnorm_forward(x.data(), w.data(), 1, 8, 0.25, y.data(), &rstd);
  EXPECT_EQ(rstd, 2.0f);
  for (T v : y) EXPECT_EQ(v, T(0));
}

TYPED_TEST(RmsNorm, BackwardMatchesFormula) {
  using T = TypeParam;
  for (int64_t rows : {1, 7, 64})
    for (int64_t d : {1, 7, 64, 129}) {
      const std::vector<T> x = random_values<T>(rows * d, 3 + d, 2.0);
      const std::vector<T> w = random_values<T>(d, 4 + d, 0.5, 1.0);
      const std::vector<T> dy = random_values<T>(rows * d, 5 + d);
      std::vector<float> rstd(static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (int64_t j = 0; j < d; ++j) ss += double(x[r * d + j]) * double(x[r * d + j]);
        rstd[r] = static_cast<float>(1.0 / std::sqrt(ss / double(d) + 1e-5));
      }
      std::vector<T> dx(x.size()), dw(static_cast<size_t>(d), T(123));  // dw is overwritten
      cpu::rmsnorm_backward(x.data(), w.data(), rstd.data(), dy.data(), rows, d, dx.data(), dw.data());
      std::vector<double> ref_dx(x.size()), ref_dw(static_cast<size_t>(d), 0.0);
      for (int64_t r = 0; r < rows; ++r) {
        const double s = rstd[r];
        double mean_wdyx = 0;
        for (int64_t j = 0; j < d; ++j)
          mean_wdyx += double(w[j]) * double(dy[r * d + j]) * double(x[r * d + j]) / double(d);
        for (int64_t j = 0; j < d; ++j) {
          const int64_t at = r * d + j;
          ref_dx[at] = s * (double(w[j]) * double(dy[at]) - double(x[at]) * s * s * mean_wdyx);
          ref_dw[j] += double(dy[at]) * double(x[at]) * s;
        }
      }
      EXPECT_TRUE(matches(dx, ref_dx)) << rows << "x" << d;
      EXPECT_TRUE(matches(dw, ref_dw)) << rows << "x" << d;
    }
}

TEST(RmsNormDouble, BackwardMatchesFiniteDifferences) {
  // L = sum(dy * y); dL/dx and dL/dw by central differences of the test's own forward.
  const int64_t rows = 3, d = 7;
  const double eps = 1e-5, h = 1e-6;
  const std::vector<double> x = random_values<double>(rows * d, 6), w = random_values<double>(d, 7, 0.5, 1.0);
  const std::vector<double> dy = random_values<double>(rows * d, 8);
  std::vector<double> y(rows * d), dx(rows * d), dw(d);
  std::vector<float> rstd(rows);
  cpu::rmsnorm_forward(x.data(), w.data(), rows, d, eps, y.data(), rstd.data());
  cpu::rmsnorm_backward(x.data(), w.data(), rstd.data(), dy.data(), rows, d, dx.data(), dw.data());
  auto loss = [&](const std::vector<double>& xs, const std::vector<double>& ws) {
    std::vector<double> ys, unused;
    ref_forward(xs, ws, rows, d, eps, ys, unused);
    double l = 0;
    for (int64_t i = 0; i < rows * d; ++i) l += dy[i] * ys[i];
    return l;
  };
  // rstd is stored in float: allow its rounding (~6e-8 relative) in the gradients.
  for (int64_t i = 0; i < rows * d; ++i) {
    std::vector<double> xp = x, xm = x;
    xp[i] += h;
    xm[i] -= h;
    const double fd = (loss(xp, w) - loss(xm, w)) / (2 * h);
    EXPECT_NEAR(dx[i], fd, 1e-6 * (1 + std::fabs(fd))) << "dx " << i;
  }
  for (int64_t j = 0; j < d; ++j) {
    std::vector<double> wp = w, wm = w;
    wp[j] += h;
    wm[j] -= h;
    const double fd = (loss(x, wp) - loss(x, wm)) / (2 * h);
    EXPECT_NEAR(dw[j], fd, 1e-6 * (1 + std::fabs(fd))) << "dw " << j;
  }
}

TEST(RmsNormErrors, RejectsNegativeSizes) {
  float x = 0, rstd = 0;
  EXPECT_THROW(cpu::rmsnorm_forward(&x, &x, -1, 4, 1e-5, &x, &rstd), KernelError);
  EXPECT_THROW(cpu::rmsnorm_backward(&x, &x, &rstd, &x, 2, -4, &x, &x), KernelError);
}

}  // namespace
