// `ssmtrain train` and `ssmtrain config show`: a recipe (with --set overrides) trained, or
// resolved and printed with its layout, parameter count and FLOPs per token.
#include <fmt/core.h>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cli/options.h"
#include "cli/subcommand.h"
#include "configs/errors.h"
#include "configs/load.h"
#include "configs/show.h"
#include "data/errors.h"
#include "layers/from_config.h"
#include "train/trainer.h"

namespace ssmtrain::cli {
namespace {

struct TrainArgs {
  std::string recipe;
  std::vector<std::string> overrides;  // --set key=value, in order
  std::string resume;                  // auto, none or a checkpoint path
};

struct ConfigShowArgs {
  std::string recipe;
  std::vector<std::string> overrides;
};

void train_options(CLI::App& app, TrainArgs& a) {
  add_recipe(app, a.recipe);
  add_overrides(app, a.overrides);
  app.add_option("--resume", a.resume,
                 "auto (newest checkpoint that verifies), none, or a checkpoint PATH; "
                 "default: the recipe's checkpoint.resume")
      ->check(CLI::IsMember({"auto", "none"}) | CLI::ExistingPath);
}

void config_show_options(CLI::App& app, ConfigShowArgs& a) {
  add_recipe(app, a.recipe);
  add_overrides(app, a.overrides);
}

// A recipe whose data directories were never prepared fails before any work, at its line.
void check_data_directories(const configs::Recipe& recipe) {
  const configs::DataConfig& data = recipe.config.data;
  for (const auto& [key, dir] : {std::pair<std::string, std::string>{"data.train", data.train}, {"data.val", data.val}}) {
    if (dir.empty() || std::filesystem::exists(std::filesystem::path(dir) / "manifest.json")) continue;
    throw configs::ConfigError(
        recipe.locate(key), key,
        fmt::format("no prepared corpus at '{}' ({} is missing); write it with `ssmtrain data prepare --out {}`", dir,
                    std::filesystem::exists(dir) ? "its manifest.json" : "the directory", dir));
  }
}

// Trains the recipe; resuming from checkpoints arrives with the checkpoint issue, so --resume
// other than none is refused rather than ignored.
int run_train(const TrainArgs& a) {
  try {
    const configs::Recipe recipe = configs::load_recipe(a.recipe, a.overrides);
    const configs::Config& config = recipe.config;
    check_data_directories(recipe);
    if (!a.resume.empty() && a.resume != "none" && a.resume != "auto") {
      fmt::print(stderr, "ssmtrain train: --resume {}: checkpoints are not built yet\n", a.resume);
      return 2;
    }
    const TrainSummary summary = train(config);
    fmt::print("run directory: {} (config.yaml, metrics.jsonl, loss_curve.svg)\n", summary.run_dir);
    fmt::print("loss {:.4f} -> {:.4f}", summary.first_loss, summary.final_loss);
    if (summary.final_val_loss >= 0) fmt::print(", validation loss {:.4f} nats", summary.final_val_loss);
    if (summary.unigram_entropy > 0)
      fmt::print(" (unigram entropy of the training tokens {:.4f} nats)", summary.unigram_entropy);
    fmt::print(", {:.0f} tokens/s\n", summary.tokens_per_second);
    return 0;
  } catch (const configs::ConfigError& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 2;
  } catch (const data::InputError& e) {
    fmt::print(stderr, "ssmtrain train: {}\n", e.what());
    return 2;
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "ssmtrain train: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "ssmtrain train: {}\n", e.what());
    return 1;
  }
}

// The resolved config, the layout, the parameter count (from the model itself, built on the
// CPU) and the training FLOPs per token.
int run_config_show(const ConfigShowArgs& a) {
  try {
    const configs::Config config = configs::load_config(a.recipe, a.overrides);
    const ModelOptions options = model_options(config.model);
    LanguageModel model(options, config.run.seed);
    const configs::ModelCost cost{model.num_parameters(), model.active_parameters(),
                                  training_flops_per_token(options, config.training.seq_len)};
    fmt::print("{}", configs::render_config_show(config, cost));
    return 0;
  } catch (const configs::ConfigError& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 2;
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "ssmtrain config show: {}: {}\n", a.recipe, e.what());
    return 2;
  }
}

}  // namespace

std::vector<Subcommand> train_commands() {
  return {
      command<TrainArgs>("train", "Train a model from a recipe", train_options, run_train),
      command<ConfigShowArgs>("config show",
                              "Print the resolved config, layer layout, parameter count and FLOPs per token",
                              config_show_options, run_config_show),
  };
}

}  // namespace ssmtrain::cli
