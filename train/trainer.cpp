// See trainer.h. One Trainer object holds the loop's state: what a checkpoint saves is exactly
// its model, optimizer, loader state and TrainProgress, so a resumed run continues the same
// sequence of batches, updates and logged values as one that was never stopped.
#include "train/trainer.h"

#include <fmt/core.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "autograd/allocator.h"
#include "autograd/device.h"
#include "autograd/grad_ready.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/stream.h"
#include "configs/load.h"
#include "data/loader.h"
#include "distributed/bootstrap.h"
#include "distributed/communicator.h"
#include "distributed/reducer.h"
#include "layers/from_config.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "train/checkpoint.h"
#include "train/preemption.h"
#include "train/resume.h"
#include "train/run_files.h"
#include "train/svg.h"
#include "train/version.h"

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Under data parallelism only rank 0 prints progress (the other ranks stay quiet; errors
// still reach stderr from every rank).
bool g_quiet = false;

// Prints a line and flushes it, so progress shows through a pipe or in a log file as it
// happens (a killed run keeps every line it printed).
template <typename... Args>
void say(fmt::format_string<Args...> format, Args&&... args) {
  if (g_quiet) return;
  fmt::print(format, std::forward<Args>(args)...);
  std::fflush(stdout);
}

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

DataFingerprint fingerprint_of(const data::Manifest& manifest) {
  DataFingerprint f;
  f.tokenizer_checksum = manifest.tokenizer_checksum;
  for (const data::ShardInfo& shard : manifest.shards)
    if (shard.split == "train") f.shard_checksums.push_back(shard.tokens_checksum);
  return f;
}

// The files that make a directory a run's: a run directory holding any of them is not
// started afresh silently. (Something else in the way of a run file is reported when the file
// is written.)
const char* const kRunFiles[] = {"config.yaml", "metrics.jsonl", "loss_curve.svg"};

bool holds_run(const fs::path& run_dir) {
  std::error_code ignored;
  for (const char* file : kRunFiles)
    if (fs::is_regular_file(run_dir / file, ignored)) return true;
  return fs::is_directory(checkpoint_folder(run_dir), ignored);
}

// Whether the run directory has any checkpoint file, usable or not.
bool has_checkpoint_files(const fs::path& run_dir) {
  std::error_code ignored;
  if (!fs::is_directory(checkpoint_folder(run_dir), ignored)) return false;
  for (const fs::directory_entry& entry : fs::directory_iterator(checkpoint_folder(run_dir), ignored)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("step_", 0) == 0 && name.find(".tmp-") == std::string::npos) return true;
  }
  return false;
}

// run.overwrite: the run files and checkpoints go; anything else in the directory stays.
void clear_run(const fs::path& run_dir) {
  std::error_code error;
  for (const char* file : kRunFiles) fs::remove(run_dir / file, error);
  fs::remove_all(checkpoint_folder(run_dir), error);
  if (error) throw RunFileError(checkpoint_folder(run_dir), "cannot remove for run.overwrite: " + error.message());
}

bool inside(const fs::path& file, const fs::path& folder) {
  std::error_code ignored;
  const fs::path a = fs::weakly_canonical(file, ignored), b = fs::weakly_canonical(folder, ignored);
  const auto mismatch = std::mismatch(b.begin(), b.end(), a.begin(), a.end());
  return mismatch.first == b.end();
}

// A sustained training rate to warn about hopeless recipes before the first step: what the
// fp32 CPU kernels reach per core (measured on the tiny recipes), or 40% of a GPU's peak.
double assumed_flops(const Device& device, double gpu_peak) {
  if (device.is_cuda()) return gpu_peak > 0 ? 0.4 * gpu_peak : 1e14;
  return 2e9 * std::max(1u, std::thread::hardware_concurrency());
}

std::string duration_text(double seconds) {
  if (seconds < 120) return fmt::format("{:.0f} s", seconds);
  if (seconds < 7200) return fmt::format("{:.0f} min", seconds / 60);
  if (seconds < 2 * 86400) return fmt::format("{:.1f} h", seconds / 3600);
  return fmt::format("{:.0f} days", seconds / 86400);
}

// batches.bin of `train --dump-batches`: the magic "SSMBATCH", u32 version 1, u32 0, i64 rows,
// i64 seq_len, then per step: i64 step and three (rows, seq_len) i32 arrays, row-major: inputs,
// targets (inputs shifted by one token) and doc_index (train/loader.h); little-endian.
void write_dumped_batch(std::ofstream& out, int64_t step, const data::Batch& batch) {
  const int64_t rows = batch.inputs.size(0), seq_len = batch.inputs.size(1);
  if (out.tellp() == 0) {
    const uint32_t version[2] = {1, 0};
    out.write("SSMBATCH", 8);
    out.write(reinterpret_cast<const char*>(version), sizeof(version));
    out.write(reinterpret_cast<const char*>(&rows), 8);
    out.write(reinterpret_cast<const char*>(&seq_len), 8);
  }
  out.write(reinterpret_cast<const char*>(&step), 8);
  for (const Tensor* t : {&batch.inputs, &batch.targets, &batch.doc_index}) {
    const std::vector<float> values = t->to_vector();  // ids below 2^24: exact in f32
    std::vector<int32_t> ids(values.begin(), values.end());
    out.write(reinterpret_cast<const char*>(ids.data()), std::streamsize(ids.size() * sizeof(int32_t)));
  }
  out.flush();
}

class Trainer {
 public:
  Trainer(const configs::Config& config, const TrainOptions& train_options);
  TrainSummary run();

 private:
  void choose_start();
  void read_resume_checkpoint();
  void build();
  void restore(const CheckpointContents& contents);
  CheckpointContents snapshot();
  void save(const char* why);
  bool step_once(int64_t step, bool last);
  void validate(int64_t step);
  void write_loss_curve();
  void evaluate(int64_t step);
  [[noreturn]] void fail_after_saving(const std::exception& error);
  void start_distributed();
  void check_ranks_agree();
  int agreed_stop_signal(int local_signal);
  bool minutes_due();
  bool writes_files() const { return comm_->rank() == 0; }
  bool sharded() const { return reducer_ && reducer_->sharded(); }

  const configs::Config& config_;
  TrainOptions train_options_;
  std::ofstream dumped_batches_;  // --dump-batches
  std::unique_ptr<dist::Communicator> comm_;
  std::unique_ptr<dist::GradientReducer> reducer_;
  std::map<std::string, AdamW::Moments> gathered_moments_;  // sharded: every parameter's, for a checkpoint
  int64_t world_ = 1;
  ModelOptions options_;
  Device device_;
  bool bf16_ = false;
  std::optional<DType> compute_;
  fs::path run_dir_;
  data::Manifest manifest_;
  DataFingerprint data_;

  std::optional<fs::path> resume_path_;
  std::optional<CheckpointContents> resume_;

  std::unique_ptr<LanguageModel> model_;
  std::vector<NamedParameter> params_;
  std::unique_ptr<AdamW> optimizer_;
  ScheduleOptions schedule_;
  std::unique_ptr<data::TokenLoader> loader_, val_loader_;
  std::unique_ptr<CheckpointWriter> writer_;
  CheckpointStaging staging_;
  MetricsLog metrics_;

  TrainProgress progress_;
  int64_t total_steps_ = 0, accum_ = 0, tokens_per_step_ = 0;
  double flops_per_token_ = 0, peak_ = 0;
  int64_t last_saved_step_ = -1;
  Clock::time_point last_save_time_;
  double elapsed_before_ = 0;
  Clock::time_point start_;
  TrainSummary summary_;
};

Trainer::Trainer(const configs::Config& config, const TrainOptions& train_options)
    : config_(config), train_options_(train_options) {
  options_ = model_options(config);
  // A rank of a multi-GPU job trains on its LOCAL_RANK's GPU (the NCCL backend uses the same).
  device_ = cuda_available() ? Device::cuda(dist::local_device(dist::launch_env().local_rank, cuda_device_count()))
                             : Device::cpu();
  bf16_ = device_.is_cuda() && config.training.precision != configs::Precision::fp32;
  compute_ = bf16_ ? std::optional<DType>(DType::bf16) : std::nullopt;
  run_dir_ = fs::path(config.run.output_dir) / config.run.name;
  summary_.run_dir = run_dir_.string();
  total_steps_ = config.training.total_steps();
  comm_ = dist::make_communicator(std::string(configs::to_string(config.distributed.backend)), device_.is_cuda(),
                                  config.distributed.timeout_s);
  world_ = comm_->world_size();
  g_quiet = comm_->rank() != 0;
  summary_.rank = comm_->rank();
  summary_.world_size = int(world_);
  configs::check_world_size(config, world_);
  accum_ = config.training.grad_accum(world_);  // micro-batches per rank
  tokens_per_step_ = accum_ * world_ * config.training.micro_batch * config.training.seq_len;
}

// Rank 0 decides how the run starts (it alone touches the run directory); the others follow
// its choice of checkpoint.
void Trainer::start_distributed() {
  std::string chosen;
  if (comm_->rank() == 0) {
    choose_start();
    chosen = resume_path_ ? resume_path_->string() : "";
  }
  if (world_ == 1) return;
  chosen = comm_->all_gather_bytes(chosen)[0];
  if (comm_->rank() == 0) return;
  manifest_ = data::read_manifest(config_.data.train);
  data_ = fingerprint_of(manifest_);
  if (!chosen.empty()) {
    resume_path_ = fs::path(chosen);
    read_resume_checkpoint();
  }
}

// Every rank must train the same recipe on the same data: a rank started with other
// overrides or another copy of the corpus would silently train something else.
void Trainer::check_ranks_agree() {
  if (world_ == 1) return;
  std::string shards;
  for (const std::string& c : data_.shard_checksums) shards += c + " ";
  const std::string mine = configs::dump_config(config_) + "\n# data " + data_.tokenizer_checksum + " " + shards;
  const std::vector<std::string> all = comm_->all_gather_bytes(mine);
  for (int r = 1; r < int(all.size()); ++r) {
    if (all[size_t(r)] == all[0]) continue;
    // The first line that differs says what.
    std::istringstream a(all[0]), b(all[size_t(r)]);
    std::string la, lb;
    while (std::getline(a, la) && std::getline(b, lb) && la == lb) {
    }
    throw TrainError(fmt::format("rank {} does not agree with rank 0 on the {}: rank 0 has '{}', rank {} '{}'; start "
                                 "every rank with the same recipe, --set overrides and data",
                                 r, la.rfind("# data", 0) == 0 ? "data fingerprint" : "resolved config", la, r, lb));
  }
}

// checkpoint.every_minutes by rank 0's clock, so that every rank saves after the same step.
bool Trainer::minutes_due() {
  bool due = seconds_since(last_save_time_) >= 60 * config_.checkpoint.every_minutes;
  if (world_ > 1) due = comm_->all_gather_bytes(due ? "1" : "0")[0] == "1";
  return due;
}

// The stop signal any rank received (the lowest rank's when several did): every rank stops
// after the same step, so they save once, together.
int Trainer::agreed_stop_signal(int local_signal) {
  if (world_ == 1) return local_signal;
  for (const std::string& s : comm_->all_gather_bytes(std::to_string(local_signal)))
    if (const int signal = std::stoi(s); signal != 0) return signal;
  return 0;
}

// Decides between a fresh start and a resume, before any model or data work: the run
// directory's rules (run.overwrite) and the checkpoint's fit with the recipe.
void Trainer::choose_start() {
  manifest_ = data::read_manifest(config_.data.train);
  data_ = fingerprint_of(manifest_);
  const std::string mode = train_options_.resume.empty() ? config_.checkpoint.resume : train_options_.resume;
  const bool existing = holds_run(run_dir_);
  const auto warn = [](const std::string& line) { say("warning: {}\n", line); };
  const std::string remedies = "resume it (checkpoint.resume: auto, or --resume auto), start afresh with --set "
                               "run.overwrite=true, or choose another run.name";
  if (mode == "auto" || mode == "none") {
    if (config_.run.overwrite) {
      if (existing) {
        clear_run(run_dir_);
        say("run.overwrite: starting afresh in {} (its checkpoints and run files were removed)\n", run_dir_.string());
      }
      return;
    }
    if (mode == "none" && existing)
      throw TrainError(fmt::format("{} already holds a run (checkpoint.resume: none); {}", run_dir_.string(), remedies));
    if (mode == "none" || !existing) return;
    resume_path_ = find_resume_checkpoint(run_dir_, warn);
    if (resume_path_) return read_resume_checkpoint();
    if (has_checkpoint_files(run_dir_))
      throw TrainError(fmt::format("{} holds checkpoints but none that verifies (see the warnings above); start "
                                   "afresh with --set run.overwrite=true, or choose another run.name",
                                   run_dir_.string()));
    // An attempt that ended before its first checkpoint: nothing to resume, nothing to lose.
    say("note: {} has no checkpoint yet (an earlier attempt stopped before its first): starting afresh\n",
        run_dir_.string());
    clear_run(run_dir_);
    return;
  }
  resume_path_ = resolve_checkpoint_path(mode);
  if (existing && !inside(*resume_path_, run_dir_)) {
    if (!config_.run.overwrite)
      throw TrainError(fmt::format("{} already holds a run, and the checkpoint to resume ({}) is not one of its own; "
                                   "start afresh there with --set run.overwrite=true, or choose another run.name",
                                   run_dir_.string(), resume_path_->string()));
    clear_run(run_dir_);
  }
  read_resume_checkpoint();
}

// Reads the checkpoint chosen to resume and checks that it fits the recipe.
void Trainer::read_resume_checkpoint() {
  resume_ = read_checkpoint(*resume_path_);
  const std::vector<std::string> changes =
      check_resume(resume_path_->string(), *resume_, config_, options_.layout_string(), data_);
  say("resuming from {} (step {}, {} tokens seen)\n", resume_path_->string(), resume_->progress.step,
      resume_->progress.tokens_seen);
  for (const std::string& change : changes) say("  changed since the checkpoint: {}\n", change);
  if (!(resume_->data == data_))
    say("  checkpoint.allow_data_change: continuing on other data from its first batch\n");
}

void Trainer::build() {
  model_ = std::make_unique<LanguageModel>(options_, uint64_t(config_.run.seed));
  model_->to(device_);
  params_ = model_->named_parameters();
  // CPU: micro-batches summed in the fixed tree order (bitwise equal on any number of ranks);
  // GPU: autograd accumulates, and the reducer only communicates (more than one rank).
  // Sharded (ZeRO-1): this rank's AdamW updates, and keeps the moments of, its own parameters.
  const bool shard = config_.distributed.shard_optimizer && world_ > 1;
  if (!device_.is_cuda() ? (accum_ > 1 || world_ > 1) : world_ > 1)
    reducer_ = std::make_unique<dist::GradientReducer>(*comm_, params_, config_.distributed.bucket_mb,
                                                       !device_.is_cuda(), shard);
  optimizer_ = std::make_unique<AdamW>(
      shard ? reducer_->owned_parameters() : params_,
      AdamWOptions{config_.optim.betas[0], config_.optim.betas[1], config_.optim.eps, config_.optim.weight_decay});
  schedule_.kind = std::string(configs::to_string(config_.schedule.kind));
  schedule_.lr = config_.optim.lr;
  schedule_.warmup_steps = config_.schedule.warmup_steps;
  schedule_.total_steps = total_steps_;
  schedule_.min_lr_ratio = config_.schedule.min_lr_ratio;
  schedule_.decay_fraction = config_.schedule.decay_fraction;

  data::LoaderOptions loader_options;
  loader_options.data_dir = config_.data.train;
  loader_options.seq_len = config_.training.seq_len;
  // One next() per step: the step's sequences, cut into micro-batches here, so that a rank's
  // micro-batches are consecutive rows of the global batch.
  loader_options.global_batch = config_.training.sequences_per_step();
  loader_options.rank = comm_->rank();
  loader_options.world_size = int(world_);
  loader_options.seed = uint64_t(config_.run.seed);
  loader_options.device = device_;
  loader_options.prefetch = 2;
  loader_ = std::make_unique<data::TokenLoader>(loader_options);

  // Validation: the val split of data.val (else of data.train). A corpus prepared without one
  // (val_fraction 0) has no validation loss; a val split that is there but damaged is an error.
  data::LoaderOptions val_options = loader_options;
  val_options.data_dir = config_.data.val.empty() ? config_.data.train : config_.data.val;
  val_options.split = "val";
  val_options.shuffle = false;
  val_options.prefetch = 0;
  val_options.global_batch = config_.training.micro_batch;
  val_options.rank = 0;  // every rank computes the same validation loss: no exchange needed
  val_options.world_size = 1;
  const data::Manifest val_manifest =
      config_.data.val.empty() ? manifest_ : data::read_manifest(config_.data.val);
  if (val_manifest.tokens("val") > 0)
    val_loader_ = std::make_unique<data::TokenLoader>(val_options);
  else
    say("note: {} has no validation split (prepared with --val-fraction 0): no validation loss\n",
        val_options.data_dir);
  if (resume_) restore(*resume_);
}

void Trainer::restore(const CheckpointContents& contents) {
  load_model_arrays(*model_, contents.model, resume_path_->string());
  if (!contents.optim.empty()) {
    NoGradGuard no_grad;
    for (auto& [name, moments] : optimizer_->state()) {
      const auto it = contents.optim.find(name);
      if (it == contents.optim.end())
        throw CheckpointError(resume_path_->string(), "has no optimizer state for " + name);
      copy_into(moments.exp_avg, Tensor::from_vector(it->second.exp_avg.values, it->second.exp_avg.shape, DType::f32));
      copy_into(moments.exp_avg_sq,
                Tensor::from_vector(it->second.exp_avg_sq.values, it->second.exp_avg_sq.shape, DType::f32));
    }
    optimizer_->set_steps(contents.adamw_step);
  }
  optimizer_->refresh_compute_copies();
  progress_ = contents.progress;
  if (!(contents.data == data_)) progress_.loader = {};
  loader_->restore(progress_.loader);
  elapsed_before_ = progress_.elapsed_s;
  last_saved_step_ = progress_.step;
  summary_.resumed_from = progress_.step;
  summary_.checkpoint = resume_path_->string();
}

// Host copies of everything a resume needs, taken at a step boundary.
CheckpointContents Trainer::snapshot() {
  CheckpointContents c;
  c.config_yaml = configs::dump_config(config_);
  c.layout = options_.layout_string();
  c.ssmtrain_version = ssmtrain_version();
  c.commit = ssmtrain_commit();
  c.data = data_;
  for (const NamedParameter& p : params_) c.model.emplace_back(p.name, staging_.stage("model/" + p.name, *p.value));
  for (auto& [name, moments] : sharded() ? gathered_moments_ : optimizer_->state())
    c.optim.emplace(name, CheckpointContents::Moments{staging_.stage("exp_avg/" + name, moments.exp_avg),
                                                      staging_.stage("exp_avg_sq/" + name, moments.exp_avg_sq)});
  staging_.finish(device_);
  c.adamw_step = optimizer_->steps();
  c.progress = progress_;
  c.progress.elapsed_s = elapsed_before_ + seconds_since(start_);
  return c;
}

void Trainer::save(const char* why) {
  if (last_saved_step_ == progress_.step) return;
  if (sharded()) gathered_moments_ = reducer_->gather_moments(optimizer_->state());  // every rank takes part
  if (!writes_files()) {
    last_saved_step_ = progress_.step;
    summary_.checkpoint = (checkpoint_folder(run_dir_) / checkpoint_file_name(progress_.step)).string();
    return;
  }
  const auto begin = Clock::now();
  writer_->wait();  // the staging buffers hold the previous checkpoint until it is on disk
  CheckpointContents contents = snapshot();
  writer_->save(std::move(contents));
  const double blocked_ms = 1000 * seconds_since(begin);
  last_saved_step_ = progress_.step;
  last_save_time_ = Clock::now();
  const fs::path file = checkpoint_folder(run_dir_) / checkpoint_file_name(progress_.step);
  summary_.checkpoint = file.string();
  say("step {:>6} | checkpoint ({}) -> {} | loop blocked {:.0f} ms, writing in the background\n", progress_.step - 1,
      why, file.string(), blocked_ms);
  if (metrics_.is_open())
    metrics_.write(fmt::format("{{\"step\": {}, \"checkpoint\": \"{}\", \"save_blocked_ms\": {:.1f}}}",
                               progress_.step - 1, file.filename().string(), blocked_ms));
  if (config_.logging.svg) write_loss_curve();
}

void Trainer::write_loss_curve() {
  if (!writes_files()) return;
  std::vector<Series> series{{"train loss", "#1f77b4", progress_.loss_steps, progress_.losses}};
  if (!progress_.val_steps.empty()) series.push_back({"validation loss", "#d62728", progress_.val_steps, progress_.val_losses});
  // The bar a model must beat: the loss of predicting tokens by their frequency alone.
  if (summary_.unigram_entropy > 0 && !progress_.loss_steps.empty())
    series.push_back({"unigram entropy", "#7f7f7f", {progress_.loss_steps.front(), progress_.loss_steps.back()},
                      {summary_.unigram_entropy, summary_.unigram_entropy}});
  write_run_file(run_dir_ / "loss_curve.svg",
                 line_chart_svg(config_.run.name + ": loss", "step", "loss (nats)", series));
}

// One optimizer step; false when it was skipped for a non-finite loss or gradient norm.
bool Trainer::step_once(int64_t step, bool last) {
  const auto step_start = Clock::now();
  model_->zero_grad();
  const bool log_line = step % std::max<int64_t>(1, config_.logging.every) == 0 || last;
  std::vector<Tensor> expert_counts;  // per MoE layer, summed over the step's micro-batches (log steps)
  comm_->set_step(step);
  data::Batch batch = loader_->next();  // this rank's rows: (accum x micro_batch, seq_len)
  if (batch.ready) batch.ready->wait(current_stream(device_.index));
  if (dumped_batches_.is_open()) {
    write_dumped_batch(dumped_batches_, step, batch);
    if (!dumped_batches_) throw TrainError("--dump-batches: writing " + train_options_.dump_batches + "/batches.bin failed");
  }
  const int64_t rows = config_.training.micro_batch;
  std::vector<double> micro_losses;  // lm loss, aux loss of each micro-batch (distributed only)
  for (int64_t micro = 0; micro < accum_; ++micro) {
    const auto part = [&](const Tensor& t) { return narrow(t, 0, micro * rows, rows); };
    const LossTerms terms = model_->losses(part(batch.inputs), part(batch.targets), part(batch.doc_index), compute_);
    // 1 / (micro-batches of all ranks): the sum over ranks is the global batch's mean.
    const bool last_micro = micro + 1 == accum_;
    {
      // The last micro-batch's buckets start their all-reduce while backward still runs.
      const GradReadyHookGuard hook(reducer_ ? reducer_->ready_hook(last_micro) : GradReadyHook());
      mul(terms.total, 1.0 / double(accum_ * world_)).backward();
    }
    if (reducer_) reducer_->after_backward(last_micro);
    const double lm = terms.lm.item();
    micro_losses.push_back(lm);
    micro_losses.push_back(terms.aux.total.defined() ? terms.aux.total.item() : 0.0);
    // Every rank alike (the counts are summed over ranks below), though only rank 0 writes them.
    for (size_t i = 0; log_line && config_.logging.jsonl && i < terms.aux.expert_counts.size(); ++i) {
      const Tensor counts = cast(terms.aux.expert_counts[i], DType::f32);
      if (expert_counts.size() <= i) expert_counts.push_back(counts);
      else expert_counts[i] = add(expert_counts[i], counts);
    }
  }
  progress_.loader = loader_->state();
  progress_.tokens_seen += tokens_per_step_;
  // Every micro-batch's losses from every rank, added in the order one rank adds its own.
  std::vector<std::string> all_losses{
      std::string(reinterpret_cast<const char*>(micro_losses.data()), micro_losses.size() * sizeof(double))};
  if (world_ > 1) {
    all_losses = comm_->all_gather_bytes(all_losses[0]);
    for (Tensor& counts : expert_counts) comm_->all_reduce(counts, dist::ReduceOp::sum)->wait();
  }
  double loss_sum = 0, aux_sum = 0;  // the MoE losses
  for (const std::string& theirs : all_losses) {
    std::vector<double> values(theirs.size() / sizeof(double));
    std::memcpy(values.data(), theirs.data(), theirs.size());
    for (size_t i = 0; i + 1 < values.size(); i += 2) loss_sum += values[i], aux_sum += values[i + 1];
  }
  const double aux_loss = aux_sum / double(accum_ * world_);
  const double loss = loss_sum / double(accum_ * world_);  // next-token cross-entropy, without the MoE losses
  const double grad_norm = sharded() ? reducer_->grad_norm() : global_grad_norm(params_);
  const double lr = learning_rate(schedule_, step);
  if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
    if (metrics_.is_open())
      metrics_.write(fmt::format("{{\"step\": {}, \"loss\": {}, \"grad_norm\": {}, \"lr\": {:.6g}, \"skipped\": true}}",
                                 step, json_number(loss), json_number(grad_norm), lr));
    if (progress_.skipped_steps < config_.training.skip_nonfinite_steps) {
      ++progress_.skipped_steps;
      say("step {:>6} | loss {} | grad norm {} | skipped: non-finite ({} of training.skip_nonfinite_steps {})\n", step,
          loss, grad_norm, progress_.skipped_steps, config_.training.skip_nonfinite_steps);
      return false;
    }
    if (writer_) writer_->wait();
    const std::string kept = summary_.checkpoint.empty() ? "no checkpoint was saved before it"
                                                         : "the last good checkpoint is " + summary_.checkpoint;
    throw TrainError(fmt::format(
        "step {}: training diverged: the loss is {} and the gradient norm {} (learning rate {:.3g}); {}. Lower "
        "optim.lr or raise schedule.warmup_steps, or let training.skip_nonfinite_steps skip such steps",
        step, loss, grad_norm, lr, kept));
  }
  // Clipping is folded into the update: one pass over the gradients fewer.
  optimizer_->step(lr, clip_scale(grad_norm, config_.optim.grad_clip));
  if (sharded()) reducer_->gather_parameters();
  if (device_.is_cuda()) synchronize(device_.index);
  const double ms = 1000 * seconds_since(step_start);
  const double tok_s = double(tokens_per_step_) / (ms / 1000.0);
  const double mfu = peak_ > 0 ? flops_per_token_ * tok_s / peak_ : 0;
  const double mem_gib = device_.is_cuda() ? double(cuda_memory_stats(device_.index).peak_allocated) / (1 << 30) : 0;
  progress_.loss_steps.push_back(double(step));
  progress_.losses.push_back(loss);
  if (metrics_.is_open()) {
    if (!expert_counts.empty()) {
      // Tokens routed to each expert of each MoE layer in this step (the load balance).
      std::string layers;
      for (const Tensor& counts : expert_counts) {
        std::string row;
        for (float c : counts.to_vector()) row += (row.empty() ? "" : ", ") + fmt::format("{:.0f}", c);
        layers += (layers.empty() ? "[" : ", [") + row + "]";
      }
      metrics_.write(fmt::format("{{\"step\": {}, \"expert_counts\": [{}]}}", step, layers));
    }
    // Communication of this step (world > 1, CPU ranks: host timing; GPUs: not measured yet).
    const std::string comm_timing =
        reducer_ && world_ > 1 && !device_.is_cuda()
            ? fmt::format(", \"comm_ms\": {:.3f}, \"comm_exposed_ms\": {:.3f}", reducer_->comm_ms(), reducer_->exposed_ms())
            : "";
    metrics_.write(fmt::format("{{\"step\": {}, \"loss\": {:.6f}, \"aux_loss\": {}, \"grad_norm\": {:.6f}, "
                               "\"lr\": {:.6g}, \"ms\": {:.3f}, \"tokens_per_s\": {:.1f}, \"mfu\": {:.4f}, "
                               "\"mem_gib\": {:.3f}{}}}",
                               step, loss, json_number(aux_loss),
                               grad_norm, lr, ms, tok_s, mfu, mem_gib, comm_timing));
  }
  if (log_line) {
    const int64_t done_here = step + 1 - std::max<int64_t>(0, summary_.resumed_from);
    const double eta = seconds_since(start_) / double(std::max<int64_t>(1, done_here)) * double(total_steps_ - step - 1);
    say("step {:>6} | loss {:.4f} | grad norm {:.3f} | lr {:.3g} | {:.0f} ms | {:.0f} tok/s | MFU {} | mem {} | ETA {}\n",
        step, loss, grad_norm, lr, ms, tok_s, peak_ > 0 ? fmt::format("{:.1f}%", 100 * mfu) : "-",
        device_.is_cuda() ? fmt::format("{:.2f} GiB", mem_gib) : "-", duration_text(eta));
  }
  return true;
}

void Trainer::validate(int64_t step) {
  const double v = validation_loss(*model_, *val_loader_, config_.eval.perplexity_tokens, compute_);
  progress_.val_steps.push_back(double(step));
  progress_.val_losses.push_back(v);
  say("step {:>6} | validation loss {:.4f} | perplexity {:.2f}\n", step, v, std::exp(v));
  if (metrics_.is_open()) metrics_.write(fmt::format("{{\"step\": {}, \"val_loss\": {}}}", step, json_number(v)));
}

// A run file that cannot be written ends the run, after an attempt to keep its progress.
// The evaluation suite of eval.every on rank 0: the validation loss (the one validate() just
// logged at this step, else a fresh one) and the measures of TrainOptions::evaluate.
void Trainer::evaluate(int64_t step) {
  if (!writes_files()) return;
  std::vector<std::pair<std::string, double>> measures;
  if (val_loader_) {
    const bool fresh = !progress_.val_steps.empty() && int64_t(progress_.val_steps.back()) == step;
    const double v = fresh ? progress_.val_losses.back()
                           : validation_loss(*model_, *val_loader_, config_.eval.perplexity_tokens, compute_);
    measures.push_back({"val_loss", v});
    measures.push_back({"perplexity", std::exp(v)});
  }
  if (train_options_.evaluate) {
    NoGradGuard no_grad;
    for (auto& m : train_options_.evaluate(*model_, compute_)) measures.push_back(std::move(m));
  }
  std::string json, line;
  for (const auto& [name, value] : measures) {
    json += fmt::format("{}\"{}\": {}", json.empty() ? "" : ", ", name, json_number(value));
    line += fmt::format(" | {} {:.4f}", name, value);
  }
  say("step {:>6} | eval{}\n", step, line);
  if (metrics_.is_open()) metrics_.write(fmt::format("{{\"step\": {}, \"eval\": {{{}}}}}", step, json));
}

void Trainer::fail_after_saving(const std::exception& error) {
  try {
    // Sharded, a save is a collective the other ranks are not in: this rank cannot save alone.
    if (writer_ && model_ && last_saved_step_ != progress_.step && progress_.step > 0 && !sharded()) {
      metrics_ = MetricsLog();  // the file that failed may be this one: the checkpoint line is not needed
      save("before stopping on the error below");
      writer_->wait();
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "checkpoint before stopping failed too: {}\n", e.what());
  }
  throw;
}

TrainSummary Trainer::run() {
  start_distributed();
  check_ranks_agree();
  build();
  const int64_t parameters = model_->num_parameters(), active = model_->active_parameters();
  flops_per_token_ = training_flops_per_token(options_, config_.training.seq_len);
  peak_ = device_.is_cuda() ? peak_flops(cuda_device_name(device_.index)) : 0;
  summary_.unigram_entropy = manifest_.unigram_entropy.count("train") ? manifest_.unigram_entropy.at("train") : 0;
  say("train {}: {} on {}, {:.1f}M parameters{}, {} steps of {} tokens ({} x {} micro-batches)\n", config_.run.name,
      configs::to_string(config_.model.family), device_.str(), double(parameters) / 1e6,
      active < parameters ? fmt::format(" ({:.1f}M active)", double(active) / 1e6) : "", total_steps_,
      tokens_per_step_, accum_, config_.training.micro_batch);
  if (world_ > 1)
    say("data parallel: {} ranks ({} backend), {} rows of each global batch per rank, {}\n", world_,
        comm_->backend(), accum_ * config_.training.micro_batch,
        sharded() ? fmt::format("optimizer state sharded (ZeRO-1: reduce-scatter, local AdamW, all-gather; rank 0 "
                                "updates {} of {} parameters)",
                                reducer_->owned_parameters().size(), params_.size())
                  : fmt::format("gradients in {} buckets", reducer_->buckets()));
  else if (comm_->backend() != "single")  // a launcher's job of one rank: nothing to reduce
    say("data parallel: 1 rank ({} backend): no gradient communication\n", comm_->backend());
  say("layout {} (M Mamba, A attention; - none, F MLP, E MoE), {} precision{}\n", options_.layout_string(),
      bf16_ ? "bf16 mixed" : "fp32",
      config_.training.deterministic ? "" : ", non-deterministic kernels allowed (training.deterministic: false)");

  if (progress_.step >= total_steps_) {
    say("{} is already at step {} of {}: nothing to train (raise training.max_steps to continue, or start afresh "
        "with --set run.overwrite=true)\n",
        resume_path_->string(), progress_.step, total_steps_);
    summary_.already_complete = true;
    summary_.steps = progress_.step;
    if (!progress_.losses.empty()) summary_.first_loss = progress_.losses.front(), summary_.final_loss = progress_.losses.back();
    if (!progress_.val_losses.empty()) summary_.final_val_loss = progress_.val_losses.back();
    return summary_;
  }
  const double estimate = double(total_steps_ - progress_.step) * double(tokens_per_step_) * flops_per_token_ /
                          assumed_flops(device_, peak_);
  if (estimate > 24 * 3600)
    say("warning: this recipe needs about {:.2g} FLOPs: roughly {} on {} at the rate ssmtrain reaches there{}\n",
        double(total_steps_ - progress_.step) * double(tokens_per_step_) * flops_per_token_, duration_text(estimate),
        device_.str(), device_.is_cuda() ? "" : " (a GPU build trains it; recipes/tiny/ is what CPUs train in minutes)");

  if (writes_files()) {  // rank 0 writes the run files and the checkpoints (global shapes)
    fs::create_directories(run_dir_);
    write_run_file(run_dir_ / "config.yaml", configs::dump_config(config_));
    if (config_.logging.jsonl)
      metrics_ = resume_ ? MetricsLog::resume(run_dir_ / "metrics.jsonl", progress_.step)
                         : MetricsLog::create(run_dir_ / "metrics.jsonl");
    writer_ = std::make_unique<CheckpointWriter>(run_dir_, config_.checkpoint.keep);
    for (const NamedParameter& p : params_) staging_.reserve("model/" + p.name, *p.value);
    for (const NamedParameter& p : params_) {  // every parameter's moments, also when sharded
      staging_.reserve("exp_avg/" + p.name, *p.value);
      staging_.reserve("exp_avg_sq/" + p.name, *p.value);
    }
  }
  progress_.rng_seed = uint64_t(config_.run.seed);  // training draws no random numbers; init is seeded
  if (!train_options_.dump_batches.empty()) {
    const fs::path dir = train_options_.dump_batches;
    if (world_ > 1 || resume_)
      throw TrainError("--dump-batches " + dir.string() + ": writes the batches of a fresh run on one rank (this one " +
                       (resume_ ? "resumes " + resume_path_->string() : std::to_string(world_) + " ranks") + ")");
    fs::create_directories(dir);
    write_checkpoint(dir / "init.h5", snapshot());
    dumped_batches_.open(dir / "batches.bin", std::ios::binary | std::ios::trunc);
    if (!dumped_batches_) throw TrainError("--dump-batches: cannot write " + (dir / "batches.bin").string());
    say("dump: step-0 weights -> {}, every step's batch -> {}\n", (dir / "init.h5").string(), (dir / "batches.bin").string());
  }

  StopSignals signals;
  start_ = Clock::now();
  last_save_time_ = start_;
  const int64_t first_step = progress_.step;
  try {
    for (int64_t step = first_step; step < total_steps_; ++step) {
      const bool last = step + 1 == total_steps_;
      step_once(step, last);
      progress_.step = step + 1;
      const int64_t every = config_.training.eval_every;
      if (val_loader_ && (last || (every > 0 && (step + 1) % every == 0))) validate(step);
      const int64_t eval_every = config_.eval.every;
      if (eval_every > 0 && (last || (step + 1) % eval_every == 0)) evaluate(step);
      if (writer_) writer_->check();
      const int64_t save_every = config_.checkpoint.every;
      if (save_every > 0 && progress_.step % save_every == 0) save("checkpoint.every");
      else if (config_.checkpoint.every_minutes > 0 && minutes_due())
        save("checkpoint.every_minutes");
      if (const int signal = agreed_stop_signal(signals.requested()); signal != 0 && !last) {
        save(StopSignals::name(signal));
        if (writer_) writer_->wait();
        summary_.stopped_by = StopSignals::name(signal);
        say("stopped by {} after step {}: checkpoint {}; the same command resumes it\n", summary_.stopped_by, step,
            summary_.checkpoint);
        break;
      }
    }
    save("end of run");
    if (writer_) writer_->wait();
    if (config_.logging.svg) write_loss_curve();
  } catch (const RunFileError& e) {
    fail_after_saving(e);
  }
  const double seconds = seconds_since(start_);
  summary_.steps = progress_.step;
  summary_.tokens_per_second = double((progress_.step - first_step) * tokens_per_step_) / std::max(seconds, 1e-9);
  if (!progress_.losses.empty()) {
    summary_.first_loss = progress_.losses.front();
    summary_.final_loss = progress_.losses.back();
  }
  if (!progress_.val_losses.empty()) summary_.final_val_loss = progress_.val_losses.back();
  return summary_;
}

}  // namespace

TrainSummary train(const configs::Config& config, const TrainOptions& options) {
  Trainer trainer(config, options);
  return trainer.run();
}

}  // namespace ssmtrain
