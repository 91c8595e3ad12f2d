// The one table of recipe keys: for every section, its keys in the order they are written,
// each with the struct field it fills, a one-line description and the values it accepts.
// Loading, the unknown-key check, writing and the key reference all walk these functions.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "configs/config.h"
#include "configs/values.h"

namespace ssmtrain::configs {

// describe(section, visitor) calls, for each key of the section, one of
//   visitor.field(key, value, doc, rule)       a value (ValueCodec<T> reads and writes it)
//   visitor.section(key, subsection, doc)      a nested section (describe is called on it)
namespace schema {

inline constexpr Rule kAtLeastOne{.min = 1};
inline constexpr Rule kNonNegative{.min = 0};
inline constexpr Rule kPositive{.min = 0, .min_open = true};
inline constexpr Rule kUnitInterval{.min = 0, .max = 1};
inline constexpr Rule kAutoOrAtLeastOne{.min = 1, .zero_is_auto = true};

template <class V>
void describe(RunConfig& run, V& v) {
  v.field("name", run.name,
          "run name; the run directory is output_dir/name (default: the recipe's file name without "
          ".yaml)");
  v.field("output_dir", run.output_dir, "directory that holds run directories");
  v.field("seed", run.seed, "seed of initialisation and data order", kNonNegative);
  v.field("overwrite", run.overwrite,
          "start afresh in a run directory that already holds a run (its files and checkpoints are "
          "replaced); false: such a directory is resumed or refused");
}

// dt initialisation, shared by both Mamba mixers.
template <class MambaConfig, class V>
void describe_dt_init(MambaConfig& mamba, V& v) {
  v.field("dt_min", mamba.dt_min, "dt is initialised log-uniformly in [dt_min, dt_max]", kPositive);
  v.field("dt_max", mamba.dt_max, "upper end of the dt initialisation range", kPositive);
  v.field("dt_init_floor", mamba.dt_init_floor, "smallest initial dt", kPositive);
}

template <class V>
void describe(Mamba1Config& mamba1, V& v) {
  v.field("d_state", mamba1.d_state, "SSM state size per channel (N)", kAtLeastOne);
  v.field("d_conv", mamba1.d_conv, "causal depthwise convolution width", kAtLeastOne);
  v.field("expand", mamba1.expand, "d_inner = expand * d_model", kAtLeastOne);
  v.field("dt_rank", mamba1.dt_rank, "rank of the dt projection; auto = ceil(d_model / 16)",
          kAutoOrAtLeastOne);
  describe_dt_init(mamba1, v);
  v.field("dt_bc_norm", mamba1.dt_bc_norm, "RMSNorm on dt, B and C (the Jamba variant)");
}

template <class V>
void describe(Mamba2Config& mamba2, V& v) {
  v.field("d_state", mamba2.d_state, "SSM state size per head (N)", kAtLeastOne);
  v.field("d_conv", mamba2.d_conv, "causal depthwise convolution width", kAtLeastOne);
  v.field("expand", mamba2.expand, "d_inner = expand * d_model", kAtLeastOne);
  v.field("head_dim", mamba2.head_dim, "channels per SSD head (P); n_heads = d_inner / head_dim",
          kAtLeastOne);
  v.field("ngroups", mamba2.ngroups, "groups of heads sharing B and C; divides n_heads",
          kAtLeastOne);
  v.field("chunk_size", mamba2.chunk_size, "SSD chunk length", kAtLeastOne);
  describe_dt_init(mamba2, v);
}

template <class V>
void describe(AttentionConfig& attention, V& v) {
  v.field("n_heads", attention.n_heads, "query heads", kAtLeastOne);
  v.field("n_kv_heads", attention.n_kv_heads,
          "key/value heads, dividing n_heads (GQA); auto = n_heads", kAutoOrAtLeastOne);
  v.field("head_dim", attention.head_dim, "channels per head; auto = d_model / n_heads",
          kAutoOrAtLeastOne);
  v.field("rope", attention.rope, "rotary position embedding (hybrids usually go without)");
  v.field("rope_theta", attention.rope_theta, "RoPE base frequency", kPositive);
}

template <class V>
void describe(MlpConfig& mlp, V& v) {
  v.field("d_ff", mlp.d_ff,
          "SwiGLU hidden size; auto = multiplier * d_model rounded up to a multiple of 64",
          kAutoOrAtLeastOne);
  v.field("multiplier", mlp.multiplier, "d_ff / d_model when d_ff is auto", kPositive);
}

template <class V>
void describe(MoeConfig& moe, V& v) {
  v.field("n_experts", moe.n_experts, "SwiGLU experts per MoE layer", kAtLeastOne);
  v.field("top_k", moe.top_k, "experts each token is routed to", kAtLeastOne);
  v.field("d_ff_expert", moe.d_ff_expert, "hidden size of one expert; auto = mlp.d_ff",
          kAutoOrAtLeastOne);
  v.field("aux_loss_coef", moe.aux_loss_coef, "weight of the load-balancing loss", kNonNegative);
  v.field("z_loss_coef", moe.z_loss_coef, "weight of the router z-loss", kNonNegative);
}

template <class V>
void describe(LayoutConfig& layout, V& v) {
  v.field("mixer_pattern", layout.mixer_pattern,
          "explicit mixers, one letter per layer: M Mamba, A attention (e.g. MMMMAMMM)");
  v.field("ffn_pattern", layout.ffn_pattern,
          "explicit feed-forwards, one letter per layer: - none, F MLP, E MoE (e.g. -E-E-E-E)");
  v.field("attention_ratio", layout.attention_ratio,
          "\"A:M\": A attention layers per group of A + M layers, evenly placed (\"1:7\": layer 4 "
          "of every 8)");
  v.field("attention_period", layout.attention_period,
          "attention on layers i with i % attention_period == attention_offset (0: none)",
          kNonNegative);
  v.field("attention_offset", layout.attention_offset, "see attention_period", kNonNegative);
  v.field("moe_period", layout.moe_period,
          "MoE on layers i with i % moe_period == moe_offset (0: none)", kNonNegative);
  v.field("moe_offset", layout.moe_offset, "see moe_period", kNonNegative);
  v.field("ffn", layout.ffn, "feed-forward of the layers no pattern or period places");
}

template <class V>
void describe(ModelConfig& model, V& v) {
  v.field("family", model.family,
          "mamba1 or mamba2 (Mamba layers only), hybrid (attention may be mixed in)");
  v.field("ssm", model.ssm,
          "the mixer of the layout's M layers; auto = the family (a hybrid names one)");
  v.field("vocab_size", model.vocab_size, "embedding rows; at least the tokenizer's vocabulary",
          kAtLeastOne);
  v.field("d_model", model.d_model, "width of the residual stream", kAtLeastOne);
  // The bound keeps the layout's per-layer tables small: a typo of 10^9 layers is an error at
  // its line, not minutes of allocation.
  v.field("n_layers", model.n_layers, "blocks (one mixer and an optional feed-forward each)",
          Rule{.min = 1, .max = 100000});
  v.field("tie_embeddings", model.tie_embeddings, "the LM head shares the embedding matrix");
  v.field("norm_eps", model.norm_eps, "RMSNorm epsilon", kPositive);
  v.section("mamba1", model.mamba1, "Mamba-1 mixer (selective scan)");
  v.section("mamba2", model.mamba2, "Mamba-2 mixer (SSD)");
  v.section("attention", model.attention, "causal attention layers");
  v.section("mlp", model.mlp, "SwiGLU feed-forward");
  v.section("moe", model.moe, "mixture-of-experts feed-forward");
  v.section("layout", model.layout, "which layers are attention and which carry an MLP or MoE");
}

template <class V>
void describe(DataConfig& data, V& v) {
  v.field("train", data.train,
          "directory written by `ssmtrain data prepare` (manifest.json); its train split is "
          "trained on");
  v.field("val", data.val, "directory whose val split is held out; empty: the val split of train");
  v.field("tokenizer", data.tokenizer, "SentencePiece model; empty: the one the manifest names");
}

template <class V>
void describe(OptimConfig& optim, V& v) {
  v.field("lr", optim.lr, "peak learning rate (AdamW)", kPositive);
  v.field("betas", optim.betas, "AdamW beta1, beta2", Rule{.min = 0, .max = 1, .max_open = true});
  v.field("eps", optim.eps, "AdamW epsilon", kPositive);
  v.field("weight_decay", optim.weight_decay,
          "decoupled weight decay (not on norms, biases, A_log, D, dt_bias)", kNonNegative);
  v.field("grad_clip", optim.grad_clip, "clip the global gradient L2 norm to this (0: off)",
          kNonNegative);
}

template <class V>
void describe(ScheduleConfig& schedule, V& v) {
  v.field("kind", schedule.kind,
          "learning-rate shape after warmup: cosine to min_lr, wsd (stable, then linear decay), "
          "constant");
  v.field("warmup_steps", schedule.warmup_steps, "linear warmup from 0 to lr", kNonNegative);
  v.field("decay_fraction", schedule.decay_fraction,
          "wsd: the last fraction of steps that decays to min_lr",
          Rule{.min = 0, .max = 1, .min_open = true});
  v.field("min_lr_ratio", schedule.min_lr_ratio, "min_lr = min_lr_ratio * lr (cosine and wsd)",
          kUnitInterval);
}

template <class V>
void describe(TrainingConfig& training, V& v) {
  v.field("seq_len", training.seq_len, "tokens per training sequence", kAtLeastOne);
  v.field("global_batch_tokens", training.global_batch_tokens,
          "tokens per optimizer step over all ranks; a multiple of micro_batch * seq_len",
          kAtLeastOne);
  v.field("micro_batch", training.micro_batch,
          "sequences per forward/backward on one rank; grad_accum = global_batch_tokens / "
          "(micro_batch * seq_len * ranks)",
          kAtLeastOne);
  v.field("max_steps", training.max_steps,
          "optimizer steps (give this or token_budget; 0: not given)", kNonNegative);
  v.field("token_budget", training.token_budget,
          "tokens to train on; steps = ceil(token_budget / global_batch_tokens) (0: not given)",
          kNonNegative);
  v.field("precision", training.precision,
          "auto (bf16 on a GPU, fp32 on the CPU), bf16 (fp32 master weights), fp32");
  v.field("activation_checkpointing", training.activation_checkpointing,
          "recompute each block's activations in backward");
  v.field("deterministic", training.deterministic,
          "deterministic kernels where a faster non-deterministic one exists");
  v.field("eval_every", training.eval_every, "validation loss every N steps (0: at the end only)",
          kNonNegative);
  v.field("skip_nonfinite_steps", training.skip_nonfinite_steps,
          "steps with a non-finite loss or gradient norm that are skipped (no update) before the run "
          "stops; 0: the first one stops it",
          kNonNegative);
}

template <class V>
void describe(DistributedConfig& distributed, V& v) {
  v.field("backend", distributed.backend,
          "auto (nccl on GPUs, mpi under mpirun, tcp for CPU ranks of ssmtrain launch / torchrun / srun, else single), "
          "nccl, mpi, tcp, single");
  v.field("bucket_mb", distributed.bucket_mb, "gradient all-reduce bucket size in MiB", kPositive);
  v.field("shard_optimizer", distributed.shard_optimizer,
          "shard AdamW state over ranks (reduce-scatter, local step, all-gather)");
  v.field("timeout_s", distributed.timeout_s,
          "a collective slower than this aborts every rank, naming the rank and operation",
          kPositive);
}

template <class V>
void describe(CheckpointConfig& checkpoint, V& v) {
  v.field("every", checkpoint.every, "save every N steps (0: only at the end and on preemption)",
          kNonNegative);
  v.field("every_minutes", checkpoint.every_minutes,
          "also save when this many minutes of wall-clock time passed since the last save (0: off)",
          kNonNegative);
  v.field("keep", checkpoint.keep, "newest checkpoints kept", kAtLeastOne);
  v.field("resume", checkpoint.resume,
          "auto (newest valid checkpoint of the run, if any), none, or a checkpoint path");
  v.field("allow_data_change", checkpoint.allow_data_change,
          "resume even when the data fingerprint (tokenizer and shard checksums) differs from the "
          "checkpoint's");
}

template <class V>
void describe(NiahConfig& niah, V& v) {
  v.field("lengths", niah.lengths, "needle-in-a-haystack context lengths in tokens", kAtLeastOne);
  v.field("depths", niah.depths, "needle positions as a fraction of the context (0: start, 1: end)",
          kUnitInterval);
}

template <class V>
void describe(EvalConfig& eval, V& v) {
  v.field("every", eval.every, "run the evaluation suite every N steps (0: at the end only)",
          kNonNegative);
  v.field("perplexity_tokens", eval.perplexity_tokens,
          "held-out tokens for validation loss and perplexity", kAtLeastOne);
  v.section("niah", eval.niah, "needle-in-a-haystack grid");
}

template <class V>
void describe(MqarConfig& mqar, V& v) {
  v.field("vocab_size", mqar.vocab_size, "tokens the task draws keys (first half) and values (second half) from",
          kAtLeastOne);
  v.field("num_pairs", mqar.num_pairs, "key-value pairs at the start of each sequence", kAtLeastOne);
  v.field("num_queries", mqar.num_queries, "keys queried after the pairs (0: all of them)", kNonNegative);
  v.field("train_examples", mqar.train_examples, "distinct training sequences, cycled", kAtLeastOne);
  v.field("test_examples", mqar.test_examples, "held-out sequences scored", kAtLeastOne);
}

template <class V>
void describe(LoggingConfig& logging, V& v) {
  v.field("every", logging.every, "a step line every N steps", kAtLeastOne);
  v.field("jsonl", logging.jsonl, "write metrics.jsonl in the run directory");
  v.field("svg", logging.svg, "write the loss curve as SVG in the run directory");
}

template <class V>
void describe(Config& config, V& v) {
  v.section("run", config.run, "the run: name, directory, seed");
  v.section("model", config.model, "the network");
  v.section("data", config.data, "token shards and tokenizer");
  v.section("optim", config.optim, "AdamW");
  v.section("schedule", config.schedule, "learning-rate schedule");
  v.section("training", config.training, "batch, length, precision");
  v.section("distributed", config.distributed, "data parallelism");
  v.section("checkpoint", config.checkpoint, "saving and resuming");
  v.section("eval", config.eval, "evaluation during and after training");
  v.section("mqar", config.mqar, "multi-query associative recall task (`ssmtrain eval mqar`)");
  v.section("logging", config.logging, "step lines and metric files");
  v.field("sweep", config.sweep,
          "variants of this recipe, each a map {key.path: value, ...} applied before --set");
}

}  // namespace schema

// One key of the schema, for did-you-mean, `config keys`-style listings and the docs.
struct KeyInfo {
  std::string path;  // e.g. "model.mamba2.head_dim"
  bool is_section = false;
  std::string expected;       // e.g. "an integer >= 1" (empty for a section)
  std::string default_value;  // YAML text of the default (empty for a section)
  std::string doc;
};

// Every key of the schema, sections before their keys, in the order they are written.
const std::vector<KeyInfo>& schema_keys();
// The key at `path`, or nullptr.
const KeyInfo* find_schema_key(std::string_view path);
// What to say about an unknown key path: "unknown key; did you mean d_model?" (a key of the
// same section, by edit distance), "...; did you mean optim.lr?" (the nearest key elsewhere),
// or, with nothing near, the keys the section takes.
std::string unknown_key_message(std::string_view path);

}  // namespace ssmtrain::configs
