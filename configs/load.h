// Reading a recipe (DESIGN.md section 4): YAML text -> --set overrides -> unknown-key check ->
// typed values -> consistency checks -> `auto` values resolved; and writing it back. Every
// failure is a ConfigError whose what() is one line: FILE:LINE:COL: KEY.PATH: expected, found.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "configs/config.h"
#include "configs/errors.h"

namespace ssmtrain::configs {

struct Recipe {
  Config config;  // the recipe with the overrides applied
  // One per entry of config.sweep: the recipe, then that entry's overrides, then the command
  // line's (their own sweep is empty). Every variant is checked when the recipe loads.
  std::vector<Config> sweep_variants;
  // Where each key path of `config` was written (the file's positions, "--set" for overrides),
  // so a problem found after loading (say, a data directory that does not exist) can still
  // name the recipe line.
  std::string source;
  std::map<std::string, Location> where;
  // The position of `key_path`, else of its nearest written parent section, else the file.
  Location locate(std::string_view key_path) const;
};

// `overrides` are --set arguments, "key.path=value", the value read by YAML rules (3e-4, true,
// [1, 2], "text"); they apply in order, and an error in one is reported at "--set".
Recipe load_recipe(const std::filesystem::path& file,
                   const std::vector<std::string>& overrides = {});
// The same from YAML text; `source_name` stands for the file in error messages and, by its
// stem, is the default run.name.
Recipe parse_recipe(std::string_view yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides = {});

// load_recipe(...).config and parse_recipe(...).config.
Config load_config(const std::filesystem::path& file,
                   const std::vector<std::string>& overrides = {});
Config parse_config(std::string_view yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides = {});

// The config as YAML: every key, defaults included, in schema order, so that
// parse_config(dump_config(c), ...) == c. Written to the run directory and into checkpoints.
std::string dump_config(const Config& config);

// The checks loading makes after reading the values, for a config built in code: dimensions
// that must divide, a layout that suits the family, a batch that splits into micro-batches, one
// run length. Throws ConfigError naming the keys (no file position).
void validate(const Config& config);

// Replaces the `auto` (0) values that loading resolves: model.ssm for mamba1/mamba2 families,
// mamba1.dt_rank, attention.n_kv_heads and head_dim, mlp.d_ff, moe.d_ff_expert.
void resolve_auto_values(Config& config);

// Throws ConfigError unless micro_batch * seq_len * world_size divides global_batch_tokens
// (the world size comes from the launcher, not the recipe).
void check_world_size(const Config& config, int64_t world_size);

}  // namespace ssmtrain::configs
