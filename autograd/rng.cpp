// See rng.h.
#include "autograd/rng.h"

#include "kernels/philox.h"

namespace ssmtrain {

uint64_t Generator::take(int64_t n) {
  const uint64_t start = offset_;
  offset_ += kernels::philox_blocks(n);
  return start;
}

}  // namespace ssmtrain
