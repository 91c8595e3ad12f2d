// The ssmtrain command line (DESIGN.md section 12). One table, subcommand_table(), declares
// every subcommand and its options; an entry whose work has not landed yet has no run function
// and says so. Exit status: 0 success, 2 usage error (CLI11's message on stderr), 1 otherwise.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "configs/errors.h"
#include "configs/load.h"
#include "configs/show.h"
#include "data/commands.h"
#include "data/errors.h"
#include "layers/from_config.h"
#include "train/trainer.h"
#include "data/text_input.h"

#if defined(SSMTRAIN_WITH_CUDA)
#include <cuda_runtime.h>
#endif

// The build passes the CMake project version; the fallback keeps a bare compile working.
#ifndef SSMTRAIN_VERSION
#define SSMTRAIN_VERSION "0.1.0"
#endif

namespace {

constexpr const char* kVersion = SSMTRAIN_VERSION;

// ---- what each subcommand reads from the command line ----
// An empty string or a zero means "not given": the recipe or checkpoint decides.

struct TrainArgs {
  std::string recipe;
  std::vector<std::string> overrides;  // --set key=value, in order
  std::string resume;                  // auto, none or a checkpoint path
};

struct ConfigShowArgs {
  std::string recipe;
  std::vector<std::string> overrides;
};

struct EvalPerplexityArgs {
  std::string checkpoint;
  std::string data;
  int64_t tokens = 0;
};

struct EvalNiahArgs {
  std::string checkpoint;
  std::vector<int64_t> lengths;
  std::vector<double> depths;
  std::string out;
};

struct EvalPasskeyArgs {
  std::string checkpoint;
  std::vector<int64_t> lengths;
  std::string out;
};

struct EvalMqarArgs {
  std::string recipe;
  std::string out;
};

struct GenerateArgs {
  std::string checkpoint;
  std::string prompt;
  int64_t max_new_tokens = 128;
  double temperature = 0.0;  // 0: greedy
};

struct SweepArgs {
  std::string recipe;
  std::string out;
};

struct ExportHfArgs {
  std::string checkpoint;
  std::string out;
};

struct ImportHfArgs {
  std::string in;
  std::string out;
};

struct LaunchArgs {
  int nproc_per_node = 0;
  std::vector<std::string> command;  // the ssmtrain subcommand each rank runs
};

struct InfoArgs {};

// ---- options shared by several subcommands ----

const CLI::Validator kKeyValue(
    [](std::string& text) {
      return text.find('=') == std::string::npos || text.front() == '='
                 ? std::string("expected key=value (e.g. training.lr=3e-4), got '" + text + "'")
                 : std::string();
    },
    "KEY=VALUE");

// A number > 0 (or >= 0), with a message that names the bound (CLI11's own prints DBL_MAX).
CLI::Validator number_at_least(double low, bool inclusive, const std::string& name) {
  return CLI::Validator(
      [low, inclusive](std::string& text) {
        char* end = nullptr;
        const double value = std::strtod(text.c_str(), &end);
        const bool parsed = end != text.c_str() && *end == '\0';
        if (parsed && (inclusive ? value >= low : value > low)) return std::string();
        return fmt::format("expected a number {} {}, got '{}'", inclusive ? ">=" : ">", low, text);
      },
      name);
}
const CLI::Validator kPositive = number_at_least(0, /*inclusive=*/false, "POSITIVE");
const CLI::Validator kNonNegative = number_at_least(0, /*inclusive=*/true, "NON-NEGATIVE");

// A corpus input: an existing path, or `linux-doc`, the default corpus (the documentation of
// Debian's linux-doc package, wherever that version installed it).
const CLI::Validator kCorpusInput(
    [](std::string& value) -> std::string {
      if (value != "linux-doc") return CLI::ExistingPath(value);
      const std::string found = ssmtrain::data::find_linux_doc_corpus();
      if (found.empty())
        return "linux-doc: Debian's linux-doc package is not installed (apt-get install linux-doc)";
      value = found;
      return {};
    },
    "PATH|linux-doc");

void add_recipe(CLI::App& app, std::string& recipe) {
  // Not checked here: loading names a missing file in the one-line recipe error format.
  app.add_option("recipe", recipe, "Recipe YAML file")->required();
}

void add_overrides(CLI::App& app, std::vector<std::string>& overrides) {
  app.add_option("--set", overrides,
                 "Override a recipe key, e.g. --set training.lr=3e-4 (repeatable)")
      ->allow_extra_args(false)
      ->check(kKeyValue);
}

void add_checkpoint(CLI::App& app, std::string& checkpoint) {
  app.add_option("--checkpoint", checkpoint,
                 "A run directory (its latest checkpoint is used) or one checkpoint file")
      ->required()
      ->check(CLI::ExistingPath);
}

void add_out(CLI::App& app, std::string& out, const std::string& help, bool required = true) {
  CLI::Option* option = app.add_option("--out", out, help);
  if (required) option->required();
}

// ---- options of each subcommand ----

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
void check_data_directories(const ssmtrain::configs::Recipe& recipe) {
  const ssmtrain::configs::DataConfig& data = recipe.config.data;
  for (const auto& [key, dir] : {std::pair<std::string, std::string>{"data.train", data.train}, {"data.val", data.val}}) {
    if (dir.empty() || std::filesystem::exists(std::filesystem::path(dir) / "manifest.json")) continue;
    throw ssmtrain::configs::ConfigError(
        recipe.locate(key), key,
        fmt::format("no prepared corpus at '{}' ({} is missing); write it with `ssmtrain data prepare --out {}`", dir,
                    std::filesystem::exists(dir) ? "its manifest.json" : "the directory", dir));
  }
}

// Trains the recipe; resuming from checkpoints arrives with the checkpoint issue, so --resume
// other than none is refused rather than ignored.
int run_train(const TrainArgs& a) {
  try {
    const ssmtrain::configs::Recipe recipe = ssmtrain::configs::load_recipe(a.recipe, a.overrides);
    const ssmtrain::configs::Config& config = recipe.config;
    check_data_directories(recipe);
    if (!a.resume.empty() && a.resume != "none" && a.resume != "auto") {
      fmt::print(stderr, "ssmtrain train: --resume {}: checkpoints are not built yet\n", a.resume);
      return 2;
    }
    const ssmtrain::TrainSummary summary = ssmtrain::train(config);
    fmt::print("run directory: {} (config.yaml, metrics.jsonl, loss_curve.svg)\n", summary.run_dir);
    fmt::print("loss {:.4f} -> {:.4f}", summary.first_loss, summary.final_loss);
    if (summary.final_val_loss >= 0) fmt::print(", validation loss {:.4f} nats", summary.final_val_loss);
    if (summary.unigram_entropy > 0)
      fmt::print(" (unigram entropy of the training tokens {:.4f} nats)", summary.unigram_entropy);
    fmt::print(", {:.0f} tokens/s\n", summary.tokens_per_second);
    return 0;
  } catch (const ssmtrain::configs::ConfigError& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 2;
  } catch (const ssmtrain::data::InputError& e) {
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
    const ssmtrain::configs::Config config = ssmtrain::configs::load_config(a.recipe, a.overrides);
    const ssmtrain::ModelOptions options = ssmtrain::model_options(config.model);
    ssmtrain::LanguageModel model(options, config.run.seed);
    const ssmtrain::configs::ModelCost cost{model.num_parameters(), model.active_parameters(),
                                            ssmtrain::training_flops_per_token(options, config.training.seq_len)};
    fmt::print("{}", ssmtrain::configs::render_config_show(config, cost));
    return 0;
  } catch (const ssmtrain::configs::ConfigError& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 2;
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "ssmtrain config show: {}: {}\n", a.recipe, e.what());
    return 2;
  }
}

// The data subcommands fill the library's option structs directly (data/tokenizer.h,
// data/prepare.h document every field and its default).
void data_tokenizer_options(CLI::App& app, ssmtrain::data::TokenizerOptions& a) {
  app.add_option("--input", a.inputs,
                 "Text, JSONL (text field) or directories (recursive, .gz too); linux-doc: the default corpus")
      ->required()
      ->transform(kCorpusInput);
  app.add_option("--vocab-size", a.vocab_size, "Vocabulary size")
      ->required()
      ->check(kPositive);
  app.add_option("--model-type", a.model_type, "SentencePiece model type")
      ->check(CLI::IsMember({"bpe", "unigram"}))
      ->capture_default_str();
  app.add_option("--max-sentences", a.max_sentences,
                 "Sentences sampled for training at most (bounds memory)")
      ->check(kPositive)
      ->capture_default_str();
  add_out(app, a.output_path, "Tokenizer model file to write (FILE.model)");
}

void data_prepare_options(CLI::App& app, ssmtrain::data::PrepareOptions& a) {
  app.add_option("--tokenizer", a.tokenizer_path, "SentencePiece model (FILE.model)")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--input", a.inputs,
                 "Text, JSONL (text field) or directories (recursive, .gz too); linux-doc: the default corpus")
      ->required()
      ->transform(kCorpusInput);
  add_out(app, a.output_dir, "Directory for the HDF5 shards and the manifest");
  app.add_option("--val-fraction", a.val_fraction, "Fraction of documents held out for validation")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--threads", a.threads, "Encoding threads (0: every hardware thread)")
      ->check(kNonNegative)
      ->capture_default_str();
}

void eval_perplexity_options(CLI::App& app, EvalPerplexityArgs& a) {
  add_checkpoint(app, a.checkpoint);
  app.add_option("--data", a.data, "Prepared data directory (default: the checkpoint's recipe)")
      ->check(CLI::ExistingDirectory);
  app.add_option("--tokens", a.tokens,
                 "Held-out tokens to score (default: the recipe's eval perplexity tokens)")
      ->check(kPositive);
}

void eval_niah_options(CLI::App& app, EvalNiahArgs& a) {
  add_checkpoint(app, a.checkpoint);
  app.add_option("--lengths", a.lengths, "Context lengths in tokens, comma-separated")
      ->delimiter(',')
      ->check(kPositive);
  app.add_option("--depths", a.depths, "Needle depths as fractions of the context, comma-separated")
      ->delimiter(',')
      ->check(CLI::Range(0.0, 1.0));
  add_out(app, a.out, "Directory for the JSON, CSV and SVG heatmap");
}

void eval_passkey_options(CLI::App& app, EvalPasskeyArgs& a) {
  add_checkpoint(app, a.checkpoint);
  app.add_option("--lengths", a.lengths, "Context lengths in tokens, comma-separated")
      ->delimiter(',')
      ->check(kPositive);
  add_out(app, a.out, "Directory for the results");
}

void eval_mqar_options(CLI::App& app, EvalMqarArgs& a) {
  add_recipe(app, a.recipe);
  add_out(app, a.out, "Directory for the results");
}

void generate_options(CLI::App& app, GenerateArgs& a) {
  add_checkpoint(app, a.checkpoint);
  app.add_option("--prompt", a.prompt, "Text to continue")->required();
  app.add_option("--max-new-tokens", a.max_new_tokens, "Tokens to generate")
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--temperature", a.temperature, "Sampling temperature (0: greedy)")
      ->check(kNonNegative)
      ->capture_default_str();
}

void sweep_options(CLI::App& app, SweepArgs& a) {
  add_recipe(app, a.recipe);
  add_out(app, a.out, "Directory for the variants and report.md / report.csv / SVG plots",
          /*required=*/false);
}

void export_hf_options(CLI::App& app, ExportHfArgs& a) {
  add_checkpoint(app, a.checkpoint);
  add_out(app, a.out, "Directory for model.safetensors, config.json and the tokenizer");
}

void import_hf_options(CLI::App& app, ImportHfArgs& a) {
  app.add_option("--in", a.in, "HuggingFace model directory (model.safetensors, config.json)")
      ->required()
      ->check(CLI::ExistingDirectory);
  add_out(app, a.out, "Checkpoint file to write");
}

void launch_options(CLI::App& app, LaunchArgs& a) {
  app.add_option("--nproc-per-node", a.nproc_per_node, "Ranks to start on this machine")
      ->required()
      ->check(kPositive);
  app.add_option("command", a.command,
                 "The subcommand every rank runs, after --, e.g. -- train RECIPE.yaml")
      ->required();
}

void info_options(CLI::App&, InfoArgs&) {}

// ---- subcommands that run today ----

int run_info(const InfoArgs&) {
  fmt::print("ssmtrain {}\n", kVersion);
#include "configs/errors.h"
#include "configs/load.h"
#include "configs/show.h"
#include "data/commands.h"
#include "data/errors.h"
#include "layers/from_config.h"
#include "train/trainer.h"
#include "data/text_input.h"

#if defined(SSMTRAIN_WITH_CUDA)
  int runtime_version = 0, driver_version = 0;
  cudaRuntimeGetVersion(&runtime_version);
  cudaDriverGetVersion(&driver_version);
  const std::string driver =
      driver_version == 0
          ? std::string("no driver")
          : fmt::format("driver {}.{}", driver_version / 1000, driver_version % 1000 / 10);
  fmt::print("CUDA: compiled in (runtime {}.{}, {})\n", runtime_version / 1000,
             runtime_version % 1000 / 10, driver);
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    fmt::print("no CUDA GPU visible{}\n",
               err != cudaSuccess ? fmt::format(" ({})", cudaGetErrorString(err)) : "");
    return 0;
  }
  for (int device = 0; device < count; ++device) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
      fmt::print("GPU {}: properties unavailable\n", device);
      continue;
    }
    fmt::print("GPU {}: {}, {:.1f} GiB, {} SMs, compute capability {}.{}\n", device, prop.name,
               static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0),
               prop.multiProcessorCount, prop.major, prop.minor);
  }
#else
  fmt::print("CUDA: not compiled in (configure with SSMTRAIN_CUDA=AUTO or ON and nvcc on PATH)\n");
#endif
  return 0;
}

// ---- the table ----

// What a parsed subcommand runs.
using Run = std::function<int()>;

// One subcommand: its path below `ssmtrain` ("eval niah"), one line of help, and a function
// that declares its options on its CLI11 app and returns what runs after a successful parse.
struct Subcommand {
  std::string path;
  std::string help;
  std::function<Run(CLI::App&)> declare;
};

int not_built_yet(const std::string& path) {
  fmt::print(stderr, "ssmtrain {}: not built yet\n", path);
  return 1;
}

// Ties an argument struct to its option declarations and its run function. A null run
// function marks a subcommand whose work has not landed yet.
template <typename Args>
Subcommand command(std::string path, std::string help, void (*options)(CLI::App&, Args&),
                   int (*run)(const Args&)) {
  auto declare = [path, options, run](CLI::App& app) -> Run {
    // The options write into *args during parsing, so the runner keeps it alive.
    auto args = std::make_shared<Args>();
    options(app, *args);
    return [args, run, path] { return run == nullptr ? not_built_yet(path) : run(*args); };
  };
  return Subcommand{std::move(path), std::move(help), std::move(declare)};
}

// Every subcommand, in the order `ssmtrain --help` lists them. To build one, replace its
// nullptr with the function that runs it.
const std::vector<Subcommand>& subcommand_table() {
  static const std::vector<Subcommand> table = {
      command<TrainArgs>("train", "Train a model from a recipe", train_options, run_train),
      command<ConfigShowArgs>(
          "config show",
          "Print the resolved config, layer layout, parameter count and FLOPs per token",
          config_show_options, run_config_show),
      command<ssmtrain::data::TokenizerOptions>("data tokenizer", "Train a SentencePiece tokenizer",
                                                data_tokenizer_options, ssmtrain::data::run_tokenizer_command),
      command<ssmtrain::data::PrepareOptions>("data prepare", "Encode a corpus into HDF5 token shards",
                                              data_prepare_options, ssmtrain::data::run_prepare_command),
      command<EvalPerplexityArgs>("eval perplexity",
                                  "Loss, perplexity and bits per byte on held-out data",
                                  eval_perplexity_options, nullptr),
      command<EvalNiahArgs>("eval niah", "Needle-in-a-haystack over lengths x depths",
                            eval_niah_options, nullptr),
      command<EvalPasskeyArgs>("eval passkey", "Passkey retrieval", eval_passkey_options,
                               nullptr),
      command<EvalMqarArgs>("eval mqar", "Train and score multi-query associative recall",
                            eval_mqar_options, nullptr),
      command<GenerateArgs>("generate", "Generate text from a checkpoint", generate_options,
                            nullptr),
      command<SweepArgs>("sweep", "Run every variant of a sweep and write a report",
                         sweep_options, nullptr),
      command<ExportHfArgs>("export hf", "Write a HuggingFace transformers model directory",
                            export_hf_options, nullptr),
      command<ImportHfArgs>("import hf", "Read a HuggingFace model directory into a checkpoint",
                            import_hf_options, nullptr),
      command<LaunchArgs>("launch", "Start local ranks: launch --nproc-per-node N -- train ...",
                          launch_options, nullptr),
      command<InfoArgs>("info", "Version, CUDA support and visible GPUs", info_options,
                        run_info),
  };
  return table;
}

// Help of the subcommands that only group others ("ssmtrain eval niah").
const std::map<std::string, std::string>& group_help() {
  static const std::map<std::string, std::string> help = {
      {"config", "Inspect recipes"},
      {"data", "Tokenizers and token shards"},
      {"eval", "Evaluate a checkpoint"},
      {"export", "Write a checkpoint in another framework's format"},
      {"import", "Read another framework's model into a checkpoint"},
  };
  return help;
}

std::vector<std::string> split_words(const std::string& path) {
  std::vector<std::string> words;
  std::istringstream in(path);
  for (std::string word; in >> word;) words.push_back(word);
  return words;
}

// Adds every subcommand of the table to `app`; the one the user picks stores its run in
// `selected` once its options have parsed.
void register_subcommands(CLI::App& app, Run& selected) {
  std::map<std::string, CLI::App*> groups;
  for (const Subcommand& sub : subcommand_table()) {
    const std::vector<std::string> words = split_words(sub.path);
    CLI::App* parent = &app;
    std::string prefix;
    for (size_t i = 0; i + 1 < words.size(); ++i) {
      prefix += (prefix.empty() ? "" : " ") + words[i];
      CLI::App*& group = groups[prefix];
      if (group == nullptr) {
        const auto help = group_help().find(prefix);
        group = parent->add_subcommand(words[i], help == group_help().end() ? "" : help->second);
        group->require_subcommand(1);
      }
      parent = group;
    }
    CLI::App* leaf = parent->add_subcommand(words.back(), sub.help);
    const Run run = sub.declare(*leaf);
    leaf->callback([&selected, run] { selected = run; });
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("ssmtrain: pretraining of state-space models (Mamba, Mamba-2) and hybrids",
               "ssmtrain");
  app.set_version_flag("--version", fmt::format("ssmtrain {}", kVersion));
  app.require_subcommand(1);
  Run selected;
  register_subcommands(app, selected);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0 with their text on stdout; anything else is a usage error,
    // one line on stderr.
    if (e.get_exit_code() == 0) return app.exit(e);
    fmt::print(stderr, "ssmtrain: {} (see --help)\n", e.what());
    return 2;
  }

  try {
    return selected ? selected() : not_built_yet("(none)");
  } catch (const std::exception& e) {
    fmt::print(stderr, "ssmtrain: {}\n", e.what());
    return 1;
  }
}
