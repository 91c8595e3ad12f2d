// What every evaluation of a checkpoint starts from: the model loaded on the best device
// (the first GPU when there is one), the activation dtype its recipe asks for there, the
// tokenizer it was trained with, and the held-out tokens of its data.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "data/shard.h"
#include "data/tokenizer.h"
#include "eval/retrieval.h"
#include "train/checkpoint.h"

namespace ssmtrain::eval {

struct EvalContext {
  LoadedModel loaded;
  Device device = Device::cpu();
  DType compute = DType::f32;  // training.precision on this device: bf16 on a GPU for auto, f32 on the CPU
  std::unique_ptr<data::Tokenizer> tokenizer;
  std::string data_dir;  // the prepared directory whose val split is held out
  const LanguageModel& model() const { return *loaded.model; }
  std::string checkpoint_name() const { return loaded.path.string(); }
};

// Loads `checkpoint` (a file or a run directory). `data_dir` overrides the recipe's data
// (data.val, else data.train); the tokenizer is data.tokenizer or the one the data's manifest
// names. Throws (CheckpointError, DataError, std::runtime_error) naming what is missing.
EvalContext open_checkpoint(const std::filesystem::path& checkpoint, const std::string& data_dir = "");

// The directory whose val split a recipe holds out (`data_dir` when given, else data.val, else
// data.train) and the tokenizer it names (data.tokenizer, else the one that directory's manifest
// names; null when neither exists).
std::string recipe_data_dir(const configs::Config& config, const std::string& data_dir = "");
std::unique_ptr<data::Tokenizer> recipe_tokenizer(const configs::Config& config, const std::string& data_dir);

// NIAH over `options`' grid with held-out text of `data_dir` as the haystack (enough for the
// longest length several times over; cycled when short): what `eval niah`, sweeps and eval.every
// run.
RetrievalResult run_niah(const LanguageModel& model, const data::Tokenizer& tokenizer, const std::string& data_dir,
                         const RetrievalOptions& options, const CellCallback& on_cell = {});

// Up to `max_tokens` tokens of the val split of `data_dir`, shard after shard in manifest
// order (0: all). Throws DataError when the directory has no val split.
std::vector<int64_t> held_out_tokens(const std::string& data_dir, int64_t max_tokens);

// The checkpoint tokenizer as a TextCodec: prompts start with EOS (training documents follow
// one), answers stop at EOS, and decoding drops EOS and ids past the tokenizer's pieces (a
// model vocabulary padded beyond it). `tokenizer` must outlive the codec.
TextCodec text_codec(const data::Tokenizer& tokenizer);

// The text of `tokens` (held-out tokens): documents decoded one by one (at EOS) and joined
// by a blank line, so a haystack holds no document boundary the model would reset at.
std::string held_out_text(const data::Tokenizer& tokenizer, const std::vector<int64_t>& tokens);

}  // namespace ssmtrain::eval
