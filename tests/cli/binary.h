// Runs the built ssmtrain binary for the CLI tests: `ssmtrain ARGS` in a directory, with its
// exit status, stdout, stderr and wall time.
#pragma once

#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace ssmtrain::testing {

struct CliResult {
  int status = -1;
  std::string out, err;
  double seconds = 0;
};

inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Arguments pass through the shell single-quoted; stdout and stderr go to out.txt and err.txt
// in `dir`.
inline CliResult run_binary(const std::filesystem::path& dir, const std::vector<std::string>& args) {
  std::string command = "cd '" + dir.string() + "' && '" SSMTRAIN_BINARY "'";
  for (const std::string& a : args) command += " '" + a + "'";
  command += " > out.txt 2> err.txt";
  const auto start = std::chrono::steady_clock::now();
  const int raw = std::system(command.c_str());
  CliResult r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  r.out = read_text(dir / "out.txt");
  r.err = read_text(dir / "err.txt");
  return r;
}

}  // namespace ssmtrain::testing
