// See options.h.
#include "cli/options.h"

#include <fmt/core.h>

#include <cstdlib>

#include "data/text_input.h"

namespace ssmtrain::cli {
namespace {

// A number > low (or >= low), with a message that names the bound (CLI11's own prints DBL_MAX).
CLI::Validator number_at_least(double low, bool inclusive, const std::string& name) {
  return CLI::Validator(
      [low, inclusive](std::string& text) {
        char* end = nullptr;
        const double value = std::strtod(text.c_str(), &end);
        const bool parsed = end != text.c_str() && *end == '\0';
        if (parsed && (inclusive ? value >= low : value > low)) return std::string();
        return fmt::format("expected a number {} {}, got '{}'", inclusive ? ">=" : ">", low, text);
      },
      name);
}

}  // namespace

const CLI::Validator kKeyValue(
    [](std::string& text) {
      return text.find('=') == std::string::npos || text.front() == '='
                 ? std::string("expected key=value (e.g. training.lr=3e-4), got '" + text + "'")
                 : std::string();
    },
    "KEY=VALUE");

const CLI::Validator kPositive = number_at_least(0, /*inclusive=*/false, "POSITIVE");
const CLI::Validator kNonNegative = number_at_least(0, /*inclusive=*/true, "NON-NEGATIVE");

const CLI::Validator kCorpusInput(
    [](std::string& value) -> std::string {
      if (value != "linux-doc") return CLI::ExistingPath(value);
      const std::string found = ssmtrain::data::find_linux_doc_corpus();
      if (found.empty())
        return "linux-doc: Debian's linux-doc package is not installed (apt-get install linux-doc)";
      value = found;
      return {};
    },
    "PATH|linux-doc");

void add_recipe(CLI::App& app, std::string& recipe) {
  // Not checked here: loading names a missing file in the one-line recipe error format.
  app.add_option("recipe", recipe, "Recipe YAML file")->required();
}

void add_overrides(CLI::App& app, std::vector<std::string>& overrides) {
  app.add_option("--set", overrides, "Override a recipe key, e.g. --set training.lr=3e-4 (repeatable)")
      ->allow_extra_args(false)
      ->check(kKeyValue);
}

void add_checkpoint(CLI::App& app, std::string& checkpoint, bool required) {
  CLI::Option* option =
      app.add_option("--checkpoint", checkpoint, "A run directory (its latest checkpoint is used) or one checkpoint file")
          ->check(CLI::ExistingPath);
  if (required) option->required();
}

void add_out(CLI::App& app, std::string& out, const std::string& help, bool required) {
  CLI::Option* option = app.add_option("--out", out, help);
  if (required) option->required();
}

}  // namespace ssmtrain::cli
