// Tests of configs/load.h: a bad recipe fails with one line naming file:line:column, the key
// path, what was expected and what was found; --set overrides; sweeps; dump -> load.
#include "configs/load.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

namespace ssmtrain::configs {
namespace {

// A valid recipe; the tests expect its line numbers.
const std::string kRecipe =
    "model:\n"                       // 1
    "  family: mamba2\n"             // 2
    "  d_model: 128\n"               // 3
    "  n_layers: 2\n"                // 4
    "training:\n"                    // 5
    "  seq_len: 64\n"                // 6
    "  global_batch_tokens: 1024\n"  // 7
    "  micro_batch: 4\n"             // 8
    "  max_steps: 200\n";            // 9

// A valid hybrid with attention and MoE layers.
const std::string kHybrid =
    "model:\n"                   // 1
    "  family: hybrid\n"         // 2
    "  ssm: mamba2\n"            // 3
    "  d_model: 128\n"           // 4
    "  n_layers: 4\n"            // 5
    "  mamba2: {head_dim: 32}\n"  // 6
    "  attention:\n"             // 7
    "    n_heads: 4\n"           // 8
    "    n_kv_heads: 2\n"        // 9
    "  moe:\n"                   // 10
    "    n_experts: 4\n"         // 11
    "    top_k: 2\n"             // 12
    "  layout:\n"                // 13
    "    mixer_pattern: MAMA\n"  // 14
    "    ffn_pattern: EEFF\n"    // 15
    "training: {seq_len: 64, global_batch_tokens: 1024, micro_batch: 4, max_steps: 200}\n";

// The what() of the ConfigError that loading `text` throws, or "(loaded)".
std::string load_error(const std::string& text, const std::vector<std::string>& overrides = {}) {
  try {
    parse_recipe(text, "recipe.yaml", overrides);
  } catch (const ConfigError& error) {
    return error.what();
  }
  return "(loaded)";
}

// `text` with `from` replaced by `to`.
std::string edited(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return at == std::string::npos ? text : text.replace(at, from.size(), to);
}

TEST(Load, MinimalRecipeGetsDefaultsAndResolvedAutoValues) {
  const Config config = parse_config(kRecipe, "runs/recipe.yaml");
  EXPECT_EQ(config.run.name, "recipe");  // the source's stem
  EXPECT_EQ(config.run.output_dir, "runs");
  EXPECT_EQ(config.model.d_model, 128);
  EXPECT_EQ(config.model.mamba2.head_dim, 64);
  EXPECT_EQ(config.model.ssm, Ssm::mamba2);   // auto: the family
  EXPECT_EQ(config.model.mamba1.dt_rank, 8);  // auto: ceil(128 / 16)
  EXPECT_EQ(config.model.attention.n_kv_heads, 12);
  EXPECT_EQ(config.model.attention.head_dim, 0);  // 12 heads do not divide 128; attention unused
  EXPECT_EQ(config.model.mlp.d_ff, 512);          // 4 * 128
  EXPECT_EQ(config.model.moe.d_ff_expert, 512);
  EXPECT_EQ(config.training.total_steps(), 200);
  EXPECT_EQ(config.training.grad_accum(1), 4);
  EXPECT_EQ(config.optim.betas, (std::array<double, 2>{0.9, 0.95}));
  EXPECT_EQ(load_error(kHybrid), "(loaded)");
}

TEST(Load, EmptyRecipeNeedsARunLength) {
  EXPECT_EQ(load_error(""),
            "recipe.yaml: training.max_steps: expected max_steps or token_budget (the length of "
            "the run), found neither");
}

// ---- unknown keys ----

TEST(Load, UnknownKeySuggestsTheNearestKeyOfItsSection) {
  EXPECT_EQ(load_error(edited(kRecipe, "d_model: 128", "d_modle: 128")),
            "recipe.yaml:3:3: model.d_modle: unknown key; did you mean d_model?");
}

TEST(Load, UnknownKeySuggestsAKeyOfAnotherSection) {
  EXPECT_EQ(load_error(kRecipe + "  lr: 3e-4\n"),
            "recipe.yaml:10:3: training.lr: unknown key; did you mean optim.lr?");
  EXPECT_EQ(load_error(edited(kRecipe, "  n_layers: 2\n", "  n_layers: 2\n  head_dim: 32\n")),
            "recipe.yaml:5:3: model.head_dim: unknown key; did you mean model.mamba2.head_dim?");
}

TEST(Load, UnknownKeyWithNothingNearListsTheSection) {
  EXPECT_EQ(load_error(kRecipe + "logging:\n  colour: true\n"),
            "recipe.yaml:11:3: logging.colour: unknown key; logging takes every, jsonl, svg");
}

TEST(Load, UnknownSectionSuggestsTheNearestSection) {
  EXPECT_EQ(load_error(kRecipe + "optimizer:\n  lr: 1\n"),
            "recipe.yaml:10:1: optimizer: unknown key; did you mean optim?");
}

// ---- wrong values ----

TEST(Load, WrongTypeNamesTheKeyItsLineAndWhatWasFound) {
  EXPECT_EQ(load_error(edited(kRecipe, "d_model: 128", "d_model: wide")),
            "recipe.yaml:3:3: model.d_model: expected an integer >= 1, found wide");
  EXPECT_EQ(load_error(edited(kRecipe, "d_model: 128", "d_model: \"128\"")),
            "recipe.yaml:3:3: model.d_model: expected an integer >= 1, found \"128\"");
  EXPECT_EQ(load_error(edited(kRecipe, "d_model: 128", "d_model: [128]")),
            "recipe.yaml:3:3: model.d_model: expected an integer >= 1, found a list");
  EXPECT_EQ(load_error(edited(kRecipe, "d_model: 128", "d_model: 0")),
            "recipe.yaml:3:3: model.d_model: expected an integer >= 1, found 0");
  EXPECT_EQ(load_error(edited(kRecipe, "d_model: 128", "d_model:")),
            "recipe.yaml:3:3: model.d_model: expected an integer >= 1, found nothing");
  EXPECT_EQ(load_error(edited(kRecipe, "family: mamba2", "family: mamba3")),
            "recipe.yaml:2:3: model.family: expected one of mamba1, mamba2, hybrid, found mamba3");
  EXPECT_EQ(load_error(kRecipe + "optim:\n  betas: [0.9]\n"),
            "recipe.yaml:11:3: optim.betas: expected a list of 2 values, each a number in [0, 1), "
            "found a list");
  EXPECT_EQ(load_error(kRecipe + "optim:\n  lr: fast\n"),
            "recipe.yaml:11:3: optim.lr: expected a number > 0, found fast");
}

TEST(Load, SectionMustBeAMapping) {
  EXPECT_EQ(load_error(kRecipe + "eval: 5\n"),
            "recipe.yaml:10:1: eval: expected a section (a mapping of keys), found 5");
  EXPECT_EQ(load_error(kRecipe + "eval:\n"), "(loaded)");  // an empty section: all defaults
}

TEST(Load, DuplicateKeyIsAnError) {
  EXPECT_EQ(load_error(kRecipe + "  max_steps: 20\n"),
            "recipe.yaml:10:3: training.max_steps: expected each key once, found it again "
            "(first at line 9)");
}

TEST(Load, YamlSyntaxErrorHasAPosition) {
  EXPECT_EQ(load_error("model:\n  d_model: 1\n d_state: 2: 3\n"),
            "recipe.yaml:3:2: invalid YAML: end of map not found");
  EXPECT_EQ(load_error("- 1\n- 2\n"),
            "recipe.yaml:1:1: expected a recipe (a mapping of sections: run, model, ...), found "
            "a list");
}

TEST(Load, MissingFileSaysItCannotBeOpened) {
  EXPECT_THROW(load_recipe("/nonexistent/recipe.yaml"), ConfigError);
  try {
    load_recipe("/nonexistent/recipe.yaml");
  } catch (const ConfigError& error) {
    EXPECT_STREQ(error.what(), "/nonexistent/recipe.yaml: cannot open: No such file or directory");
  }
  const std::string directory = std::filesystem::temp_directory_path().string();
  try {
    load_recipe(directory);
    ADD_FAILURE() << "a directory loaded";
  } catch (const ConfigError& error) {
    EXPECT_EQ(std::string(error.what()), directory + ": cannot open: Is a directory");
  }
}

// ---- inconsistent dimensions: the error points at a key the recipe wrote ----

TEST(Load, Mamba2InnerWidthMustSplitIntoHeads) {
  // head_dim is left at its default, so the line is d_model's.
  EXPECT_EQ(load_error(edited(kRecipe, "d_model: 128", "d_model: 100")),
            "recipe.yaml:3:3: model.d_model: expected d_inner = expand * d_model divisible by "
            "head_dim, found 2 * 100 = 200 and head_dim 64");
  // Written, head_dim is the key to blame.
  EXPECT_EQ(
      load_error(edited(kRecipe, "  n_layers: 2\n", "  n_layers: 2\n  mamba2:\n    head_dim: 48\n")),
      "recipe.yaml:6:5: model.mamba2.head_dim: expected d_inner = expand * d_model divisible "
      "by head_dim, found 2 * 128 = 256 and head_dim 48");
}

TEST(Load, Mamba2GroupsMustDivideHeads) {
  EXPECT_EQ(
      load_error(edited(kRecipe, "  n_layers: 2\n", "  n_layers: 2\n  mamba2:\n    ngroups: 3\n")),
      "recipe.yaml:6:5: model.mamba2.ngroups: expected a divisor of n_heads = d_inner / "
      "head_dim = 4, found 3");
}

TEST(Load, AttentionHeadsMustDivide) {
  EXPECT_EQ(load_error(edited(kHybrid, "n_heads: 4", "n_heads: 6")),
            "recipe.yaml:8:5: model.attention.n_heads: model.attention.n_heads = 6 does not divide d_model = 128 "
            "(head_dim is auto): set model.attention.n_heads to a divisor of 128 (1, 2, 4, 8, 16, 32, 64) or set "
            "model.attention.head_dim");
  EXPECT_EQ(load_error(edited(kHybrid, "n_kv_heads: 2", "n_kv_heads: 3")),
            "recipe.yaml:9:5: model.attention.n_kv_heads: expected a divisor of n_heads = 4, "
            "found 3");
}

TEST(Load, TopKMustNotExceedTheExperts) {
  EXPECT_EQ(load_error(edited(kHybrid, "top_k: 2", "top_k: 5")),
            "recipe.yaml:12:5: model.moe.top_k: expected at most n_experts = 4, found 5");
}

TEST(Load, UnusedPartsOfTheModelAreNotChecked) {
  // No MoE layer: top_k > n_experts does not matter.
  EXPECT_EQ(load_error(edited(edited(kHybrid, "top_k: 2", "top_k: 5"), "EEFF", "FFFF")),
            "(loaded)");
}

TEST(Load, LayoutMustSuitTheFamily) {
  EXPECT_EQ(load_error(edited(kHybrid, "MAMA", "MAM")),
            "recipe.yaml:14:5: model.layout.mixer_pattern: expected one letter per layer "
            "(n_layers = 4), found 3 letters");
  EXPECT_EQ(load_error(edited(kHybrid, "family: hybrid", "family: mamba2")),
            "recipe.yaml:14:5: model.layout.mixer_pattern: expected no attention layers in a "
            "mamba2 model (family hybrid mixes them in), found 2");
  EXPECT_EQ(load_error(edited(kHybrid, "  ssm: mamba2\n", "")),
            "recipe.yaml:2:3: model.family: expected model.ssm set to mamba1 or mamba2 for a "
            "hybrid (the mixer of its M layers), found auto");
  EXPECT_EQ(load_error(edited(kRecipe, "  n_layers: 2\n", "  n_layers: 2\n  ssm: mamba1\n")),
            "recipe.yaml:5:3: model.ssm: expected auto or mamba2 for family mamba2, found mamba1");
}

TEST(Load, GlobalBatchMustSplitIntoMicroBatches) {
  EXPECT_EQ(load_error(edited(kRecipe, "global_batch_tokens: 1024", "global_batch_tokens: 1000")),
            "recipe.yaml:7:3: training.global_batch_tokens: expected a multiple of micro_batch * "
            "seq_len = 4 * 64 = 256, found 1000");
}

TEST(Load, RunLengthIsStepsOrTokens) {
  EXPECT_EQ(load_error(kRecipe + "  token_budget: 4096\n"),
            "recipe.yaml:10:3: training.token_budget: expected max_steps or token_budget, not "
            "both, found max_steps 200 and token_budget 4096");
  const Config by_tokens =
      parse_config(edited(kRecipe, "max_steps: 200", "token_budget: 1e6"), "recipe.yaml");
  EXPECT_EQ(by_tokens.training.total_steps(), 977);  // ceil(1e6 / 1024)
  EXPECT_EQ(load_error(kRecipe + "schedule:\n  warmup_steps: 300\n"),
            "recipe.yaml:11:3: schedule.warmup_steps: expected at most the run's 200 steps, "
            "found 300: shorten the warmup with the run, e.g. --set schedule.warmup_steps=20");
}

TEST(Load, ValidateWithoutAFileNamesTheKey) {
  Config config;
  config.training.max_steps = 200;
  EXPECT_NO_THROW(validate(config));
  config.model.d_model = 100;
  try {
    validate(config);
    ADD_FAILURE() << "d_model 100 validated";
  } catch (const ConfigError& error) {
    EXPECT_STREQ(error.what(),
                 "model.mamba2.head_dim: expected d_inner = expand * d_model "
                 "divisible by head_dim, found 2 * 100 = 200 and head_dim 64");
  }
}

TEST(Load, ValidateChecksEachValueAgainstItsKey) {
  Config config;
  config.training.max_steps = 200;
  config.model.mamba2.head_dim = 0;
  try {
    validate(config);
    ADD_FAILURE() << "head_dim 0 validated";
  } catch (const ConfigError& error) {
    EXPECT_STREQ(error.what(), "model.mamba2.head_dim: expected an integer >= 1, found 0");
  }
  config.model.mamba2.head_dim = 64;
  config.run.name.clear();
  EXPECT_THROW(validate(config), ConfigError);
}

TEST(Load, WorldSizeMustSplitTheGlobalBatch) {
  const Config config =
      parse_config(kRecipe, "recipe.yaml");  // 1024 tokens, 4 x 64 per micro-batch
  EXPECT_NO_THROW(check_world_size(config, 4));
  EXPECT_EQ(config.training.grad_accum(2), 2);
  try {
    check_world_size(config, 3);
    ADD_FAILURE() << "3 ranks accepted";
  } catch (const ConfigError& error) {
    EXPECT_STREQ(error.what(),
                 "training.global_batch_tokens: expected a multiple of micro_batch "
                 "* seq_len * world size = 4 * 64 * 3 = 768, found 1024");
  }
}

// ---- --set ----

TEST(Set, OverridesAnyKeyByYamlScalarRules) {
  const Config config =
      parse_config(kRecipe, "recipe.yaml",
                   {"optim.lr=3e-4", "model.d_model=256", "eval.niah.lengths=[1, 2]",
                    "training.precision=fp32", "model.tie_embeddings=off", "run.name=my run",
                    "model.mamba2.head_dim=32", "optim.betas=[0.8, 0.9]"});
  EXPECT_EQ(config.optim.lr, 3e-4);
  EXPECT_EQ(config.model.d_model, 256);
  EXPECT_EQ(config.eval.niah.lengths, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(config.training.precision, Precision::fp32);
  EXPECT_FALSE(config.model.tie_embeddings);
  EXPECT_EQ(config.run.name, "my run");
  EXPECT_EQ(config.model.mamba2.head_dim, 32);  // a section the recipe did not have
  EXPECT_EQ(config.optim.betas, (std::array<double, 2>{0.8, 0.9}));
}

TEST(Set, LaterOverridesWin) {
  EXPECT_EQ(
      parse_config(kRecipe, "r.yaml", {"model.d_model=256", "model.d_model=64"}).model.d_model, 64);
}

TEST(Set, UnknownKeyIsReportedAtSet) {
  EXPECT_EQ(load_error(kRecipe, {"model.d_modle=256"}),
            "--set: model.d_modle: unknown key; did you mean d_model?");
  EXPECT_EQ(load_error(kRecipe, {"training.lr=3e-4"}),
            "--set: training.lr: unknown key; did you mean optim.lr?");
}

TEST(Set, BadValueIsReportedAtSet) {
  EXPECT_EQ(load_error(kRecipe, {"model.d_model=abc"}),
            "--set: model.d_model: expected an integer >= 1, found abc");
  EXPECT_EQ(load_error(kRecipe, {"model.d_model.x=1"}),
            "--set: model.d_model: expected an integer >= 1, found a mapping");
  EXPECT_EQ(load_error(kRecipe, {"model.d_model"}),
            "--set: expected key.path=value, found \"model.d_model\"");
  EXPECT_EQ(load_error(kRecipe, {"model..d_model=1"}),
            "--set: expected key.path=value, found \"model..d_model=1\"");
  EXPECT_EQ(load_error(kRecipe, {"eval.niah.lengths=[1,2"}),
            "--set: eval.niah.lengths: expected a YAML value, found \"[1,2\" (end of sequence "
            "flow not found)");
}

TEST(Set, InconsistencyCausedByAnOverrideIsReportedAtSet) {
  EXPECT_EQ(load_error(kRecipe, {"model.mamba2.head_dim=48"}),
            "--set: model.mamba2.head_dim: expected d_inner = expand * d_model divisible by "
            "head_dim, found 2 * 128 = 256 and head_dim 48");
}

// ---- sweeps ----

const std::string kSweep = kRecipe +
                           "sweep:\n"                                     // 10
                           "  - {model.d_model: 256}\n"                   // 11
                           "  - {model.d_model: 64, run.name: small}\n";  // 12

TEST(Sweep, EachVariantIsTheRecipeWithItsOverrides) {
  const Recipe recipe = parse_recipe(kSweep, "recipe.yaml");
  ASSERT_EQ(recipe.config.sweep.size(), 2u);
  ASSERT_EQ(recipe.sweep_variants.size(), 2u);
  EXPECT_EQ(recipe.config.model.d_model, 128);
  EXPECT_EQ(recipe.sweep_variants[0].model.d_model, 256);
  EXPECT_EQ(recipe.sweep_variants[1].model.d_model, 64);
  EXPECT_EQ(recipe.sweep_variants[1].run.name, "small");
  EXPECT_TRUE(recipe.sweep_variants[0].sweep.empty());
  EXPECT_EQ(sweep_variant_name(recipe.config.sweep[0]), "d_model=256");
  EXPECT_EQ(sweep_variant_name(recipe.config.sweep[1]), "small");
}

TEST(Sweep, CommandLineOverridesWinOverVariants) {
  const Recipe recipe = parse_recipe(kSweep, "recipe.yaml", {"model.d_model=32"});
  EXPECT_EQ(recipe.sweep_variants[0].model.d_model, 32);
  EXPECT_EQ(recipe.sweep_variants[1].model.d_model, 32);
}

TEST(Sweep, BadVariantFailsWhenTheRecipeLoads) {
  EXPECT_EQ(load_error(edited(kSweep, "{model.d_model: 256}", "{model.d_modle: 256}")),
            "recipe.yaml:11:6: model.d_modle: unknown key; did you mean d_model? (in sweep "
            "variant 1 of 2)");
  EXPECT_EQ(load_error(edited(kSweep, "{model.d_model: 256}", "{model.mamba2.head_dim: 48}")),
            "recipe.yaml:11:6: model.mamba2.head_dim: expected d_inner = expand * d_model divisible "
            "by head_dim, found 2 * 128 = 256 and head_dim 48 (in sweep variant 1 of 2)");
  EXPECT_EQ(load_error(kRecipe + "sweep: [1, 2]\n"),
            "recipe.yaml:10:1: sweep: expected a list of override maps ({key.path: value, ...}), "
            "found a list");
}

// ---- dump ----

TEST(Dump, LoadingTheDumpGivesAnEqualConfig) {
  const Config config = parse_config(
      kSweep, "recipe.yaml",
      {"run.name='a \"quoted\" name: with # marks'", "run.output_dir=/tmp/runs dir",
       "optim.lr=3e-4", "optim.eps=1e-12", "eval.niah.lengths=[]", "data.tokenizer=tok\\n.model",
       "schedule.kind=wsd", "distributed.bucket_mb=12.5", "model.layout.ffn=mlp"});
  const std::string dumped = dump_config(config);
  EXPECT_EQ(parse_config(dumped, "dump.yaml"), config) << dumped;
  EXPECT_EQ(dump_config(parse_config(dumped, "dump.yaml")), dumped);
}

TEST(Dump, WritesEveryKeyInSchemaOrder) {
  const std::string dumped = dump_config(parse_config(kRecipe, "recipe.yaml"));
  EXPECT_EQ(dumped.substr(0, dumped.find("model:")),
            "run:\n  name: \"recipe\"\n  output_dir: \"runs\"\n  seed: 1234\n  overwrite: false\n");
  EXPECT_NE(dumped.find("  mamba1:\n    d_state: 16\n"), std::string::npos) << dumped;
  EXPECT_NE(dumped.find("    dt_rank: 8\n"), std::string::npos) << dumped;
  EXPECT_NE(dumped.find("  betas: [0.9, 0.95]\n"), std::string::npos) << dumped;
  EXPECT_NE(dumped.find("\nsweep: []\n"), std::string::npos) << dumped;
}

}  // namespace
}  // namespace ssmtrain::configs
