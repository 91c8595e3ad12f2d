// Checks across keys (configs/load.h validate): the layout suits the family, the dimensions of
// each part the layout uses divide as they must, the global batch splits into micro-batches,
// the run has one length. Then the `auto` values those checks allow are resolved.
#include <fmt/format.h>

#include <algorithm>

#include "configs/layout.h"
#include "configs/load.h"
#include "configs/schema.h"

namespace ssmtrain::configs {
namespace {

// Keys involved, the one to point at first (loading picks the first the recipe wrote).
[[noreturn]] void invalid(std::vector<std::string> keys, std::string message) {
  throw ConfigError(std::move(keys), std::move(message));
}

// Checks each value against its key's rule (ranges, auto), for configs built in code: a value
// is within its rule when its written form reads back.
class RuleChecker {
 public:
  explicit RuleChecker(std::string prefix = "") : prefix_(std::move(prefix)) {}

  template <class T>
  void field(std::string_view key, T& value, std::string_view, Rule rule = {}) {
    const std::string written = ValueCodec<T>::write(value, rule);
    T read_back = value;
    if (!ValueCodec<T>::read(YAML::Load(written), rule, read_back)) {
      invalid({prefix_ + std::string(key)},
              fmt::format("expected {}, found {}", ValueCodec<T>::expected(rule), written));
    }
  }

  template <class Section>
  void section(std::string_view key, Section& section, std::string_view) {
    RuleChecker inner(prefix_ + std::string(key) + ".");
    schema::describe(section, inner);
  }

 private:
  std::string prefix_;
};

// The layout key that placed attention layers.
std::string attention_key(const LayoutConfig& layout) {
  if (!layout.mixer_pattern.empty()) return "model.layout.mixer_pattern";
  if (!layout.attention_ratio.empty()) return "model.layout.attention_ratio";
  return "model.layout.attention_period";
}

void check_dt_range(double dt_min, double dt_max, const std::string& section) {
  if (dt_max < dt_min) {
    invalid({section + ".dt_max", section + ".dt_min"},
            fmt::format("expected dt_max >= dt_min = {}, found {}", dt_min, dt_max));
  }
}

void check_mamba2(const ModelConfig& model) {
  const Mamba2Config& mamba2 = model.mamba2;
  const int64_t d_inner = model.mamba2_d_inner();
  if (d_inner % mamba2.head_dim != 0) {
    invalid({"model.mamba2.head_dim", "model.mamba2.expand", "model.d_model"},
            fmt::format("expected d_inner = expand * d_model divisible by head_dim, found "
                        "{} * {} = {} and head_dim {}",
                        mamba2.expand, model.d_model, d_inner, mamba2.head_dim));
  }
  const int64_t n_heads = model.mamba2_n_heads();
  if (n_heads % mamba2.ngroups != 0) {
    invalid({"model.mamba2.ngroups"},
            fmt::format("expected a divisor of n_heads = d_inner / head_dim = {}, found {}", n_heads,
                        mamba2.ngroups));
  }
  check_dt_range(mamba2.dt_min, mamba2.dt_max, "model.mamba2");
}

void check_attention(const ModelConfig& model) {
  const AttentionConfig& attention = model.attention;
  if (attention.head_dim == 0 && model.d_model % attention.n_heads != 0) {
    // n_heads is often the default (12) the recipe never wrote: name it and what would work.
    std::string divisors;
    for (int64_t n = 1; n <= std::min<int64_t>(model.d_model, 64); ++n)
      if (model.d_model % n == 0) divisors += (divisors.empty() ? "" : ", ") + std::to_string(n);
    invalid({"model.attention.n_heads", "model.d_model"},
            fmt::format("model.attention.n_heads = {} does not divide d_model = {} (head_dim is auto): set "
                        "model.attention.n_heads to a divisor of {} ({}) or set model.attention.head_dim",
                        attention.n_heads, model.d_model, model.d_model, divisors));
  }
  if (attention.n_kv_heads != 0 && attention.n_heads % attention.n_kv_heads != 0) {
    invalid({"model.attention.n_kv_heads", "model.attention.n_heads"},
            fmt::format("expected a divisor of n_heads = {}, found {}", attention.n_heads,
                        attention.n_kv_heads));
  }
  const int64_t head_dim = model.attention_head_dim();
  if (attention.rope && head_dim % 2 != 0) {
    invalid({"model.attention.head_dim", "model.attention.n_heads", "model.attention.rope"},
            fmt::format("expected an even head_dim for rope, found {}", head_dim));
  }
}

void check_model(const ModelConfig& model) {
  const std::string family(to_string(model.family));
  if (model.family == Family::hybrid && model.ssm == Ssm::from_family) {
    invalid({"model.ssm", "model.family"},
            "expected model.ssm set to mamba1 or mamba2 for a hybrid (the mixer of its M "
            "layers), found auto");
  }
  if (model.family != Family::hybrid && model.ssm != Ssm::from_family &&
      to_string(model.ssm) != family) {
    invalid({"model.ssm", "model.family"},
            fmt::format("expected auto or {} for family {}, found {}", family, family,
                        to_string(model.ssm)));
  }
  const Layout layout = resolve_layout(model);
  const int64_t attention_layers = layout.count(Mixer::attention);
  if (model.family != Family::hybrid && attention_layers > 0) {
    invalid({attention_key(model.layout), "model.family"},
            fmt::format("expected no attention layers in a {} model (family hybrid mixes them "
                        "in), found {}",
                        family, attention_layers));
  }
  // The parts of the model the layout does not use are not checked.
  if (layout.count(Mixer::mamba1) > 0) {
    check_dt_range(model.mamba1.dt_min, model.mamba1.dt_max, "model.mamba1");
  }
  if (layout.count(Mixer::mamba2) > 0) check_mamba2(model);
  if (attention_layers > 0) check_attention(model);
  if (layout.count(Ffn::moe) > 0 && model.moe.top_k > model.moe.n_experts) {
    invalid({"model.moe.top_k", "model.moe.n_experts"},
            fmt::format("expected at most n_experts = {}, found {}", model.moe.n_experts,
                        model.moe.top_k));
  }
}

void check_training(const TrainingConfig& training, const ScheduleConfig& schedule) {
  const int64_t micro_batch_tokens = training.micro_batch * training.seq_len;
  if (training.global_batch_tokens % micro_batch_tokens != 0) {
    invalid({"training.global_batch_tokens", "training.micro_batch", "training.seq_len"},
            fmt::format("expected a multiple of micro_batch * seq_len = {} * {} = {}, found {}",
                        training.micro_batch, training.seq_len, micro_batch_tokens,
                        training.global_batch_tokens));
  }
  if (training.max_steps > 0 && training.token_budget > 0) {
    invalid({"training.token_budget", "training.max_steps"},
            fmt::format("expected max_steps or token_budget, not both, found max_steps {} and "
                        "token_budget {}",
                        training.max_steps, training.token_budget));
  }
  if (training.max_steps == 0 && training.token_budget == 0) {
    invalid({"training.max_steps", "training.token_budget", "training"},
            "expected max_steps or token_budget (the length of the run), found neither");
  }
  if (training.token_budget > 0 && training.token_budget < training.global_batch_tokens) {
    invalid({"training.token_budget", "training.global_batch_tokens"},
            fmt::format("expected at least one global batch ({} tokens), found {}",
                        training.global_batch_tokens, training.token_budget));
  }
  if (schedule.warmup_steps > training.total_steps()) {
    invalid({"schedule.warmup_steps"},
            fmt::format("expected at most the run's {} steps, found {}: shorten the warmup with the run, e.g. "
                        "--set schedule.warmup_steps={}",
                        training.total_steps(), schedule.warmup_steps, training.total_steps() / 10));
  }
}

}  // namespace

void validate(const Config& config) {
  Config copy = config;  // describe() visits mutable fields; the checker only reads them
  RuleChecker rules;
  schema::describe(copy, rules);
  if (config.run.name.empty()) invalid({"run.name"}, "expected a name, found an empty string");
  if (config.run.output_dir.empty()) {
    invalid({"run.output_dir"}, "expected a directory, found an empty string");
  }
  check_model(config.model);
  check_training(config.training, config.schedule);
  if (config.checkpoint.resume.empty()) {
    invalid({"checkpoint.resume"},
            "expected auto, none or a checkpoint path, found an empty "
            "string");
  }
}

void resolve_auto_values(Config& config) {
  ModelConfig& model = config.model;
  if (model.ssm == Ssm::from_family && model.family != Family::hybrid) {
    model.ssm = model.family == Family::mamba1 ? Ssm::mamba1 : Ssm::mamba2;
  }
  // The sizes come from ModelConfig's derived-size functions, so a resolved config and one
  // left at auto build the same layers.
  model.mamba1.dt_rank = model.mamba1_dt_rank();
  model.attention.n_kv_heads = model.attention_n_kv_heads();
  // Left at auto (0) when attention is unused and n_heads does not divide d_model.
  model.attention.head_dim = model.attention_head_dim();
  model.moe.d_ff_expert = model.moe_d_ff();
  model.mlp.d_ff = model.mlp_d_ff();
}

void check_world_size(const Config& config, int64_t world_size) {
  const TrainingConfig& training = config.training;
  if (world_size < 1 || training.grad_accum(world_size) == 0) {
    invalid({"training.global_batch_tokens", "training.micro_batch"},
            fmt::format("expected a multiple of micro_batch * seq_len * world size = {} * {} * {} "
                        "= {}, found {}",
                        training.micro_batch, training.seq_len, world_size,
                        training.micro_batch * training.seq_len * world_size,
                        training.global_batch_tokens));
  }
}

}  // namespace ssmtrain::configs
