// AdamW against a scalar double-precision transcription of the update rule, weight decay
// only where flagged, and gradient-norm clipping.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "autograd/ops.h"
#include "optim/adamw.h"

namespace ssmtrain {
namespace {

class TwoParams : public Module {
 public:
  TwoParams()
      : w(register_parameter("w", Tensor::from_vector(std::vector<double>{0.5, -1.0, 2.0}, {3}))),
        b(register_parameter("b", Tensor::from_vector(std::vector<double>{0.1, 0.2}, {2}), /*weight_decay=*/false)) {}
  Tensor& w;
  Tensor& b;
};

TEST(AdamW, MatchesTheUpdateRuleStepByStep) {
  TwoParams m;
  AdamWOptions o;
  o.weight_decay = 0.1;
  AdamW opt(m.named_parameters(), o);
  std::vector<double> w = {0.5, -1.0, 2.0}, b = {0.1, 0.2};
  std::vector<double> mw(3, 0), vw(3, 0), mb(2, 0), vb(2, 0);
  const double lr = 0.01;
  for (int step = 1; step <= 5; ++step) {
    // loss = sum(w^3) + sum(b^2): dw = 3 w^2, db = 2 b
    m.zero_grad();
    add(sum(pow(m.w, 3.0)), sum(square(m.b))).backward();
    opt.step(lr);
    auto reference = [&](std::vector<double>& x, std::vector<double>& mm, std::vector<double>& vv, bool decay, bool cube) {
      for (size_t i = 0; i < x.size(); ++i) {
        const double g = cube ? 3 * x[i] * x[i] : 2 * x[i];
        mm[i] = o.beta1 * mm[i] + (1 - o.beta1) * g;
        vv[i] = o.beta2 * vv[i] + (1 - o.beta2) * g * g;
        const double mh = mm[i] / (1 - std::pow(o.beta1, step)), vh = vv[i] / (1 - std::pow(o.beta2, step));
        x[i] -= lr * (mh / (std::sqrt(vh) + o.eps) + (decay ? o.weight_decay * x[i] : 0.0));
      }
    };
    reference(w, mw, vw, true, true);
    reference(b, mb, vb, false, false);
    const std::vector<double> gw = m.w.values<double>(), gb = m.b.values<double>();
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(gw[i], w[i], 1e-12) << "step " << step;
    for (int i = 0; i < 2; ++i) EXPECT_NEAR(gb[i], b[i], 1e-12) << "step " << step;
  }
  EXPECT_EQ(opt.steps(), 5);
}

TEST(AdamW, ClipGradNormScalesToTheLimit) {
  TwoParams m;
  m.zero_grad();
  add(sum(mul(m.w, 3.0)), sum(mul(m.b, 4.0))).backward();  // grads 3,3,3 and 4,4: norm sqrt(27 + 32)
  const std::vector<NamedParameter> params = m.named_parameters();
  EXPECT_NEAR(global_grad_norm(params), std::sqrt(59.0), 1e-12);
  EXPECT_NEAR(clip_grad_norm(params, 1.0), std::sqrt(59.0), 1e-12);
  EXPECT_NEAR(global_grad_norm(params), 1.0, 1e-6);
  EXPECT_NEAR(clip_grad_norm(params, 10.0), 1.0, 1e-6);  // under the limit: unchanged
  EXPECT_NEAR(global_grad_norm(params), 1.0, 1e-6);
}

}  // namespace
}  // namespace ssmtrain
