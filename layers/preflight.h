// The recipe pre-flight: before any data is read or any model built, whether the kernels of
// the device the run will use accept every layer the recipe describes (kernels/support.h).
// `train`, `config show` and the evaluations call it, so `chunk_size: 32` or `d_conv: 5` fails
// at its recipe line, naming the allowed values, instead of at the first GPU forward.
#pragma once

#include "configs/load.h"

namespace ssmtrain {

// Throws configs::ConfigError at the key's line when a layer of `recipe` cannot run on the GPU
// kernels (`cuda`) or the CPU ones.
void check_kernels_support(const configs::Recipe& recipe, bool cuda);

}  // namespace ssmtrain
