// GPU tests of kernels/philox.h: cuda::fill_uniform / fill_normal must give exactly the bits of
// cpu::fill_uniform / fill_normal (f32), or those values rounded to nearest even (bf16).
#include "kernels/philox.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "tests/support/compare.h"
#include "tests/support/device_buffer.h"

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;
using ssmtrain::testing::DeviceBuffer;

struct FillCase {
  int64_t n;
  uint64_t seed;
  uint64_t offset;
};

const std::vector<FillCase> kCases = {
    {1, 0, 0}, {7, 1, 3}, {128, 42, 0}, {1001, 0x123456789abcdefull, 17}, {4099, 7, 1ull << 33}};

// The CPU fill as the bf16 bits a GPU bf16 fill must produce.
std::vector<uint16_t> to_bf16_bits(const std::vector<float>& values) {
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) bits[i] = float_to_bf16_bits(values[i]);
  return bits;
}

TEST(PhiloxGpu, UniformMatchesCpuBitForBit) {
  SSM_REQUIRE_GPU();
  for (const FillCase& c : kCases) {
    std::vector<float> ref(static_cast<size_t>(c.n));
    cpu::fill_uniform(ref.data(), c.n, c.seed, c.offset, -0.5f, 2.0f);

    DeviceBuffer out_f32(static_cast<size_t>(c.n) * 4);
    cuda::fill_uniform(DType::f32, out_f32.get(), c.n, c.seed, c.offset, -0.5f, 2.0f, nullptr);
    const auto got = ssmtrain::testing::download_raw<float>(out_f32.get(), c.n);
    EXPECT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * 4), 0) << "f32, n " << c.n;

    DeviceBuffer out_bf16(static_cast<size_t>(c.n) * 2);
    cuda::fill_uniform(DType::bf16, out_bf16.get(), c.n, c.seed, c.offset, -0.5f, 2.0f, nullptr);
    const auto got_bits = ssmtrain::testing::download_raw<uint16_t>(out_bf16.get(), c.n);
    EXPECT_EQ(got_bits, to_bf16_bits(ref)) << "bf16, n " << c.n;
  }
}

TEST(PhiloxGpu, NormalMatchesCpuBitForBit) {
  SSM_REQUIRE_GPU();
  for (const FillCase& c : kCases) {
    std::vector<float> ref(static_cast<size_t>(c.n));
    cpu::fill_normal(ref.data(), c.n, c.seed, c.offset, 0.25f, 0.02f);

    DeviceBuffer out_f32(static_cast<size_t>(c.n) * 4);
    cuda::fill_normal(DType::f32, out_f32.get(), c.n, c.seed, c.offset, 0.25f, 0.02f, nullptr);
    const auto got = ssmtrain::testing::download_raw<float>(out_f32.get(), c.n);
    EXPECT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * 4), 0) << "f32, n " << c.n;
    if (std::memcmp(got.data(), ref.data(), ref.size() * 4) != 0) {
      for (size_t i = 0; i < ref.size(); ++i)
        if (std::memcmp(&got[i], &ref[i], 4) != 0) {
          ADD_FAILURE() << "first difference at " << i << ": gpu " << got[i] << ", cpu " << ref[i];
          break;
        }
    }

    DeviceBuffer out_bf16(static_cast<size_t>(c.n) * 2);
    cuda::fill_normal(DType::bf16, out_bf16.get(), c.n, c.seed, c.offset, 0.25f, 0.02f, nullptr);
    const auto got_bits = ssmtrain::testing::download_raw<uint16_t>(out_bf16.get(), c.n);
    EXPECT_EQ(got_bits, to_bf16_bits(ref)) << "bf16, n " << c.n;
  }
}

// Consecutive fills that advance the offset by philox_blocks(n) never reuse a counter block:
// the second fill equals the tail of one long fill when the first length is a multiple of 4.
TEST(PhiloxGpu, OffsetContinuesTheStream) {
  SSM_REQUIRE_GPU();
  const int64_t first = 1000, second = 333;
  DeviceBuffer whole((first + second) * 4), tail(second * 4);
  cuda::fill_normal(DType::f32, whole.get(), first + second, 9, 5, 0.0f, 1.0f, nullptr);
  cuda::fill_normal(DType::f32, tail.get(), second, 9, 5 + philox_blocks(first), 0.0f, 1.0f,
                    nullptr);
  const auto a = ssmtrain::testing::download_raw<float>(whole.get(), first + second);
  const auto b = ssmtrain::testing::download_raw<float>(tail.get(), second);
  EXPECT_EQ(std::memcmp(a.data() + first, b.data(), size_t(second) * 4), 0);
}

TEST(PhiloxGpu, RejectsUnsupportedDtype) {
  SSM_REQUIRE_GPU();
  DeviceBuffer out(64);
  EXPECT_THROW(cuda::fill_uniform(DType::i32, out.get(), 4, 0, 0, 0.0f, 1.0f, nullptr), KernelError);
}

}  // namespace
