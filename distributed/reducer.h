// Data-parallel gradient reduction for the trainer. Parameters are grouped into buckets of
// about distributed.bucket_mb in reverse parameter order (the order backward produces them),
// and each bucket is all-reduced (sum) as its own asynchronous collective; under gradient
// accumulation only the step's last micro-batch communicates.
//
// Two ways to add micro-batches:
//  - ordered (CPU): each micro-batch's gradient is kept apart (its .grad dropped after
//    backward) and the micro-batches are summed in the tree order of distributed/ordered_sum.h,
//    then across ranks in the same order. With 2^j micro-batches per rank this is the same
//    sum, pair by pair, as one rank with all of them: W ranks reproduce one rank bit for bit.
//  - accumulate (GPU): autograd adds micro-batches into .grad; the backend's all-reduce order
//    is its own (NCCL's ring), so the result equals one rank to fp32 rounding only.
// The loss of each micro-batch is to be scaled by 1 / (micro-batches per rank * ranks): the
// sum over ranks is then the mean gradient of the global batch.
#pragma once

#include <vector>

#include "distributed/communicator.h"
#include "distributed/ordered_sum.h"
#include "layers/module.h"

namespace ssmtrain::dist {

class GradientReducer {
 public:
  GradientReducer(Communicator& comm, std::vector<NamedParameter> parameters, double bucket_mb, bool ordered);

  // After each micro-batch's backward; `last`: the step's last micro-batch, which reduces.
  // On return from the last one every parameter's .grad is the sum over all micro-batches of
  // all ranks (a parameter that no micro-batch on any rank reached keeps no gradient).
  void after_backward(bool last);

  int buckets() const { return int(buckets_.size()); }

 private:
  struct Bucket {
    int64_t begin = 0, count = 0;  // range of the flat buffer (ordered) 
    std::vector<int> parameters;   // indices into parameters_, reverse order
  };
  void reduce_ordered();
  void reduce_accumulated();

  Communicator& comm_;
  std::vector<NamedParameter> parameters_;
  bool ordered_;
  std::vector<Bucket> buckets_;
  std::vector<int64_t> offset_;  // per parameter: its place in the flat buffer (reverse order)
  int64_t flat_size_ = 0;
  OrderedSum sum_;
  std::vector<float> flat_;  // packed micro-batch gradient, then the reduced sum; + one flag per parameter
};

}  // namespace ssmtrain::dist
