// Activation checkpointing: run fn without recording, keep only its inputs, and recompute fn
// (recording this time) when the backward reaches it. Parameters used inside fn receive
// their gradients during that recomputation.
#pragma once

#include <functional>
#include <vector>

#include "autograd/tensor.h"

namespace ssmtrain {

using CheckpointFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

// fn must be deterministic (the same inputs give the same outputs), which every ssmtrain op
// is; draws from a Generator inside fn must be replayed by the caller.
std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs);

}  // namespace ssmtrain
