// Data-parallel gradient reduction for the trainer. Parameters are grouped into buckets of
// about distributed.bucket_mb in reverse parameter order (the order backward produces them),
// one flat buffer holding them all (allocated once). During the step's last backward an
// autograd hook (autograd/grad_ready.h) reports each parameter whose gradient is
// final; a bucket whose parameters are all in starts its asynchronous all-reduce (sum) on the
// backend's stream at once, so communication overlaps the rest of backward; everything is
// waited for before the gradient norm and the optimizer. Under gradient accumulation only the
// step's last micro-batch communicates.
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
//
// Sharded (distributed.shard_optimizer, ZeRO-1; ordered CPU reduction only): every parameter
// is owned by one rank (whole parameters, contiguous runs of the reverse order, balanced by
// size). The gradients are reduce-scattered in blocks of one rank's parameters (padded to the
// largest), so a rank ends with the summed gradients of its own parameters only; its AdamW
// holds their moments alone; the updated parameters are all-gathered. The sums are the same
// additions as the all-reduce's, and the gradient norm adds each parameter's sum of squares in
// parameter order as global_grad_norm does, so sharded equals unsharded bit for bit.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "autograd/grad_ready.h"
#include "distributed/communicator.h"
#include "distributed/ordered_sum.h"
#include "layers/module.h"
#include "optim/adamw.h"

namespace ssmtrain::dist {

class GradientReducer {
 public:
  GradientReducer(Communicator& comm, std::vector<NamedParameter> parameters, double bucket_mb, bool ordered,
                  bool shard = false);

  // Before each micro-batch's backward, to install (GradReadyHookGuard) for that backward. For
  // the step's last (`last`): the hook that hands each parameter's final gradient to its
  // bucket and starts the bucket's all-reduce as soon as the bucket is complete and every
  // bucket before it has started (so every rank starts them in the same order). Empty for the
  // other micro-batches, whose gradients only add up.
  GradReadyHook ready_hook(bool last);

  // After each micro-batch's backward; `last`: the step's last micro-batch, which reduces:
  // the buckets backward did not complete start now (a parameter this rank's backward did not
  // reach adds zeros), and every bucket is waited for. On return from the last one every
  // parameter's .grad is the sum over all micro-batches of all ranks (a view of the flat
  // bucket buffer; a parameter that no micro-batch on any rank reached keeps no gradient).
  void after_backward(bool last);

  int buckets() const { return int(buckets_.size()); }
  // Parameters the hook reported in the last step's last backward (each at most once).
  int64_t ready_reports() const { return ready_reports_; }
  // Buckets whose all-reduce started from the hook, during backward, in the last step.
  int buckets_started_in_backward() const { return started_in_backward_; }
  // Host timing of the last step's communication (CPU backends, whose collectives the host
  // drives): comm_ms, the time spent in starting and waiting for the collectives;
  // exposed_ms, from the end of backward to the last collective done (what backward did not
  // hide).
  double comm_ms() const { return comm_s_ * 1000; }
  double exposed_ms() const { return exposed_s_ * 1000; }

  // Sharded only. The parameters this rank updates, in parameter order.
  std::vector<NamedParameter> owned_parameters() const;
  // The global gradient norm after the last after_backward(true): global_grad_norm's value
  // on the unsharded gradients, bit for bit.
  double grad_norm();
  // Every rank's updated parameters into every rank's model (after the optimizer step).
  void gather_parameters();
  // Every parameter's AdamW moments, from the ranks that own them (`mine`: this rank's
  // optimizer state); CPU tensors, for a checkpoint.
  std::map<std::string, AdamW::Moments> gather_moments(const std::map<std::string, AdamW::Moments>& mine);
  bool sharded() const { return shard_; }

 private:
  struct Bucket {
    int64_t begin = 0, count = 0;  // range of the flat buffer
    std::vector<int> parameters;   // indices into parameters_, reverse order
    int missing = 0;               // parameters not yet reported in this backward
    Tensor buffer;                 // its range of flat_ (a view made once)
    Handle pending;                // its all-reduce, once started
  };
  void ready(const TensorImpl& leaf);
  Tensor place(int i) const;   // parameter i's range of flat_, in its shape
  void pack(int i);            // parameter i's gradient of the last micro-batch into its place
  void start_buckets();        // every complete bucket from next_bucket_ on, in order
  void start(Bucket& bucket);  // the fold (ordered) and the all-reduce of one bucket
  void finish_step();          // waits for every bucket; the sums become the .grad
  void reduce_sharded();
  // The W padded blocks of the sharded layout: block r holds rank r's parameters.
  Tensor blocks_of(const std::vector<const float*>& sources) const;

  Communicator& comm_;
  std::vector<NamedParameter> parameters_;
  bool ordered_;
  std::vector<Bucket> buckets_;
  std::vector<int64_t> offset_;  // per parameter: its place in the flat buffer (reverse order)
  std::vector<int> bucket_of_;   // per parameter: its bucket
  std::unordered_map<const TensorImpl*, int> index_of_;
  int64_t flat_size_ = 0;
  OrderedSum sum_;             // ordered: the earlier micro-batches of the step
  std::vector<float> term_;    // ordered: one micro-batch's packed gradient
  Tensor flat_;                // the buckets' buffers (on the parameters' device), then the sums
  std::vector<float> reached_; // per parameter: 1 when a micro-batch on this rank reached it, then summed
  std::vector<char> reported_; // per parameter: reported by the hook in this backward
  std::vector<float> any_reached_;  // per parameter: ranks whose micro-batches reached it (last step)
  size_t next_bucket_ = 0;
  int64_t ready_reports_ = 0;
  int started_in_backward_ = 0;
  bool in_backward_ = false;
  double comm_s_ = 0, exposed_s_ = 0;
  std::chrono::steady_clock::time_point backward_end_;

  bool shard_ = false;
  std::vector<int> owner_;             // per parameter: the rank that updates it (sharded)
  std::vector<int64_t> block_offset_;  // per parameter: its place in its owner's block
  int64_t block_ = 0;                  // elements of one rank's block (the largest share)
};

}  // namespace ssmtrain::dist
