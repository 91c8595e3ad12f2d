// GPU tests of kernels/swiglu.h: forward and backward against the CPU reference in f32 and bf16
// on odd and even (rows, f), on aligned (vector) and misaligned (element) pointers, and
// bit-for-bit repeatability.
#include "kernels/swiglu.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "tests/support/compare.h"
#include "tests/support/device_buffer.h"

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;
using ssmtrain::testing::close;
using ssmtrain::testing::DeviceBuffer;
using ssmtrain::testing::download;
using ssmtrain::testing::download_bytes;
using ssmtrain::testing::random_vector;
using ssmtrain::testing::round_to;
using ssmtrain::testing::upload;

const std::vector<DType> kDtypes = {DType::f32, DType::bf16};
const std::vector<std::pair<int64_t, int64_t>> kShapes = {{1, 1}, {3, 7}, {7, 128}, {33, 1000}, {1000, 3}, {5, 4099}};

void check(DType dtype, int64_t rows, int64_t f, int64_t offset) {
  const size_t elem = size_t(dtype_size(dtype));
  const int64_t n_in = rows * 2 * f, n_out = rows * f;
  const std::vector<float> gate_up = round_to(dtype, random_vector(n_in, 1 + f, 2.0f));
  const std::vector<float> dout = round_to(dtype, random_vector(n_out, 2 + f));
  std::vector<float> out_ref(static_cast<size_t>(n_out)), dgu_ref(static_cast<size_t>(n_in));
  cpu::swiglu_forward(gate_up.data(), rows, f, out_ref.data());
  cpu::swiglu_backward(gate_up.data(), dout.data(), rows, f, dgu_ref.data());

  auto padded = [&](const std::vector<float>& v) {
    std::vector<float> out(size_t(offset), 0.0f);
    out.insert(out.end(), v.begin(), v.end());
    return upload(out, dtype);
  };
  auto at = [&](const DeviceBuffer& b) { return static_cast<char*>(b.get()) + offset * elem; };
  const std::string where = std::string(dtype_name(dtype)) + " " + std::to_string(rows) + "x" + std::to_string(f) +
                            (offset ? " misaligned" : "");
  DeviceBuffer gu_d = padded(gate_up), dout_d = padded(dout);
  DeviceBuffer out_d((n_out + offset) * elem), dgu_d((n_in + offset) * elem);
  cuda::swiglu_forward(dtype, at(gu_d), rows, f, at(out_d), nullptr);
  cuda::swiglu_backward(dtype, at(gu_d), at(dout_d), rows, f, at(dgu_d), nullptr);
  EXPECT_TRUE(close(download(at(out_d), dtype, n_out), out_ref, dtype, 1)) << "out " << where;
  EXPECT_TRUE(close(download(at(dgu_d), dtype, n_in), dgu_ref, dtype, 1)) << "dgate_up " << where;
}

TEST(SwigluGpu, ForwardAndBackwardMatchCpu) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    for (auto [rows, f] : kShapes) check(dtype, rows, f, 0);
    check(dtype, 9, 128, 1);
    check(dtype, 4, 1000, 3);
  }
}

TEST(SwigluGpu, RepeatIsBitwiseIdentical) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    const int64_t rows = 2049, f = 1536;
    const size_t elem = size_t(dtype_size(dtype)), in_bytes = rows * 2 * f * elem, out_bytes = rows * f * elem;
    DeviceBuffer gu = upload(random_vector(rows * 2 * f, 3, 2.0f), dtype), dy = upload(random_vector(rows * f, 4), dtype);
    DeviceBuffer out[2] = {DeviceBuffer(out_bytes), DeviceBuffer(out_bytes)};
    DeviceBuffer dgu[2] = {DeviceBuffer(in_bytes), DeviceBuffer(in_bytes)};
    for (int run = 0; run < 2; ++run) {
      cuda::swiglu_forward(dtype, gu.get(), rows, f, out[run].get(), nullptr);
      cuda::swiglu_backward(dtype, gu.get(), dy.get(), rows, f, dgu[run].get(), nullptr);
    }
    EXPECT_EQ(download_bytes(out[0].get(), out_bytes), download_bytes(out[1].get(), out_bytes));
    EXPECT_EQ(download_bytes(dgu[0].get(), in_bytes), download_bytes(dgu[1].get(), in_bytes));
  }
}

TEST(SwigluGpu, RejectsF16) {
  SSM_REQUIRE_GPU();
  DeviceBuffer buf(64);
  EXPECT_THROW(cuda::swiglu_forward(DType::f16, buf.get(), 1, 2, buf.get(), nullptr), KernelError);
}

}  // namespace
