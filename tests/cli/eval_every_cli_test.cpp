// eval.every through `ssmtrain train`: the evaluation suite (validation loss, perplexity, and
// NIAH accuracy over the recipe's eval.niah) runs every eval.every steps and after the last one,
// logged to metrics.jsonl as {"step": N, "eval": {...}}; with eval.every 0 a recipe's eval.niah
// is not run, and train says so on stderr instead of ignoring it silently.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/cli/binary.h"
#include "tests/train/run_fixture.h"

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;
using testing::run_binary;

std::vector<std::string> train_args(const fs::path& runs, const std::vector<std::string>& extra) {
  std::vector<std::string> args = {"train", std::string(SSMTRAIN_SOURCE_DIR) + "/recipes/tiny/hybrid-mamba2.yaml"};
  for (const std::string& o : testing::tiny_overrides(
           "hybrid-mamba2", runs, "every",
           {"training.max_steps=5", "checkpoint.every=0", "model.n_layers=3", "model.layout.mixer_pattern=MAM",
            "model.mamba2.head_dim=16", "model.mamba2.chunk_size=16", "model.mamba2.d_state=16",
            "eval.niah.lengths=[96]", "eval.niah.depths=[0.0, 1.0]"})) {
    args.push_back("--set");
    args.push_back(o);
  }
  for (const std::string& o : extra) {
    args.push_back("--set");
    args.push_back(o);
  }
  return args;
}

std::vector<nlohmann::json> eval_rows(const fs::path& metrics) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("eval")) rows.push_back(j);
  }
  return rows;
}

TEST(EvalEveryCli, EvaluationsDuringTrainingAreLoggedToMetricsJsonl) {
  data::testing::TempDir dir("eval-every");
  const fs::path runs = fs::path(dir.str()) / "runs";
  const testing::CliResult r = run_binary(dir.str(), train_args(runs, {"eval.every=2"}));
  ASSERT_EQ(r.status, 0) << r.err;
  const std::vector<nlohmann::json> rows = eval_rows(runs / "every" / "metrics.jsonl");
  ASSERT_EQ(rows.size(), 3u);  // after steps 1 and 3 (0-based, as the step lines) and the last, 4
  const std::vector<int64_t> steps = {1, 3, 4};
  for (size_t i = 0; i < rows.size(); ++i) {
    SCOPED_TRACE(rows[i].dump());
    EXPECT_EQ(rows[i]["step"], steps[i]);
    const nlohmann::json& e = rows[i]["eval"];
    ASSERT_TRUE(e.contains("val_loss"));
    ASSERT_TRUE(e.contains("perplexity"));
    ASSERT_TRUE(e.contains("niah_accuracy"));
    const double v = e["val_loss"], ppl = e["perplexity"], niah = e["niah_accuracy"];
    EXPECT_GT(v, 0.0);
    EXPECT_NEAR(ppl, std::exp(v), 1e-4 * ppl);
    EXPECT_GE(niah, 0.0);
    EXPECT_LE(niah, 1.0);
  }
  EXPECT_NE(r.out.find("| eval | val_loss"), std::string::npos) << r.out;
  // The last row's validation loss is the run's final one (the same held-out tokens).
  std::ifstream in(runs / "every" / "metrics.jsonl");
  double last_val = -1;
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("val_loss")) last_val = j["val_loss"];
  }
  EXPECT_DOUBLE_EQ(rows.back()["eval"]["val_loss"].get<double>(), last_val);
}

TEST(EvalEveryCli, WithoutEvalEveryTheRecipesNiahIsNotedNotSilentlyIgnored) {
  data::testing::TempDir dir("eval-every");
  const fs::path runs = fs::path(dir.str()) / "runs";
  const testing::CliResult r = run_binary(dir.str(), train_args(runs, {"eval.every=0"}));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("eval.niah is not run during this training"), std::string::npos) << r.err;
  EXPECT_TRUE(eval_rows(runs / "every" / "metrics.jsonl").empty());
}

}  // namespace
}  // namespace ssmtrain
