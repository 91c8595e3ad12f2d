// The Mamba-2 mixer's training forward reads the conv input in place and writes it channel-last
// (no transposes); this checks it against the composition it replaced (in_proj, split,
// transpose to (b, c, l), channel-major conv1d, transpose back, SSD, gated RMSNorm, out_proj),
// rebuilt here from the mixer's own parameters: forward, every gradient, with packed documents,
// and the prefill cache (final conv window and SSM state). CPU, f32.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "autograd/causal_conv1d_ops.h"
#include "autograd/gated_rmsnorm_ops.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/ssd_ops.h"
#include "layers/mamba2.h"

namespace ssmtrain {
namespace {

configs::ModelConfig tiny() {
  configs::ModelConfig m;
  m.vocab_size = 11;
  m.d_model = 8;
  m.n_layers = 2;
  m.family = configs::Family::mamba2;
  m.mamba2.d_state = 4;
  m.mamba2.d_conv = 4;
  m.mamba2.expand = 2;
  m.mamba2.head_dim = 4;  // 4 heads
  m.mamba2.ngroups = 2;
  return m;
}

struct Reference {
  Tensor out, conv_state, ssm_state;
};

// The mixer's forward as it was before the channel-last conv.
Reference transposed_forward(const configs::ModelConfig& m, std::map<std::string, Tensor*>& p, const Tensor& x,
                             const Tensor& doc) {
  const int64_t b = x.size(0), l = x.size(1), e = m.mamba2_d_inner(), h = m.mamba2_n_heads(), pd = m.mamba2.head_dim,
                g = m.mamba2.ngroups, n = m.mamba2.d_state, gn = g * n;
  std::vector<Tensor> parts = split(linear(x, *p["in_proj.weight"]), {e, e + 2 * gn, h}, -1);
  const CausalConv1dOutputs conv = causal_conv1d(
      {transpose(parts[1], 1, 2), *p["conv1d.weight"], *p["conv1d.bias"], {}, doc, true}, true);  // (b, c, l)
  std::vector<Tensor> xbc = split(transpose(conv.out, 1, 2), {e, gn, gn}, -1);
  SsdInputs in;
  in.x = reshape(xbc[0], {b, l, h, pd});
  in.dt = parts[2];
  in.A = neg(exp(*p["A_log"]));
  in.B = reshape(xbc[1], {b, l, g, n});
  in.C = reshape(xbc[2], {b, l, g, n});
  in.D = *p["D"];
  in.dt_bias = *p["dt_bias"];
  in.doc_index = doc;
  in.chunk_size = m.mamba2.chunk_size;
  const SsdOutputs scanned = ssd(in, true);
  const Tensor y = reshape(scanned.out, {b, l, e});
  const Tensor normed = gated_rmsnorm(y, parts[0], *p["norm.weight"], m.norm_eps, e / g);
  return {linear(normed, *p["out_proj.weight"]), conv.final_state, scanned.final_states};
}

void expect_near(const Tensor& got, const Tensor& want, const std::string& what) {
  const std::vector<float> a = got.to_vector(), r = want.to_vector();
  ASSERT_EQ(a.size(), r.size()) << what;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(double(a[i]) - r[i]) / (1e-3 + std::fabs(r[i])));
  EXPECT_LT(worst, 1e-5) << what;
}

TEST(Mamba2Mixer, ChannelLastConvEqualsTheTransposedPathForwardAndBackward) {
  const configs::ModelConfig m = tiny();
  Generator gen(5);
  Mamba2Mixer mixer(m, gen, DType::f32);
  std::map<std::string, Tensor*> params;
  for (const NamedParameter& np : mixer.named_parameters()) params[np.name] = np.value;
  const int64_t b = 2, l = 13;
  Generator data(9);
  Tensor x = Tensor::randn({b, l, m.d_model}, data, DType::f32);
  const Tensor dout = Tensor::randn({b, l, m.d_model}, data, DType::f32);
  // Row 0: documents from 0, 4, 5 (one token) and 9; row 1: from 0 and 11.
  const Tensor doc = Tensor::from_vector(std::vector<int64_t>{0, 0, 0, 0, 1, 2, 2, 2, 2, 3, 3, 3, 3,
                                                              4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5},
                                         {b, l}, DType::i32);
  x.set_requires_grad(true);
  for (const Tensor& document : {Tensor(), doc}) {
    SCOPED_TRACE(document.defined() ? "documents" : "one document");
    auto gradients = [&](const Tensor& out) {
      sum(mul(out, dout)).backward();
      std::map<std::string, Tensor> g{{"x", x.grad()}};
      x.zero_grad();
      for (auto& [name, t] : params) {
        g[name] = t->grad();
        t->zero_grad();
      }
      return g;
    };
    const Tensor out = mixer.forward(x, document);
    const auto got = gradients(out);
    const Reference ref = transposed_forward(m, params, x, document);
    const auto want = gradients(ref.out);
    expect_near(out, ref.out, "out");
    for (const auto& [name, g] : want) {
      ASSERT_TRUE(got.at(name).defined()) << name;
      expect_near(got.at(name), g, "d " + name);
    }
  }
  // The prefill cache: the conv window (b, c, w-1) and the SSM state (b, h, p, n).
  NoGradGuard no_grad;
  const MixerCache cache = mixer.new_cache(b, l, DType::f32, Device::cpu());
  const Tensor out = mixer.prefill(x, cache);
  const Reference ref = transposed_forward(m, params, x, Tensor());
  expect_near(out, ref.out, "prefill out");
  expect_near(cache.conv, ref.conv_state, "conv state");
  expect_near(cache.ssm, ref.ssm_state, "ssm state");
}

}  // namespace
}  // namespace ssmtrain
