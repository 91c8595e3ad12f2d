// Tests of kernels/adamw.h on the CPU: the multi-tensor AdamW step against the update rule
// written here element by element in double (weight decay only where flagged, grad_scale,
// several steps), and the list sum of squares and scaling against plain loops.
#include "kernels/adamw.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "tests/support/reference.h"

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;
using ssmtrain::testing::matches;
using ssmtrain::testing::random_values;

template <typename T> class AdamWKernel : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(AdamWKernel, FloatTypes);

TYPED_TEST(AdamWKernel, StepMatchesUpdateRule) {
  using T = TypeParam;
  const std::vector<int64_t> sizes = {1, 7, 64, 1000};
  std::vector<std::vector<T>> p, m, v;
  std::vector<std::vector<double>> rp, rm, rv;
  for (size_t t = 0; t < sizes.size(); ++t) {
    p.push_back(random_values<T>(sizes[t], 1 + t));
    m.push_back(std::vector<T>(size_t(sizes[t]), T(0)));
    v.push_back(std::vector<T>(size_t(sizes[t]), T(0)));
    rp.emplace_back(p.back().begin(), p.back().end());
    rm.emplace_back(size_t(sizes[t]), 0.0);
    rv.emplace_back(size_t(sizes[t]), 0.0);
  }
  AdamWStep h;
  h.lr = 1e-2;
  h.beta1 = 0.9;
  h.beta2 = 0.95;
  h.eps = 1e-8;
  h.weight_decay = 0.1;
  for (int step = 1; step <= 4; ++step) {
    h.bias_correction1 = 1 - std::pow(h.beta1, step);
    h.bias_correction2 = 1 - std::pow(h.beta2, step);
    h.grad_scale = step == 3 ? 0.25 : 1.0;
    std::vector<std::vector<T>> g;
    std::vector<AdamWTensor<T, T>> list;
    for (size_t t = 0; t < sizes.size(); ++t) g.push_back(random_values<T>(sizes[t], 100 * step + t));
    for (size_t t = 0; t < sizes.size(); ++t)
      list.push_back({p[t].data(), g[t].data(), m[t].data(), v[t].data(), nullptr, sizes[t], t % 2 == 0});
    cpu::adamw_step<T>(list.data(), int64_t(list.size()), h);
    for (size_t t = 0; t < sizes.size(); ++t) {
      const double decay = t % 2 == 0 ? h.weight_decay : 0.0;
      for (int64_t i = 0; i < sizes[t]; ++i) {
        const double gi = double(g[t][i]) * h.grad_scale;
        rm[t][i] = h.beta1 * rm[t][i] + (1 - h.beta1) * gi;
        rv[t][i] = h.beta2 * rv[t][i] + (1 - h.beta2) * gi * gi;
        const double mh = rm[t][i] / h.bias_correction1, vh = rv[t][i] / h.bias_correction2;
        rp[t][i] -= h.lr * (mh / (std::sqrt(vh) + h.eps) + decay * rp[t][i]);
      }
      EXPECT_TRUE(matches(p[t], rp[t])) << "param " << t << " step " << step;
      EXPECT_TRUE(matches(m[t], rm[t])) << "exp_avg " << t << " step " << step;
      EXPECT_TRUE(matches(v[t], rv[t])) << "exp_avg_sq " << t << " step " << step;
    }
  }
}

TYPED_TEST(AdamWKernel, SumSquaresAndScale) {
  using T = TypeParam;
  std::vector<T> a = random_values<T>(13, 1), b = random_values<T>(1000, 2), empty;
  const T* ptrs[] = {a.data(), empty.data(), b.data()};
  const int64_t numels[] = {13, 0, 1000};
  double ref = 0;
  for (T x : a) ref += double(x) * double(x);
  for (T x : b) ref += double(x) * double(x);
  EXPECT_NEAR(cpu::sum_squares<T>(ptrs, numels, 3), ref, 1e-12 * ref);
  T* mptrs[] = {a.data(), empty.data(), b.data()};
  const std::vector<T> a0 = a, b0 = b;
  cpu::scale<T>(mptrs, numels, 3, 0.5);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], T(double(a0[i]) * 0.5));
  for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(b[i], T(double(b0[i]) * 0.5));
}

TEST(AdamWKernelErrors, NegativeSizeNamesTheTensor) {
  float x = 0;
  const AdamWTensor<float, float> bad{&x, &x, &x, &x, nullptr, -3, false};
  try {
    cpu::adamw_step<float>(&bad, 1, AdamWStep{});
    FAIL();
  } catch (const KernelError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 0 has negative size -3"), std::string::npos) << e.what();
  }
}

}  // namespace
