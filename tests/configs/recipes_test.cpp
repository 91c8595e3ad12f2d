// The recipes of recipes/ (issue 8): every one loads, validates and survives dump -> load; the
// full-size ones have the architectures they name, the tiny ones fit a CPU, every key carries
// a comment, and the attention-ratio sweep resolves to the intended layouts.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>

#include "configs/layout.h"
#include "configs/load.h"

namespace ssmtrain::configs {
namespace {

namespace fs = std::filesystem;

const fs::path kRecipes = fs::path(SSMTRAIN_SOURCE_DIR) / "recipes";

std::vector<fs::path> recipe_files(const fs::path& folder = kRecipes) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(folder)) {
    if (entry.is_regular_file() && entry.path().extension() == ".yaml")
      files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

Config recipe(const std::string& relative) { return load_config(kRecipes / relative); }

std::string mixers(const Config& config) { return resolve_layout(config.model).mixer_string(); }
std::string ffns(const Config& config) { return resolve_layout(config.model).ffn_string(); }

TEST(Recipes, EveryRecipeLoadsAndItsDumpLoadsBackEqual) {
  const std::vector<fs::path> files = recipe_files();
  EXPECT_GE(files.size(), 9u);
  for (const fs::path& file : files) {
    SCOPED_TRACE(file.string());
    Recipe loaded;
    ASSERT_NO_THROW(loaded = load_recipe(file));
    EXPECT_EQ(parse_config(dump_config(loaded.config), "dump.yaml"), loaded.config);
    for (const Config& variant : loaded.sweep_variants) {
      EXPECT_EQ(parse_config(dump_config(variant), "dump.yaml"), variant);
    }
  }
}

TEST(Recipes, EveryKeyCarriesAComment) {
  // A line with a key and a value, or a list entry, must say what it is for.
  const std::regex value_line(R"(^\s*([a-z_0-9]+:\s*[^\s#]|- ).*)");
  for (const fs::path& file : recipe_files()) {
    std::ifstream in(file);
    std::string line;
    for (int number = 1; std::getline(in, line); ++number) {
      if (std::regex_match(line, value_line)) {
        EXPECT_NE(line.find(" # "), std::string::npos)
            << file.string() << ":" << number << ": " << line;
      }
    }
  }
}

TEST(Recipes, Mamba1_130mIsStateSpacesMamba130m) {
  const Config config = recipe("mamba1-130m.yaml");
  EXPECT_EQ(config.model.family, Family::mamba1);
  EXPECT_EQ(config.model.d_model, 768);
  EXPECT_EQ(config.model.n_layers, 24);
  EXPECT_EQ(config.model.vocab_size, 50280);
  EXPECT_EQ(config.model.mamba1.d_state, 16);
  EXPECT_EQ(config.model.mamba1.dt_rank, 48);
  EXPECT_EQ(mixers(config), std::string(24, 'M'));
  EXPECT_EQ(ffns(config), std::string(24, '-'));
  EXPECT_EQ(config.training.seq_len, 2048);
}

TEST(Recipes, Mamba2_130mIsStateSpacesMamba2_130m) {
  const Config config = recipe("mamba2-130m.yaml");
  EXPECT_EQ(config.model.family, Family::mamba2);
  EXPECT_EQ(config.model.d_model, 768);
  EXPECT_EQ(config.model.n_layers, 24);
  EXPECT_EQ(config.model.mamba2.head_dim, 64);
  EXPECT_EQ(config.model.mamba2.d_state, 128);
  EXPECT_EQ(config.model.mamba2_n_heads(), 24);
  const Layout layout = resolve_layout(config.model);
  EXPECT_EQ(layout.count(Mixer::mamba2), 24);
}

TEST(Recipes, JambaSmallIsOneAttentionInEightAndMoeEveryOtherLayer) {
  const Config config = recipe("jamba-small.yaml");
  EXPECT_EQ(config.model.family, Family::hybrid);
  EXPECT_EQ(mixers(config), "MMMMAMMMMMMMAMMM");
  EXPECT_EQ(ffns(config), "FEFEFEFEFEFEFEFE");
  const Layout layout = resolve_layout(config.model);
  EXPECT_EQ(layout.count(Mixer::attention) * 7, layout.count(Mixer::mamba1));
  EXPECT_EQ(config.model.moe.n_experts, 16);
  EXPECT_EQ(config.model.moe.top_k, 2);
  EXPECT_TRUE(config.model.mamba1.dt_bc_norm);
}

TEST(Recipes, HybridMamba2_130mHasAFewAttentionLayers) {
  const Config config = recipe("hybrid-mamba2-130m.yaml");
  EXPECT_EQ(mixers(config), "MMMMAMMMMMMMAMMMMMMMAMMM");
  const Layout layout = resolve_layout(config.model);
  EXPECT_EQ(layout.count(Mixer::attention), 3);
  EXPECT_EQ(layout.count(Mixer::mamba2), 21);
  EXPECT_EQ(config.model.attention.head_dim, 64);
}

TEST(Recipes, TinyRecipesCoverEachFamilyAndFitACpu) {
  for (const char* name : {"mamba1.yaml", "mamba2.yaml", "jamba.yaml", "hybrid-mamba2.yaml"}) {
    EXPECT_TRUE(fs::exists(kRecipes / "tiny" / name)) << name;
  }
  for (const fs::path& file : recipe_files(kRecipes / "tiny")) {
    SCOPED_TRACE(file.string());
    const Config config = load_config(file);
    EXPECT_LE(config.model.d_model, 256);
    EXPECT_LE(config.model.n_layers, 8);
    EXPECT_LE(config.model.vocab_size, 8192);
    EXPECT_EQ(config.training.seq_len, 256);
    EXPECT_EQ(config.training.precision, Precision::fp32);
    EXPECT_GE(config.training.total_steps(), 100);
    EXPECT_LE(config.training.total_steps(), 1000);
  }
  EXPECT_EQ(ffns(recipe("tiny/jamba.yaml")), "FEFEFEFE");
  EXPECT_EQ(mixers(recipe("tiny/jamba.yaml")), "MMMMAMMM");
}

TEST(Recipes, AttentionRatioSweepVariants) {
  const Recipe sweep = load_recipe(kRecipes / "sweeps" / "attention-ratio.yaml");
  ASSERT_EQ(sweep.sweep_variants.size(), 4u);
  std::vector<std::string> layouts, names;
  for (size_t i = 0; i < sweep.sweep_variants.size(); ++i) {
    layouts.push_back(mixers(sweep.sweep_variants[i]));
    names.push_back(sweep_variant_name(sweep.config.sweep[i]));
  }
  EXPECT_EQ(layouts, (std::vector<std::string>{"MMMMMMMM", "MMMMAMMM", "MMAMMMAM", "MAMAMAMA"}));
  EXPECT_EQ(names, (std::vector<std::string>{"attention_ratio=0:1", "attention_ratio=1:7",
                                             "attention_ratio=1:3", "attention_ratio=1:1"}));
}

}  // namespace
}  // namespace ssmtrain::configs
