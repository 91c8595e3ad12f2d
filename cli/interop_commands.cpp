// `ssmtrain export hf` and `ssmtrain import hf`: checkpoints to and from HuggingFace
// transformers model directories (DESIGN.md section 9).
#include <string>
#include <vector>

#include "cli/options.h"
#include "cli/subcommand.h"

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
  add_out(app, a.out, "Checkpoint file to write");
}

}  // namespace

std::vector<Subcommand> interop_commands() {
  return {
      command<ExportHfArgs>("export hf", "Write a HuggingFace transformers model directory", export_hf_options, nullptr),
      command<ImportHfArgs>("import hf", "Read a HuggingFace model directory into a checkpoint", import_hf_options,
                            nullptr),
  };
}

}  // namespace ssmtrain::cli
