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

// What a training run of `recipe` holds in memory, from the shapes alone: the fp32 parameters,
// their gradients and the two AdamW moments (16 bytes a parameter, plus a bf16 copy of the
// weights under bf16), and a rough upper estimate of one micro-batch's saved activations
// (the projections' outputs of every layer and the logits with their gradient).
struct MemoryEstimate {
  uint64_t state = 0;
  uint64_t activations = 0;
};
MemoryEstimate estimate_training_memory(const configs::Config& config, bool bf16);

// Before anything is allocated: throws configs::ConfigError at model.d_model when the training
// state alone does not fit in what the device has free; returns a warning line (else empty)
// when the state plus the activation estimate does not.
std::string check_memory_fits(const configs::Recipe& recipe, bool cuda);

}  // namespace ssmtrain
