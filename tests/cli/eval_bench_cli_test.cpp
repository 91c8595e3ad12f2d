// `ssmtrain generate --bench` through the binary: a recipe's model (attention-only and pure
// Mamba-2, shrunk) at two batch sizes x two context lengths gives one JSON row per shape with
// positive throughputs whose times add up; option mistakes exit 2 naming what to give.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/cli/binary.h"
#include "tests/data/data_fixture.h"

namespace ssmtrain {
namespace {

using testing::run_binary;
const std::string kRecipes = std::string(SSMTRAIN_SOURCE_DIR) + "/recipes/";

void expect_rows(const nlohmann::json& j) {
  ASSERT_EQ(j["rows"].size(), 4u) << j.dump();
  const int64_t shapes[4][2] = {{1, 8}, {1, 20}, {2, 8}, {2, 20}};
  for (int i = 0; i < 4; ++i) {
    const nlohmann::json& r = j["rows"][i];
    SCOPED_TRACE(r.dump());
    EXPECT_EQ(r["batch"], shapes[i][0]);
    EXPECT_EQ(r["context"], shapes[i][1]);
    EXPECT_TRUE(r["error"].is_null());
    EXPECT_GT(r["tokens_per_s"].get<double>(), 0.0);
    EXPECT_GT(r["decode_tokens_per_s"].get<double>(), 0.0);
    EXPECT_NEAR(r["prefill_s"].get<double>() + r["decode_s"].get<double>(), r["total_s"].get<double>(), 1e-5);
    EXPECT_NEAR(r["tokens_per_s"].get<double>(), double(shapes[i][0] * 5) / r["total_s"].get<double>(),
                1e-2 * r["tokens_per_s"].get<double>() + 0.01);
    EXPECT_EQ(r["peak_memory_bytes"], 0);  // the CPU reports none
  }
}

TEST(EvalBenchCli, DecodeBenchOfARecipesModelWritesOneRowPerShape) {
  data::testing::TempDir dir("bench-cli");
  const testing::CliResult attention =
      run_binary(dir.str(), {"generate", "--bench", "--recipe", kRecipes + "mqar/tiny.yaml", "--batches", "1,2",
                             "--contexts", "8,20", "--max-new-tokens", "5", "--out", "a.json"});
  ASSERT_EQ(attention.status, 0) << attention.err;
  std::ifstream in(dir / "a.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["bench"], "decode");
  EXPECT_EQ(j["new_tokens"], 5);
  EXPECT_EQ(j["device"], "cpu");
  EXPECT_EQ(j["layout"].get<std::string>().substr(0, 2), "AA");
  expect_rows(j);
  EXPECT_EQ(nlohmann::json::parse(attention.out), j);  // stdout holds the same JSON

  const testing::CliResult mamba = run_binary(
      dir.str(), {"generate", "--bench", "--recipe", kRecipes + "tiny/mamba2.yaml", "--set", "model.d_model=32",
                  "--set", "model.n_layers=2", "--set", "model.vocab_size=512", "--set", "model.mamba2.head_dim=16",
                  "--set", "model.mamba2.chunk_size=16", "--set", "model.mamba2.d_state=16", "--batches", "1,2",
                  "--contexts", "8,20", "--max-new-tokens", "5"});
  ASSERT_EQ(mamba.status, 0) << mamba.err;
  const nlohmann::json m = nlohmann::json::parse(mamba.out);
  EXPECT_EQ(m["layout"].get<std::string>().substr(0, 2), "MM");
  expect_rows(m);
}

TEST(EvalBenchCli, OptionMistakesExitTwo) {
  data::testing::TempDir dir("bench-cli");
  const testing::CliResult neither = run_binary(dir.str(), {"generate", "--bench"});
  EXPECT_EQ(neither.status, 2);
  EXPECT_NE(neither.err.find("exactly one of --checkpoint and --recipe"), std::string::npos) << neither.err;
  const testing::CliResult no_prompt = run_binary(dir.str(), {"generate", "--checkpoint", dir.str()});
  EXPECT_EQ(no_prompt.status, 2);
  EXPECT_NE(no_prompt.err.find("--prompt is required"), std::string::npos) << no_prompt.err;
}

}  // namespace
}  // namespace ssmtrain
