// GPU tests of kernels/reduce.h: sum over a dimension, sum_to, (log-)softmax forward and backward
// and sum_all against the CPU reference in f32 and bf16, on odd and even (outer, n, inner)
// shapes; and bit-for-bit repeatability of each reduction.
#include "kernels/reduce.h"

#include <gtest/gtest.h>

#include <tuple>
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

// (outer, n, inner): inner == 1 takes the per-row path, inner > 1 the per-column path.
const std::vector<std::tuple<int64_t, int64_t, int64_t>> kShapes = {
    {1, 1, 1},   {7, 128, 1}, {3, 1000, 1}, {2, 4099, 1}, {1000, 7, 1},
    {5, 7, 3},   {4, 129, 6}, {1, 1, 4099}, {3, 33, 128}, {1, 4099, 2}};

TEST(ReduceGpu, SumDimAndBackwardMatchCpu) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    for (auto [outer, n, inner] : kShapes) {
      const int64_t numel = outer * n * inner;
      const std::vector<float> x = round_to(dtype, random_vector(numel, 1));
      std::vector<float> ref(static_cast<size_t>(outer * inner));
      cpu::sum_dim(x.data(), outer, n, inner, ref.data(), 0.5);
      DeviceBuffer x_d = upload(x, dtype), y_d(static_cast<size_t>(outer * inner) * 4);
      cuda::sum_dim(dtype, x_d.get(), outer, n, inner, y_d.get(), 0.5, nullptr);
      EXPECT_TRUE(close(download(y_d.get(), dtype, outer * inner), ref, dtype, n))
          << "sum_dim " << outer << "x" << n << "x" << inner;

      const std::vector<float> dy = round_to(dtype, random_vector(outer * inner, 2));
      std::vector<float> dx_ref(static_cast<size_t>(numel));
      cpu::sum_dim_backward(dy.data(), outer, n, inner, dx_ref.data(), -2.0);
      DeviceBuffer dy_d = upload(dy, dtype), dx_d(static_cast<size_t>(numel) * 4);
      cuda::sum_dim_backward(dtype, dy_d.get(), outer, n, inner, dx_d.get(), -2.0, nullptr);
      EXPECT_TRUE(close(download(dx_d.get(), dtype, numel), dx_ref, dtype, 1))
          << "sum_dim_backward " << outer << "x" << n << "x" << inner;
    }
  }
}

TEST(ReduceGpu, SoftmaxForwardAndBackwardMatchCpu) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    for (bool log : {false, true}) {
      for (auto [outer, n, inner] : kShapes) {
        const int64_t numel = outer * n * inner;
        const std::vector<float> x = round_to(dtype, random_vector(numel, 3, 3.0f));
        std::vector<float> y_ref(static_cast<size_t>(numel));
        cpu::softmax_forward(x.data(), outer, n, inner, y_ref.data(), log);
        DeviceBuffer x_d = upload(x, dtype), y_d(static_cast<size_t>(numel) * 4);
        cuda::softmax_forward(dtype, x_d.get(), outer, n, inner, y_d.get(), log, nullptr);
        EXPECT_TRUE(close(download(y_d.get(), dtype, numel), y_ref, dtype, n))
            << (log ? "log_softmax " : "softmax ") << outer << "x" << n << "x" << inner;

        const std::vector<float> y = round_to(dtype, y_ref);
        const std::vector<float> dy = round_to(dtype, random_vector(numel, 4));
        std::vector<float> dx_ref(static_cast<size_t>(numel));
        cpu::softmax_backward(y.data(), dy.data(), outer, n, inner, dx_ref.data(), log);
        DeviceBuffer yr_d = upload(y, dtype), dy_d = upload(dy, dtype), dx_d(static_cast<size_t>(numel) * 4);
        cuda::softmax_backward(dtype, yr_d.get(), dy_d.get(), outer, n, inner, dx_d.get(), log,
                               nullptr);
        EXPECT_TRUE(close(download(dx_d.get(), dtype, numel), dx_ref, dtype, n))
            << (log ? "log_softmax" : "softmax") << " backward " << outer << "x" << n << "x"
            << inner;
      }
    }
  }
}

struct SumToCase {
  std::vector<int64_t> full;
  std::vector<bool> reduced;  // dimensions summed away (size 1 in dst)
};

// dst's strides over the full shape: contiguous over the kept dims, 0 on the reduced ones.
Layout dst_layout_for(const SumToCase& c, int64_t* dst_numel) {
  Layout l;
  l.ndim = int(c.full.size());
  int64_t stride = 1;
  for (int d = l.ndim - 1; d >= 0; --d) {
    l.shape[d] = c.full[d];
    l.strides[d] = c.reduced[d] ? 0 : stride;
    if (!c.reduced[d]) stride *= c.full[d];
  }
  *dst_numel = stride;
  return l;
}

Layout full_layout_for(const SumToCase& c) {
  Layout l;
  l.ndim = int(c.full.size());
  int64_t stride = 1;
  for (int d = l.ndim - 1; d >= 0; --d) {
    l.shape[d] = c.full[d];
    l.strides[d] = stride;
    stride *= c.full[d];
  }
  return l;
}

const std::vector<SumToCase> kSumToCases = {
    {{4099, 16}, {true, false}},               // bias gradient over rows
    {{4, 7, 5}, {true, false, true}},
    {{6, 33, 10}, {false, true, false}},
    {{128, 1000}, {false, true}},              // reduce the contiguous dimension
    {{2, 3, 4, 5}, {true, true, true, true}},  // to a scalar
    {{7, 1, 9}, {false, false, false}},        // nothing reduced: a copy
};

TEST(ReduceGpu, SumToMatchesCpu) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    for (const SumToCase& c : kSumToCases) {
      const Layout full = full_layout_for(c);
      int64_t dst_numel = 0;
      const Layout dst = dst_layout_for(c, &dst_numel);
      const int64_t numel = full.numel();
      const std::vector<float> src = round_to(dtype, random_vector(numel, 5));
      std::vector<float> ref(static_cast<size_t>(dst_numel));
      cpu::sum_to(src.data(), full, ref.data(), dst);
      DeviceBuffer src_d = upload(src, dtype), dst_d(static_cast<size_t>(dst_numel) * 4);
      cuda::sum_to(dtype, src_d.get(), full, dst_d.get(), dst, nullptr);
      EXPECT_TRUE(close(download(dst_d.get(), dtype, dst_numel), ref, dtype, numel / dst_numel))
          << "sum_to of " << numel << " elements to " << dst_numel;
    }
  }
}

TEST(ReduceGpu, SumAllMatchesCpu) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    for (int64_t n : {1, 7, 128, 1000, 4099, 1000003}) {
      const std::vector<float> x = round_to(dtype, random_vector(n, 6, 1.0f, 0.1f));
      float ref = 0;
      cpu::sum_all(x.data(), n, &ref);
      DeviceBuffer x_d = upload(x, dtype), out_d(4);
      cuda::sum_all(dtype, x_d.get(), n, out_d.get(), nullptr);
      EXPECT_TRUE(close(download(out_d.get(), dtype, 1), {ref}, dtype, n)) << "sum_all n " << n;
    }
  }
}

// Each reduction run twice on the same input gives the same bits.
TEST(ReduceGpu, RepeatIsBitwiseIdentical) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    const int64_t outer = 33, n = 4099, inner = 1;
    const std::vector<float> x = random_vector(outer * n * inner, 7);
    DeviceBuffer x_d = upload(x, dtype);
    const size_t bytes = size_t(outer * n) * 4;
    DeviceBuffer a(bytes), b(bytes);
    auto same = [&](size_t count) { return download_bytes(a.get(), count) == download_bytes(b.get(), count); };

    cuda::sum_dim(dtype, x_d.get(), outer, n, inner, a.get(), 1.0, nullptr);
    cuda::sum_dim(dtype, x_d.get(), outer, n, inner, b.get(), 1.0, nullptr);
    EXPECT_TRUE(same(static_cast<size_t>(outer) * 2)) << "sum_dim";

    cuda::softmax_forward(dtype, x_d.get(), outer, n, inner, a.get(), true, nullptr);
    cuda::softmax_forward(dtype, x_d.get(), outer, n, inner, b.get(), true, nullptr);
    EXPECT_TRUE(same(static_cast<size_t>(outer * n) * 2)) << "log_softmax";

    const SumToCase c{{outer, n}, {true, false}};
    int64_t dst_numel = 0;
    const Layout dst = dst_layout_for(c, &dst_numel);
    cuda::sum_to(dtype, x_d.get(), full_layout_for(c), a.get(), dst, nullptr);
    cuda::sum_to(dtype, x_d.get(), full_layout_for(c), b.get(), dst, nullptr);
    EXPECT_TRUE(same(static_cast<size_t>(dst_numel) * 2)) << "sum_to";

    cuda::sum_all(dtype, x_d.get(), outer * n, a.get(), nullptr);
    cuda::sum_all(dtype, x_d.get(), outer * n, b.get(), nullptr);
    EXPECT_TRUE(same(2)) << "sum_all";
  }
}

}  // namespace
