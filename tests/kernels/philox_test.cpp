// Tests of the Philox4x32-10 generator and fills (kernels/philox.h): Random123's published
// known-answer vectors, the counter layout of fills, uniform and normal moments, and the
// accuracy of the exact-arithmetic log and sincos used by the Box-Muller transform.
#include "kernels/philox.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

using namespace ssmtrain::kernels;

void expect_block(Philox4 got, uint32_t w0, uint32_t w1, uint32_t w2, uint32_t w3) {
  EXPECT_EQ(got.v[0], w0);
  EXPECT_EQ(got.v[1], w1);
  EXPECT_EQ(got.v[2], w2);
  EXPECT_EQ(got.v[3], w3);
}

// Random123 tests/kat_vectors, "philox4x32 10" lines: counter, key, expected output.
TEST(Philox, KnownAnswerVectors) {
  expect_block(philox4x32_10(Philox4{{0, 0, 0, 0}}, 0, 0),  //
               0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8);
  expect_block(philox4x32_10(Philox4{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}},
                             0xffffffff, 0xffffffff),
               0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd);
  expect_block(philox4x32_10(Philox4{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}},
                             0xa4093822, 0x299f31d0),
               0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1);
}

TEST(Philox, BlockPacksCounterAndSeedIntoLowAndHighWords) {
  const uint64_t seed = 0x299f31d0a4093822ull, block = 0x85a308d3243f6a88ull;
  const Philox4 direct = philox4x32_10(Philox4{{0x243f6a88, 0x85a308d3, 0, 0}}, 0xa4093822, 0x299f31d0);
  const Philox4 got = philox_block(seed, block);
  for (int lane = 0; lane < 4; ++lane) EXPECT_EQ(got.v[lane], direct.v[lane]);
}

// Element i of a uniform fill, written out from the raw words: 24 bits scaled to [0, 1).
double uniform_reference(uint64_t seed, uint64_t offset, int64_t i, double low, double high) {
  const uint64_t block = offset + uint64_t(i) / 4;
  const Philox4 words = philox4x32_10(
      Philox4{{uint32_t(block), uint32_t(block >> 32), 0, 0}}, uint32_t(seed), uint32_t(seed >> 32));
  const double u = double(words.v[i % 4] >> 8) / 16777216.0;
  return low + u * (high - low);
}

TEST(PhiloxFill, UniformMatchesCounterLayout) {
  for (int64_t n : {1, 7, 64, 129}) {
    std::vector<float> out(static_cast<size_t>(n));
    cpu::fill_uniform(out.data(), n, 1234, 99, -2.0f, 3.0f);
    for (int64_t i = 0; i < n; ++i)
      EXPECT_NEAR(out[i], uniform_reference(1234, 99, i, -2.0, 3.0), 1e-6) << "element " << i;
  }
}

TEST(PhiloxFill, OffsetKEqualsTailOfFillAtOffsetZero) {
  const int64_t n = 1001;
  std::vector<float> base_u(static_cast<size_t>(n)), base_n(static_cast<size_t>(n));
  cpu::fill_uniform(base_u.data(), n, 42, 0, 0.0f, 1.0f);
  cpu::fill_normal(base_n.data(), n, 42, 0, 0.0f, 1.0f);
  for (uint64_t k : {1u, 3u, 17u, 100u}) {
    const int64_t m = n - 4 * int64_t(k);
    std::vector<float> tail_u(static_cast<size_t>(m)), tail_n(static_cast<size_t>(m));
    cpu::fill_uniform(tail_u.data(), m, 42, k, 0.0f, 1.0f);
    cpu::fill_normal(tail_n.data(), m, 42, k, 0.0f, 1.0f);
    for (int64_t i = 0; i < m; ++i) {
      ASSERT_EQ(tail_u[i], base_u[4 * k + i]) << "offset " << k << " element " << i;
      ASSERT_EQ(tail_n[i], base_n[4 * k + i]) << "offset " << k << " element " << i;
    }
  }
  EXPECT_EQ(philox_blocks(0), 0u);
  EXPECT_EQ(philox_blocks(1), 1u);
  EXPECT_EQ(philox_blocks(4), 1u);
  EXPECT_EQ(philox_blocks(5), 2u);
}

TEST(PhiloxFill, SeedsGiveDifferentStreams) {
  std::vector<float> a(64), b(64);
  cpu::fill_normal(a.data(), 64, 1, 0, 0.0f, 1.0f);
  cpu::fill_normal(b.data(), 64, 2, 0, 0.0f, 1.0f);
  int equal = 0;
  for (int i = 0; i < 64; ++i) equal += a[i] == b[i];
  EXPECT_EQ(equal, 0);
}

TEST(PhiloxFill, UniformMomentsAndRange) {
  const int64_t n = 1000000;
  const float low = -1.5f, high = 2.5f;
  std::vector<float> out(static_cast<size_t>(n));
  cpu::fill_uniform(out.data(), n, 7, 0, low, high);
  double sum = 0, sum_sq = 0;
  for (float x : out) {
    ASSERT_GE(x, low);
    ASSERT_LT(x, high);
    sum += x;
  }
  const double mean = sum / n;
  for (float x : out) sum_sq += (x - mean) * (x - mean);
  const double var = sum_sq / n;
  const double width = high - low;
  // Standard error of the mean: width / sqrt(12 n) = 1.2e-3; allow 5 of them.
  EXPECT_NEAR(mean, 0.5 * (low + high), 6e-3);
  EXPECT_NEAR(var, width * width / 12.0, 0.01 * width * width / 12.0);
}

TEST(PhiloxFill, NormalMomentsMeanStdKurtosis) {
  const int64_t n = 1000000;
  std::vector<float> out(static_cast<size_t>(n));
  cpu::fill_normal(out.data(), n, 2024, 5, 0.0f, 1.0f);
  double sum = 0;
  for (float x : out) {
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
  }
  const double mean = sum / n;
  double m2 = 0, m4 = 0;
  for (float x : out) {
    const double d = x - mean;
    m2 += d * d;
    m4 += d * d * d * d;
  }
  m2 /= n;
  m4 /= n;
  EXPECT_NEAR(mean, 0.0, 5e-3);                 // 5 standard errors
  EXPECT_NEAR(std::sqrt(m2), 1.0, 5e-3);        // se of std ~ 7e-4
  EXPECT_NEAR(m4 / (m2 * m2), 3.0, 0.05);       // se of kurtosis ~ 5e-3
}

TEST(PhiloxFill, NormalAppliesMeanAndStd) {
  std::vector<float> unit(129), scaled(129);
  cpu::fill_normal(unit.data(), 129, 3, 0, 0.0f, 1.0f);
  cpu::fill_normal(scaled.data(), 129, 3, 0, 2.0f, 0.5f);
  for (int i = 0; i < 129; ++i) EXPECT_NEAR(scaled[i], 2.0 + 0.5 * unit[i], 1e-6);
}

TEST(PhiloxMath, UniformBitsNeverZero) {
  EXPECT_EQ(philox_uniform01(0), 5.9604644775390625e-8f);
  EXPECT_EQ(philox_uniform01(0xffffffffu), 1.0f);
}

TEST(PhiloxMath, LogMatchesStdLog) {
  // Every value philox_uniform01 can produce is k * 2^-24, k in [1, 2^24]; check a spread of k
  // (all small ones, a stride through the middle, all near 1).
  double worst = 0;
  auto check = [&](uint32_t k) {
    const float x = float(k) * 0x1p-24f;
    const double ref = std::log(double(x));
    const double got = philox_log(x);
    const double rel = ref == 0 ? std::fabs(got) : std::fabs(got - ref) / std::fabs(ref);
    worst = std::fmax(worst, rel);
  };
  for (uint32_t k = 1; k < 100000; ++k) check(k);
  for (uint32_t k = 100000; k < (1u << 24) - 100000; k += 97) check(k);
  for (uint32_t k = (1u << 24) - 100000; k <= (1u << 24); ++k) check(k);
  EXPECT_LT(worst, 2e-7);
  EXPECT_EQ(philox_log(1.0f), 0.0f);
}

TEST(PhiloxMath, SinCosMatchStd) {
  double worst_sin = 0, worst_cos = 0;
  for (uint32_t k = 0; k < (1u << 24); k += 13) {
    const float u = float(k) * 0x1p-24f;  // [0, 1)
    float s, c;
    philox_sincos_2pi(u, &s, &c);
    const double angle = 2.0 * M_PI * double(u);
    worst_sin = std::fmax(worst_sin, std::fabs(s - std::sin(angle)));
    worst_cos = std::fmax(worst_cos, std::fabs(c - std::cos(angle)));
  }
  EXPECT_LT(worst_sin, 3e-7);
  EXPECT_LT(worst_cos, 3e-7);
}

}  // namespace
