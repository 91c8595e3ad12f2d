// The ssmtrain binary (cli/main.cpp) as a user meets it: each bad recipe (unknown key, wrong
// type, inconsistent dimensions, missing recipe file, missing corpus, bad --set) exits with
// status 2 and one line on stderr naming file:line and the key; `config show` prints the
// layout, parameter counts and FLOPs of the shipped recipes; --help works everywhere.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/cli/binary.h"

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;

using Result = testing::CliResult;

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("ssmtrain-cli-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs `ssmtrain ARGS` in the test's directory; arguments are passed through the shell
  // single-quoted.
  Result run(const std::vector<std::string>& args) const { return testing::run_binary(dir_, args); }

  fs::path write(const std::string& name, const std::string& text) const {
    std::ofstream(dir_ / name) << text;
    return dir_ / name;
  }

  fs::path dir_;
};

// A valid recipe; the tests edit one line of it.
const std::string kRecipe =
    "model:\n"                           // 1
    "  family: mamba2\n"                 // 2
    "  d_model: 64\n"                    // 3
    "  n_layers: 2\n"                    // 4
    "  mamba2: {head_dim: 16, d_state: 16}\n"  // 5
    "data:\n"                            // 6
    "  train: corpus/none\n"             // 7
    "training:\n"                        // 8
    "  seq_len: 64\n"                    // 9
    "  global_batch_tokens: 1024\n"      // 10
    "  micro_batch: 4\n"                 // 11
    "  max_steps: 200\n";                // 12

std::string edited(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return at == std::string::npos ? text : text.replace(at, from.size(), to);
}

int lines(const std::string& text) { return int(std::count(text.begin(), text.end(), '\n')); }

// Exit 2 and a single stderr line holding every one of `expected`.
void expect_recipe_error(const Result& r, const std::vector<std::string>& expected) {
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_EQ(lines(r.err), 1) << r.err;
  for (const std::string& part : expected) EXPECT_NE(r.err.find(part), std::string::npos) << "missing '" << part << "' in: " << r.err;
}

TEST_F(Cli, UnknownKeyNamesLineKeyAndNearestKey) {
  write("r.yaml", edited(kRecipe, "  d_model: 64", "  d_modle: 64"));
  for (const char* command : {"train", "show"}) {
    const Result r = std::string(command) == "train" ? run({"train", "r.yaml"}) : run({"config", "show", "r.yaml"});
    expect_recipe_error(r, {"r.yaml:3:3", "model.d_modle", "did you mean d_model"});
  }
}

TEST_F(Cli, WrongTypeNamesLineKeyAndWhatWasFound) {
  write("r.yaml", edited(kRecipe, "max_steps: 200", "max_steps: lots"));
  expect_recipe_error(run({"train", "r.yaml"}), {"r.yaml:12:", "training.max_steps", "lots"});
}

TEST_F(Cli, InconsistentDimensionsNameTheKey) {
  // d_inner = 2 * 64 = 128 is not a multiple of head_dim 48.
  write("r.yaml", edited(kRecipe, "head_dim: 16", "head_dim: 48"));
  expect_recipe_error(run({"train", "r.yaml"}), {"r.yaml:5:", "model.mamba2.head_dim"});
}

TEST_F(Cli, MissingRecipeFileIsNamed) {
  expect_recipe_error(run({"train", "nowhere.yaml"}), {"nowhere.yaml", "cannot open"});
  expect_recipe_error(run({"config", "show", "nowhere.yaml"}), {"nowhere.yaml", "cannot open"});
}

TEST_F(Cli, MissingCorpusIsReportedAtItsRecipeLineBeforeAnyWork) {
  write("r.yaml", kRecipe);
  const Result r = run({"train", "r.yaml"});
  expect_recipe_error(r, {"r.yaml:7:", "data.train", "corpus/none", "ssmtrain data prepare"});
  EXPECT_FALSE(fs::exists(dir_ / "runs")) << "nothing may be written before the recipe is known good";
}

TEST_F(Cli, BadOverrideIsReportedAtSet) {
  write("r.yaml", kRecipe);
  expect_recipe_error(run({"train", "r.yaml", "--set", "training.seq_len=-3"}), {"--set", "training.seq_len"});
  expect_recipe_error(run({"train", "r.yaml", "--set", "optim.lrr=1e-3"}), {"--set", "optim.lrr", "did you mean lr"});
}

TEST_F(Cli, ConfigShowPrintsLayoutParametersAndFlops) {
  const std::string recipes = std::string(SSMTRAIN_SOURCE_DIR) + "/recipes/";
  const Result tiny = run({"config", "show", recipes + "tiny/jamba.yaml"});
  ASSERT_EQ(tiny.status, 0) << tiny.err;
  EXPECT_NE(tiny.out.find("MMMMAMMM"), std::string::npos) << tiny.out;
  EXPECT_NE(tiny.out.find("FEFEFEFE"), std::string::npos) << tiny.out;
  EXPECT_NE(tiny.out.find("# parameters: "), std::string::npos) << tiny.out;
  EXPECT_NE(tiny.out.find("active per token"), std::string::npos) << tiny.out;
  EXPECT_NE(tiny.out.find("FLOPs per token"), std::string::npos) << tiny.out;
  // Overrides reach the model: one more layer, more parameters.
  const Result deeper = run({"config", "show", recipes + "tiny/mamba2.yaml", "--set", "model.n_layers=5"});
  const Result base = run({"config", "show", recipes + "tiny/mamba2.yaml"});
  ASSERT_EQ(deeper.status, 0) << deeper.err;
  EXPECT_NE(deeper.out, base.out);
}

TEST_F(Cli, HelpEverywhereAndUnknownCommandsAreUsageErrors) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--help"}, {"train", "--help"}, {"config", "show", "--help"},
        {"data", "tokenizer", "--help"}, {"data", "prepare", "--help"}, {"eval", "perplexity", "--help"}}) {
    const Result r = run(args);
    EXPECT_EQ(r.status, 0) << args.front() << ": " << r.err;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << args.front();
  }
  EXPECT_EQ(run({"trian", "r.yaml"}).status, 2);
  EXPECT_EQ(run({"train"}).status, 2);  // the recipe is required
}

}  // namespace
}  // namespace ssmtrain
