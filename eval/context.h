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

// Up to `max_tokens` tokens of the val split of `data_dir`, shard after shard in manifest
// order (0: all). Throws DataError when the directory has no val split.
std::vector<int64_t> held_out_tokens(const std::string& data_dir, int64_t max_tokens);

}  // namespace ssmtrain::eval
