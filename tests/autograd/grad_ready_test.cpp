// The "gradient ready" hook (autograd/grad_ready.h): reported once per leaf per backward, at
// a moment when the leaf's .grad already holds its final value (a leaf used on two paths, a
// leaf used only inside an activation-checkpointed block), never for a leaf backward does not
// reach, and the guard puts the previous hook back.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <vector>

#include "autograd/checkpoint.h"
#include "autograd/grad_ready.h"
#include "autograd/ops.h"

namespace ssmtrain {
namespace {

Tensor leaf(std::vector<float> values) {
  Tensor t = Tensor::empty({int64_t(values.size())});
  std::memcpy(t.data(), values.data(), values.size() * sizeof(float));
  t.set_requires_grad(true);
  return t;
}

TEST(GradReadyHook, OncePerLeafWithItsFinalGradient) {
  Tensor twice = leaf({1, 2, 3});   // on two paths: d/dx (x*x + 3x) = 2x + 3
  Tensor inside = leaf({0.5f, -1});  // only inside a checkpointed block: d/dy sum(y*y) = 2y
  Tensor unused = leaf({4});
  std::map<const TensorImpl*, std::vector<std::vector<float>>> reports;
  {
    const GradReadyHookGuard guard([&](const TensorImpl& l) {
      // (The checkpointed block's detached input is a leaf of its nested backward: reported too.)
      for (const Tensor* t : {&twice, &inside, &unused})
        if (&l == t->impl()) reports[&l].push_back(t->grad().to_vector());
    });
    const std::vector<Tensor> block =
        checkpoint([&](const std::vector<Tensor>& in) { return std::vector<Tensor>{sum(inside * inside) + in[0]}; },
                   {sum(twice * 3.0)});
    (sum(twice * twice) + block[0]).backward();
  }
  ASSERT_EQ(reports.size(), 2u);  // not `unused`
  ASSERT_EQ(reports[twice.impl()].size(), 1u);
  EXPECT_EQ(reports[twice.impl()][0], (std::vector<float>{5, 7, 9}));
  ASSERT_EQ(reports[inside.impl()].size(), 1u);
  EXPECT_EQ(reports[inside.impl()][0], (std::vector<float>{1, -2}));
  EXPECT_EQ(reports.count(unused.impl()), 0u);
  EXPECT_FALSE(unused.grad().defined());
}

TEST(GradReadyHook, GuardRestoresThePreviousHookAndNoneAfterwards) {
  Tensor x = leaf({1, 2});
  int outer = 0, inner = 0;
  {
    const GradReadyHookGuard a([&](const TensorImpl&) { ++outer; });
    {
      const GradReadyHookGuard b([&](const TensorImpl&) { ++inner; });
      sum(x * x).backward();
    }
    sum(x * x).backward();
  }
  EXPECT_FALSE(bool(grad_ready_hook()));
  sum(x * x).backward();
  EXPECT_EQ(inner, 1);
  EXPECT_EQ(outer, 1);
}

}  // namespace
}  // namespace ssmtrain
