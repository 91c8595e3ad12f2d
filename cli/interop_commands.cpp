// `ssmtrain export hf` and `ssmtrain import hf`: checkpoints to and from HuggingFace
// transformers model directories (DESIGN.md section 9, docs/interop.md).
#include <fmt/core.h>

#include <string>
#include <vector>

#include "cli/options.h"
#include "cli/subcommand.h"
#include "configs/errors.h"
#include "interop/hf.h"
#include "interop/safetensors.h"

namespace ssmtrain::cli {
namespace {

struct ExportHfArgs {
  std::string checkpoint;
  std::string out;
};

struct ImportHfArgs {
  std::string in;
  std::string out;
};

void export_hf_options(CLI::App& app, ExportHfArgs& a) {
  add_checkpoint(app, a.checkpoint);
  add_out(app, a.out, "Directory for model.safetensors, config.json and the tokenizer");
}

void import_hf_options(CLI::App& app, ImportHfArgs& a) {
  app.add_option("--in", a.in, "HuggingFace model directory (model.safetensors, config.json)")
      ->required()
      ->check(CLI::ExistingDirectory);
  add_out(app, a.out, "Checkpoint file to write (the recipe goes beside it, as .yaml)");
}

void note(const std::string& line) { fmt::print("{}\n", line); }

// Exit 2 for what the user can change (a model no class expresses, a directory we cannot read
// as a model), 1 for anything else; one line on stderr either way.
template <typename F>
int guarded(const char* command, F&& body) {
  try {
    body();
    return 0;
  } catch (const interop::InteropError& e) {
    fmt::print(stderr, "ssmtrain {}: {}\n", command, e.what());
    return 2;
  } catch (const interop::SafetensorsError& e) {
    fmt::print(stderr, "ssmtrain {}: {}\n", command, e.what());
    return 2;
  } catch (const configs::ConfigError& e) {
    fmt::print(stderr, "ssmtrain {}: {}\n", command, e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "ssmtrain {}: {}\n", command, e.what());
    return 1;
  }
}

int run_export_hf(const ExportHfArgs& a) {
  return guarded("export hf", [&] { interop::export_hf(a.checkpoint, a.out, note); });
}

int run_import_hf(const ImportHfArgs& a) {
  return guarded("import hf", [&] { interop::import_hf(a.in, a.out, note); });
}

}  // namespace

std::vector<Subcommand> interop_commands() {
  return {
      command<ExportHfArgs>("export hf", "Write a HuggingFace transformers model directory", export_hf_options, run_export_hf),
      command<ImportHfArgs>("import hf", "Read a HuggingFace model directory into a checkpoint", import_hf_options,
                            run_import_hf),
  };
}

}  // namespace ssmtrain::cli
