// AdamW and gradient clipping on the GPU (the multi-tensor path of optim/adamw.cpp) against the
// same optimizer on the CPU in f32 from the same start, with the bf16 weight copies.
#include <gtest/gtest.h>

#include <vector>

#include "autograd/ops.h"
#include "optim/adamw.h"
#include "tests/support/compare.h"

namespace ssmtrain {
namespace {

using testing::close;
using testing::random_vector;

class Params : public Module {
 public:
  explicit Params(Device device)
      : w(register_parameter("w", to_device(Tensor::from_vector(random_vector(40000, 1), {200, 200}), device))),
        b(register_parameter("b", to_device(Tensor::from_vector(random_vector(33, 2), {33}), device), false)) {}
  Tensor& w;
  Tensor& b;
};

TEST(AdamWGpuOptim, MatchesCpuWithClippingAndCopies) {
  SSM_REQUIRE_GPU();
  Params cpu(Device::cpu()), gpu(Device::cuda(0));
  AdamWOptions o;
  AdamWOptions o_gpu = o;
  o_gpu.bf16_copies = true;
  AdamW opt_cpu(cpu.named_parameters(), o), opt_gpu(gpu.named_parameters(), o_gpu);
  EXPECT_FALSE(opt_cpu.compute_copy("w").defined());
  ASSERT_EQ(opt_gpu.compute_copy("w").dtype(), DType::bf16);
  for (int step = 1; step <= 3; ++step) {
    double norms[2];
    int i = 0;
    for (Params* m : {&cpu, &gpu}) {
      m->zero_grad();
      add(sum(pow(m->w, 3.0)), sum(square(m->b))).backward();
      norms[i++] = clip_grad_norm(m->named_parameters(), 50.0);
    }
    EXPECT_NEAR(norms[1], norms[0], 1e-5 * norms[0]) << "step " << step;
    opt_cpu.step(1e-2);
    opt_gpu.step(1e-2);
    EXPECT_TRUE(close(to_device(gpu.w, Device::cpu()).to_vector(), cpu.w.to_vector(), DType::f32, 1)) << step;
    EXPECT_TRUE(close(to_device(gpu.b, Device::cpu()).to_vector(), cpu.b.to_vector(), DType::f32, 1)) << step;
    const std::vector<float> copy = to_device(cast(opt_gpu.compute_copy("w"), DType::f32), Device::cpu()).to_vector();
    EXPECT_EQ(copy, testing::round_to(DType::bf16, to_device(gpu.w, Device::cpu()).to_vector())) << step;
  }
}

}  // namespace
}  // namespace ssmtrain
