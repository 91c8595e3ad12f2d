// Errors of the data pipeline, split by who has to act: InputError when an option or an input
// file is wrong (the user fixes the command; exit status 2), DataError for everything else
// (a corrupt or missing shard, an I/O failure; exit status 1). Messages name the file.
#pragma once

#include <stdexcept>
#include <string>

namespace ssmtrain::data {

struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace ssmtrain::data
