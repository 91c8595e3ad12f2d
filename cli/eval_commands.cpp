// `ssmtrain eval perplexity|niah|passkey|mqar`, `ssmtrain generate` and `ssmtrain sweep`:
// evaluations of checkpoints and recipes (DESIGN.md section 8).
#include <fmt/core.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli/options.h"
#include "cli/subcommand.h"
#include "eval/context.h"
#include "eval/generate.h"
#include "eval/perplexity.h"

namespace ssmtrain::cli {
namespace {

struct EvalPerplexityArgs {
  std::string checkpoint;
  std::string data;
  int64_t tokens = 0;
  int64_t seq_len = 0;
  int64_t stride = 0;
  std::string out;
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
  std::vector<std::string> prompts;
  int64_t max_new_tokens = 128;
  double temperature = 0.0;  // 0: greedy
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
  std::vector<int64_t> stop_tokens;
  bool no_eos_stop = false;
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
  app.add_option("--seq-len", a.seq_len, "Window length (default: the recipe's training.seq_len)")->check(kPositive);
  app.add_option("--stride", a.stride, "Start a window every S tokens, scoring only its new targets (default: the window length)")
      ->check(kPositive);
  app.add_option("--out", a.out, "Also write the JSON to this file");
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
  app.add_option("--prompt", a.prompts, "Text to continue (repeat for a batch of prompts)")->required();
  app.add_option("--max-new-tokens", a.max_new_tokens, "Tokens to generate")->check(kPositive)->capture_default_str();
  app.add_option("--temperature", a.temperature, "Sampling temperature (0: greedy)")
      ->check(kNonNegative)
      ->capture_default_str();
  app.add_option("--top-k", a.top_k, "Sample from the k most likely tokens (0: all)")->check(kNonNegative)->capture_default_str();
  app.add_option("--top-p", a.top_p, "Sample from the smallest set reaching this probability")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--seed", a.seed, "Seed of the sampling draws")->capture_default_str();
  app.add_option("--stop-token", a.stop_tokens, "Token id that ends a sequence (repeatable; the tokenizer's EOS always does)");
  app.add_flag("--no-eos-stop", a.no_eos_stop, "Do not stop at the end-of-document token");
}

void sweep_options(CLI::App& app, SweepArgs& a) {
  add_recipe(app, a.recipe);
  add_out(app, a.out, "Directory for the variants and report.md / report.csv / SVG plots", /*required=*/false);
}

// A usage error found after parsing: the message on stderr, exit status 2.
int usage_error(const std::string& command, const std::string& what) {
  fmt::print(stderr, "ssmtrain {}: {}\n", command, what);
  return 2;
}

// The JSON of one result, and the same text in --out when given.
void emit_json(const std::string& json, const std::string& out) {
  fmt::print("{}\n", json);
  if (!out.empty()) {
    std::ofstream file(out);
    file << json << "\n";
    if (!file) throw std::runtime_error(out + ": cannot write the result");
  }
}

std::string json_string(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if (c == '\n') o += "\\n";
    else if (static_cast<unsigned char>(c) < 0x20) o += fmt::format("\\u{:04x}", int(c));
    else o += c;
  }
  return o + "\"";
}

int run_eval_perplexity(const EvalPerplexityArgs& a) {
  const eval::EvalContext ctx = eval::open_checkpoint(a.checkpoint, a.data);
  const configs::Config& config = ctx.loaded.config;
  const int64_t budget = a.tokens > 0 ? a.tokens : config.eval.perplexity_tokens;
  const std::vector<int64_t> tokens = eval::held_out_tokens(ctx.data_dir, budget);
  eval::PerplexityOptions o;
  o.seq_len = a.seq_len > 0 ? a.seq_len : config.training.seq_len;
  o.stride = a.stride;
  o.compute_dtype = ctx.compute;
  if (o.stride > o.seq_len)
    return usage_error("eval perplexity", fmt::format("--stride {} exceeds the window of {} tokens", o.stride, o.seq_len));
  eval::ByteCount bytes;
  if (ctx.tokenizer)
    bytes = [&](const std::vector<int64_t>& t) {
      return int64_t(ctx.tokenizer->decode(std::vector<int>(t.begin(), t.end())).size());
    };
  const eval::PerplexityResult r = eval::perplexity(ctx.model(), tokens, o, bytes);
  emit_json(fmt::format("{{\"checkpoint\": {}, \"data\": {}, \"split\": \"val\", \"seq_len\": {}, \"stride\": {}, "
                        "\"tokens\": {}, \"windows\": {}, \"loss\": {:.6f}, \"perplexity\": {:.6f}, "
                        "\"bits_per_byte\": {:.6f}, \"bytes\": {}, \"dtype\": \"{}\"}}",
                        json_string(ctx.checkpoint_name()), json_string(ctx.data_dir), o.seq_len,
                        o.stride > 0 ? o.stride : o.seq_len, r.tokens_scored, r.windows, r.loss, r.perplexity,
                        r.bits_per_byte, r.bytes, dtype_name(ctx.compute)),
            a.out);
  return 0;
}

int run_generate(const GenerateArgs& a) {
  const eval::EvalContext ctx = eval::open_checkpoint(a.checkpoint);
  if (!ctx.tokenizer)
    throw std::runtime_error(ctx.checkpoint_name() + ": the recipe names no data or tokenizer to encode the prompt with");
  const data::Tokenizer& tok = *ctx.tokenizer;
  std::vector<std::vector<int64_t>> prompts;
  for (const std::string& text : a.prompts) {
    std::vector<int64_t> ids;
    if (tok.eos_id() >= 0) ids.push_back(tok.eos_id());  // training documents follow an EOS
    for (int id : tok.encode(text)) ids.push_back(id);
    prompts.push_back(ids);
  }
  eval::GenerateOptions o;
  o.max_new_tokens = a.max_new_tokens;
  o.sampling = {a.temperature, a.top_k, a.top_p, a.seed};
  o.stop_tokens = a.stop_tokens;
  if (!a.no_eos_stop && tok.eos_id() >= 0) o.stop_tokens.push_back(tok.eos_id());
  o.compute_dtype = ctx.compute;
  for (int64_t t : o.stop_tokens)
    if (t < 0 || t >= ctx.model().options().vocab_size)
      return usage_error("generate", fmt::format("--stop-token {} is outside the vocabulary of {}", t,
                                                 ctx.model().options().vocab_size));
  // One prompt streams its text as it is generated; a batch prints each text at the end.
  const bool stream = prompts.size() == 1;
  std::vector<int> so_far;
  size_t printed = 0;
  if (stream) fmt::print("{}", a.prompts[0]);
  auto on_token = [&](int64_t, int64_t token) {
    // Ids past the tokenizer's pieces (a model vocabulary padded beyond it) decode to nothing.
    if (!stream || token == tok.eos_id() || token >= tok.vocab_size()) return;
    so_far.push_back(int(token));
    const std::string text = tok.decode(so_far);
    if (text.size() > printed) {
      fmt::print("{}", text.substr(printed));
      std::fflush(stdout);
      printed = text.size();
    }
  };
  const std::vector<eval::Generated> out = eval::generate(ctx.model(), prompts, o, on_token);
  if (stream) {
    fmt::print("\n");
    return 0;
  }
  for (size_t i = 0; i < out.size(); ++i) {
    std::vector<int> ids;
    for (int64_t t : out[i].tokens)
      if (t != tok.eos_id() && t < tok.vocab_size()) ids.push_back(int(t));
    fmt::print("=== {} ===\n{}{}\n", i, a.prompts[i], tok.decode(ids));
  }
  return 0;
}

}  // namespace

std::vector<Subcommand> eval_commands() {
  return {
      command<EvalPerplexityArgs>("eval perplexity", "Loss, perplexity and bits per byte on held-out data",
                                  eval_perplexity_options, run_eval_perplexity),
      command<EvalNiahArgs>("eval niah", "Needle-in-a-haystack over lengths x depths", eval_niah_options, nullptr),
      command<EvalPasskeyArgs>("eval passkey", "Passkey retrieval", eval_passkey_options, nullptr),
      command<EvalMqarArgs>("eval mqar", "Train and score multi-query associative recall", eval_mqar_options, nullptr),
      command<GenerateArgs>("generate", "Generate text from a checkpoint", generate_options, run_generate),
      command<SweepArgs>("sweep", "Run every variant of a sweep and write a report", sweep_options, nullptr),
  };
}

}  // namespace ssmtrain::cli
