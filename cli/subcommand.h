// One entry of the `ssmtrain` command table: its path below `ssmtrain` ("eval niah"), a line
// of help, and how it declares its options and what it runs. Each command group's file
// (train_commands.cpp, data_commands.cpp, ...) returns its entries; main.cpp assembles them.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ssmtrain::cli {

// What a parsed subcommand runs; returns the exit status.
using Run = std::function<int()>;

struct Subcommand {
  std::string path;
  std::string help;
  std::function<Run(CLI::App&)> declare;  // declares the options, returns what runs after a parse
};

// Says that a subcommand's work has not landed yet; exit status 1.
int not_built_yet(const std::string& path);

// Ties an argument struct to its option declarations and its run function. A null run
// function marks a subcommand whose work has not landed yet.
template <typename Args>
Subcommand command(std::string path, std::string help, void (*options)(CLI::App&, Args&),
                   int (*run)(const Args&)) {
  auto declare = [path, options, run](CLI::App& app) -> Run {
    // The options write into *args during parsing, so the runner keeps it alive.
    auto args = std::make_shared<Args>();
    options(app, *args);
    return [args, run, path] { return run == nullptr ? not_built_yet(path) : run(*args); };
  };
  return Subcommand{std::move(path), std::move(help), std::move(declare)};
}

// The command groups, in the order `ssmtrain --help` lists them.
std::vector<Subcommand> train_commands();   // train, config show, checkpoint info
std::vector<Subcommand> data_commands();    // data tokenizer, data prepare
std::vector<Subcommand> eval_commands();    // eval *, generate, sweep
std::vector<Subcommand> interop_commands(); // export hf, import hf
std::vector<Subcommand> launch_commands();  // launch
std::vector<Subcommand> info_commands();    // info

}  // namespace ssmtrain::cli
