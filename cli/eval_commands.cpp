// `ssmtrain eval perplexity|niah|passkey|mqar`, `ssmtrain generate` and `ssmtrain sweep`:
// evaluations of checkpoints and recipes (DESIGN.md section 8).
#include <fmt/core.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli/options.h"
#include "cli/subcommand.h"
#include "cli/sweep_commands.h"
#include "eval/context.h"
#include "autograd/device.h"
#include "configs/errors.h"
#include "configs/load.h"
#include "eval/decode_bench.h"
#include "eval/generate.h"
#include "eval/mqar.h"
#include "layers/from_config.h"
#include "layers/preflight.h"
#include "eval/perplexity.h"
#include "eval/retrieval.h"

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

// `eval niah` and `eval passkey` take the same options (passkey ignores --data).
struct EvalRetrievalArgs {
  std::string checkpoint;
  std::string data;
  std::vector<int64_t> lengths;
  std::vector<double> depths;
  int64_t trials = 4;
  uint64_t seed = 0;
  int64_t batch = 8;
  std::string out;
};

struct EvalMqarArgs {
  std::string recipe;
  std::vector<std::string> overrides;
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
  // --bench: decode throughput and memory instead of text (eval/decode_bench.h).
  bool bench = false;
  std::string recipe;  // a recipe's model, randomly initialised, instead of --checkpoint
  std::vector<std::string> overrides;
  std::vector<int64_t> batches{1, 16};
  std::vector<int64_t> contexts{1024, 8192, 32768};
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

void eval_retrieval_options(CLI::App& app, EvalRetrievalArgs& a, bool haystack) {
  add_checkpoint(app, a.checkpoint);
  if (haystack)
    app.add_option("--data", a.data, "Prepared data directory whose held-out text is the haystack "
                                     "(default: the checkpoint's recipe)")
        ->check(CLI::ExistingDirectory);
  app.add_option("--lengths", a.lengths,
                 "Context lengths in tokens, comma-separated (default: the recipe's eval.niah.lengths)")
      ->delimiter(',')
      ->check(kPositive);
  app.add_option("--depths", a.depths,
                 "Needle depths as fractions of the context, comma-separated (default: the recipe's eval.niah.depths)")
      ->delimiter(',')
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--trials", a.trials, "Prompts per length and depth, each with its own number")
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--seed", a.seed, "Seed of the numbers and haystack offsets")->capture_default_str();
  app.add_option("--batch", a.batch, "Prompts generated together")->check(kPositive)->capture_default_str();
  add_out(app, a.out, "Directory for the JSON, CSV and SVG heatmap");
}

void eval_niah_options(CLI::App& app, EvalRetrievalArgs& a) { eval_retrieval_options(app, a, true); }
void eval_passkey_options(CLI::App& app, EvalRetrievalArgs& a) { eval_retrieval_options(app, a, false); }

void eval_mqar_options(CLI::App& app, EvalMqarArgs& a) {
  add_recipe(app, a.recipe);
  add_overrides(app, a.overrides);
  add_out(app, a.out, "Directory for mqar.json, mqar_loss.svg and mqar_accuracy.svg");
}

void generate_options(CLI::App& app, GenerateArgs& a) {
  add_checkpoint(app, a.checkpoint, /*required=*/false);
  app.add_option("--prompt", a.prompts, "Text to continue (repeat for a batch of prompts; required without --bench)");
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
  app.add_flag("--bench", a.bench,
               "Measure decode: random prompts of each --contexts length at each --batches size, --max-new-tokens "
               "greedy tokens each; tokens/s and peak memory as JSON");
  app.add_option("--recipe", a.recipe, "With --bench: the recipe's model, randomly initialised (instead of --checkpoint)")
      ->check(CLI::ExistingFile);
  app.add_option("--set", a.overrides, "With --recipe: override a recipe key (key.path=value), repeatable")
      ->check(kKeyValue);
  app.add_option("--batches", a.batches, "With --bench: batch sizes, comma-separated")
      ->delimiter(',')
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--contexts", a.contexts, "With --bench: prompt lengths in tokens, comma-separated")
      ->delimiter(',')
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--out", a.out,
                 "With --bench: also write the JSON to this file; else write each prompt's token ids and the "
                 "generated ids there as JSON (for comparing with other tools token by token)");
}

void sweep_options(CLI::App& app, SweepArgs& a) {
  add_recipe(app, a.recipe);
  add_overrides(app, a.overrides);
  add_out(app, a.out, "Directory for the variants and report.md / report.csv / SVG plots (default: "
                      "run.output_dir/run.name)", /*required=*/false);
  CLI::Option* slurm =
      app.add_flag("--slurm", a.slurm, "Write a Slurm job array (sweep.sbatch, submit.sh) instead of running");
  CLI::Option* variant =
      app.add_option("--variant", a.variant, "Run only variant I (0-based; what each array task runs), no report")
          ->check(kNonNegative)
          ->excludes(slurm);
  app.add_flag("--report-only", a.report_only, "Write the report from the variants' results without training")
      ->excludes(slurm)
      ->excludes(variant);
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

// `generate --bench`: the model of --checkpoint or --recipe, every batch x context, JSON.
int run_generate_bench(const GenerateArgs& a) {
  if (a.checkpoint.empty() == a.recipe.empty())
    return usage_error("generate --bench", "give exactly one of --checkpoint and --recipe");
  std::optional<eval::EvalContext> ctx;
  std::unique_ptr<LanguageModel> owned;
  const LanguageModel* model = nullptr;
  std::string source;
  DType compute = DType::f32;
  Device device = cuda_available() ? Device::cuda(0) : Device::cpu();
  if (!a.checkpoint.empty()) {
    ctx = eval::open_checkpoint(a.checkpoint);
    model = &ctx->model();
    source = ctx->checkpoint_name();
    compute = ctx->compute;
    device = ctx->device;
  } else {
    configs::Recipe recipe;
    try {
      recipe = configs::load_recipe(a.recipe, a.overrides);
      check_kernels_support(recipe, device.is_cuda());
    } catch (const configs::ConfigError& e) {
      fmt::print(stderr, "{}\n", e.what());
      return 2;
    }
    owned = std::make_unique<LanguageModel>(model_options(recipe.config.model), uint64_t(recipe.config.run.seed));
    owned->to(device);
    model = owned.get();
    source = a.recipe;
    compute = device.is_cuda() && recipe.config.training.precision != configs::Precision::fp32 ? DType::bf16 : DType::f32;
  }
  eval::DecodeBenchOptions o;
  o.batches = a.batches;
  o.contexts = a.contexts;
  o.new_tokens = a.max_new_tokens;
  o.compute_dtype = compute;
  fmt::print(stderr, "generate --bench: {} ({}) on {} in {}: batches {}, contexts {}, {} new tokens each\n", source,
             model->options().layout_string(), device.str(), dtype_name(compute), a.batches.size(), a.contexts.size(),
             a.max_new_tokens);
  const std::vector<eval::DecodeBenchRow> rows = eval::decode_bench(*model, o, [](const eval::DecodeBenchRow& r) {
    if (!r.error.empty())
      fmt::print(stderr, "batch {:>3} context {:>6}: failed: {}\n", r.batch, r.context, r.error);
    else
      fmt::print(stderr, "batch {:>3} context {:>6}: prefill {:.3f} s, decode {:.0f} tok/s, end to end {:.0f} tok/s, "
                         "peak {:.2f} GiB\n",
                 r.batch, r.context, r.prefill_seconds, r.decode_tokens_per_second, r.tokens_per_second,
                 double(r.peak_memory_bytes) / double(1 << 30));
  });
  std::string json = fmt::format("{{\"bench\": \"decode\", \"model\": {}, \"layout\": {}, \"device\": {}, "
                                 "\"dtype\": \"{}\", \"new_tokens\": {}, \"rows\": [",
                                 json_string(source), json_string(model->options().layout_string()),
                                 json_string(device.is_cuda() ? cuda_device_name(device.index) : device.str()),
                                 dtype_name(compute), a.max_new_tokens);
  for (size_t i = 0; i < rows.size(); ++i) {
    const eval::DecodeBenchRow& r = rows[i];
    json += fmt::format("{}{{\"batch\": {}, \"context\": {}, \"prefill_s\": {:.6f}, \"decode_s\": {:.6f}, "
                        "\"total_s\": {:.6f}, \"decode_tokens_per_s\": {:.2f}, \"tokens_per_s\": {:.2f}, "
                        "\"peak_memory_bytes\": {}, \"error\": {}}}",
                        i ? ", " : "", r.batch, r.context, r.prefill_seconds, r.decode_seconds, r.total_seconds,
                        r.decode_tokens_per_second, r.tokens_per_second, r.peak_memory_bytes,
                        r.error.empty() ? std::string("null") : json_string(r.error));
  }
  emit_json(json + "]}", a.out);
  return 0;
}

int run_generate(const GenerateArgs& a) {
  if (a.bench) return run_generate_bench(a);
  if (a.checkpoint.empty()) return usage_error("generate", "--checkpoint is required (without --bench)");
  if (a.prompts.empty()) return usage_error("generate", "--prompt is required (without --bench)");
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
    if (t < 0 || t >= ctx.model().options().config.vocab_size)
      return usage_error("generate", fmt::format("--stop-token {} is outside the vocabulary of {}", t,
                                                 ctx.model().options().config.vocab_size));
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
  if (!a.out.empty()) {
    std::string json = "{\"sequences\": [";
    for (size_t i = 0; i < out.size(); ++i)
      json += fmt::format("{}{{\"prompt\": {}, \"prompt_ids\": [{}], \"new_ids\": [{}]}}", i ? ", " : "",
                          json_string(a.prompts[i]), fmt::join(prompts[i], ", "), fmt::join(out[i].tokens, ", "));
    std::ofstream file(a.out);
    file << json << "]}\n";
    if (!file) throw std::runtime_error(a.out + ": cannot write the token ids");
  }
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

// NIAH (haystack: held-out text) or passkey over the lengths x depths grid, with a progress
// line per cell on stderr, the files in --out and a summary on stdout.
int run_retrieval_command(const EvalRetrievalArgs& a, bool niah) {
  const char* name = niah ? "niah" : "passkey";
  const eval::EvalContext ctx = eval::open_checkpoint(a.checkpoint, niah ? a.data : std::string());
  if (!ctx.tokenizer)
    throw std::runtime_error(ctx.checkpoint_name() + ": the recipe names no data or tokenizer to build prompts with");
  const configs::Config& config = ctx.loaded.config;
  eval::RetrievalOptions o;
  o.lengths = !a.lengths.empty() ? a.lengths : config.eval.niah.lengths;
  o.depths = !a.depths.empty() ? a.depths : config.eval.niah.depths;
  o.trials = a.trials;
  o.seed = a.seed;
  o.batch = a.batch;
  o.compute_dtype = ctx.compute;
  fmt::print(stderr, "{}: {} lengths x {} depths x {} trials on {} ({}, {})\n", name, o.lengths.size(), o.depths.size(),
             o.trials, ctx.checkpoint_name(), ctx.device.str(), dtype_name(ctx.compute));
  const eval::CellCallback progress = [&](const eval::RetrievalCell& c, int64_t done, int64_t total) {
    fmt::print(stderr, "{}: [{}/{}] length {} depth {:g}: {}/{} correct\n", name, done, total, c.length, c.depth,
               c.correct, c.trials);
  };
  // NIAH's haystack is held-out text; passkey's filler is fixed.
  const eval::RetrievalResult r =
      niah ? eval::run_niah(ctx.model(), *ctx.tokenizer, ctx.data_dir, o, progress)
           : eval::run_retrieval(ctx.model(), eval::passkey_task(), eval::text_codec(*ctx.tokenizer), o, progress);
  eval::write_retrieval_files(r, ctx.checkpoint_name(), config.training.seq_len, a.out);
  fmt::print("{}: accuracy {:.4f} over {} prompts; wrote {}/{}.json, {}.csv, {}.svg\n", name, r.accuracy(),
             r.samples.size(), a.out, name, name, name);
  return 0;
}

int run_eval_niah(const EvalRetrievalArgs& a) { return run_retrieval_command(a, true); }

// Trains the recipe's model on MQAR and scores it (eval/mqar.h): a step line every
// logging.every steps and an accuracy line per evaluation on stderr, the files in --out, a
// summary on stdout. A recipe that cannot run the task exits 2 before any work.
int run_eval_mqar(const EvalMqarArgs& a) {
  configs::Recipe recipe;
  try {
    recipe = configs::load_recipe(a.recipe, a.overrides);
    if (!recipe.sweep_variants.empty())
      throw configs::ConfigError(recipe.locate("sweep"), "sweep",
                                 fmt::format("this recipe is a sweep of {} variants; `ssmtrain sweep {}` runs them "
                                             "(eval mqar runs one recipe)",
                                             recipe.sweep_variants.size(), a.recipe));
    check_kernels_support(recipe, cuda_available());
    eval::check_mqar(recipe.config);
  } catch (const configs::ConfigError& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 2;
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "ssmtrain eval mqar: {}: {}\n", a.recipe, e.what());
    return 2;
  }
  const configs::Config& config = recipe.config;
  fmt::print(stderr, "mqar: {} pairs, {} queries, vocabulary {}, sequences of {}, {} steps\n", config.mqar.num_pairs,
             eval::mqar_queries(config.mqar), config.mqar.vocab_size, config.training.seq_len,
             config.training.total_steps());
  const eval::MqarResult r =
      eval::run_mqar(config, [](int64_t step, double loss, double lr, double accuracy) {
        if (accuracy < 0)
          fmt::print(stderr, "mqar: step {} | loss {:.4f} | lr {:.2e}\n", step, loss, lr);
        else
          fmt::print(stderr, "mqar: after step {}: held-out accuracy {:.4f}\n", step, accuracy);
      });
  eval::write_mqar_files(r, config, a.recipe, a.out);
  fmt::print("mqar: {} ({}, {:.2f}M parameters on {}): accuracy {:.4f} ({} of {} answers; chance {:.4f}), "
             "{:.1f} s of training; wrote {}/mqar.json, mqar_loss.svg, mqar_accuracy.svg\n",
             r.layout, a.recipe, double(r.parameters) / 1e6, r.device, r.accuracy, r.correct, r.answers, r.chance,
             r.train_seconds, a.out);
  return 0;
}
int run_eval_passkey(const EvalRetrievalArgs& a) { return run_retrieval_command(a, false); }

}  // namespace

std::vector<Subcommand> eval_commands() {
  return {
      command<EvalPerplexityArgs>("eval perplexity", "Loss, perplexity and bits per byte on held-out data",
                                  eval_perplexity_options, run_eval_perplexity),
      command<EvalRetrievalArgs>("eval niah", "Needle-in-a-haystack over lengths x depths", eval_niah_options,
                                 run_eval_niah),
      command<EvalRetrievalArgs>("eval passkey", "Passkey retrieval over lengths x depths", eval_passkey_options,
                                 run_eval_passkey),
      command<EvalMqarArgs>("eval mqar", "Train and score multi-query associative recall", eval_mqar_options,
                            run_eval_mqar),
      command<GenerateArgs>("generate", "Generate text from a checkpoint", generate_options, run_generate),
      command<SweepArgs>("sweep", "Run every variant of a sweep and write a report", sweep_options, run_sweep),
  };
}

}  // namespace ssmtrain::cli
