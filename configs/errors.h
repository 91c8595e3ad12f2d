// ConfigError, the one exception of configs/: its what() is a single line
//   FILE:LINE:COL: KEY.PATH: what was expected, what was found
// that the command line prints before exiting with status 2.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace ssmtrain::configs {

// Where a key was written: a recipe file's line and column (1-based), "--set" for a command-line
// override, or a file alone (line 0) for a key the recipe left at its default.
struct Location {
  std::string file;
  int line = 0;
  int column = 0;
  std::string text() const;  // "FILE:LINE:COL", "FILE" or ""
  bool operator==(const Location&) const = default;
};

class ConfigError : public std::runtime_error {
 public:
  // A problem at a place in a recipe; key may be empty (a YAML syntax error, a missing file).
  ConfigError(Location where, std::string key, std::string message);
  // A problem found on typed values before anyone knows where they were written: the keys
  // involved, most specific first. Loading re-throws it at the first key the recipe wrote.
  ConfigError(std::vector<std::string> keys, std::string message);

  const Location& where() const { return where_; }
  const std::string& key() const { return key_; }  // the key the line names
  const std::vector<std::string>& keys() const { return keys_; }
  const std::string& message() const { return message_; }  // without location and key

 private:
  Location where_;
  std::string key_;
  std::vector<std::string> keys_;
  std::string message_;
};

}  // namespace ssmtrain::configs
