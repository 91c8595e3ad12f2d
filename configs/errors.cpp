// ConfigError's one-line message (configs/errors.h).
#include "configs/errors.h"

#include <fmt/format.h>

namespace ssmtrain::configs {
namespace {

std::string error_line(const Location& where, const std::string& key, const std::string& message) {
  std::string line = where.text();
  if (!line.empty()) line += ": ";
  if (!key.empty()) line += key + ": ";
  return line + message;
}

}  // namespace

std::string Location::text() const {
  return line > 0 ? fmt::format("{}:{}:{}", file, line, column) : file;
}

ConfigError::ConfigError(Location where, std::string key, std::string message)
    : std::runtime_error(error_line(where, key, message)),
      where_(std::move(where)),
      key_(key),
      keys_{std::move(key)},
      message_(std::move(message)) {}

ConfigError::ConfigError(std::vector<std::string> keys, std::string message)
    : std::runtime_error(error_line({}, keys.empty() ? "" : keys.front(), message)),
      key_(keys.empty() ? "" : keys.front()),
      keys_(std::move(keys)),
      message_(std::move(message)) {}

}  // namespace ssmtrain::configs
