// TokenLoader: the deterministic, resumable, rank-sliced batch loader over prepared shards.
// A split's token stream is cut into windows of seq_len + 1 tokens (stride seq_len), visited in
// a seeded per-epoch order; its whole state is (epoch, cursor), so a run resumed on any number
// of ranks sees the same global batches. A prefetch thread builds batches ahead.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "autograd/device.h"
#include "autograd/stream.h"
#include "autograd/tensor.h"
#include "data/shard.h"

namespace ssmtrain::data {

struct LoaderOptions {
  std::string data_dir;         // a directory written by `ssmtrain data prepare`
  std::string split = "train";  // "train" or "val"
  int64_t seq_len = 2048;       // L: each sample is L inputs and the L next tokens as targets
  int64_t global_batch = 8;     // G: sequences per global batch, all ranks together
  int rank = 0;                 // r in [0, W): takes sequences [r*G/W, (r+1)*G/W) of each batch
  int world_size = 1;           // W: must divide G
  uint64_t seed = 0;            // of the per-epoch window order
  bool shuffle = true;          // false: windows in stream order every epoch (evaluation)
  DType token_dtype = DType::i64;  // of inputs and targets: i32 or i64
  Device device = Device::cpu();   // where batches are delivered
  int prefetch = 4;  // batches built ahead by the prefetch thread; 0: built in next(), no thread
};

// Where the loader stands: the next sample is position `cursor` of epoch `epoch`'s window
// order. Global batch b of a run covers samples [b*G, (b+1)*G) of the endless sequence of
// epochs, so a batch may take the last windows of one epoch and the first of the next.
struct LoaderState {
  uint64_t epoch = 0;
  uint64_t cursor = 0;
  bool operator==(const LoaderState&) const = default;
};

struct Batch {
  Tensor inputs;     // (B, L) token_dtype: window tokens [0, L)
  Tensor targets;    // (B, L) token_dtype: window tokens [1, L + 1)
  // (B, L) i32: document of each input token, counted from 0 at the start of its row and
  // increasing by one at every document start (the token after an EOS), so scans and attention
  // can reset there.
  Tensor doc_index;
  // GPU delivery only: recorded on the loader's copy stream after the copies; make the
  // compute stream wait on it (ready->wait(stream)) before reading the tensors. Null on the CPU.
  std::shared_ptr<Event> ready;
  LoaderState state_before;  // the loader state at which this batch starts
  LoaderState state_after;   // save this to resume after this batch
};

class TokenLoader {
 public:
  // Opens and verifies the manifest and every shard of the split (format, size, checksum);
  // throws DataError naming the file, std::invalid_argument for inconsistent options.
  explicit TokenLoader(LoaderOptions options);
  ~TokenLoader();
  TokenLoader(const TokenLoader&) = delete;
  TokenLoader& operator=(const TokenLoader&) = delete;

  // This rank's slice of the next global batch: B = G / W rows. On the CPU the tensors are
  // fresh and the caller may keep them. On a GPU they live in a ring of device buffers: use
  // them in work queued (on the stream current at the next call) before the following call
  // of next(); clone them to keep them longer.
  Batch next();

  // The state after the last batch next() returned (the start state before the first call).
  LoaderState state() const { return state_; }
  // Continues from `state` (from state() of this or another loader over the same data, with
  // any world size); prefetched batches are dropped.
  void restore(const LoaderState& state);

  uint64_t windows_per_epoch() const { return windows_; }
  uint64_t split_tokens() const { return split_tokens_; }
  const LoaderOptions& options() const { return options_; }
  const Manifest& manifest() const { return manifest_; }
  // The window (index into the split's token stream, in units of seq_len) visited at
  // `position` of `epoch`'s order. A bijection of [0, windows_per_epoch()) for each epoch.
  uint64_t window_at(uint64_t epoch, uint64_t position) const;

 private:
  // Builds the batch starting at `start` (on a GPU: in the next ring slot, copies queued).
  Batch produce(const LoaderState& start);
  void record_release_of_previous_batch();  // GPU only
  void wait_for_copies();                   // GPU only
  // Fills host rows: inputs/targets (rows_, L) of token_dtype, doc_index (rows_, L) i32.
  void fill_rows(const LoaderState& start, void* inputs, void* targets, int32_t* doc_index) const;
  void copy_tokens(uint64_t begin, uint64_t count, uint32_t* out) const;
  // Document starts s with begin < s < end, in order.
  void document_starts(uint64_t begin, uint64_t end, std::vector<uint64_t>* out) const;
  void start_prefetch();
  void stop_prefetch();
  void prefetch_loop();
  LoaderState advance(LoaderState state, uint64_t samples) const;

  LoaderOptions options_;
  Manifest manifest_;
  std::vector<std::unique_ptr<MappedShard>> shards_;  // of the split, in manifest order
  std::vector<uint64_t> shard_begin_;                 // first stream position of each shard
  uint64_t split_tokens_ = 0;
  uint64_t windows_ = 0;
  int64_t rows_ = 0;  // B per rank
  LoaderState state_;

  // Prefetch: the thread produces batches from `produce_state_` into `ready_`.
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Batch> ready_;
  LoaderState produce_state_;
  bool stopping_ = false;
  std::exception_ptr failure_;

  // GPU delivery: a ring of pinned host buffers, device buffers and events, filled in order,
  // and the copy stream. Null on the CPU. (A shared_ptr so that CPU-only builds, which have
  // no Stream or Event code, never instantiate their destructors here.)
  struct GpuRing;
  std::shared_ptr<GpuRing> gpu_;
  uint64_t batches_produced_ = 0;   // a batch's ring slot: its number modulo the ring size
  uint64_t batches_delivered_ = 0;
};

}  // namespace ssmtrain::data
