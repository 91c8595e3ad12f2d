// Tests of configs/show.h: `config show` prints the resolved config, which still loads as the
// same config, followed by the layout strings and derived sizes as comments.
#include "configs/show.h"

#include <gtest/gtest.h>

#include "configs/load.h"

namespace ssmtrain::configs {
namespace {

const std::string kJamba =
    "model:\n"
    "  family: hybrid\n"
    "  ssm: mamba1\n"
    "  d_model: 128\n"
    "  n_layers: 8\n"
    "  attention: {n_heads: 4}\n"
    "  moe: {n_experts: 8, top_k: 2}\n"
    "  layout: {attention_period: 8, attention_offset: 4, moe_period: 2, moe_offset: 1, ffn: mlp}\n"
    "training: {seq_len: 256, global_batch_tokens: 8192, micro_batch: 8, max_steps: 300}\n";

TEST(Show, PrintsTheConfigThenTheLayoutAndSizesAsComments) {
  const Config config = parse_config(kJamba, "jamba.yaml");
  const std::string shown = render_config_show(config);
  EXPECT_TRUE(shown.starts_with(dump_config(config))) << shown;
  EXPECT_NE(shown.find("#   mixers MMMMAMMM\n#   ffns   FEFEFEFE\n"), std::string::npos) << shown;
  EXPECT_NE(shown.find("# mamba1: 7 layers, d_inner 256, dt_rank 8\n"), std::string::npos) << shown;
  EXPECT_NE(shown.find("# attention: 1 layer, n_heads 4, head_dim 32, n_kv_heads 4\n"), std::string::npos);
  EXPECT_NE(shown.find("# moe: 4 layers, 8 experts of d_ff 512, top 2\n"), std::string::npos);
  EXPECT_NE(shown.find("# step: 8192 tokens, 32 sequences of 256 tokens, 4 micro-batches of 8 (grad_accum on "
                       "N ranks: 4 / N)\n"),
            std::string::npos)
      << shown;
  EXPECT_NE(shown.find("# run: 300 steps, 2.5M tokens\n"), std::string::npos) << shown;
  EXPECT_NE(shown.find("# parameters and FLOPs per token: computed from the model (layers/)\n"),
            std::string::npos);
  EXPECT_EQ(parse_config(shown, "shown.yaml"), config);  // the comments are comments
}

TEST(Show, PrintsTheModelCostItIsGiven) {
  const Config config = parse_config(kJamba, "jamba.yaml");
  const std::string shown = render_config_show(config, ModelCost{129215232, 42000000, 7.8e8});
  EXPECT_NE(shown.find("# parameters: 129215232 (129.2M), active per token 42000000 (42.0M); "
                       "780.0M FLOPs per token (forward + backward)\n"),
            std::string::npos)
      << shown;
}

}  // namespace
}  // namespace ssmtrain::configs
