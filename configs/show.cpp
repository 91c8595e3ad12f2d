// The text of `ssmtrain config show` (configs/show.h): dump_config, then comment lines with
// the layout strings and the sizes derived from the config.
#include "configs/show.h"

#include <fmt/format.h>

#include "configs/layout.h"
#include "configs/load.h"

namespace ssmtrain::configs {
namespace {

// 129215232 -> "129.2M".
std::string short_count(double value) {
  if (value >= 1e9) return fmt::format("{:.2f}B", value / 1e9);
  if (value >= 1e6) return fmt::format("{:.1f}M", value / 1e6);
  if (value >= 1e3) return fmt::format("{:.1f}K", value / 1e3);
  return fmt::format("{:.0f}", value);
}

// "1 layer", "3 layers".
std::string layers(int64_t count) {
  return fmt::format("{} layer{}", count, count == 1 ? "" : "s");
}

}  // namespace

std::string render_config_show(const Config& config, const std::optional<ModelCost>& cost) {
  const ModelConfig& model = config.model;
  const TrainingConfig& training = config.training;
  const Layout layout = resolve_layout(model);
  std::string text = dump_config(config);

  text += fmt::format("# layout: {} layers ({})\n", layout.layers.size(), kLayoutLegend);
  text += fmt::format("#   mixers {}\n#   ffns   {}\n", layout.mixer_string(), layout.ffn_string());
  // The derived sizes (ModelConfig's functions), the ones the layers are built with.
  if (layout.count(Mixer::mamba1) > 0) {
    text += fmt::format("# mamba1: {}, d_inner {}, dt_rank {}\n", layers(layout.count(Mixer::mamba1)),
                        model.mamba1_d_inner(), model.mamba1_dt_rank());
  }
  if (layout.count(Mixer::mamba2) > 0) {
    text += fmt::format("# mamba2: {}, d_inner {}, n_heads {} of head_dim {}\n",
                        layers(layout.count(Mixer::mamba2)), model.mamba2_d_inner(),
                        model.mamba2_n_heads(), model.mamba2.head_dim);
  }
  if (layout.count(Mixer::attention) > 0) {
    text += fmt::format("# attention: {}, n_heads {}, head_dim {}, n_kv_heads {}\n",
                        layers(layout.count(Mixer::attention)), model.attention.n_heads,
                        model.attention_head_dim(), model.attention_n_kv_heads());
  }
  if (layout.count(Ffn::mlp) > 0) {
    text += fmt::format("# mlp: {}, d_ff {}\n", layers(layout.count(Ffn::mlp)), model.mlp_d_ff());
  }
  if (layout.count(Ffn::moe) > 0) {
    text += fmt::format("# moe: {}, {} experts of d_ff {}, top {}\n",
                        layers(layout.count(Ffn::moe)), model.moe.n_experts, model.moe_d_ff(),
                        model.moe.top_k);
  }
  text += fmt::format(
      "# step: {} tokens, {} sequences of {} tokens, {} micro-batches of {} (grad_accum on "
      "N ranks: {} / N)\n",
      training.global_batch_tokens, training.sequences_per_step(), training.seq_len,
      training.grad_accum(1), training.micro_batch, training.grad_accum(1));
  text += fmt::format("# run: {} steps, {} tokens\n", training.total_steps(),
                      short_count(static_cast<double>(training.total_steps()) *
                                  static_cast<double>(training.global_batch_tokens)));
  if (cost) {
    text += fmt::format(
        "# parameters: {} ({}), active per token {} ({}); {} FLOPs per token "
        "(forward + backward)\n",
        cost->parameters, short_count(cost->parameters), cost->active_parameters,
        short_count(cost->active_parameters), short_count(cost->flops_per_token));
  } else {
    text += "# parameters and FLOPs per token: computed from the model (layers/)\n";
  }
  return text;
}

}  // namespace ssmtrain::configs
