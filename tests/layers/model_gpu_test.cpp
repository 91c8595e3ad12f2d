// The same tiny Mamba-1 model on the CPU (f32) and the GPU (f32 and bf16 activations with
// f32 master weights): equal loss and gradients within tolerance, bitwise repeatable.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/ops.h"
#include "layers/model.h"
#include "tests/support/compare.h"

namespace ssmtrain {
namespace {

ModelOptions small() {
  ModelOptions o;
  o.vocab_size = 97;
  o.d_model = 64;
  o.n_layers = 2;
  return o;
}

struct Outcome {
  double loss;
  std::vector<std::vector<float>> grads;
};

Outcome run(Device device, DType compute) {
  LanguageModel model(small(), 21);
  model.to(device);
  std::vector<int64_t> tok;
  for (int i = 0; i < 2 * 65; ++i) tok.push_back((i * 7 + i / 5) % 97);
  std::vector<int64_t> x, y;
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 64; ++t) {
      x.push_back(tok[b * 65 + t]);
      y.push_back(tok[b * 65 + t + 1]);
    }
  Tensor loss = model.loss(Tensor::from_vector(x, {2, 64}).to(device), Tensor::from_vector(y, {2, 64}).to(device),
                           Tensor(), compute);
  loss.backward();
  Outcome r{loss.item(), {}};
  for (const NamedParameter& p : model.named_parameters()) r.grads.push_back(p.value->grad().to_vector());
  return r;
}

TEST(Mamba1ModelGpu, MatchesCpuInF32AndBf16) {
  SSM_REQUIRE_GPU();
  const Outcome cpu = run(Device::cpu(), DType::f32);
  for (DType compute : {DType::f32, DType::bf16}) {
    const Outcome gpu = run(Device::cuda(0), compute);
    const double tol = compute == DType::f32 ? 1e-5 : 2e-2;
    EXPECT_NEAR(gpu.loss, cpu.loss, tol * std::fabs(cpu.loss)) << dtype_name(compute);
    for (size_t i = 0; i < cpu.grads.size(); ++i)
      EXPECT_TRUE(testing::close(gpu.grads[i], cpu.grads[i], compute, 4096)) << dtype_name(compute) << " grad " << i;
  }
}

TEST(Mamba1ModelGpu, RepeatedRunsAreBitwiseIdentical) {
  SSM_REQUIRE_GPU();
  const Outcome a = run(Device::cuda(0), DType::bf16), b = run(Device::cuda(0), DType::bf16);
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_EQ(a.grads, b.grads);
}

}  // namespace
}  // namespace ssmtrain
