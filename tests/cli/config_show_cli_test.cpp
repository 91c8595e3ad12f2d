// `ssmtrain config show` prints the derived sizes of a recipe (configs::ModelConfig's d_inner,
// dt_rank, n_heads, head_dim, n_kv_heads, d_ff; the tokens and sequences of a step), and they
// are the sizes of the model the recipe builds: each printed number is checked against the
// shapes of the built model's parameters, and the printed parameter count against the model's.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "configs/load.h"
#include "layers/from_config.h"
#include "tests/cli/binary.h"

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;

const std::string kRecipes = std::string(SSMTRAIN_SOURCE_DIR) + "/recipes/tiny/";

// The integers of the first line of `text` matching `pattern`; fails the test when none does.
std::vector<int64_t> numbers(const std::string& text, const std::string& pattern) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex(pattern))) {
    ADD_FAILURE() << "no line matches '" << pattern << "' in:\n" << text;
    return {};
  }
  std::vector<int64_t> out;
  for (size_t i = 1; i < m.size(); ++i) out.push_back(std::stoll(m[i].str()));
  return out;
}

std::string group(const std::string& text, const std::string& pattern) {
  std::smatch m;
  return std::regex_search(text, m, std::regex(pattern)) ? m[1].str() : "";
}

// What `config show` of a recipe printed, and the model that recipe builds (seed 1).
struct Shown {
  std::string text;
  configs::Config config;
  std::map<std::string, Shape> shapes;  // parameter name -> shape
  int64_t parameters = 0;
};

class ConfigShow : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ssmtrain-config-show-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  Shown show(const std::string& recipe, const std::vector<std::string>& overrides) const {
    std::vector<std::string> args{"config", "show", kRecipes + recipe, "--device", "cpu"};
    for (const std::string& o : overrides) {
      args.push_back("--set");
      args.push_back(o);
    }
    const testing::CliResult r = testing::run_binary(dir_, args);
    EXPECT_EQ(r.status, 0) << r.err;
    Shown s;
    s.text = r.out;
    s.config = configs::load_config(kRecipes + recipe, overrides);
    LanguageModel model(model_options(s.config), 1);
    for (const NamedParameter& p : model.named_parameters()) s.shapes[p.name] = p.value->shape();
    s.parameters = model.num_parameters();
    return s;
  }

  fs::path dir_;
};

// The first layer whose mixer letter in "#   mixers ..." is `letter`.
std::string first_layer(const std::string& text, char letter) {
  const std::string mixers = group(text, "#   mixers ([MA]+)\n");
  const size_t i = mixers.find(letter);
  EXPECT_NE(i, std::string::npos) << mixers;
  return "blocks." + std::to_string(i) + ".";
}

void expect_step_sizes(const Shown& s) {
  const std::vector<int64_t> step =
      numbers(s.text, "# step: (\\d+) tokens, (\\d+) sequences of (\\d+) tokens, (\\d+) micro-batches of (\\d+)");
  ASSERT_EQ(step.size(), 5u);
  EXPECT_EQ(step[0], s.config.training.global_batch_tokens);
  EXPECT_EQ(step[1] * step[2], step[0]);  // sequences x seq_len
  EXPECT_EQ(step[2], s.config.training.seq_len);
  EXPECT_EQ(step[3] * step[4], step[1]);  // micro-batches x micro_batch on one rank
  EXPECT_EQ(step[4], s.config.training.micro_batch);
  EXPECT_EQ(numbers(s.text, "# parameters: (\\d+) ")[0], s.parameters);
}

TEST_F(ConfigShow, Mamba1HybridSizesAreTheBuiltModelsShapes) {
  // dt_rank and head_dim left at auto, so they are derived: ceil(96 / 16) = 6, 96 / 4 = 24.
  const Shown s = show("jamba.yaml", {"model.d_model=96", "model.mamba1.dt_rank=auto", "model.attention.head_dim=auto",
                                      "model.mlp.d_ff=auto", "model.mlp.multiplier=2.5"});
  const int64_t d = 96;
  const std::vector<int64_t> m1 = numbers(s.text, "# mamba1: \\d+ layers?, d_inner (\\d+), dt_rank (\\d+)\n");
  ASSERT_EQ(m1.size(), 2u);
  EXPECT_EQ(m1[1], 6);
  const std::string mamba = first_layer(s.text, 'M');
  EXPECT_EQ(s.shapes.at(mamba + "mixer.in_proj.weight"), (Shape{2 * m1[0], d}));
  EXPECT_EQ(s.shapes.at(mamba + "mixer.dt_proj.weight"), (Shape{m1[0], m1[1]}));
  EXPECT_EQ(s.shapes.at(mamba + "mixer.A_log"), (Shape{m1[0], s.config.model.mamba1.d_state}));

  const std::vector<int64_t> at =
      numbers(s.text, "# attention: \\d+ layers?, n_heads (\\d+), head_dim (\\d+), n_kv_heads (\\d+)\n");
  ASSERT_EQ(at.size(), 3u);
  EXPECT_EQ(at[1], 24);
  const std::string attention = first_layer(s.text, 'A');
  EXPECT_EQ(s.shapes.at(attention + "mixer.q_proj.weight"), (Shape{at[0] * at[1], d}));
  EXPECT_EQ(s.shapes.at(attention + "mixer.k_proj.weight"), (Shape{at[2] * at[1], d}));

  const std::vector<int64_t> mlp = numbers(s.text, "# mlp: \\d+ layers?, d_ff (\\d+)\n");
  ASSERT_EQ(mlp.size(), 1u);
  EXPECT_EQ(mlp[0], 256);  // 2.5 x 96 = 240, rounded up to a multiple of 64
  EXPECT_EQ(s.shapes.at("blocks.0.mlp.gate_up.weight"), (Shape{2 * mlp[0], d}));

  const std::vector<int64_t> moe = numbers(s.text, "# moe: \\d+ layers?, (\\d+) experts of d_ff (\\d+), top (\\d+)\n");
  ASSERT_EQ(moe.size(), 3u);
  EXPECT_EQ(s.shapes.at("blocks.1.moe.w_gate"), (Shape{moe[0], moe[1], d}));
  expect_step_sizes(s);
}

TEST_F(ConfigShow, Mamba2HybridSizesAreTheBuiltModelsShapes) {
  const Shown s = show("hybrid-mamba2.yaml", {"model.mamba2.head_dim=16", "model.mamba2.ngroups=2",
                                              "model.attention.n_kv_heads=auto"});
  const int64_t d = 128;
  const std::vector<int64_t> m2 = numbers(s.text, "# mamba2: \\d+ layers?, d_inner (\\d+), n_heads (\\d+) of head_dim (\\d+)\n");
  ASSERT_EQ(m2.size(), 3u);
  EXPECT_EQ(m2[1] * m2[2], m2[0]);
  const std::string mamba = first_layer(s.text, 'M');
  const int64_t gn = 2 * s.config.model.mamba2.d_state;
  EXPECT_EQ(s.shapes.at(mamba + "mixer.A_log"), (Shape{m2[1]}));
  EXPECT_EQ(s.shapes.at(mamba + "mixer.norm.weight"), (Shape{m2[0]}));
  EXPECT_EQ(s.shapes.at(mamba + "mixer.in_proj.weight"), (Shape{2 * m2[0] + 2 * gn + m2[1], d}));
  EXPECT_EQ(s.shapes.at(mamba + "mixer.conv1d.weight"), (Shape{m2[0] + 2 * gn, s.config.model.mamba2.d_conv}));

  const std::vector<int64_t> at =
      numbers(s.text, "# attention: \\d+ layers?, n_heads (\\d+), head_dim (\\d+), n_kv_heads (\\d+)\n");
  ASSERT_EQ(at.size(), 3u);
  EXPECT_EQ(at[2], at[0]);  // auto: as many kv heads as heads
  const std::string attention = first_layer(s.text, 'A');
  EXPECT_EQ(s.shapes.at(attention + "mixer.v_proj.weight"), (Shape{at[2] * at[1], d}));
  EXPECT_EQ(s.shapes.at(attention + "mixer.o_proj.weight"), (Shape{d, at[0] * at[1]}));
  expect_step_sizes(s);
}

}  // namespace
}  // namespace ssmtrain
