// `ssmtrain eval perplexity|niah|passkey|mqar`, `ssmtrain generate` and `ssmtrain sweep`:
// evaluations of checkpoints and recipes (DESIGN.md section 8).
#include <cstdint>
#include <string>
#include <vector>

#include "cli/options.h"
#include "cli/subcommand.h"

namespace ssmtrain::cli {
namespace {

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

void eval_perplexity_options(CLI::App& app, EvalPerplexityArgs& a) {
  add_checkpoint(app, a.checkpoint);
  app.add_option("--data", a.data, "Prepared data directory (default: the checkpoint's recipe)")
      ->check(CLI::ExistingDirectory);
  app.add_option("--tokens", a.tokens, "Held-out tokens to score (default: the recipe's eval perplexity tokens)")
      ->check(kPositive);
}

void eval_niah_options(CLI::App& app, EvalNiahArgs& a) {
  add_checkpoint(app, a.checkpoint);
  app.add_option("--lengths", a.lengths, "Context lengths in tokens, comma-separated")->delimiter(',')->check(kPositive);
  app.add_option("--depths", a.depths, "Needle depths as fractions of the context, comma-separated")
      ->delimiter(',')
      ->check(CLI::Range(0.0, 1.0));
  add_out(app, a.out, "Directory for the JSON, CSV and SVG heatmap");
}

void eval_passkey_options(CLI::App& app, EvalPasskeyArgs& a) {
  add_checkpoint(app, a.checkpoint);
  app.add_option("--lengths", a.lengths, "Context lengths in tokens, comma-separated")->delimiter(',')->check(kPositive);
  add_out(app, a.out, "Directory for the results");
}

void eval_mqar_options(CLI::App& app, EvalMqarArgs& a) {
  add_recipe(app, a.recipe);
  add_out(app, a.out, "Directory for the results");
}

void generate_options(CLI::App& app, GenerateArgs& a) {
  add_checkpoint(app, a.checkpoint);
  app.add_option("--prompt", a.prompt, "Text to continue")->required();
  app.add_option("--max-new-tokens", a.max_new_tokens, "Tokens to generate")->check(kPositive)->capture_default_str();
  app.add_option("--temperature", a.temperature, "Sampling temperature (0: greedy)")
      ->check(kNonNegative)
      ->capture_default_str();
}

void sweep_options(CLI::App& app, SweepArgs& a) {
  add_recipe(app, a.recipe);
  add_out(app, a.out, "Directory for the variants and report.md / report.csv / SVG plots", /*required=*/false);
}

}  // namespace

std::vector<Subcommand> eval_commands() {
  return {
      command<EvalPerplexityArgs>("eval perplexity", "Loss, perplexity and bits per byte on held-out data",
                                  eval_perplexity_options, nullptr),
      command<EvalNiahArgs>("eval niah", "Needle-in-a-haystack over lengths x depths", eval_niah_options, nullptr),
      command<EvalPasskeyArgs>("eval passkey", "Passkey retrieval", eval_passkey_options, nullptr),
      command<EvalMqarArgs>("eval mqar", "Train and score multi-query associative recall", eval_mqar_options, nullptr),
      command<GenerateArgs>("generate", "Generate text from a checkpoint", generate_options, nullptr),
      command<SweepArgs>("sweep", "Run every variant of a sweep and write a report", sweep_options, nullptr),
  };
}

}  // namespace ssmtrain::cli
