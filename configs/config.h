// The typed recipe: one struct per YAML section of DESIGN.md section 4, holding the defaults a
// recipe gets for the keys it leaves out. Keys, their documentation and their allowed ranges
// are declared once, in configs/schema.h; loading, checking and writing live in configs/load.h.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ssmtrain::configs {

// ---- enumerations, each with the names a recipe spells them with ----

enum class Family { mamba1, mamba2, hybrid };
enum class Ssm { from_family, mamba1, mamba2 };  // "auto", "mamba1", "mamba2"
enum class Mixer { mamba1, mamba2, attention };
enum class Ffn { none, mlp, moe };
enum class ScheduleKind { cosine, wsd, constant };
enum class Precision { automatic, bf16, fp32 };  // "auto": bf16 on a GPU, fp32 on the CPU
enum class Backend { automatic, nccl, mpi, tcp, single };

template <class E>
using EnumNames = std::array<std::pair<E, std::string_view>, 3>;

constexpr EnumNames<Family> enum_names(Family) {
  return {{{Family::mamba1, "mamba1"}, {Family::mamba2, "mamba2"}, {Family::hybrid, "hybrid"}}};
}
constexpr EnumNames<Ssm> enum_names(Ssm) {
  return {{{Ssm::from_family, "auto"}, {Ssm::mamba1, "mamba1"}, {Ssm::mamba2, "mamba2"}}};
}
constexpr EnumNames<Mixer> enum_names(Mixer) {
  return {{{Mixer::mamba1, "mamba1"}, {Mixer::mamba2, "mamba2"}, {Mixer::attention, "attention"}}};
}
constexpr EnumNames<Ffn> enum_names(Ffn) {
  return {{{Ffn::none, "none"}, {Ffn::mlp, "mlp"}, {Ffn::moe, "moe"}}};
}
constexpr EnumNames<ScheduleKind> enum_names(ScheduleKind) {
  return {{{ScheduleKind::cosine, "cosine"},
           {ScheduleKind::wsd, "wsd"},
           {ScheduleKind::constant, "constant"}}};
}
constexpr EnumNames<Precision> enum_names(Precision) {
  return {{{Precision::automatic, "auto"}, {Precision::bf16, "bf16"}, {Precision::fp32, "fp32"}}};
}
constexpr std::array<std::pair<Backend, std::string_view>, 5> enum_names(Backend) {
  return {{{Backend::automatic, "auto"},
           {Backend::nccl, "nccl"},
           {Backend::mpi, "mpi"},
           {Backend::tcp, "tcp"},
           {Backend::single, "single"}}};
}

// The recipe spelling of an enumerator, e.g. to_string(Family::hybrid) == "hybrid".
template <class E>
requires requires(E e) { enum_names(e); }
constexpr std::string_view to_string(E value) {
  for (const auto& [enumerator, name] : enum_names(value)) {
    if (enumerator == value) return name;
  }
  return "?";
}

// ---- sections ----
// A value of 0 in a field documented as "auto" means the recipe said `auto`; loading resolves
// every such field it can (resolve_auto_values in configs/load.h), so a loaded config holds
// numbers.

struct RunConfig {
  std::string name = "run";  // the run directory is output_dir/name; loading: the recipe stem
  std::string output_dir = "runs";
  int64_t seed = 1234;  // initialisation and data order
  bool overwrite = false;  // start afresh in a run directory that already holds a run
  bool operator==(const RunConfig&) const = default;
};

struct Mamba1Config {
  int64_t d_state = 16;   // n: SSM state size per channel
  int64_t d_conv = 4;     // w: causal depthwise convolution width
  int64_t expand = 2;     // d_inner = expand * d_model
  int64_t dt_rank = 0;    // r: auto = ceil(d_model / 16)
  double dt_min = 0.001;  // dt is initialised log-uniformly in [dt_min, dt_max]
  double dt_max = 0.1;
  double dt_init_floor = 1e-4;
  bool dt_bc_norm = false;  // Jamba: RMSNorm on dt, B and C
  bool operator==(const Mamba1Config&) const = default;
};

struct Mamba2Config {
  int64_t d_state = 128;  // n: SSM state size per head
  int64_t d_conv = 4;
  int64_t expand = 2;        // d_inner = expand * d_model
  int64_t head_dim = 64;      // p: n_heads = d_inner / head_dim
  int64_t ngroups = 1;       // g: heads share B and C within a group
  int64_t chunk_size = 256;  // SSD chunk length
  double dt_min = 0.001;
  double dt_max = 0.1;
  double dt_init_floor = 1e-4;
  bool operator==(const Mamba2Config&) const = default;
};

struct AttentionConfig {
  int64_t n_heads = 12;
  int64_t n_kv_heads = 0;  // auto = n_heads (MHA); fewer is GQA
  int64_t head_dim = 0;    // auto = d_model / n_heads
  bool rope = false;       // hybrids usually rely on the Mamba layers for position
  double rope_theta = 10000.0;
  bool operator==(const AttentionConfig&) const = default;
};

struct MlpConfig {
  int64_t d_ff = 0;  // SwiGLU hidden size; auto = multiplier * d_model, rounded up to 64
  double multiplier = 4.0;
  bool operator==(const MlpConfig&) const = default;
};

struct MoeConfig {
  int64_t n_experts = 16;
  int64_t top_k = 2;
  int64_t d_ff_expert = 0;  // auto = mlp.d_ff
  double aux_loss_coef = 0.01;
  double z_loss_coef = 0.001;
  bool operator==(const MoeConfig&) const = default;
};

// Where attention and MoE go (configs/layout.h resolves it into one list of layers). Attention
// is placed by at most one of mixer_pattern, attention_ratio, attention_period; MoE by at most
// one of ffn_pattern, moe_period.
struct LayoutConfig {
  std::string mixer_pattern;     // one letter per layer: M Mamba, A attention
  std::string ffn_pattern;       // one letter per layer: - none, F MLP, E MoE
  std::string attention_ratio;   // "A:M", e.g. "1:7": A attention layers per A + M, evenly placed
  int64_t attention_period = 0;  // attention on layers i with i % period == offset (0: none)
  int64_t attention_offset = 0;
  int64_t moe_period = 0;  // MoE on layers i with i % period == offset (0: none)
  int64_t moe_offset = 0;
  Ffn ffn = Ffn::none;  // the feed-forward of every layer not otherwise placed
  bool operator==(const LayoutConfig&) const = default;
};

struct ModelConfig {
  Family family = Family::mamba2;
  Ssm ssm = Ssm::from_family;  // the mixer of the M layers; auto = the family (not for hybrid)
  int64_t vocab_size = 50280;
  int64_t d_model = 768;
  int64_t n_layers = 24;
  bool tie_embeddings = true;
  double norm_eps = 1e-5;
  Mamba1Config mamba1;
  Mamba2Config mamba2;
  AttentionConfig attention;
  MlpConfig mlp;
  MoeConfig moe;
  LayoutConfig layout;

  // The Mamba mixer of the layout's M layers (ssm, or the family when ssm is auto; mamba1 for a
  // hybrid left at auto, which validation rejects).
  Mixer mamba_mixer() const;

  // The derived sizes, computed here and nowhere else: the layers are built with them, `config
  // show` prints them, and resolve_auto_values writes the `auto` ones back. Each also holds
  // for a config built in code whose auto (0) values were never resolved.
  int64_t mamba1_d_inner() const { return mamba1.expand * d_model; }
  int64_t mamba1_dt_rank() const;  // dt_rank, auto: ceil(d_model / 16)
  int64_t mamba2_d_inner() const { return mamba2.expand * d_model; }
  int64_t mamba2_n_heads() const;  // d_inner / head_dim (0 for a head_dim below 1)
  int64_t mamba2_conv_dim() const { return mamba2_d_inner() + 2 * mamba2.ngroups * mamba2.d_state; }
  int64_t attention_n_kv_heads() const;  // auto: n_heads
  int64_t attention_head_dim() const;    // auto: d_model / n_heads (0 when it does not divide)
  int64_t mlp_d_ff() const;              // auto: multiplier * d_model rounded up to 64
  int64_t moe_d_ff() const;              // moe.d_ff_expert, auto: mlp_d_ff()
  bool operator==(const ModelConfig&) const = default;
};

struct DataConfig {
  std::string train;      // directory of `ssmtrain data prepare` (manifest.json); its train split
  std::string val;        // directory whose val split is held out; empty: train's val split
  std::string tokenizer;  // SentencePiece .model; empty: the one the manifest names
  bool operator==(const DataConfig&) const = default;
};

struct OptimConfig {
  double lr = 6e-4;  // peak learning rate (AdamW)
  std::array<double, 2> betas{0.9, 0.95};
  double eps = 1e-8;
  double weight_decay = 0.1;  // not on norms, biases, A_log, D, dt_bias
  double grad_clip = 1.0;     // global L2 norm; 0: off
  bool operator==(const OptimConfig&) const = default;
};

struct ScheduleConfig {
  ScheduleKind kind = ScheduleKind::cosine;
  int64_t warmup_steps = 100;   // linear from 0 to lr
  double decay_fraction = 0.2;  // wsd: the last fraction of steps that decays to min_lr
  double min_lr_ratio = 0.1;    // min_lr = min_lr_ratio * lr
  bool operator==(const ScheduleConfig&) const = default;
};

struct TrainingConfig {
  int64_t seq_len = 2048;
  int64_t global_batch_tokens = 524288;  // tokens per optimizer step over all ranks
  int64_t micro_batch = 8;               // sequences per forward/backward on one rank
  int64_t max_steps = 0;                 // give max_steps or token_budget (0: not given)
  int64_t token_budget = 0;
  Precision precision = Precision::automatic;
  bool activation_checkpointing = false;
  bool deterministic = true;  // deterministic kernels where a faster variant exists
  int64_t eval_every = 500;   // validation loss every N steps (0: at the end only)
  int64_t skip_nonfinite_steps = 0;  // steps with a non-finite loss or gradient skipped before the run stops

  // Optimizer steps of the run: max_steps, or token_budget / global_batch_tokens rounded up.
  int64_t total_steps() const;
  // Sequences per optimizer step over all ranks (global_batch_tokens / seq_len); a step is
  // global_batch_tokens tokens.
  int64_t sequences_per_step() const { return seq_len > 0 ? global_batch_tokens / seq_len : 0; }
  // Micro-batches per rank and step on `world_size` ranks (0 when it does not divide; see
  // check_world_size in configs/load.h).
  int64_t grad_accum(int64_t world_size) const;
  bool operator==(const TrainingConfig&) const = default;
};

struct DistributedConfig {
  Backend backend = Backend::automatic;  // auto: nccl on GPUs, mpi under mpirun, tcp under a launcher, else single
  double bucket_mb = 25.0;               // gradient all-reduce bucket size
  bool shard_optimizer = false;          // reduce-scatter, local AdamW, all-gather
  double timeout_s = 600.0;              // a collective slower than this aborts every rank
  bool operator==(const DistributedConfig&) const = default;
};

struct CheckpointConfig {
  int64_t every = 1000;         // steps (0: only at the end and on preemption)
  double every_minutes = 0;     // also every N minutes of wall-clock time (0: off)
  int64_t keep = 3;             // newest checkpoints kept
  std::string resume = "auto";  // auto | none | a checkpoint path
  bool allow_data_change = false;  // resume on data whose fingerprint differs from the checkpoint's
  bool operator==(const CheckpointConfig&) const = default;
};

struct NiahConfig {
  std::vector<int64_t> lengths{1024, 2048, 4096};         // context lengths in tokens
  std::vector<double> depths{0.0, 0.25, 0.5, 0.75, 1.0};  // needle position / context length
  bool operator==(const NiahConfig&) const = default;
};

struct EvalConfig {
  int64_t every = 0;  // the evaluation suite every N steps (0: at the end only)
  int64_t perplexity_tokens = 1048576;
  NiahConfig niah;
  bool operator==(const EvalConfig&) const = default;
};

// The synthetic multi-query associative recall task of `ssmtrain eval mqar` (eval/mqar.h):
// num_pairs key-value pairs, then num_queries of the keys each followed by its value, in
// training.seq_len tokens; keys and values drawn from `vocab_size` tokens (token 0 pads).
struct MqarConfig {
  int64_t vocab_size = 256;       // tokens the task uses (<= model.vocab_size): keys half, values half
  int64_t num_pairs = 16;
  int64_t num_queries = 0;        // 0: every pair is queried once, in a random order
  int64_t train_examples = 100000;  // distinct training sequences, cycled
  int64_t test_examples = 1000;     // held-out sequences scored at the end
  bool operator==(const MqarConfig&) const = default;
};

struct LoggingConfig {
  int64_t every = 10;  // a step line every N steps
  bool jsonl = true;   // metrics.jsonl in the run directory
  bool svg = true;     // loss curve as SVG
  bool operator==(const LoggingConfig&) const = default;
};

// One variant of a sweep: overrides (key path, value as YAML flow text), applied in order to
// the recipe before the command line's --set.
struct SweepVariant {
  std::vector<std::pair<std::string, std::string>> overrides;
  bool operator==(const SweepVariant&) const = default;
};

struct Config {
  RunConfig run;
  ModelConfig model;
  DataConfig data;
  OptimConfig optim;
  ScheduleConfig schedule;
  TrainingConfig training;
  DistributedConfig distributed;
  CheckpointConfig checkpoint;
  EvalConfig eval;
  MqarConfig mqar;
  LoggingConfig logging;
  std::vector<SweepVariant> sweep;
  bool operator==(const Config&) const = default;
};

// A short name for a sweep variant: its run.name override, else "leaf=value" pairs joined by
// ",", e.g. "attention_ratio=1:7".
std::string sweep_variant_name(const SweepVariant& variant);

}  // namespace ssmtrain::configs
