// `ssmtrain launch`: starts the local ranks of a data-parallel job (DESIGN.md section 6).
#include <string>
#include <vector>

#include "cli/options.h"
#include "cli/subcommand.h"

namespace ssmtrain::cli {
namespace {

struct LaunchArgs {
  int nproc_per_node = 0;
  std::vector<std::string> command;  // the ssmtrain subcommand each rank runs
};

void launch_options(CLI::App& app, LaunchArgs& a) {
  app.add_option("--nproc-per-node", a.nproc_per_node, "Ranks to start on this machine")->required()->check(kPositive);
  app.add_option("command", a.command, "The subcommand every rank runs, after --, e.g. -- train RECIPE.yaml")
      ->required();
}

}  // namespace

std::vector<Subcommand> launch_commands() {
  return {command<LaunchArgs>("launch", "Start local ranks: launch --nproc-per-node N -- train ...", launch_options,
                              nullptr)};
}

}  // namespace ssmtrain::cli
