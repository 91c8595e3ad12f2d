// The ssmtrain command line (DESIGN.md section 12). Each command group's file declares its
// subcommands and their options (subcommand.h); this file assembles them into one CLI11 app.
// Exit status: 0 success, 2 usage error (CLI11's message on stderr), 1 otherwise.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <algorithm>
#include <exception>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cli/subcommand.h"

#ifndef SSMTRAIN_VERSION
#define SSMTRAIN_VERSION "0.1.0"
#endif

namespace ssmtrain::cli {

int not_built_yet(const std::string& path) {
  fmt::print(stderr, "ssmtrain {}: not built yet\n", path);
  return 1;
}

namespace {

// Every subcommand, in the order `ssmtrain --help` lists them.
std::vector<Subcommand> subcommand_table() {
  std::vector<Subcommand> table;
  for (auto group : {train_commands, data_commands, eval_commands, interop_commands, launch_commands, info_commands}) {
    for (Subcommand& sub : group()) table.push_back(std::move(sub));
  }
  return table;
}

// Help of the subcommands that only group others ("ssmtrain eval niah").
const std::map<std::string, std::string>& group_help() {
  static const std::map<std::string, std::string> help = {
      {"checkpoint", "Inspect checkpoints"},
      {"config", "Inspect recipes"},
      {"data", "Tokenizers and token shards"},
      {"eval", "Evaluate a checkpoint"},
      {"export", "Write a checkpoint in another framework's format"},
      {"import", "Read another framework's model into a checkpoint"},
  };
  return help;
}

std::vector<std::string> split_words(const std::string& path) {
  std::vector<std::string> words;
  std::istringstream in(path);
  for (std::string word; in >> word;) words.push_back(word);
  return words;
}

// Adds every subcommand of the table to `app`; the one the user picks stores its run in
// `selected` once its options have parsed.
void register_subcommands(CLI::App& app, Run& selected) {
  std::map<std::string, CLI::App*> groups;
  for (const Subcommand& sub : subcommand_table()) {
    const std::vector<std::string> words = split_words(sub.path);
    CLI::App* parent = &app;
    std::string prefix;
    for (size_t i = 0; i + 1 < words.size(); ++i) {
      prefix += (prefix.empty() ? "" : " ") + words[i];
      CLI::App*& group = groups[prefix];
      if (group == nullptr) {
        const auto help = group_help().find(prefix);
        group = parent->add_subcommand(words[i], help == group_help().end() ? "" : help->second);
        group->require_subcommand(1);
      }
      parent = group;
    }
    CLI::App* leaf = parent->add_subcommand(words.back(), sub.help);
    const Run run = sub.declare(*leaf);
    leaf->callback([&selected, run] { selected = run; });
  }
}

// The command words of argv ("eval", "bogus") checked against the table before CLI11 parses,
// so a mistyped command is named with the ones there are instead of "arguments were not
// expected". Returns the message, empty when the words lead to a command or stop at an option.
std::string unknown_command(int argc, char** argv) {
  const std::vector<Subcommand> table = subcommand_table();
  std::string prefix;
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    if (word.empty() || word[0] == '-') return "";
    const std::string path = prefix.empty() ? word : prefix + " " + word;
    std::vector<std::string> children;
    bool leaf = false, group = false;
    for (const Subcommand& sub : table) {
      if (sub.path == path) leaf = true;
      if (sub.path.rfind(path + " ", 0) == 0) group = true;
      if (prefix.empty() || sub.path.rfind(prefix + " ", 0) == 0) {
        const std::vector<std::string> words = split_words(sub.path);
        const size_t depth = prefix.empty() ? 0 : split_words(prefix).size();
        if (words.size() > depth && std::find(children.begin(), children.end(), words[depth]) == children.end())
          children.push_back(words[depth]);
      }
    }
    if (leaf) return "";
    if (!group) {
      std::string list;
      for (const std::string& c : children) list += (list.empty() ? "" : ", ") + c;
      return fmt::format("unknown command '{}'; the commands{} are: {}", path,
                         prefix.empty() ? "" : " of '" + prefix + "'", list);
    }
    prefix = path;
  }
  return "";
}

}  // namespace
}  // namespace ssmtrain::cli

int main(int argc, char** argv) {
  using namespace ssmtrain::cli;
  CLI::App app("ssmtrain: pretraining of state-space models (Mamba, Mamba-2) and hybrids", "ssmtrain");
  app.set_version_flag("--version", fmt::format("ssmtrain {}", SSMTRAIN_VERSION));
  app.require_subcommand(1);
  Run selected;
  register_subcommands(app, selected);
  if (const std::string unknown = unknown_command(argc, argv); !unknown.empty()) {
    fmt::print(stderr, "ssmtrain: {} (see ssmtrain --help)\n", unknown);
    return 2;
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0 with their text on stdout; anything else is a usage error,
    // one line on stderr.
    if (e.get_exit_code() == 0) return app.exit(e);
    fmt::print(stderr, "ssmtrain: {} (see --help)\n", e.what());
    return 2;
  }

  try {
    return selected ? selected() : not_built_yet("(none)");
  } catch (const std::exception& e) {
    fmt::print(stderr, "ssmtrain: {}\n", e.what());
    return 1;
  }
}
