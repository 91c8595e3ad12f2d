// GPU tests of kernels/elementwise.h: every activation forward and backward, affine, power and
// broadcasting binary ops against the CPU reference, in f32 and bf16, on odd and even sizes.
#include "kernels/elementwise.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "tests/support/compare.h"
#include "tests/support/device_buffer.h"

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;
using ssmtrain::testing::close;
using ssmtrain::testing::DeviceBuffer;
using ssmtrain::testing::download;
using ssmtrain::testing::random_vector;
using ssmtrain::testing::round_to;
using ssmtrain::testing::upload;

const std::vector<DType> kDtypes = {DType::f32, DType::bf16};
const std::vector<int64_t> kSizes = {1, 7, 128, 1000, 4099};
const std::vector<UnaryOp> kUnaryOps = {UnaryOp::neg,      UnaryOp::exp,     UnaryOp::log,
                                        UnaryOp::silu,     UnaryOp::gelu,    UnaryOp::softplus,
                                        UnaryOp::sigmoid,  UnaryOp::sqrt,    UnaryOp::square};

// Inputs inside the op's domain (log and sqrt need x > 0), spread over [-4, 4] otherwise, with
// a few values past softplus's threshold.
std::vector<float> unary_input(UnaryOp op, int64_t n, uint64_t seed) {
  std::vector<float> x = random_vector(n, seed, 2.0f);
  if (op == UnaryOp::log || op == UnaryOp::sqrt)
    for (float& v : x) v = std::fabs(v) + 0.1f;
  if (op == UnaryOp::softplus && n > 3) x[2] = 25.0f;
  return x;
}

TEST(ElementwiseGpu, UnaryForwardAndBackwardMatchCpu) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    for (UnaryOp op : kUnaryOps) {
      for (int64_t n : kSizes) {
        const std::vector<float> x = round_to(dtype, unary_input(op, n, 3));
        std::vector<float> y_ref(static_cast<size_t>(n), 0.0f);
        cpu::unary_forward(op, x.data(), y_ref.data(), n);
        DeviceBuffer x_d = upload(x, dtype), y_d = upload(y_ref, dtype);
        cuda::unary_forward(op, dtype, x_d.get(), y_d.get(), n, nullptr);
        EXPECT_TRUE(close(download(y_d.get(), dtype, n), y_ref, dtype, 1))
            << "forward op " << int(op) << ", n " << n;

        // Backward from the same (rounded) y and dy on both devices.
        const std::vector<float> y = round_to(dtype, y_ref);
        const std::vector<float> dy = round_to(dtype, random_vector(n, 4));
        std::vector<float> dx_ref(static_cast<size_t>(n), 0.0f);
        cpu::unary_backward(op, x.data(), y.data(), dy.data(), dx_ref.data(), n);
        DeviceBuffer yr_d = upload(y, dtype), dy_d = upload(dy, dtype), dx_d(static_cast<size_t>(n) * 4);
        cuda::unary_backward(op, dtype, x_d.get(), yr_d.get(), dy_d.get(), dx_d.get(), n, nullptr);
        EXPECT_TRUE(close(download(dx_d.get(), dtype, n), dx_ref, dtype, 1))
            << "backward op " << int(op) << ", n " << n;
      }
    }
  }
}

TEST(ElementwiseGpu, AffineAndPowMatchCpu) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    for (int64_t n : kSizes) {
      const std::vector<float> x = round_to(dtype, random_vector(n, 5));
      std::vector<float> ref(static_cast<size_t>(n));
      cpu::affine(x.data(), ref.data(), n, -1.75, 0.5);
      DeviceBuffer x_d = upload(x, dtype), y_d(static_cast<size_t>(n) * 4);
      cuda::affine(dtype, x_d.get(), y_d.get(), n, -1.75, 0.5, nullptr);
      EXPECT_TRUE(close(download(y_d.get(), dtype, n), ref, dtype, 1)) << "affine n " << n;

      std::vector<float> positive = x;
      for (float& v : positive) v = std::fabs(v) + 0.25f;
      for (double p : {2.0, 3.0, 0.5, -1.5}) {
        const std::vector<float>& base = (p == 2.0 || p == 3.0) ? x : positive;
        std::vector<float> y_ref(static_cast<size_t>(n)), dx_ref(static_cast<size_t>(n));
        cpu::pow_scalar(base.data(), y_ref.data(), n, p);
        const std::vector<float> dy = round_to(dtype, random_vector(n, 6));
        cpu::pow_scalar_backward(base.data(), dy.data(), dx_ref.data(), n, p);
        DeviceBuffer b_d = upload(base, dtype), dy_d = upload(dy, dtype), dx_d(static_cast<size_t>(n) * 4);
        cuda::pow_scalar(dtype, b_d.get(), y_d.get(), n, p, nullptr);
        EXPECT_TRUE(close(download(y_d.get(), dtype, n), y_ref, dtype, 1)) << "pow " << p;
        cuda::pow_scalar_backward(dtype, b_d.get(), dy_d.get(), dx_d.get(), n, p, nullptr);
        EXPECT_TRUE(close(download(dx_d.get(), dtype, n), dx_ref, dtype, 1)) << "pow bwd " << p;
      }
    }
  }
}

Layout layout_of(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides) {
  Layout l;
  l.ndim = int(shape.size());
  for (int d = 0; d < l.ndim; ++d) {
    l.shape[d] = shape[d];
    l.strides[d] = strides[d];
  }
  return l;
}

// Contiguous strides of shape, with stride 0 on the dimensions flagged in `broadcast`.
Layout broadcast_layout(const std::vector<int64_t>& shape, const std::vector<bool>& broadcast) {
  std::vector<int64_t> strides(shape.size());
  int64_t stride = 1;
  for (int d = int(shape.size()) - 1; d >= 0; --d) {
    strides[d] = broadcast[d] ? 0 : stride;
    if (!broadcast[d]) stride *= shape[d];
  }
  return layout_of(shape, strides);
}

int64_t storage_size(const Layout& l) {
  int64_t max_offset = 0;
  for (int d = 0; d < l.ndim; ++d) max_offset += (l.shape[d] - 1) * l.strides[d];
  return max_offset + 1;
}

TEST(ElementwiseGpu, BinaryForwardAndBackwardMatchCpu) {
  SSM_REQUIRE_GPU();
  struct Case {
    std::vector<int64_t> shape;
    std::vector<bool> a_broadcast, b_broadcast;
  };
  const std::vector<Case> cases = {
      {{4099}, {false}, {false}},
      {{4, 7, 5}, {false, false, false}, {false, false, false}},
      {{4, 7, 5}, {false, false, false}, {false, true, false}},   // b (4, 1, 5)
      {{3, 128}, {true, false}, {false, false}},                  // a (1, 128): a bias
      {{7, 1, 9}, {false, false, false}, {true, true, true}},     // b scalar
      {{2, 3, 4, 5}, {false, true, false, true}, {true, false, true, false}}};
  for (DType dtype : kDtypes) {
    for (const Case& c : cases) {
      const Layout a_layout = broadcast_layout(c.shape, c.a_broadcast);
      const Layout b_layout = broadcast_layout(c.shape, c.b_broadcast);
      const int64_t numel = a_layout.numel();
      const std::vector<float> a = round_to(dtype, random_vector(storage_size(a_layout), 7));
      std::vector<float> b = random_vector(storage_size(b_layout), 8);
      for (float& v : b) v = std::copysign(std::fabs(v) + 0.5f, v);  // away from 0 for div
      b = round_to(dtype, b);
      const std::vector<float> dy = round_to(dtype, random_vector(numel, 9));
      DeviceBuffer a_d = upload(a, dtype), b_d = upload(b, dtype), dy_d = upload(dy, dtype);
      DeviceBuffer out_d(static_cast<size_t>(numel) * 4);
      for (BinaryOp op : {BinaryOp::add, BinaryOp::sub, BinaryOp::mul, BinaryOp::div}) {
        std::vector<float> ref(static_cast<size_t>(numel));
        cpu::binary_forward(op, a.data(), a_layout, b.data(), b_layout, ref.data());
        cuda::binary_forward(op, dtype, a_d.get(), a_layout, b_d.get(), b_layout, out_d.get(),
                             nullptr);
        EXPECT_TRUE(close(download(out_d.get(), dtype, numel), ref, dtype, 1))
            << "forward op " << int(op) << ", numel " << numel;
        for (int which : {0, 1}) {
          cpu::binary_backward(op, which, dy.data(), a.data(), a_layout, b.data(), b_layout,
                               ref.data());
          cuda::binary_backward(op, which, dtype, dy_d.get(), a_d.get(), a_layout, b_d.get(),
                                b_layout, out_d.get(), nullptr);
          EXPECT_TRUE(close(download(out_d.get(), dtype, numel), ref, dtype, 1))
              << "backward op " << int(op) << " which " << which << ", numel " << numel;
        }
      }
    }
  }
}

TEST(ElementwiseGpu, RepeatIsBitwiseIdentical) {
  SSM_REQUIRE_GPU();
  const int64_t n = 4099;
  const std::vector<float> x = random_vector(n, 10);
  DeviceBuffer x_d = upload(x, DType::bf16), first(n * 2), second(n * 2);
  cuda::unary_forward(UnaryOp::gelu, DType::bf16, x_d.get(), first.get(), n, nullptr);
  cuda::unary_forward(UnaryOp::gelu, DType::bf16, x_d.get(), second.get(), n, nullptr);
  EXPECT_EQ(ssmtrain::testing::download_bytes(first.get(), n * 2),
            ssmtrain::testing::download_bytes(second.get(), n * 2));
}

TEST(ElementwiseGpu, RejectsIntegerDtype) {
  SSM_REQUIRE_GPU();
  DeviceBuffer x(64);
  EXPECT_THROW(cuda::unary_forward(UnaryOp::exp, DType::i32, x.get(), x.get(), 4, nullptr),
               KernelError);
}

}  // namespace
