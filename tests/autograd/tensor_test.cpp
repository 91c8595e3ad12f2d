// Tensor construction, views, copies across dtypes, devices parsing and the generator.
#include <stdexcept>
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/device.h"
#include "autograd/ops.h"
#include "autograd/rng.h"
#include "autograd/tensor.h"

namespace ssmtrain {
namespace {

TEST(Tensor, FactoriesShapeAndStrides) {
  Tensor t = Tensor::zeros({2, 3, 4});
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.dim(), 3);
  EXPECT_EQ(t.size(-1), 4);
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.str(), "f32[2, 3, 4] on cpu");
  for (float v : t.to_vector()) EXPECT_EQ(v, 0.0f);
  for (float v : Tensor::full({5}, 2.5).to_vector()) EXPECT_EQ(v, 2.5f);
  EXPECT_EQ(Tensor::ones({}).item(), 1.0);
  EXPECT_THROW(Tensor::zeros({2, -1}), std::invalid_argument);
  EXPECT_THROW(Tensor::from_vector(std::vector<float>{1, 2, 3}, {2, 2}), std::invalid_argument);
}

TEST(Tensor, NarrowAndReshapeAreViews) {
  std::vector<float> v(24);
  for (int i = 0; i < 24; ++i) v[i] = float(i);
  Tensor t = Tensor::from_vector(v, {2, 3, 4});
  Tensor n = narrow(t, 2, 1, 2);  // (2, 3, 2), strides (12, 4, 1), offset 1
  EXPECT_TRUE(n.shares_storage_with(t));
  EXPECT_FALSE(n.is_contiguous());
  EXPECT_EQ(n.offset(), 1);
  EXPECT_EQ(n.to_vector(), (std::vector<float>{1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22}));
  Tensor r = reshape(t, {6, -1});
  EXPECT_TRUE(r.shares_storage_with(t));
  EXPECT_EQ(r.shape(), (Shape{6, 4}));
  Tensor rn = reshape(n, {-1});  // not contiguous: a copy
  EXPECT_FALSE(rn.shares_storage_with(t));
  EXPECT_EQ(rn.to_vector(), n.to_vector());
  EXPECT_THROW(reshape(t, {5, -1}), std::invalid_argument);
  EXPECT_THROW(narrow(t, 0, 1, 2), std::invalid_argument);
}

TEST(Tensor, TransposeConcatSplit) {
  Tensor t = Tensor::from_vector(std::vector<float>{0, 1, 2, 3, 4, 5}, {2, 3});
  EXPECT_EQ(transpose(t, 0, 1).to_vector(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  Tensor c = concat({t, t}, 0);
  EXPECT_EQ(c.shape(), (Shape{4, 3}));
  Tensor c1 = concat({t, narrow(t, 1, 0, 1)}, 1);
  EXPECT_EQ(c1.to_vector(), (std::vector<float>{0, 1, 2, 0, 3, 4, 5, 3}));
  std::vector<Tensor> parts = split(t, {1, 2}, 1);
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(parts[0].to_vector(), (std::vector<float>{0, 3}));
  EXPECT_EQ(parts[1].to_vector(), (std::vector<float>{1, 2, 4, 5}));
  EXPECT_THROW(split(t, {1, 1}, 1), std::invalid_argument);
  EXPECT_THROW(concat({t, Tensor::zeros({3, 3})}, 1), std::invalid_argument);
}

TEST(Tensor, CastsRoundToNearestEven) {
  // 1 + 2^-8 is a tie between bf16 neighbours 1 and 1 + 2^-7: rounds to even (1).
  Tensor t = Tensor::from_vector(std::vector<float>{1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -2.5f}, {3});
  EXPECT_EQ(t.to(DType::bf16).to_vector(), (std::vector<float>{1.0f, 1.0f + 4.0f / 256, -2.5f}));
  EXPECT_EQ(Tensor::from_vector(std::vector<float>{1.9f, -1.9f}, {2}).to(DType::i64).values<int64_t>(),
            (std::vector<int64_t>{1, -1}));
  Tensor d = t.to(DType::f64);
  EXPECT_EQ(d.dtype(), DType::f64);
  EXPECT_EQ(d.values<double>()[2], -2.5);
}

TEST(Tensor, ItemAndValuesErrors) {
  EXPECT_THROW(Tensor::zeros({2}).item(), std::invalid_argument);
  Tensor undefined;
  EXPECT_FALSE(undefined.defined());
  EXPECT_THROW(undefined.shape(), std::logic_error);
  EXPECT_THROW(Tensor::zeros({2}).data_ptr<double>(), std::invalid_argument);
}

TEST(Tensor, CpuOpsRejectBf16WithAClearMessage) {
  Tensor b = Tensor::zeros({2}, DType::bf16);
  try {
    (void)exp(b);
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("exp"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bf16"), std::string::npos) << e.what();
  }
}

TEST(Device, Parse) {
  EXPECT_EQ(Device::parse("cpu"), Device::cpu());
  EXPECT_EQ(Device::parse("cuda"), Device::cuda(0));
  EXPECT_EQ(Device::parse("cuda:3"), Device::cuda(3));
  EXPECT_EQ(Device::cuda(1).str(), "cuda:1");
  EXPECT_THROW(Device::parse("gpu"), std::invalid_argument);
  EXPECT_THROW(Device::parse("cuda:x"), std::invalid_argument);
}

TEST(Generator, SameSeedSameBitsAndOffsetsAdvance) {
  Generator a(42), b(42), c(43);
  Tensor x = Tensor::randn({1000}, a);
  Tensor y = Tensor::randn({1000}, b);
  EXPECT_EQ(x.to_vector(), y.to_vector());
  EXPECT_NE(x.to_vector(), Tensor::randn({1000}, c).to_vector());
  EXPECT_EQ(a.offset(), 250u);
  // The next draw continues the stream: it equals the tail of one larger draw.
  Tensor next = Tensor::randn({8}, a);
  Generator d(42);
  std::vector<float> big = Tensor::randn({1008}, d).to_vector();
  EXPECT_EQ(next.to_vector(), std::vector<float>(big.begin() + 1000, big.end()));
  // Restoring the state replays the stream.
  Generator e(0);
  e.set_state(42, 250);
  EXPECT_EQ(Tensor::randn({8}, e).to_vector(), next.to_vector());
}

TEST(Generator, NormalAndUniformMoments) {
  Generator g(7);
  const std::vector<float> n = Tensor::randn({200000}, g, DType::f32, Device::cpu(), 1.0f, 2.0f).to_vector();
  double mean = 0, var = 0;
  for (float v : n) mean += v;
  mean /= double(n.size());
  for (float v : n) var += (v - mean) * (v - mean);
  var /= double(n.size());
  EXPECT_NEAR(mean, 1.0, 0.02);
  EXPECT_NEAR(std::sqrt(var), 2.0, 0.02);
  const std::vector<float> u = Tensor::rand({200000}, g, DType::f32, Device::cpu(), -1.0f, 3.0f).to_vector();
  double umean = 0;
  for (float v : u) {
    ASSERT_GE(v, -1.0f);
    ASSERT_LT(v, 3.0f);
    umean += v;
  }
  EXPECT_NEAR(umean / double(u.size()), 1.0, 0.02);
}

}  // namespace
}  // namespace ssmtrain
