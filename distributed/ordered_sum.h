// The fixed summation order of ssmtrain's CPU reductions: a pairwise tree built like a binary
// counter. Terms arrive in order; whenever the two newest partial sums cover equally many
// terms they are added (older + newer); at the end the partials are folded newest first.
// A block of 2^j consecutive terms always becomes one partial of its own, so summing each
// block first (one rank's micro-batches) and then the block sums (across ranks in rank order)
// adds exactly the same pairs as summing all the terms in one place: the reason W ranks with
// 2^j micro-batches each equal one rank with W * 2^j micro-batches bit for bit.
#pragma once

#include <cstdint>
#include <vector>

namespace ssmtrain::dist {

class OrderedSum {
 public:
  explicit OrderedSum(int64_t n = 0) : n_(n) {}
  int64_t size() const { return n_; }
  // Adds the next term (n floats).
  void add(const float* term);
  // The sum of every term added, written to out (n floats; zeros when none); then empty.
  void finish(float* out);
  int64_t terms() const { return terms_; }
  // What add(last) and finish() would write, over elements [begin, begin + count) only:
  // `last` and `out` hold those count elements. The terms stay until clear(), so the ranges of
  // one sum can be folded one by one (a gradient bucket as soon as backward produced it), with
  // the same bits as the whole at once.
  void fold_range(const float* last, int64_t begin, int64_t count, float* out) const;
  // Drops every term (buffers kept for the next sum).
  void clear();

 private:
  struct Partial {
    int64_t count;
    std::vector<float> values;
  };
  int64_t n_ = 0, terms_ = 0;
  std::vector<Partial> stack_;
  std::vector<std::vector<float>> spare_;  // buffers reused between steps
};

// The same order over terms held in place: out = sum of terms[0..], terms in order.
void ordered_sum(const std::vector<const float*>& terms, int64_t n, float* out);

}  // namespace ssmtrain::dist
