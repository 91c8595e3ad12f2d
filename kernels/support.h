// What the sequence-mixing kernels accept, as data rather than as a failed launch: for each
// family, the first shape field the kernels of a device kind cannot run, with the allowed
// values. The recipe pre-flight (layers/preflight.h) maps the field to its recipe key before
// any work; the kernels' own checks say the same at launch.
#pragma once

#include <string>

#include "kernels/attention.h"
#include "kernels/causal_conv1d.h"
#include "kernels/moe.h"
#include "kernels/selective_scan.h"
#include "kernels/ssd.h"

namespace ssmtrain::kernels {

// A shape the kernels cannot run: the field of the shape struct ("head_dim", "chunk_size",
// ...) and what it must be. `field` empty: supported.
struct Unsupported {
  std::string field;
  std::string allowed;  // e.g. "32, 64 or 128 on the GPU"
  explicit operator bool() const { return !field.empty(); }
};

// `cuda`: the GPU kernels (else the CPU references, which take any consistent shape).
Unsupported ssd_support(const SsdShape& shape, bool cuda);
Unsupported selective_scan_support(const ScanShape& shape, bool cuda);
Unsupported conv1d_support(const Conv1dShape& shape, bool cuda);
Unsupported attention_support(const AttentionShape& shape, bool cuda);
Unsupported moe_support(const MoeExpertShape& shape, bool cuda);

}  // namespace ssmtrain::kernels
