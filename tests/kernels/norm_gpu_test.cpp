// GPU tests of kernels/norm.h: RMSNorm forward (y, rstd) and backward (dx, dweight) against the
// CPU reference in f32 and bf16 on odd and even (rows, d), and bit-for-bit repeatability of
// the backward (dweight is a cross-row reduction). The same for the fused add_rmsnorm, with and
// without a residual and an incoming sum gradient, on aligned and misaligned pointers.
#include "kernels/norm.h"

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
// d == 1 is left out: there dx = rstd * w * dy * eps / (x^2 + eps) comes from an exact
// cancellation that f32 arithmetic cannot reproduce to the f32 bound.
const std::vector<std::pair<int64_t, int64_t>> kShapes = {
    {1, 3}, {7, 128}, {3, 1000}, {33, 4099}, {1000, 7}, {4099, 64}, {2, 8192}};
constexpr double kEps = 1e-5;

TEST(NormGpu, RmsnormForwardAndBackwardMatchCpu) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    for (auto [rows, d] : kShapes) {
      const int64_t numel = rows * d;
      const std::vector<float> x = round_to(dtype, random_vector(numel, 1));
      const std::vector<float> weight = round_to(dtype, random_vector(d, 2, 0.1f, 1.0f));
      std::vector<float> y_ref(static_cast<size_t>(numel)), rstd_ref(static_cast<size_t>(rows));
      cpu::rmsnorm_forward(x.data(), weight.data(), rows, d, kEps, y_ref.data(), rstd_ref.data());

      DeviceBuffer x_d = upload(x, dtype), w_d = upload(weight, dtype);
      DeviceBuffer y_d(static_cast<size_t>(numel) * 4), rstd_d(static_cast<size_t>(rows) * 4);
      cuda::rmsnorm_forward(dtype, x_d.get(), w_d.get(), rows, d, kEps, y_d.get(),
                            rstd_d.as<float>(), nullptr);
      EXPECT_TRUE(close(download(y_d.get(), dtype, numel), y_ref, dtype, d))
          << "y " << rows << "x" << d;
      // rstd is f32 from the same (rounded) inputs on both devices.
      EXPECT_TRUE(close(download(rstd_d.get(), DType::f32, rows), rstd_ref, DType::f32, d))
          << "rstd " << rows << "x" << d;

      // Backward from the CPU's rstd, so both see the same inputs.
      const std::vector<float> dy = round_to(dtype, random_vector(numel, 3));
      std::vector<float> dx_ref(static_cast<size_t>(numel)), dw_ref(static_cast<size_t>(d));
      cpu::rmsnorm_backward(x.data(), weight.data(), rstd_ref.data(), dy.data(), rows, d,
                            dx_ref.data(), dw_ref.data());
      DeviceBuffer rstd_ref_d = upload(rstd_ref, DType::f32), dy_d = upload(dy, dtype);
      DeviceBuffer dx_d(static_cast<size_t>(numel) * 4), dw_d(static_cast<size_t>(d) * 4);
      cuda::rmsnorm_backward(dtype, x_d.get(), w_d.get(), rstd_ref_d.as<float>(), dy_d.get(), rows,
                             d, dx_d.get(), dw_d.get(), nullptr);
      EXPECT_TRUE(close(download(dx_d.get(), dtype, numel), dx_ref, dtype, d))
          << "dx " << rows << "x" << d;
      EXPECT_TRUE(close(download(dw_d.get(), dtype, d), dw_ref, dtype, rows))
          << "dweight " << rows << "x" << d;
    }
  }
}

TEST(NormGpu, RepeatIsBitwiseIdentical) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    const int64_t rows = 4099, d = 1000, numel = rows * d;
    const size_t elem = size_t(dtype_size(dtype));
    DeviceBuffer x_d = upload(random_vector(numel, 4), dtype);
    DeviceBuffer w_d = upload(random_vector(d, 5, 0.1f, 1.0f), dtype);
    DeviceBuffer dy_d = upload(random_vector(numel, 6), dtype);
    DeviceBuffer y(numel * elem), rstd(rows * 4), dx[2] = {DeviceBuffer(numel * elem),
                                                            DeviceBuffer(numel * elem)};
    DeviceBuffer dw[2] = {DeviceBuffer(d * elem), DeviceBuffer(d * elem)};
    cuda::rmsnorm_forward(dtype, x_d.get(), w_d.get(), rows, d, kEps, y.get(), rstd.as<float>(),
                          nullptr);
    for (int run = 0; run < 2; ++run)
      cuda::rmsnorm_backward(dtype, x_d.get(), w_d.get(), rstd.as<float>(), dy_d.get(), rows, d,
                             dx[run].get(), dw[run].get(), nullptr);
    EXPECT_EQ(download_bytes(dx[0].get(), numel * elem), download_bytes(dx[1].get(), numel * elem))
        << dtype_name(dtype) << " dx";
    EXPECT_EQ(download_bytes(dw[0].get(), d * elem), download_bytes(dw[1].get(), d * elem))
        << dtype_name(dtype) << " dweight";
  }
}

// add_rmsnorm on the GPU against the CPU reference fed the sum the GPU stores (x + residual
// rounded to dtype). offset shifts every pointer by one element (no vector loads).
void check_add_rmsnorm(DType dtype, int64_t rows, int64_t d, bool with_residual, bool with_dsum, int64_t offset) {
  const int64_t numel = rows * d;
  const size_t elem = size_t(dtype_size(dtype));
  const std::vector<float> x = round_to(dtype, random_vector(numel, 11));
  const std::vector<float> r = round_to(dtype, random_vector(numel, 12));
  const std::vector<float> weight = round_to(dtype, random_vector(d, 13, 0.1f, 1.0f));
  std::vector<float> sum(static_cast<size_t>(numel));
  for (int64_t i = 0; i < numel; ++i) sum[size_t(i)] = with_residual ? x[size_t(i)] + r[size_t(i)] : x[size_t(i)];
  sum = round_to(dtype, sum);
  std::vector<float> y_ref(static_cast<size_t>(numel)), sum_ref(static_cast<size_t>(numel));
  std::vector<float> rstd_ref(static_cast<size_t>(rows));
  cpu::add_rmsnorm_forward(sum.data(), static_cast<const float*>(nullptr), weight.data(), rows, d, kEps,
                           sum_ref.data(), y_ref.data(), rstd_ref.data());

  auto padded = [&](const std::vector<float>& v) {  // offset elements of padding in front
    std::vector<float> out(size_t(offset), 0.0f);
    out.insert(out.end(), v.begin(), v.end());
    return upload(out, dtype);
  };
  auto at = [&](const DeviceBuffer& b) { return static_cast<char*>(b.get()) + offset * elem; };
  const std::string where = std::string(dtype_name(dtype)) + " " + std::to_string(rows) + "x" + std::to_string(d) +
                            (with_residual ? " residual" : "") + (with_dsum ? " dsum" : "") +
                            (offset ? " misaligned" : "");
  DeviceBuffer x_d = padded(x), r_d = padded(r), w_d = padded(weight);
  DeviceBuffer sum_d((numel + offset) * elem), y_d((numel + offset) * elem), rstd_d(rows * 4);
  cuda::add_rmsnorm_forward(dtype, at(x_d), with_residual ? at(r_d) : nullptr, at(w_d), rows, d, kEps, at(sum_d),
                            at(y_d), rstd_d.as<float>(), nullptr);
  EXPECT_EQ(download(at(sum_d), dtype, numel), sum_ref) << "sum " << where;
  EXPECT_TRUE(close(download(at(y_d), dtype, numel), y_ref, dtype, d)) << "y " << where;
  EXPECT_TRUE(close(download(rstd_d.get(), DType::f32, rows), rstd_ref, DType::f32, d)) << "rstd " << where;

  const std::vector<float> dy = round_to(dtype, random_vector(numel, 14));
  const std::vector<float> dsum = round_to(dtype, random_vector(numel, 15));
  std::vector<float> dx_ref(static_cast<size_t>(numel)), dw_ref(static_cast<size_t>(d));
  cpu::add_rmsnorm_backward(sum_ref.data(), weight.data(), rstd_ref.data(), dy.data(),
                            with_dsum ? dsum.data() : nullptr, rows, d, dx_ref.data(), dw_ref.data());
  DeviceBuffer rstd_ref_d = upload(rstd_ref, DType::f32), dy_d = padded(dy), dsum_d = padded(dsum);
  DeviceBuffer dx_d((numel + offset) * elem), dw_d((d + offset) * elem);
  cuda::add_rmsnorm_backward(dtype, at(sum_d), at(w_d), rstd_ref_d.as<float>(), at(dy_d),
                             with_dsum ? at(dsum_d) : nullptr, rows, d, at(dx_d), at(dw_d), nullptr);
  EXPECT_TRUE(close(download(at(dx_d), dtype, numel), dx_ref, dtype, d)) << "dx " << where;
  EXPECT_TRUE(close(download(at(dw_d), dtype, d), dw_ref, dtype, rows)) << "dweight " << where;
}

TEST(NormGpu, AddRmsnormMatchesCpu) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes)
    for (auto [rows, d] : kShapes) {
      check_add_rmsnorm(dtype, rows, d, true, true, 0);
      check_add_rmsnorm(dtype, rows, d, false, false, 0);
    }
  for (DType dtype : kDtypes) {
    check_add_rmsnorm(dtype, 5, 128, true, true, 1);
    check_add_rmsnorm(dtype, 16, 768, true, false, 0);
  }
}

TEST(NormGpu, AddRmsnormRepeatIsBitwiseIdentical) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    const int64_t rows = 4099, d = 768, numel = rows * d;
    const size_t elem = size_t(dtype_size(dtype));
    DeviceBuffer x_d = upload(random_vector(numel, 4), dtype), r_d = upload(random_vector(numel, 7), dtype);
    DeviceBuffer w_d = upload(random_vector(d, 5, 0.1f, 1.0f), dtype);
    DeviceBuffer dy_d = upload(random_vector(numel, 6), dtype), ds_d = upload(random_vector(numel, 8), dtype);
    DeviceBuffer sum[2] = {DeviceBuffer(numel * elem), DeviceBuffer(numel * elem)};
    DeviceBuffer y[2] = {DeviceBuffer(numel * elem), DeviceBuffer(numel * elem)};
    DeviceBuffer rstd[2] = {DeviceBuffer(rows * 4), DeviceBuffer(rows * 4)};
    DeviceBuffer dx[2] = {DeviceBuffer(numel * elem), DeviceBuffer(numel * elem)};
    DeviceBuffer dw[2] = {DeviceBuffer(d * elem), DeviceBuffer(d * elem)};
    for (int run = 0; run < 2; ++run) {
      cuda::add_rmsnorm_forward(dtype, x_d.get(), r_d.get(), w_d.get(), rows, d, kEps, sum[run].get(), y[run].get(),
                                rstd[run].as<float>(), nullptr);
      cuda::add_rmsnorm_backward(dtype, sum[run].get(), w_d.get(), rstd[run].as<float>(), dy_d.get(), ds_d.get(),
                                 rows, d, dx[run].get(), dw[run].get(), nullptr);
    }
    EXPECT_EQ(download_bytes(y[0].get(), numel * elem), download_bytes(y[1].get(), numel * elem));
    EXPECT_EQ(download_bytes(rstd[0].get(), rows * 4), download_bytes(rstd[1].get(), rows * 4));
    EXPECT_EQ(download_bytes(dx[0].get(), numel * elem), download_bytes(dx[1].get(), numel * elem));
    EXPECT_EQ(download_bytes(dw[0].get(), d * elem), download_bytes(dw[1].get(), d * elem));
  }
}

TEST(NormGpu, RejectsF16) {
  SSM_REQUIRE_GPU();
  DeviceBuffer buf(64);
  EXPECT_THROW(cuda::rmsnorm_forward(DType::f16, buf.get(), buf.get(), 1, 4, kEps, buf.get(),
                                     buf.as<float>(), nullptr),
               KernelError);
}

}  // namespace
