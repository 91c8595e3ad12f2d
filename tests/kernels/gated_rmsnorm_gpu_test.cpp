// The CUDA gated RMSNorm (kernels/cuda/gated_rmsnorm.cu, through the autograd node) against the
// CPU reference in f64: output and the gradients of y, z and weight, with and without z, one
// group and several, odd and even sizes, a row count that is not a multiple of the backward's
// strip, f32 and bf16; and bitwise repeats.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/gated_rmsnorm_ops.h"
#include "tests/support/compare.h"

namespace ssmtrain {
namespace {

const Device kGpu = Device::cuda(0);

struct Case {
  int64_t rows, d, group_size;
  bool with_z;
  DType dtype;
  std::string str() const {
    return "rows" + std::to_string(rows) + " d" + std::to_string(d) + " group" + std::to_string(group_size) +
           (with_z ? " +z" : "") + " " + dtype_name(dtype);
  }
};

std::vector<std::vector<float>> run(const Case& c, Device device, DType dtype) {
  const std::vector<float> y = testing::round_to(c.dtype, testing::random_vector(c.rows * c.d, 1));
  const std::vector<float> z = testing::round_to(c.dtype, testing::random_vector(c.rows * c.d, 2));
  const std::vector<float> w = testing::round_to(c.dtype, testing::random_vector(c.d, 3, 0.2f, 1.0f));
  const std::vector<float> g = testing::round_to(c.dtype, testing::random_vector(c.rows * c.d, 4));
  auto leaf = [&](const std::vector<float>& v, const Shape& shape) {
    Tensor t = Tensor::from_vector(v, shape).to(device).to(dtype).detach();
    t.set_requires_grad();
    return t;
  };
  Tensor ty = leaf(y, {c.rows, c.d}), tz = c.with_z ? leaf(z, {c.rows, c.d}) : Tensor(), tw = leaf(w, {c.d});
  Tensor out = gated_rmsnorm(ty, tz, tw, 1e-5, c.group_size);
  run_backward({out}, {Tensor::from_vector(g, {c.rows, c.d}).to(device).to(dtype)});
  std::vector<std::vector<float>> r{out.to(DType::f32).to_vector(), ty.grad().to(DType::f32).to_vector(),
                                    tw.grad().to(DType::f32).to_vector()};
  if (c.with_z) r.push_back(tz.grad().to(DType::f32).to_vector());
  return r;
}

const char* kNames[] = {"out", "dy", "dweight", "dz"};

void check_case(const Case& c) {
  SCOPED_TRACE(c.str());
  const auto ref = run(c, Device::cpu(), DType::f64);
  const auto got = run(c, kGpu, c.dtype);
  ASSERT_EQ(ref.size(), got.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    // dweight sums over the rows; the rest over a group.
    const int64_t reduction = i == 2 ? c.rows : c.group_size;
    EXPECT_TRUE(testing::close(got[i], ref[i], c.dtype, reduction)) << kNames[i];
  }
}

class GatedRmsNormGpu : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override { SSM_REQUIRE_GPU(); }
};

TEST_P(GatedRmsNormGpu, MatchesCpu) {
  for (bool with_z : {false, true}) {
    check_case({67, 256, 256, with_z, GetParam()});
    check_case({70, 384, 64, with_z, GetParam()});
    check_case({33, 21, 7, with_z, GetParam()});  // odd sizes, groups smaller than a warp
    check_case({5, 3072, 3072, with_z, GetParam()});
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GatedRmsNormGpu, ::testing::Values(DType::f32, DType::bf16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(GatedRmsNormGpuMisc, RepeatedRunsAreBitwiseIdentical) {
  SSM_REQUIRE_GPU();
  const Case c{1000, 512, 128, true, DType::bf16};
  EXPECT_EQ(run(c, kGpu, c.dtype), run(c, kGpu, c.dtype));
}

}  // namespace
}  // namespace ssmtrain
