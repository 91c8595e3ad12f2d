// HuggingFace transformers model directories (DESIGN.md section 9): which transformers class
// expresses an ssmtrain model, its config.json, and one table per family that maps every
// ssmtrain parameter to the transformers tensors it is made of (docs/interop.md prints them).
//
//   Mamba-1 stack, no feed-forward          -> MambaForCausalLM   (model_type mamba)
//   Mamba-2 stack, no feed-forward          -> Mamba2ForCausalLM  (model_type mamba2)
//   Mamba-1 (dt/B/C norms) + attention,
//   an MLP or MoE in every layer, periodic  -> JambaForCausalLM   (model_type jamba)
//   Mamba-2 + attention, no feed-forward    -> NemotronHForCausalLM (model_type nemotron_h)
//
// NemotronH is the hybrid class for Mamba-2 + attention: like ssmtrain it lets any layer be
// Mamba-2 or attention (a per-layer list), its attention has no RoPE, and its layers need no
// feed-forward. Bamba and GraniteMoeHybrid put an MLP in every layer and Bamba always applies
// RoPE, so neither expresses ssmtrain's hybrid recipes (ffn: none, rope: false).
#pragma once

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "configs/config.h"
#include "train/checkpoint.h"

namespace ssmtrain::interop {

// What cannot be converted: what() names the feature, key or tensor and says why.
class InteropError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class HfFamily { mamba, mamba2, jamba, nemotron_h };
const char* hf_class_name(HfFamily family);  // "MambaForCausalLM", ...
const char* hf_model_type(HfFamily family);  // "mamba", ...

// The class that expresses `model` (a loaded config), or InteropError naming the feature no
// class can express (mixed Mamba-1 and Mamba-2 layers, a SwiGLU MLP in a Mamba-2 hybrid, RoPE in
// Jamba, a non-periodic Jamba layout, ...).
HfFamily choose_family(const configs::ModelConfig& model);

// config.json for `model` as `family`.
nlohmann::json hf_config(const configs::ModelConfig& model, HfFamily family);

// The ssmtrain model config that a config.json describes (auto values resolved), or
// InteropError naming the unsupported model_type or config value.
configs::ModelConfig model_config_from_hf(const nlohmann::json& config, HfFamily& family);

// One row of a family's table: the ssmtrain parameter's values, flattened, are the
// concatenation of its transformers tensors' values in this order (a split along the first
// axis: gate_up -> gate_proj, up_proj; an MoE stack -> one tensor per expert; conv1d (c, w) ->
// (c, 1, w) is a reshape).
struct HfPart {
  std::string name;
  Shape shape;
};
struct MappedParameter {
  std::string name;  // ssmtrain's dotted name
  Shape shape;
  std::vector<HfPart> hf;  // empty: not stored (the LM head of a tied model)
};
// The table for the parameters (name, shape) of a model of `layers` (its resolved layout).
// Throws InteropError for a parameter the family has no tensor for.
std::vector<MappedParameter> mapping_table(HfFamily family, const std::vector<std::pair<std::string, Shape>>& parameters,
                                           const configs::ModelConfig& model);

// `ssmtrain export hf`: the checkpoint (file or run directory) to `out`: model.safetensors
// (fp32), config.json, generation_config.json and, when the recipe's tokenizer is found,
// tokenizer.model + tokenizer_config.json + special_tokens_map.json (LlamaTokenizer).
// Returns the family written. Throws CheckpointError, InteropError, SafetensorsError.
HfFamily export_hf(const std::filesystem::path& checkpoint, const std::filesystem::path& out,
                   const std::function<void(const std::string&)>& note = {});

// `ssmtrain import hf`: the directory to a checkpoint at `out` (model weights, no optimizer
// state, step 0) and the recipe `out` with extension .yaml to continue training from it. A
// tensor the table does not know, one it lacks, or a shape that differs is an InteropError
// naming it. Returns the family read.
HfFamily import_hf(const std::filesystem::path& dir, const std::filesystem::path& out,
                   const std::function<void(const std::string&)>& note = {});

// The imported parameters (ssmtrain names, model order) and config, without writing anything.
struct ImportedModel {
  HfFamily family;
  configs::Config config;
  std::vector<std::pair<std::string, HostArray>> parameters;
};
ImportedModel read_hf_model(const std::filesystem::path& dir);

}  // namespace ssmtrain::interop
