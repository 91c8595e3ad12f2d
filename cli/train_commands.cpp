// `ssmtrain train`, `ssmtrain config show` and `ssmtrain checkpoint info`: a recipe (with --set
// overrides) trained, or resolved and printed with its layout, parameter count and FLOPs per
// token; a checkpoint's step, tokens, layout and whether it verifies.
#include <fmt/core.h>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "autograd/device.h"
#include "cli/options.h"
#include "cli/subcommand.h"
#include "configs/errors.h"
#include "configs/load.h"
#include "configs/show.h"
#include "data/errors.h"
#include "data/hash.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "distributed/bootstrap.h"
#include "distributed/communicator.h"
#include "eval/during_training.h"
#include "layers/from_config.h"
#include "layers/preflight.h"
#include "train/checkpoint.h"
#include "train/resume.h"
#include "train/trainer.h"

namespace ssmtrain::cli {
namespace {

struct TrainArgs {
  std::string recipe;
  std::vector<std::string> overrides;  // --set key=value, in order
  std::string resume;                  // auto, none or a checkpoint path
  std::string dump_batches;            // DIR for init.h5 + batches.bin (parity runs)
};

struct ConfigShowArgs {
  std::string recipe;
  std::vector<std::string> overrides;
  std::string device;  // whose kernels the recipe is checked against; empty: the GPU when one is visible
};

void train_options(CLI::App& app, TrainArgs& a) {
  add_recipe(app, a.recipe);
  add_overrides(app, a.overrides);
  app.add_option("--resume", a.resume,
                 "auto (newest checkpoint that verifies), none, or a checkpoint PATH; "
                 "default: the recipe's checkpoint.resume")
      ->check(CLI::IsMember({"auto", "none"}) | CLI::ExistingPath);
  app.add_option("--dump-batches", a.dump_batches,
                 "Write DIR/init.h5 (step-0 weights) and DIR/batches.bin (every step's tokens) for bench/pytorch/parity.py");
}

void config_show_options(CLI::App& app, ConfigShowArgs& a) {
  add_recipe(app, a.recipe);
  add_overrides(app, a.overrides);
  app.add_option("--device", a.device,
                 "check the recipe against the kernels of this device (cpu or cuda), also on a machine "
                 "without it; default: cuda when a GPU is visible, else cpu")
      ->check(CLI::IsMember({"cpu", "cuda"}));
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

// The tokenizer the corpus was prepared with (data.tokenizer, else the copy beside the shards)
// must be the one the manifest names by checksum and must load, and the embedding must hold its
// vocabulary: each is a clear error here rather than a wrong id deep in the first step.
void check_tokenizer(const configs::Recipe& recipe) {
  const configs::Config& config = recipe.config;
  if (config.data.train.empty()) return;
  const data::Manifest manifest = data::read_manifest(config.data.train);
  if (config.model.vocab_size < manifest.vocab_size) {
    throw configs::ConfigError(
        recipe.locate("model.vocab_size"), "model.vocab_size",
        fmt::format("expected at least the tokenizer's vocabulary of {} (the corpus at '{}'), found {}",
                    manifest.vocab_size, config.data.train, config.model.vocab_size));
  }
  std::filesystem::path path = config.data.tokenizer;
  if (path.empty()) {
    if (manifest.tokenizer_file.empty()) return;
    path = std::filesystem::path(config.data.train) / manifest.tokenizer_file;
    if (!std::filesystem::exists(path))
      throw data::InputError(fmt::format("{}: missing: the manifest of '{}' names it as the corpus's tokenizer",
                                         path.string(), config.data.train));
  } else if (!std::filesystem::is_regular_file(path)) {
    throw configs::ConfigError(recipe.locate("data.tokenizer"), "data.tokenizer",
                               fmt::format("no tokenizer file at '{}'", path.string()));
  }
  const std::string checksum = data::file_checksum(path.string());
  if (!manifest.tokenizer_checksum.empty() && checksum != manifest.tokenizer_checksum) {
    throw data::InputError(fmt::format(
        "{}: checksum {} differs from the {} the corpus at '{}' was prepared with: this is not its tokenizer",
        path.string(), checksum, manifest.tokenizer_checksum, config.data.train));
  }
  const data::Tokenizer tokenizer(path.string());  // a file SentencePiece cannot read is an InputError
  if (tokenizer.vocab_size() != manifest.vocab_size) {
    throw data::InputError(fmt::format("{}: a vocabulary of {}, but the corpus at '{}' records {}", path.string(),
                                       tokenizer.vocab_size(), config.data.train, manifest.vocab_size));
  }
}

// Trains the recipe, resuming per --resume or the recipe's checkpoint.resume. Exit status: 0
// when the run finished or a signal stopped it with a checkpoint, 2 for a recipe or input
// that cannot run, 1 when the run failed (diverged, a file that cannot be written).
int run_train(const TrainArgs& a) {
  try {
    const configs::Recipe recipe = configs::load_recipe(a.recipe, a.overrides);
    const configs::Config& config = recipe.config;
    if (!recipe.sweep_variants.empty())
      throw configs::ConfigError(recipe.locate("sweep"), "sweep",
                                 fmt::format("this recipe is a sweep of {} variants; `ssmtrain sweep {}` runs them "
                                             "(train runs one recipe)",
                                             recipe.sweep_variants.size(), a.recipe));
    // Keys the schema knows whose machinery is not built yet: refused, never accepted and ignored.
    if (config.distributed.shard_optimizer && cuda_available())
      throw configs::ConfigError(recipe.locate("distributed.shard_optimizer"), "distributed.shard_optimizer",
                                 "not supported yet on GPUs: optimizer-state sharding (ZeRO-1) is built for CPU "
                                 "ranks (mpi, tcp) only so far; remove the key");
    check_kernels_support(recipe, cuda_available());
    if (const std::string why = dist::backend_problem(std::string(configs::to_string(config.distributed.backend)),
                                                      cuda_available());
        !why.empty())
      throw configs::ConfigError(recipe.locate("distributed.backend"), "distributed.backend", why);
    if (const std::string warning = check_memory_fits(recipe, cuda_available()); !warning.empty())
      fmt::print(stderr, "{}\n", warning);
    check_data_directories(recipe);
    check_tokenizer(recipe);
    TrainOptions options;
    options.resume = a.resume;
    options.dump_batches = a.dump_batches;
    if (config.eval.every > 0) options.evaluate = eval::training_evaluator(config, eval::recipe_writes(recipe, "eval.niah"));  // eval.niah: NIAH too
    else if (eval::recipe_writes(recipe, "eval.niah") && dist::launch_env().rank == 0)  // one note per job
      fmt::print(stderr, "note: eval.niah is not run during this training (eval.every is 0): `ssmtrain eval niah` "
                         "or a sweep reads it, or set eval.every\n");
    const TrainSummary summary = train(config, options);
    if (summary.already_complete || summary.rank != 0) return 0;  // rank 0 reports for the job
    fmt::print("run directory: {} (config.yaml, metrics.jsonl, loss_curve.svg, checkpoints/)\n", summary.run_dir);
    if (!summary.stopped_by.empty()) return 0;
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
  } catch (const ResumeError& e) {
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

// The resolved config, the layout, the parameter count (from the shapes, so a recipe too large
// for this machine is shown in milliseconds) and the training FLOPs per token.
int run_config_show(const ConfigShowArgs& a) {
  try {
    const configs::Recipe recipe = configs::load_recipe(a.recipe, a.overrides);
    check_kernels_support(recipe, a.device.empty() ? cuda_available() : a.device == "cuda");
    const configs::Config& config = recipe.config;
    const ModelOptions options = model_options(config.model);
    const ParameterCounts counts = parameter_counts(options);  // from the shapes: nothing is allocated
    const configs::ModelCost cost{counts.total, counts.active,
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

struct CheckpointInfoArgs {
  std::string path;
};

void checkpoint_info_options(CLI::App& app, CheckpointInfoArgs& a) {
  app.add_option("PATH", a.path, "a checkpoint file, a run directory or its checkpoints/ folder (its `latest`)")
      ->required();
}

// One checkpoint, or every checkpoint of a run directory, each verified in full.
int run_checkpoint_info(const CheckpointInfoArgs& a) {
  try {
    const std::filesystem::path file = resolve_checkpoint_path(a.path);
    const CheckpointReport report = inspect_checkpoint(file);
    if (!report.ok) {
      fmt::print(stderr, "{}: {}\n", file.string(), report.problem);
      return 1;
    }
    const CheckpointContents contents = read_checkpoint(file);
    fmt::print("{}\n", file.string());
    fmt::print("  step {}, {} tokens seen, {} steps skipped as non-finite\n", contents.progress.step,
               contents.progress.tokens_seen, contents.progress.skipped_steps);
    fmt::print("  layout {}, {:.2f}M parameters ({} tensors), optimizer state {}\n", contents.layout,
               double(contents.num_parameters()) / 1e6, contents.model.size(),
               contents.optim.empty() ? "absent" : fmt::format("for {} tensors, AdamW step {}", contents.optim.size(),
                                                               contents.adamw_step));
    fmt::print("  loader epoch {} cursor {}, {:.0f} s of training\n", contents.progress.loader.epoch,
               contents.progress.loader.cursor, contents.progress.elapsed_s);
    if (!contents.progress.losses.empty())
      fmt::print("  last training loss {:.4f}{}\n", contents.progress.losses.back(),
                 contents.progress.val_losses.empty()
                     ? ""
                     : fmt::format(", last validation loss {:.4f}", contents.progress.val_losses.back()));
    fmt::print("  written by ssmtrain {} (commit {}); data: tokenizer {}, {} training shards\n",
               contents.ssmtrain_version, contents.commit, contents.data.tokenizer_checksum,
               contents.data.shard_checksums.size());
    fmt::print("  every checksum verifies\n");
    return 0;
  } catch (const CheckpointError& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 1;
  }
}

}  // namespace

std::vector<Subcommand> train_commands() {
  return {
      command<TrainArgs>("train", "Train a model from a recipe", train_options, run_train),
      command<ConfigShowArgs>("config show",
                              "Print the resolved config, layer layout, parameter count and FLOPs per token",
                              config_show_options, run_config_show),
      command<CheckpointInfoArgs>("checkpoint info",
                                  "Print a checkpoint's step, tokens, layout and parameter count, and verify it",
                                  checkpoint_info_options, run_checkpoint_info),
  };
}

}  // namespace ssmtrain::cli
