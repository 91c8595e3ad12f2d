// See support.h. The GPU limits are those of kernels/cuda/*.cu (the tile shapes their
// tensor-core and shared-memory paths are built for); the CPU references loop over any size.
#include "kernels/support.h"

namespace ssmtrain::kernels {
namespace {

Unsupported unless(bool ok, const char* field, const char* allowed) {
  return ok ? Unsupported{} : Unsupported{field, allowed};
}

}  // namespace

Unsupported ssd_support(const SsdShape& s, bool cuda) {
  if (s.ngroups < 1 || s.n_heads % s.ngroups != 0) return {"ngroups", "a divisor of the number of heads"};
  if (!cuda) return unless(s.chunk_size >= 1, "chunk_size", "at least 1");
  if (s.head_dim != 32 && s.head_dim != 64 && s.head_dim != 128) return {"head_dim", "32, 64 or 128 on the GPU"};
  if (s.d_state != 16 && s.d_state != 32 && s.d_state != 64 && s.d_state != 128 && s.d_state != 256)
    return {"d_state", "16, 32, 64, 128 or 256 on the GPU"};
  return unless(s.chunk_size >= 64 && s.chunk_size <= 256, "chunk_size", "64..256 on the GPU");
}

Unsupported selective_scan_support(const ScanShape& s, bool cuda) {
  if (s.ngroups < 1 || s.dim % s.ngroups != 0) return {"ngroups", "a divisor of the channels"};
  if (!cuda) return unless(s.d_state >= 1, "d_state", "at least 1");
  return unless(s.d_state >= 1 && s.d_state <= 64, "d_state", "1..64 on the GPU");
}

Unsupported conv1d_support(const Conv1dShape& s, bool cuda) {
  (void)cuda;  // both implementations unroll widths 2, 3 and 4
  return unless(s.width >= 2 && s.width <= 4, "width", "2, 3 or 4");
}

Unsupported attention_support(const AttentionShape& s, bool cuda) {
  if (s.n_kv_heads < 1 || s.n_heads % s.n_kv_heads != 0) return {"n_kv_heads", "a divisor of the number of heads"};
  return unless(!cuda || (s.head_dim >= 1 && s.head_dim <= 128), "head_dim", "1..128 on the GPU");
}

Unsupported moe_support(const MoeExpertShape& s, bool cuda) {
  (void)cuda;
  return unless(s.experts >= 1 && s.experts <= kMoeMaxExperts, "experts", "1..64");
}

}  // namespace ssmtrain::kernels
