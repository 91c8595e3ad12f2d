// Decoding on the GPU: a prefill of 100 tokens (not a multiple of the Mamba-2 chunk of 64)
// followed by 30 single-token steps, against the CPU's f32 parallel forward over all 130
// tokens, for Mamba-1, Mamba-2 (1 and 2 groups), attention with GQA and RoPE, MoE and a
// hybrid. Tolerances on the normalised error ||got - ref|| / ||ref|| of the logits: 1e-4 with
// f32 activations, 3e-2 with bf16 activations (f32 states and master weights; the bf16 error
// of two dozen chained GEMMs, and MoE tokens whose top-k flips under rounding).
#include <gtest/gtest.h>

#include <ostream>
#include <string>
#include <vector>

#include "autograd/node.h"
#include "autograd/ops.h"
#include "layers/model.h"
#include "tests/support/compare.h"

namespace ssmtrain {
namespace {

struct Case {
  std::string name;
  ModelOptions options;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

ModelOptions base() {
  ModelOptions o;
  o.config.vocab_size = 97;
  o.config.d_model = 64;
  o.config.n_layers = 2;
  o.config.mamba2.d_state = 32;
  o.config.mamba2.head_dim = 32;  // 4 heads
  o.config.mamba2.chunk_size = 64;
  o.config.attention.n_heads = 4;  // head dim 16
  o.config.attention.n_kv_heads = 2;
  o.config.mlp.d_ff = 128;
  o.config.moe.n_experts = 4;
  o.config.moe.top_k = 2;
  o.config.moe.d_ff_expert = 96;
  return o;
}

std::vector<Case> cases() {
  std::vector<Case> out;
  ModelOptions o = base();
  o.config.family = configs::Family::mamba1;
  out.push_back({"Mamba1", o});
  o = base();
  o.config.family = configs::Family::mamba2;
  out.push_back({"Mamba2Groups1", o});
  o.config.mamba2.ngroups = 2;
  out.push_back({"Mamba2Groups2", o});
  o = base();
  o.layers = {{MixerKind::attention, FfnKind::mlp}, {MixerKind::attention, FfnKind::mlp}};
  o.config.attention.rope = true;
  out.push_back({"AttentionGqaRope", o});
  o = base();
  o.config.n_layers = 4;
  o.layers = {{MixerKind::mamba1, FfnKind::moe},
              {MixerKind::attention, FfnKind::mlp},
              {MixerKind::mamba2, FfnKind::moe},
              {MixerKind::attention, FfnKind::none}};
  o.config.mamba1.dt_bc_norm = true;
  out.push_back({"HybridMoE", o});
  return out;
}

class DecodeGpu : public ::testing::TestWithParam<Case> {};

TEST_P(DecodeGpu, PrefillThenStepsMatchTheCpuForward) {
  SSM_REQUIRE_GPU();
  NoGradGuard no_grad;
  const ModelOptions& o = GetParam().options;
  const int64_t b = 2, l = 130, prefill = 100, v = o.config.vocab_size;
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < b * l; ++i) ids.push_back((i * 7 + i / 5) % v);
  LanguageModel cpu_model(o, 21);
  std::vector<float> ref = cpu_model.logits(Tensor::from_vector(ids, {b, l})).to_vector();  // (b l, v)

  LanguageModel model(o, 21);
  model.to(Device::cuda(0));
  for (DType compute : {DType::f32, DType::bf16}) {
    InferenceCache cache = model.new_inference_cache(b, l, compute);
    std::vector<int64_t> head;
    for (int64_t i = 0; i < b; ++i) head.insert(head.end(), ids.begin() + i * l, ids.begin() + i * l + prefill);
    const std::vector<float> pre =
        cast(model.prefill(Tensor::from_vector(head, {b, prefill}).to(Device::cuda(0)), cache), DType::f32).to_vector();
    std::vector<float> got(size_t(b * l * v)), want(size_t(b * l * v));
    for (int64_t i = 0; i < b; ++i)
      for (int64_t t = 0; t < prefill; ++t)
        for (int64_t c = 0; c < v; ++c) got[size_t((i * l + t) * v + c)] = pre[size_t((i * prefill + t) * v + c)];
    for (int64_t t = prefill; t < l; ++t) {
      const std::vector<int64_t> next{ids[size_t(t)], ids[size_t(l + t)]};
      const std::vector<float> step =
          cast(model.step(Tensor::from_vector(next, {b}).to(Device::cuda(0)), cache, {t, t}), DType::f32).to_vector();
      for (int64_t i = 0; i < b; ++i)
        for (int64_t c = 0; c < v; ++c) got[size_t((i * l + t) * v + c)] = step[size_t(i * v + c)];
    }
    // fp32 against the CPU fp32 forward. bf16 against the GPU's own bf16 parallel forward: against
    // fp32, a bf16 rounding can flip an MoE top-k choice and move a token's logits by far more
    // than rounding (seen on an H200: 0.053 normalised for HybridMoE against tolerance 0.03).
    const double tol = compute == DType::f32 ? 1e-4 : 3e-2;
    if (compute == DType::bf16)
      ref = cast(model.logits(Tensor::from_vector(ids, {b, l}).to(Device::cuda(0)), Tensor(), DType::bf16), DType::f32)
                .to_vector();
    const testing::Error err = testing::compare(got, ref);
    EXPECT_EQ(err.nonfinite, 0) << dtype_name(compute);
    EXPECT_LE(err.normalized, tol) << dtype_name(compute) << ", worst element " << err.worst;
    // The steps alone (the tokens after the prefill), so the prefill cannot hide them.
    std::vector<float> got_steps, ref_steps;
    for (int64_t i = 0; i < b; ++i) {
      got_steps.insert(got_steps.end(), got.begin() + (i * l + prefill) * v, got.begin() + (i + 1) * l * v);
      ref_steps.insert(ref_steps.end(), ref.begin() + (i * l + prefill) * v, ref.begin() + (i + 1) * l * v);
    }
    EXPECT_LE(testing::compare(got_steps, ref_steps).normalized, tol) << dtype_name(compute) << " steps";
  }
}

INSTANTIATE_TEST_SUITE_P(Mixers, DecodeGpu, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
}  // namespace ssmtrain
