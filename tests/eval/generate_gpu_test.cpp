// eval/generate on the GPU with the decode step as one CUDA graph: for Mamba-1 and Mamba-2
// stacks (with and without an MLP) the graph is used and gives exactly the tokens of the eager
// steps, greedy and seeded sampling alike (the sampling kernel and its device draw counter run
// inside the graph), over a ragged batch, in bf16 and f32 activations; a model whose step
// cannot be captured (attention, MoE) runs eagerly and says so.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "eval/generate.h"
#include "layers/model.h"
#include "tests/support/compare.h"

namespace ssmtrain::eval {
namespace {

ModelOptions base(MixerKind mixer, FfnKind ffn) {
  ModelOptions o;
  o.config.vocab_size = 101;
  o.config.d_model = 64;
  o.config.n_layers = 3;
  o.layers = std::vector<LayerKind>(3, LayerKind{mixer, ffn});
  o.config.mamba1.d_state = 16;
  o.config.mamba2.d_state = 32;
  o.config.mamba2.head_dim = 32;
  o.config.mamba2.chunk_size = 64;
  o.config.attention.n_heads = 4;
  o.config.attention.n_kv_heads = 2;
  o.config.mlp.d_ff = 128;
  o.config.moe.n_experts = 4;
  o.config.moe.top_k = 2;
  o.config.moe.d_ff_expert = 64;
  return o;
}

const std::vector<std::vector<int64_t>> kPrompts{{3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5}, {2, 7}, {1, 8, 2, 8, 1, 8, 2}};

std::vector<Generated> run(const LanguageModel& model, bool graph, DType compute, const SamplingOptions& sampling) {
  GenerateOptions o;
  o.max_new_tokens = 24;
  o.compute_dtype = compute;
  o.sampling = sampling;
  o.cuda_graph = graph;
  return generate(model, kPrompts, o);
}

struct Case {
  std::string name;
  MixerKind mixer;
  FfnKind ffn;
  bool capturable;
};

TEST(GenerateGpu, CudaGraphStepsGiveTheEagerTokens) {
  SSM_REQUIRE_GPU();
  const std::vector<Case> cases{{"mamba2", MixerKind::mamba2, FfnKind::none, true},
                                {"mamba2+mlp", MixerKind::mamba2, FfnKind::mlp, true},
                                {"mamba1", MixerKind::mamba1, FfnKind::none, true},
                                {"attention", MixerKind::attention, FfnKind::mlp, false},
                                {"mamba2+moe", MixerKind::mamba2, FfnKind::moe, false}};
  for (const Case& c : cases) {
    LanguageModel model(base(c.mixer, c.ffn), 11);
    model.to(Device::cuda(0));
    for (DType compute : {DType::bf16, DType::f32})
      for (const SamplingOptions& s : {SamplingOptions{}, SamplingOptions{0.9, 20, 0.95, 77}}) {
        const std::string what = c.name + (compute == DType::bf16 ? " bf16" : " f32") +
                                 (s.temperature > 0 ? " sampled" : " greedy");
        const std::vector<Generated> eager = run(model, false, compute, s), graphed = run(model, true, compute, s);
        ASSERT_EQ(eager.size(), graphed.size());
        for (size_t i = 0; i < eager.size(); ++i) {
          EXPECT_FALSE(eager[i].graphed) << what;
          EXPECT_EQ(graphed[i].graphed, c.capturable) << what;
          EXPECT_EQ(graphed[i].tokens, eager[i].tokens) << what << ", prompt " << i;
          EXPECT_EQ(graphed[i].tokens.size(), 24u) << what;
        }
        // A second graphed run (a new capture on the same decode stream) repeats the first.
        const std::vector<Generated> again = run(model, true, compute, s);
        for (size_t i = 0; i < eager.size(); ++i) EXPECT_EQ(again[i].tokens, graphed[i].tokens) << what;
      }
  }
}

}  // namespace
}  // namespace ssmtrain::eval
