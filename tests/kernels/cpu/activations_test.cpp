// The host activations every CPU reference kernel uses (kernels/cpu/activations.h), against
// independent forms in long double: sigmoid as (1 + tanh(x / 2)) / 2 or exp(x) / (1 + exp(x)),
// softplus as log1p(exp(x)), and silu's derivative by central differences.
#include "kernels/cpu/activations.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace ssmtrain::kernels::cpu {
namespace {

const double kXs[] = {-700.0, -88.0, -40.0, -15.5, -3.0, -0.75, -1e-3, 0.0, 1e-3, 0.5, 2.0, 9.0, 19.5, 20.5, 60.0};

// sigmoid(x) = (1 + tanh(x / 2)) / 2 for x >= 0 and exp(x) / (1 + exp(x)) below (no
// cancellation there), in long double.
long double sigmoid_ref(double x) {
  const long double xl = x;
  if (x >= 0) return 0.5L * (1.0L + std::tanh(0.5L * xl));
  const long double e = std::exp(xl);
  return e / (1.0L + e);
}

TEST(Activations, SigmoidMatchesAnIndependentForm) {
  for (double x : kXs) {
    const double want = static_cast<double>(sigmoid_ref(x));
    EXPECT_NEAR(sigmoid(x), want, 1e-15 * want) << "x " << x;
    const float xf = static_cast<float>(x);
    const double wantf = static_cast<double>(sigmoid_ref(xf));
    // f32: a few ulp; below about -87 the result is subnormal or 0 in f32.
    EXPECT_NEAR(sigmoid(xf), wantf, 5e-7 * wantf + 1.2e-38) << "x " << x;
  }
}

TEST(Activations, SigmoidReachesItsLimitsWithoutNaN) {
  EXPECT_EQ(sigmoid(-800.0), 0.0);  // exp(800) overflows to inf: 1 / inf
  EXPECT_EQ(sigmoid(800.0), 1.0);
  EXPECT_EQ(sigmoid(-100.0f), 0.0f);
  EXPECT_EQ(sigmoid(100.0f), 1.0f);
  EXPECT_EQ(sigmoid(0.0), 0.5);
}

TEST(Activations, SoftplusMatchesLongDouble) {
  for (double x : kXs) {
    const long double wl = std::log1p(std::exp(static_cast<long double>(x)));
    const double want = static_cast<double>(wl);
    const double got = softplus(x);
    if (x > kSoftplusThreshold) {
      EXPECT_EQ(got, x) << "x " << x;  // x itself above the threshold,
      EXPECT_NEAR(got, want, 1e-10 * want) << "x " << x;  // off by exp(-x) / x < 1e-10 of it
      continue;
    }
    EXPECT_NEAR(got, want, 1e-15 * want) << "x " << x;
    const float xf = static_cast<float>(x);
    const double wantf = static_cast<double>(std::log1p(std::exp(static_cast<long double>(xf))));
    EXPECT_NEAR(softplus(xf), wantf, 5e-7 * wantf + 1.2e-38) << "x " << x;
  }
}

TEST(Activations, SiluAndItsGradient) {
  for (double x : kXs) {
    if (std::abs(x) > 100.0) continue;
    EXPECT_DOUBLE_EQ(silu(x), x * sigmoid(x)) << "x " << x;
    const double h = 1e-6 * std::max(1.0, std::abs(x));
    const double fd = (silu(x + h) - silu(x - h)) / (2.0 * h);
    EXPECT_NEAR(silu_grad(x), fd, 1e-8) << "x " << x;
  }
  EXPECT_EQ(silu_grad(0.0), 0.5);
  EXPECT_NEAR(silu_grad(3.0f), 1.0881041f, 1e-6f);  // s (1 + x (1 - s)) with s = sigmoid(3)
}

}  // namespace
}  // namespace ssmtrain::kernels::cpu
