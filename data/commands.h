// Entry points of `ssmtrain data tokenizer` and `ssmtrain data prepare` for cli/main.cpp: they
// run the work, print a summary on stdout, and turn failures into one line on stderr naming
// the file, with the exit status of DESIGN.md section 12 (0 ok, 2 usage or input error, 1 other).
#pragma once

#include "data/prepare.h"
#include "data/tokenizer.h"

namespace ssmtrain::data {

int run_tokenizer_command(const TokenizerOptions& options);
int run_prepare_command(const PrepareOptions& options);

}  // namespace ssmtrain::data
