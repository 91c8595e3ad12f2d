// See trainer.h.
#include "train/trainer.h"

#include <fmt/core.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <vector>

#include "autograd/allocator.h"
#include "autograd/device.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/stream.h"
#include "configs/load.h"
#include "data/loader.h"
#include "layers/from_config.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "train/svg.h"

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;

// Dense bf16 tensor-core rate of the GPU by name (datasheet), for MFU; 0 when unknown.
double peak_flops(const std::string& device_name) {
  if (device_name.find("H100") != std::string::npos || device_name.find("H200") != std::string::npos) return 989e12;
  if (device_name.find("A100") != std::string::npos) return 312e12;
  return 0;
}

// Mean loss over up to `max_tokens` tokens of the validation split (no gradients).
double validation_loss(const LanguageModel& model, data::TokenLoader& loader, int64_t max_tokens,
                       std::optional<DType> compute) {
  NoGradGuard no_grad;
  loader.restore({});
  const int64_t per_batch = loader.options().global_batch * loader.options().seq_len;
  const int64_t batches = std::max<int64_t>(1, std::min<int64_t>(max_tokens / per_batch,
                                                                  int64_t(loader.windows_per_epoch()) / loader.options().global_batch));
  double total = 0;
  for (int64_t i = 0; i < batches; ++i) {
    data::Batch batch = loader.next();
    if (batch.ready) batch.ready->wait(current_stream(batch.inputs.device().index));
    total += model.losses(batch.inputs, batch.targets, batch.doc_index, compute).lm.item();
  }
  return total / double(batches);
}

}  // namespace

TrainSummary train(const configs::Config& config) {
  ModelOptions options = model_options(config.model);
  options.activation_checkpointing = config.training.activation_checkpointing;
  options.attention.deterministic = config.training.deterministic;
  const Device device = cuda_available() ? Device::cuda(0) : Device::cpu();
  const bool bf16 = device.is_cuda() && config.training.precision != configs::Precision::fp32;
  const std::optional<DType> compute = bf16 ? std::optional<DType>(DType::bf16) : std::nullopt;

  TrainSummary summary;
  const fs::path run_dir = fs::path(config.run.output_dir) / config.run.name;
  fs::create_directories(run_dir);
  summary.run_dir = run_dir.string();
  std::ofstream(run_dir / "config.yaml") << configs::dump_config(config);

  LanguageModel model(options, uint64_t(config.run.seed));
  model.to(device);
  const std::vector<NamedParameter> params = model.named_parameters();
  AdamW optimizer(params, {config.optim.betas[0], config.optim.betas[1], config.optim.eps, config.optim.weight_decay});
  ScheduleOptions schedule;
  schedule.kind = std::string(configs::to_string(config.schedule.kind));
  schedule.lr = config.optim.lr;
  schedule.warmup_steps = config.schedule.warmup_steps;
  schedule.total_steps = config.training.total_steps();
  schedule.min_lr_ratio = config.schedule.min_lr_ratio;
  schedule.decay_fraction = config.schedule.decay_fraction;

  data::LoaderOptions loader_options;
  loader_options.data_dir = config.data.train;
  loader_options.seq_len = config.training.seq_len;
  loader_options.global_batch = config.training.micro_batch;  // one micro-batch per next()
  loader_options.seed = uint64_t(config.run.seed);
  loader_options.device = device;
  loader_options.prefetch = 2;
  data::TokenLoader loader(loader_options);
  data::LoaderOptions val_options = loader_options;
  val_options.data_dir = config.data.val.empty() ? config.data.train : config.data.val;
  val_options.split = "val";
  val_options.shuffle = false;
  val_options.prefetch = 0;
  std::unique_ptr<data::TokenLoader> val_loader;
  try {
    val_loader = std::make_unique<data::TokenLoader>(val_options);
  } catch (const std::exception& e) {
    fmt::print(stderr, "train: no validation loss: {}\n", e.what());
  }

  const int64_t total_steps = config.training.total_steps();
  const int64_t accum = config.training.grad_accum(1);
  const int64_t tokens_per_step = accum * config.training.micro_batch * config.training.seq_len;
  const double flops_per_token = training_flops_per_token(options, config.training.seq_len);
  const double peak = device.is_cuda() ? peak_flops(cuda_device_name(device.index)) : 0;
  const bool tty = isatty(fileno(stdout));
  std::ofstream metrics;
  if (config.logging.jsonl) metrics.open(run_dir / "metrics.jsonl");
  std::vector<double> steps_x, losses, val_x, val_y;

  const int64_t parameters = model.num_parameters(), active = model.active_parameters();
  fmt::print("train {}: {} on {}, {:.1f}M parameters{}, {} steps of {} tokens ({} x {} micro-batches)\n",
             config.run.name, configs::to_string(config.model.family), device.str(), double(parameters) / 1e6,
             active < parameters ? fmt::format(" ({:.1f}M active)", double(active) / 1e6) : "", total_steps,
             tokens_per_step, accum, config.training.micro_batch);
  fmt::print("layout {} (M Mamba, A attention; - none, F MLP, E MoE), {} precision{}\n", options.layout_string(),
             bf16 ? "bf16 mixed" : "fp32",
             config.training.deterministic ? "" : ", non-deterministic kernels allowed (training.deterministic: false)");
  summary.unigram_entropy = loader.manifest().unigram_entropy.count("train") ? loader.manifest().unigram_entropy.at("train") : 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < total_steps; ++step) {
    const auto step_start = std::chrono::steady_clock::now();
    model.zero_grad();
    const bool last = step + 1 == total_steps;
    const bool log_line = step % std::max<int64_t>(1, config.logging.every) == 0 || last;
    double loss_sum = 0;
    Tensor aux_sum;                     // {}, the MoE losses summed on the device: read once a step
    std::vector<Tensor> expert_counts;  // per MoE layer, summed over the step's micro-batches (log steps)
    for (int64_t micro = 0; micro < accum; ++micro) {
      data::Batch batch = loader.next();
      if (batch.ready) batch.ready->wait(current_stream(device.index));
      const LossTerms terms = model.losses(batch.inputs, batch.targets, batch.doc_index, compute);
      mul(terms.total, 1.0 / double(accum)).backward();
      loss_sum += terms.lm.item();
      if (terms.aux.total.defined()) {
        const Tensor aux = terms.aux.total.detach();
        aux_sum = aux_sum.defined() ? add(aux_sum, aux) : aux;
      }
      for (size_t i = 0; log_line && metrics.is_open() && i < terms.aux.expert_counts.size(); ++i) {
        const Tensor counts = cast(terms.aux.expert_counts[i], DType::f32);
        if (expert_counts.size() <= i) expert_counts.push_back(counts);
        else expert_counts[i] = add(expert_counts[i], counts);
      }
    }
    const double loss = loss_sum / double(accum);  // next-token cross-entropy, without the MoE losses
    // Clipping is folded into the update: one pass over the gradients fewer.
    const double grad_norm = global_grad_norm(params);
    const double lr = learning_rate(schedule, step);
    optimizer.step(lr, clip_scale(grad_norm, config.optim.grad_clip));
    if (device.is_cuda()) synchronize(device.index);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - step_start).count();
    const double tok_s = double(tokens_per_step) / (ms / 1000.0);
    const double mfu = peak > 0 ? flops_per_token * tok_s / peak : 0;
    const double mem_gib = device.is_cuda() ? double(cuda_memory_stats(device.index).peak_allocated) / (1 << 30) : 0;
    if (step == 0) summary.first_loss = loss;
    summary.final_loss = loss;
    steps_x.push_back(double(step));
    losses.push_back(loss);
    if (!expert_counts.empty()) {
      // Tokens routed to each expert of each MoE layer in this step (the load balance).
      std::string layers;
      for (const Tensor& counts : expert_counts) {
        std::string row;
        for (float c : counts.to_vector()) row += (row.empty() ? "" : ", ") + fmt::format("{:.0f}", c);
        layers += (layers.empty() ? "[" : ", [") + row + "]";
      }
      metrics << fmt::format("{{\"step\": {}, \"expert_counts\": [{}]}}\n", step, layers) << std::flush;
    }
    if (metrics.is_open())
      metrics << fmt::format("{{\"step\": {}, \"loss\": {:.6f}, \"aux_loss\": {:.6f}, \"grad_norm\": {:.6f}, "
                             "\"lr\": {:.6g}, \"ms\": {:.3f}, \"tokens_per_s\": {:.1f}, \"mfu\": {:.4f}, \"mem_gib\": {:.3f}}}\n",
                             step, loss, aux_sum.defined() ? aux_sum.item() / double(accum) : 0.0, grad_norm, lr, ms,
                             tok_s, mfu, mem_gib)
              << std::flush;
    if (log_line) {
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double eta = elapsed / double(step + 1) * double(total_steps - step - 1);
      fmt::print("step {:>6} | loss {:.4f} | grad norm {:.3f} | lr {:.3g} | {:.0f} ms | {:.0f} tok/s | MFU {} | mem {} | ETA {:.0f} s\n",
                 step, loss, grad_norm, lr, ms, tok_s, peak > 0 ? fmt::format("{:.1f}%", 100 * mfu) : "-",
                 device.is_cuda() ? fmt::format("{:.2f} GiB", mem_gib) : "-", eta);
      if (tty) std::fflush(stdout);
    }
    const int64_t every = config.training.eval_every;
    if (val_loader && (last || (every > 0 && (step + 1) % every == 0))) {
      const double v = validation_loss(model, *val_loader, config.eval.perplexity_tokens, compute);
      val_x.push_back(double(step));
      val_y.push_back(v);
      summary.final_val_loss = v;
      fmt::print("step {:>6} | validation loss {:.4f} | perplexity {:.2f}\n", step, v, std::exp(v));
      if (metrics.is_open()) metrics << fmt::format("{{\"step\": {}, \"val_loss\": {:.6f}}}\n", step, v) << std::flush;
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  summary.steps = total_steps;
  summary.tokens_per_second = double(total_steps * tokens_per_step) / std::max(seconds, 1e-9);
  if (config.logging.svg) {
    std::vector<Series> series{{"train loss", "#1f77b4", steps_x, losses}};
    if (!val_x.empty()) series.push_back({"validation loss", "#d62728", val_x, val_y});
    // The bar a model must beat: the loss of predicting tokens by their frequency alone.
    if (summary.unigram_entropy > 0 && !steps_x.empty())
      series.push_back({"unigram entropy", "#7f7f7f", {steps_x.front(), steps_x.back()},
                        {summary.unigram_entropy, summary.unigram_entropy}});
    std::ofstream(run_dir / "loss_curve.svg") << line_chart_svg(config.run.name + ": loss", "step", "loss (nats)", series);
  }
  return summary;
}

}  // namespace ssmtrain
