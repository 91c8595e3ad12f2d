// The CPU gated RMSNorm against a double formula, per group, with and without z; without z
// and with one group it is the plain RMSNorm of kernels/norm.h, forward and backward.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/gated_rmsnorm.h"
#include "kernels/norm.h"
#include "tests/support/reference.h"

namespace ssmtrain::kernels {
namespace {

using testing::matches;
using testing::random_values;

// out[r, j] = u * w[j] / sqrt(mean over j's group of u^2 + eps), u = y * silu(z).
std::vector<double> formula(const std::vector<double>& y, const std::vector<double>* z, const std::vector<double>& w,
                            int64_t rows, int64_t d, int64_t group_size, double eps) {
  std::vector<double> u(y.size()), out(y.size());
  for (size_t i = 0; i < y.size(); ++i) u[i] = z ? y[i] * (*z)[i] / (1 + std::exp(-(*z)[i])) : y[i];
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < d; ++j) {
      const int64_t g0 = r * d + (j / group_size) * group_size;
      double ms = 0;
      for (int64_t k = 0; k < group_size; ++k) ms += u[g0 + k] * u[g0 + k];
      ms /= double(group_size);
      out[r * d + j] = u[r * d + j] * w[j] / std::sqrt(ms + eps);
    }
  return out;
}

TEST(GatedRmsNormCpu, MatchesFormula) {
  const int64_t rows = 7, d = 24;
  for (int64_t group_size : {24, 8, 6, 1})
    for (bool gate : {false, true}) {
      const auto y = random_values<double>(rows * d, 1), z = random_values<double>(rows * d, 2);
      const auto w = random_values<double>(d, 3, 0.5, 1.0);
      std::vector<double> out(rows * d);
      std::vector<float> rstd(rows * d / group_size);
      cpu::gated_rmsnorm_forward<double>(y.data(), gate ? z.data() : nullptr, w.data(), rows, d, group_size, 1e-5,
                                         out.data(), rstd.data());
      EXPECT_TRUE(matches(out, formula(y, gate ? &z : nullptr, w, rows, d, group_size, 1e-5)))
          << "group_size " << group_size << " gate " << gate;
      // float computes in double internally, so it rounds only its inputs and output.
      auto f = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
      const std::vector<float> yf = f(y), zf = f(z), wf = f(w);
      std::vector<float> outf(rows * d);
      cpu::gated_rmsnorm_forward<float>(yf.data(), gate ? zf.data() : nullptr, wf.data(), rows, d, group_size, 1e-5,
                                        outf.data(), rstd.data());
      EXPECT_TRUE(matches(outf, formula(y, gate ? &z : nullptr, w, rows, d, group_size, 1e-5), 2.0));
    }
}

TEST(GatedRmsNormCpu, WithoutGateIsRmsNorm) {
  const int64_t rows = 5, d = 16;
  const auto y = random_values<double>(rows * d, 4), w = random_values<double>(d, 5), dout = random_values<double>(rows * d, 6);
  std::vector<double> out(rows * d), ref(rows * d), dy(rows * d), dy_ref(rows * d), dw(d), dw_ref(d);
  std::vector<float> rstd(rows), rstd_ref(rows);
  cpu::gated_rmsnorm_forward<double>(y.data(), nullptr, w.data(), rows, d, d, 1e-6, out.data(), rstd.data());
  cpu::rmsnorm_forward<double>(y.data(), w.data(), rows, d, 1e-6, ref.data(), rstd_ref.data());
  EXPECT_EQ(out, ref);
  EXPECT_EQ(rstd, rstd_ref);
  cpu::gated_rmsnorm_backward<double>(y.data(), nullptr, w.data(), rstd.data(), dout.data(), rows, d, d, dy.data(),
                                      nullptr, dw.data());
  cpu::rmsnorm_backward<double>(y.data(), w.data(), rstd_ref.data(), dout.data(), rows, d, dy_ref.data(), dw_ref.data());
  EXPECT_TRUE(matches(dy, std::vector<double>(dy_ref.begin(), dy_ref.end())));
  EXPECT_TRUE(matches(dw, std::vector<double>(dw_ref.begin(), dw_ref.end())));
}

TEST(GatedRmsNormCpu, RejectsGroupThatDoesNotDivide) {
  std::vector<double> y(12), w(6), out(12);
  std::vector<float> rstd(12);
  EXPECT_THROW(cpu::gated_rmsnorm_forward<double>(y.data(), nullptr, w.data(), 2, 6, 4, 1e-5, out.data(), rstd.data()),
               KernelError);
}

}  // namespace
}  // namespace ssmtrain::kernels
