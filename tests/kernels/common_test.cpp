// Tests of the host bf16 / f16 conversions in kernels/common.h: round to nearest even (ties),
// NaN, Inf, subnormals and overflow, against independent nearest-value searches, and the
// exhaustive f16 / bf16 round trips over all 65536 bit patterns.
#include "kernels/common.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The value of an f16 bit pattern, straight from the IEEE definition.
double f16_value(uint16_t h) {
  const int sign = h >> 15, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  double magnitude;
  if (exponent == 0x1f) {
    magnitude = mantissa ? std::numeric_limits<double>::quiet_NaN()
                         : std::numeric_limits<double>::infinity();
  } else if (exponent == 0) {
    magnitude = std::ldexp(double(mantissa), -24);  // subnormal: m * 2^-24
  } else {
    magnitude = std::ldexp(1.0 + mantissa / 1024.0, exponent - 15);
  }
  return sign ? -magnitude : magnitude;
}

// Nearest f16 to x (finite float) by search over the ordered non-negative finite patterns;
// ties go to the even pattern, and magnitudes >= 65520 (halfway to 2^16) become Inf.
uint16_t f16_nearest(float x) {
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs(double(x));
  if (a >= 65520.0) return sign | 0x7c00;
  // Largest pattern whose value is <= a (patterns 0..0x7bff increase with their value).
  uint16_t lo = 0, hi = 0x7bff;
  while (lo < hi) {
    const uint16_t mid = static_cast<uint16_t>((lo + hi + 1) / 2);
    if (f16_value(mid) <= a) lo = mid; else hi = mid - 1;
  }
  if (lo == 0x7bff) return sign | lo;
  const double below = a - f16_value(lo), above = f16_value(lo + 1) - a;
  uint16_t pick = lo;
  if (above < below || (above == below && (lo & 1))) pick = lo + 1;
  return sign | pick;
}

// Nearest bf16 to x (finite float): the two bf16 values around x, closer one, ties to even.
uint16_t bf16_nearest(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t down = u & 0xffff0000u;
  const uint32_t up = down + 0x10000u;  // next bf16 away from zero (may be Inf)
  const double dist_down = std::fabs(double(x) - double(bits_float(down)));
  const double dist_up = std::fabs(double(bits_float(up)) - double(x));
  if (dist_up < dist_down || (dist_up == dist_down && ((down >> 16) & 1))) return up >> 16;
  return down >> 16;
}

// Floats spread over every exponent, both signs, random mantissas.
std::vector<float> spread_floats(int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> v;
  for (int i = 0; i < count; ++i) {
    uint32_t u = static_cast<uint32_t>(rng());
    if ((u & 0x7f800000u) == 0x7f800000u) u &= 0xbfffffffu;  // keep it finite
    v.push_back(bits_float(u));
  }
  return v;
}

TEST(Bf16, RoundsToNearestEvenOnTies) {
  // 1 + 2^-8 lies halfway between 1 (0x3f80, even) and 1 + 2^-7 (0x3f81).
  EXPECT_EQ(float_to_bf16_bits(1.0f + 0x1p-8f), 0x3f80);
  // 1 + 3*2^-8 lies halfway between 0x3f81 and 0x3f82 (even).
  EXPECT_EQ(float_to_bf16_bits(1.0f + 3 * 0x1p-8f), 0x3f82);
  EXPECT_EQ(float_to_bf16_bits(-(1.0f + 0x1p-8f)), 0xbf80);
  // Just above a tie rounds up.
  EXPECT_EQ(float_to_bf16_bits(bits_float(0x3f808001u)), 0x3f81);
}

TEST(Bf16, NanInfAndOverflow) {
  EXPECT_TRUE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(std::numeric_limits<float>::quiet_NaN()))));
  // A NaN whose payload lies only in the low 16 bits must not become Inf.
  EXPECT_TRUE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(bits_float(0x7f800001u)))));
  EXPECT_TRUE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(bits_float(0xff800001u)))));
  EXPECT_EQ(float_to_bf16_bits(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(float_to_bf16_bits(-std::numeric_limits<float>::infinity()), 0xff80);
  // FLT_MAX is past the largest bf16 plus half an ulp: rounds to Inf.
  EXPECT_EQ(float_to_bf16_bits(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(float_to_bf16_bits(bits_float(0x7f7f7fffu)), 0x7f7f);  // just below the tie
}

TEST(Bf16, SubnormalsAndZeros) {
  EXPECT_EQ(float_to_bf16_bits(0.0f), 0x0000);
  EXPECT_EQ(float_to_bf16_bits(-0.0f), 0x8000);
  EXPECT_EQ(float_to_bf16_bits(bits_float(0x00010000u)), 0x0001);  // smallest bf16 subnormal
  EXPECT_EQ(float_to_bf16_bits(bits_float(0x00008000u)), 0x0000);  // tie, to even (0)
  EXPECT_EQ(float_to_bf16_bits(bits_float(0x00018000u)), 0x0002);  // tie, to even (2)
  EXPECT_EQ(bf16_bits_to_float(0x0001), bits_float(0x00010000u));
}

TEST(Bf16, MatchesNearestValueSearch) {
  for (float x : spread_floats(200000, 1)) {
    if (std::fabs(x) > 3.38e38f) continue;  // beyond the largest bf16 tie: covered above
    ASSERT_EQ(float_to_bf16_bits(x), bf16_nearest(x)) << "x = " << x << " bits " << std::hex << float_bits(x);
  }
}

TEST(Bf16, ExhaustiveRoundTripIsIdentity) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_bits_to_float(static_cast<uint16_t>(h));
    ASSERT_EQ(float_bits(f), h << 16);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(f))));
    } else {
      ASSERT_EQ(float_to_bf16_bits(f), h) << "pattern " << std::hex << h;
    }
  }
}

TEST(F16, ExhaustiveDecodeMatchesIeeeDefinition) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const double expected = f16_value(static_cast<uint16_t>(h));
    const float got = f16_bits_to_float(static_cast<uint16_t>(h));
    if (std::isnan(expected)) {
      ASSERT_TRUE(std::isnan(got)) << "pattern " << std::hex << h;
    } else {
      ASSERT_EQ(double(got), expected) << "pattern " << std::hex << h;
      ASSERT_EQ(std::signbit(got), (h & 0x8000) != 0);
    }
  }
}

TEST(F16, ExhaustiveRoundTripIsIdentity) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_bits_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_bits_to_float(float_to_f16_bits(f))));
    } else {
      ASSERT_EQ(float_to_f16_bits(f), h) << "pattern " << std::hex << h;
    }
  }
}

TEST(F16, RoundsToNearestEvenOnTies) {
  EXPECT_EQ(float_to_f16_bits(1.0f + 0x1p-11f), 0x3c00);      // tie between 0x3c00 and 0x3c01
  EXPECT_EQ(float_to_f16_bits(1.0f + 3 * 0x1p-11f), 0x3c02);  // tie between 0x3c01 and 0x3c02
  EXPECT_EQ(float_to_f16_bits(-(1.0f + 3 * 0x1p-11f)), 0xbc02);
  EXPECT_EQ(float_to_f16_bits(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);  // above the tie
}

TEST(F16, NanInfAndOverflow) {
  EXPECT_TRUE(std::isnan(f16_bits_to_float(float_to_f16_bits(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(f16_bits_to_float(float_to_f16_bits(bits_float(0x7f800001u)))));
  EXPECT_EQ(float_to_f16_bits(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(float_to_f16_bits(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(float_to_f16_bits(65504.0f), 0x7bff);                  // largest finite
  EXPECT_EQ(float_to_f16_bits(std::nextafter(65520.0f, 0.0f)), 0x7bff);  // just below the tie
  EXPECT_EQ(float_to_f16_bits(65520.0f), 0x7c00);                  // tie: to even, which is Inf
  EXPECT_EQ(float_to_f16_bits(-1e6f), 0xfc00);
  EXPECT_EQ(float_to_f16_bits(std::numeric_limits<float>::max()), 0x7c00);
}

TEST(F16, SubnormalsAndUnderflow) {
  EXPECT_EQ(float_to_f16_bits(0x1p-14f), 0x0400);       // smallest normal
  EXPECT_EQ(float_to_f16_bits(0x1p-24f), 0x0001);       // smallest subnormal
  EXPECT_EQ(float_to_f16_bits(0x1p-25f), 0x0000);       // tie between 0 and 1: to even (0)
  EXPECT_EQ(float_to_f16_bits(-0x1p-25f), 0x8000);
  EXPECT_EQ(float_to_f16_bits(std::nextafter(0x1p-25f, 1.0f)), 0x0001);
  EXPECT_EQ(float_to_f16_bits(3 * 0x1p-25f), 0x0002);   // tie between 1 and 2: to even (2)
  EXPECT_EQ(float_to_f16_bits(1023 * 0x1p-24f), 0x03ff);  // largest subnormal
  EXPECT_EQ(float_to_f16_bits(1023.5f * 0x1p-24f), 0x0400);  // tie rounds up into the normals
  EXPECT_EQ(float_to_f16_bits(1e-10f), 0x0000);
  EXPECT_EQ(float_to_f16_bits(-0.0f), 0x8000);
}

TEST(F16, MatchesNearestValueSearch) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> log_magnitude(-28.0, 17.0);
  for (int i = 0; i < 200000; ++i) {
    // Magnitudes 2^-28 .. 2^17 so subnormals, normals and overflow all occur.
    float x = static_cast<float>(std::exp2(log_magnitude(rng)));
    if (rng() & 1) x = -x;
    ASSERT_EQ(float_to_f16_bits(x), f16_nearest(x)) << "x = " << x;
  }
  // Every midpoint between neighbouring f16 values, and its float neighbours.
  for (uint32_t h = 0; h < 0x7bff; ++h) {
    const float mid = static_cast<float>((f16_value(h) + f16_value(h + 1)) / 2);
    for (float x : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)})
      ASSERT_EQ(float_to_f16_bits(x), f16_nearest(x)) << "x = " << x;
  }
}

}  // namespace
