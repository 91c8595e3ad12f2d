// The token loader: window order (a keyed Feistel permutation per epoch, cycle-walked into
// [0, windows)), rank slicing of global batches, batch assembly from memory-mapped shards,
// and the prefetch thread with pinned buffers and asynchronous copies for GPU delivery.
#include "data/loader.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "data/errors.h"
#include "data/hash.h"
#include "kernels/philox.h"

namespace ssmtrain::data {

// One slot of the GPU ring: pinned staging buffers, device buffers, and two events: `copied`
// (the copies into the device buffers are done) and `released` (the consumer's stream has
// passed all work that used the device buffers, recorded at the following next()).
#if SSMTRAIN_WITH_CUDA
struct DeviceSlot {
  Tensor host_inputs, host_targets, host_doc_index;
  Tensor inputs, targets, doc_index;
  std::shared_ptr<Event> copied;
  std::unique_ptr<Event> released;
};

struct TokenLoader::GpuRing {
  std::unique_ptr<Stream> copy_stream;
  std::vector<DeviceSlot> slots;
};
#else
struct TokenLoader::GpuRing {};
#endif

TokenLoader::TokenLoader(LoaderOptions options) : options_(std::move(options)) {
  if (options_.seq_len < 1) throw std::invalid_argument("TokenLoader: seq_len must be >= 1");
  if (options_.global_batch < 1) throw std::invalid_argument("TokenLoader: global_batch must be >= 1");
  if (options_.world_size < 1 || options_.rank < 0 || options_.rank >= options_.world_size)
    throw std::invalid_argument("TokenLoader: rank " + std::to_string(options_.rank) +
                                " is outside world size " + std::to_string(options_.world_size));
  if (options_.global_batch % options_.world_size != 0)
    throw std::invalid_argument("TokenLoader: global batch " + std::to_string(options_.global_batch) +
                                " sequences does not divide among " +
                                std::to_string(options_.world_size) + " ranks");
  if (options_.token_dtype != DType::i32 && options_.token_dtype != DType::i64)
    throw std::invalid_argument("TokenLoader: token_dtype must be i32 or i64");
  if (options_.prefetch < 0) throw std::invalid_argument("TokenLoader: prefetch must be >= 0");
  rows_ = options_.global_batch / options_.world_size;

  manifest_ = read_manifest(options_.data_dir);
  for (const ShardInfo& info : manifest_.shards) {
    if (info.split != options_.split) continue;
    shards_.push_back(std::make_unique<MappedShard>(manifest_, info));
    shard_begin_.push_back(split_tokens_);
    split_tokens_ += shards_.back()->tokens();
  }
  const uint64_t window_tokens = static_cast<uint64_t>(options_.seq_len) + 1;
  if (split_tokens_ < window_tokens)
    throw DataError(options_.data_dir + ": the '" + options_.split + "' split holds " +
                    std::to_string(split_tokens_) + " tokens, fewer than seq_len + 1 = " +
                    std::to_string(window_tokens) + "; use more text, a larger --val-fraction "
                    "or a shorter sequence");
  windows_ = (split_tokens_ - 1) / static_cast<uint64_t>(options_.seq_len);

  if (options_.device.is_cuda()) {
#if SSMTRAIN_WITH_CUDA
    gpu_ = std::make_shared<GpuRing>();
    const int device = options_.device.index;
    gpu_->copy_stream = std::make_unique<Stream>(device);
    const Shape shape = {rows_, options_.seq_len};
    gpu_->slots.resize(static_cast<size_t>(options_.prefetch) + 2);
    for (DeviceSlot& slot : gpu_->slots) {
      slot.host_inputs = Tensor::empty_pinned(shape, options_.token_dtype);
      slot.host_targets = Tensor::empty_pinned(shape, options_.token_dtype);
      slot.host_doc_index = Tensor::empty_pinned(shape, DType::i32);
      slot.inputs = Tensor::empty(shape, options_.token_dtype, options_.device);
      slot.targets = Tensor::empty(shape, options_.token_dtype, options_.device);
      slot.doc_index = Tensor::empty(shape, DType::i32, options_.device);
      slot.copied = std::make_shared<Event>(device);
      slot.released = std::make_unique<Event>(device);
    }
#else
    throw std::invalid_argument("TokenLoader: device " + options_.device.str() +
                                " requested, but ssmtrain was built without CUDA");
#endif
  }
  produce_state_ = state_;
  start_prefetch();
}

TokenLoader::~TokenLoader() { stop_prefetch(); }

uint64_t TokenLoader::window_at(uint64_t epoch, uint64_t position) const {
  if (position >= windows_) throw std::out_of_range("TokenLoader::window_at: position past the epoch");
  if (!options_.shuffle || windows_ == 1) return position;
  // A balanced Feistel network over [0, 2^bits) (bits even, 2^bits < 4 * windows) is a
  // bijection; applying it again until the value lands below `windows` (cycle walking) keeps
  // it a bijection of [0, windows). Round keys come from Philox under a per-epoch key.
  int bits = 2;
  while ((uint64_t{1} << bits) < windows_) bits += 2;
  const int half = bits / 2;
  const uint64_t mask = (uint64_t{1} << half) - 1;
  const uint64_t key = splitmix64(options_.seed ^ splitmix64(epoch + 0x5EED));
  uint64_t value = position;
  do {
    uint64_t left = value >> half, right = value & mask;
    for (uint64_t round = 0; round < 6; ++round) {
      const uint64_t mixed = kernels::philox_block(key, (round << 32) | right).v[0] & mask;
      const uint64_t next_right = left ^ mixed;
      left = right;
      right = next_right;
    }
    value = (left << half) | right;
  } while (value >= windows_);
  return value;
}

LoaderState TokenLoader::advance(LoaderState state, uint64_t samples) const {
  const uint64_t total = state.cursor + samples;
  state.epoch += total / windows_;
  state.cursor = total % windows_;
  return state;
}

void TokenLoader::copy_tokens(uint64_t begin, uint64_t count, uint32_t* out) const {
  size_t shard = static_cast<size_t>(
      std::upper_bound(shard_begin_.begin(), shard_begin_.end(), begin) - shard_begin_.begin() - 1);
  while (count > 0) {
    const MappedShard& source = *shards_[shard];
    const uint64_t local = begin - shard_begin_[shard];
    const uint64_t take = std::min(count, source.tokens() - local);
    for (uint64_t i = 0; i < take; ++i) out[i] = source.token(local + i);
    out += take;
    begin += take;
    count -= take;
    ++shard;
  }
}

void TokenLoader::document_starts(uint64_t begin, uint64_t end, std::vector<uint64_t>* out) const {
  out->clear();
  size_t shard = static_cast<size_t>(
      std::upper_bound(shard_begin_.begin(), shard_begin_.end(), begin) - shard_begin_.begin() - 1);
  // First document of the shard that starts after `begin`: binary search in doc_offsets.
  const MappedShard* source = shards_[shard].get();
  uint64_t lo = 0, hi = source->documents();  // doc_offset(hi) = tokens > local begin
  const uint64_t local = begin - shard_begin_[shard];
  while (lo < hi) {
    const uint64_t mid = (lo + hi) / 2;
    if (source->doc_offset(mid) > local) hi = mid;
    else lo = mid + 1;
  }
  uint64_t doc = lo;
  for (;;) {
    // doc_offset(documents()) is the shard's end, which is the next shard's first start.
    const uint64_t start = shard_begin_[shard] + source->doc_offset(doc);
    if (start >= end) return;
    out->push_back(start);
    if (doc < source->documents()) {
      ++doc;
    } else {
      if (++shard >= shards_.size()) return;
      source = shards_[shard].get();
      doc = 1;
    }
  }
}

void TokenLoader::fill_rows(const LoaderState& start, void* inputs, void* targets,
                            int32_t* doc_index) const {
  const int64_t seq_len = options_.seq_len;
  std::vector<uint32_t> window(static_cast<size_t>(seq_len) + 1);
  std::vector<uint64_t> starts;
  for (int64_t row = 0; row < rows_; ++row) {
    const LoaderState sample = advance(start, static_cast<uint64_t>(options_.rank * rows_ + row));
    const uint64_t first = window_at(sample.epoch, sample.cursor) * static_cast<uint64_t>(seq_len);
    copy_tokens(first, window.size(), window.data());
    if (options_.token_dtype == DType::i64) {
      int64_t* in = static_cast<int64_t*>(inputs) + row * seq_len;   // (L,)
      int64_t* out = static_cast<int64_t*>(targets) + row * seq_len;  // (L,)
      for (int64_t t = 0; t < seq_len; ++t) {
        in[t] = window[t];
        out[t] = window[t + 1];
      }
    } else {
      int32_t* in = static_cast<int32_t*>(inputs) + row * seq_len;
      int32_t* out = static_cast<int32_t*>(targets) + row * seq_len;
      for (int64_t t = 0; t < seq_len; ++t) {
        in[t] = static_cast<int32_t>(window[t]);
        out[t] = static_cast<int32_t>(window[t + 1]);
      }
    }
    document_starts(first, first + static_cast<uint64_t>(seq_len), &starts);
    int32_t* docs = doc_index + row * seq_len;  // (L,)
    int32_t current = 0;
    size_t next_start = 0;
    for (int64_t t = 0; t < seq_len; ++t) {
      if (next_start < starts.size() && starts[next_start] == first + static_cast<uint64_t>(t)) {
        ++current;
        ++next_start;
      }
      docs[t] = current;
    }
  }
}

Batch TokenLoader::produce(const LoaderState& start) {
  Batch batch;
  batch.state_before = start;
  batch.state_after = advance(start, static_cast<uint64_t>(options_.global_batch));
  const Shape shape = {rows_, options_.seq_len};
  if (!gpu_) {
    batch.inputs = Tensor::empty(shape, options_.token_dtype);
    batch.targets = Tensor::empty(shape, options_.token_dtype);
    batch.doc_index = Tensor::empty(shape, DType::i32);
    fill_rows(start, batch.inputs.data(), batch.targets.data(), batch.doc_index.data_ptr<int32_t>());
    return batch;
  }
#if SSMTRAIN_WITH_CUDA
  DeviceSlot& slot = gpu_->slots[batches_produced_++ % gpu_->slots.size()];
  slot.copied->synchronize();  // the previous copies out of the pinned buffers have finished
  fill_rows(start, slot.host_inputs.data(), slot.host_targets.data(),
            slot.host_doc_index.data_ptr<int32_t>());
  const cudaStream_t copy_stream = gpu_->copy_stream->get();
  StreamGuard on_copy_stream(options_.device.index, copy_stream);
  slot.released->wait(copy_stream);  // the consumer is done with the device buffers
  copy_into_async(slot.inputs, slot.host_inputs);
  copy_into_async(slot.targets, slot.host_targets);
  copy_into_async(slot.doc_index, slot.host_doc_index);
  slot.copied->record(copy_stream);
  batch.inputs = slot.inputs;
  batch.targets = slot.targets;
  batch.doc_index = slot.doc_index;
  batch.ready = slot.copied;
#endif
  return batch;
}

void TokenLoader::record_release_of_previous_batch() {
#if SSMTRAIN_WITH_CUDA
  // Everything the caller queued so far may use the previous batch; its slot is free for
  // reuse once the caller's stream passes this point.
  if (!gpu_ || batches_delivered_ == 0) return;
  const DeviceSlot& previous = gpu_->slots[(batches_delivered_ - 1) % gpu_->slots.size()];
  previous.released->record(current_stream(options_.device.index));
#endif
}

void TokenLoader::wait_for_copies() {
#if SSMTRAIN_WITH_CUDA
  if (!gpu_) return;
  for (DeviceSlot& slot : gpu_->slots) slot.copied->synchronize();
#endif
}

void TokenLoader::start_prefetch() {
  stopping_ = false;
  failure_ = nullptr;
  if (options_.prefetch > 0) thread_ = std::thread([this] { prefetch_loop(); });
}

void TokenLoader::stop_prefetch() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
  ready_.clear();
  wait_for_copies();
}

void TokenLoader::prefetch_loop() {
  try {
    for (;;) {
      LoaderState start;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [this] {
          return stopping_ || ready_.size() < static_cast<size_t>(options_.prefetch);
        });
        if (stopping_) return;
        start = produce_state_;
      }
      Batch batch = produce(start);
      std::lock_guard<std::mutex> lock(mutex_);
      produce_state_ = batch.state_after;
      ready_.push_back(std::move(batch));
      changed_.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    failure_ = std::current_exception();
    changed_.notify_all();
  }
}

Batch TokenLoader::next() {
  record_release_of_previous_batch();
  Batch batch;
  if (options_.prefetch == 0) {
    batch = produce(state_);
  } else {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [this] { return !ready_.empty() || failure_; });
    if (ready_.empty()) std::rethrow_exception(failure_);
    batch = std::move(ready_.front());
    ready_.pop_front();
    changed_.notify_all();
  }
  ++batches_delivered_;
  state_ = batch.state_after;
  return batch;
}

void TokenLoader::restore(const LoaderState& state) {
  if (state.cursor >= windows_)
    throw std::invalid_argument("TokenLoader::restore: cursor " + std::to_string(state.cursor) +
                                " is past the " + std::to_string(windows_) + " windows of an epoch of " +
                                options_.data_dir + " (was the state saved for other data or seq_len?)");
  stop_prefetch();
  state_ = state;
  produce_state_ = state;
  // Slots are reused in order; keep the ring position consistent after the drop.
  batches_produced_ = batches_delivered_;
  start_prefetch();
}

}  // namespace ssmtrain::data
