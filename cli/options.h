// Options and validators that several subcommands share: recipes with --set overrides,
// checkpoints, output directories, numbers with bounds, the default corpus.
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

namespace ssmtrain::cli {

// "key=value" (e.g. training.lr=3e-4).
extern const CLI::Validator kKeyValue;
// A number > 0, a number >= 0, with a message that names the bound.
extern const CLI::Validator kPositive;
extern const CLI::Validator kNonNegative;
// An existing path, or `linux-doc`: the default corpus (Debian's linux-doc package).
extern const CLI::Validator kCorpusInput;

void add_recipe(CLI::App& app, std::string& recipe);
void add_overrides(CLI::App& app, std::vector<std::string>& overrides);
// --checkpoint: a run directory (its latest checkpoint) or one checkpoint file.
void add_checkpoint(CLI::App& app, std::string& checkpoint, bool required = true);
void add_out(CLI::App& app, std::string& out, const std::string& help, bool required = true);

}  // namespace ssmtrain::cli
