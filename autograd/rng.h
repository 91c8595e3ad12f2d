// The random-number generator of tensors: a seed and a Philox counter offset. Each draw of n
// numbers takes the next ceil(n / 4) counter blocks, so the numbers depend only on the seed
// and the order of draws, never on the device: CPU and GPU give the same bits.
#pragma once

#include <cstdint>

namespace ssmtrain {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0, uint64_t offset = 0) : seed_(seed), offset_(offset) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  // Reserves the counter blocks for n numbers and returns the offset to draw them at.
  uint64_t take(int64_t n);
  // State for checkpoints: (seed, offset) restores the stream exactly.
  void set_state(uint64_t seed, uint64_t offset) {
    seed_ = seed;
    offset_ = offset;
  }

 private:
  uint64_t seed_;
  uint64_t offset_;
};

}  // namespace ssmtrain
