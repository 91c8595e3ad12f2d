// `ssmtrain eval mqar` through the binary on recipes/mqar/tiny.yaml (a few steps): exit 0, a
// summary on stdout, mqar.json with an accuracy per evaluation step and the final accuracy,
// and its SVGs; a recipe whose task does not fit exits 2 naming the key; and `config show` of
// the shipped MQAR recipes and recipes/transformer-130m.yaml resolves the layouts they promise.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/cli/binary.h"
#include "tests/data/data_fixture.h"

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;
using testing::read_text;
using testing::run_binary;

const std::string kRecipes = std::string(SSMTRAIN_SOURCE_DIR) + "/recipes/";

TEST(EvalMqarCli, TrainsScoresAndWritesJsonWithAccuracyPerEvaluation) {
  data::testing::TempDir dir("mqar-cli");
  const testing::CliResult r =
      run_binary(dir.str(), {"eval", "mqar", kRecipes + "mqar/tiny.yaml", "--out", "out", "--set",
                             "training.max_steps=12", "--set", "training.eval_every=4", "--set",
                             "mqar.test_examples=16", "--set", "logging.every=4"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("mqar: AA"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("held-out accuracy"), std::string::npos) << r.err;
  std::ifstream in(dir / "out/mqar.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["steps"], 12);
  EXPECT_EQ(j["num_pairs"], 4);
  EXPECT_EQ(j["answers"], 16 * 4);
  ASSERT_EQ(j["evaluations"].size(), 3u);  // after steps 4, 8, 12
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(j["evaluations"][i]["step"], 4 * (i + 1));
    const double a = j["evaluations"][i]["accuracy"];
    EXPECT_GE(a, 0.0);
    EXPECT_LE(a, 1.0);
  }
  EXPECT_EQ(j["evaluations"][2]["accuracy"], j["accuracy"]);
  EXPECT_EQ(j["device"], "cpu");
  EXPECT_NE(read_text(dir / "out/mqar_accuracy.svg").find("accuracy"), std::string::npos);
  EXPECT_NE(read_text(dir / "out/mqar_loss.svg").find("</svg>"), std::string::npos);
}

TEST(EvalMqarCli, ATaskThatDoesNotFitExitsTwoNamingTheKey) {
  data::testing::TempDir dir("mqar-cli");
  const testing::CliResult r =
      run_binary(dir.str(), {"eval", "mqar", kRecipes + "mqar/tiny.yaml", "--out", "out", "--set", "mqar.num_pairs=6"});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("training.seq_len"), std::string::npos) << r.err;  // 6 pairs + 6 queries > 16
  EXPECT_FALSE(fs::exists(dir / "out"));
  const testing::CliResult sweep = run_binary(dir.str(), {"eval", "mqar", kRecipes + "sweeps/attention-ratio.yaml",
                                                          "--out", "out"});
  EXPECT_EQ(sweep.status, 2);
  EXPECT_NE(sweep.err.find("ssmtrain sweep"), std::string::npos) << sweep.err;
}

// The line "#   mixers XXXX" of `config show`.
std::string mixers_of(const std::string& show) {
  const size_t at = show.find("#   mixers ");
  if (at == std::string::npos) return "";
  const size_t begin = at + 11;
  return show.substr(begin, show.find('\n', begin) - begin);
}

TEST(EvalMqarCli, ShippedMqarRecipesShareTheWidthAndDifferInMixers) {
  data::testing::TempDir dir("mqar-cli");
  const std::vector<std::pair<std::string, std::string>> want = {{"mamba2", "MMMMMMMM"},
                                                                 {"hybrid-1-7", "MMMMAMMM"},
                                                                 {"hybrid-1-3", "MMAMMMAM"},
                                                                 {"attention", "AAAAAAAA"}};
  for (const auto& [name, mixers] : want) {
    SCOPED_TRACE(name);
    const testing::CliResult r =
        run_binary(dir.str(), {"config", "show", kRecipes + "mqar/" + name + ".yaml", "--device", "cuda"});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(mixers_of(r.out), mixers);
    EXPECT_NE(r.out.find("d_model: 128"), std::string::npos);
    EXPECT_NE(r.out.find("num_pairs: 128"), std::string::npos);
  }
}

TEST(EvalMqarCli, Transformer130mIsLlamaStyleAtTheWidthOfMamba2_130m) {
  data::testing::TempDir dir("mqar-cli");
  const testing::CliResult r =
      run_binary(dir.str(), {"config", "show", kRecipes + "transformer-130m.yaml", "--device", "cuda"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(mixers_of(r.out), std::string(12, 'A'));
  EXPECT_NE(r.out.find("#   ffns   " + std::string(12, 'F')), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("d_model: 768"), std::string::npos);
  EXPECT_NE(r.out.find("rope: true"), std::string::npos);
  EXPECT_NE(r.out.find("d_ff: 2048"), std::string::npos);
  EXPECT_NE(r.out.find("vocab_size: 50288"), std::string::npos);
  EXPECT_NE(r.out.find("parameters: 123575040"), std::string::npos) << r.out;  // 124M against mamba2-130m's 129M
  const testing::CliResult m =
      run_binary(dir.str(), {"config", "show", kRecipes + "mamba2-130m.yaml", "--device", "cuda"});
  ASSERT_EQ(m.status, 0) << m.err;
  EXPECT_NE(m.out.find("d_model: 768"), std::string::npos);
}

}  // namespace
}  // namespace ssmtrain
