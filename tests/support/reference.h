// Helpers for tests of the CPU reference kernels: seeded normal test data in any float type,
// and an elementwise comparison against a double-precision formula.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

namespace ssmtrain::testing {

// normal(mean, scale) values from a fixed-seed std::mt19937_64, as T.
template <typename T>
std::vector<T> random_values(int64_t n, uint64_t seed, double scale = 1.0, double mean = 0.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(mean, scale);
  std::vector<T> v(static_cast<size_t>(n));
  for (T& x : v) x = static_cast<T>(normal(rng));
  return v;
}

// Every element within tol * (|ref| + atol_fraction * rms(ref)), tol = tol_scale * (1e-5 for
// float, 1e-12 for double). A larger atol_fraction suits sums whose error scales with the
// norm of the terms rather than each result (1.0 for BLAS products).
template <typename T>
::testing::AssertionResult matches(const std::vector<T>& got, const std::vector<double>& ref,
                                   double tol_scale = 1.0, double atol_fraction = 1e-3) {
  const double tol = tol_scale * (std::is_same_v<T, float> ? 1e-5 : 1e-12);
  double sum_sq = 0;
  for (double r : ref) sum_sq += r * r;
  const double atol =
      atol_fraction * std::sqrt(sum_sq / double(std::max<size_t>(ref.size(), 1))) + 1e-300;
  if (got.size() != ref.size()) return ::testing::AssertionFailure() << "size mismatch";
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(double(got[i]) - ref[i]);
    if (!(err <= tol * (std::fabs(ref[i]) + atol)))
      return ::testing::AssertionFailure()
             << "element " << i << ": got " << double(got[i]) << ", reference " << ref[i];
  }
  return ::testing::AssertionSuccess();
}

}  // namespace ssmtrain::testing
