// See reducer.h.
#include "distributed/reducer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <chrono>
#include <stdexcept>

#include "autograd/ops.h"
#include "kernels/adamw.h"

namespace ssmtrain::dist {
namespace {
using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point from) { return std::chrono::duration<double>(Clock::now() - from).count(); }
}  // namespace

GradientReducer::GradientReducer(Communicator& comm, std::vector<NamedParameter> parameters, double bucket_mb,
                                 bool ordered, bool shard)
    : comm_(comm), parameters_(std::move(parameters)), ordered_(ordered), shard_(shard) {
  if (shard_ && !ordered_)
    throw CommunicatorError("distributed.shard_optimizer: optimizer-state sharding is built for CPU ranks only so far");
  const int64_t bucket_elements = std::max<int64_t>(1, int64_t(bucket_mb * 1024 * 1024 / sizeof(float)));
  offset_.assign(parameters_.size(), 0);
  Bucket bucket;
  for (int i = int(parameters_.size()) - 1; i >= 0; --i) {
    const int64_t n = parameters_[size_t(i)].value->numel();
    if (!bucket.parameters.empty() && bucket.count + n > bucket_elements) {
      buckets_.push_back(std::move(bucket));
      bucket = Bucket();
      bucket.begin = flat_size_;
    }
    offset_[size_t(i)] = flat_size_;
    bucket.parameters.push_back(i);
    bucket.count += n;
    flat_size_ += n;
  }
  if (!bucket.parameters.empty()) buckets_.push_back(std::move(bucket));
  const Device device = ordered_ || parameters_.empty() ? Device::cpu() : parameters_[0].value->device();
  flat_ = Tensor::zeros({std::max<int64_t>(1, flat_size_)}, DType::f32, device);
  bucket_of_.assign(parameters_.size(), 0);
  for (size_t k = 0; k < buckets_.size(); ++k) {
    Bucket& b = buckets_[k];
    b.buffer = narrow(flat_, 0, b.begin, b.count);
    b.missing = int(b.parameters.size());
    for (int i : b.parameters) bucket_of_[size_t(i)] = int(k);
  }
  for (size_t i = 0; i < parameters_.size(); ++i) index_of_[parameters_[i].value->impl()] = int(i);
  reported_.assign(parameters_.size(), 0);
  reached_.assign(parameters_.size(), 0.0f);
  any_reached_.assign(parameters_.size(), 0.0f);
  if (ordered_) {
    sum_ = OrderedSum(flat_size_);
    term_.assign(size_t(flat_size_), 0.0f);
  }
  if (shard_) {
    // Whole parameters in the reverse order, rank by rank: rank r takes parameters until the
    // running total reaches (r + 1) / W of all elements.
    const int world = comm_.world_size();
    owner_.assign(parameters_.size(), 0);
    block_offset_.assign(parameters_.size(), 0);
    std::vector<int64_t> share(size_t(world), 0);
    int64_t running = 0;
    int rank = 0;
    for (int i = int(parameters_.size()) - 1; i >= 0; --i) {
      const int64_t n = parameters_[size_t(i)].value->numel();
      while (rank + 1 < world && share[size_t(rank)] > 0 && running + n / 2 > flat_size_ * (rank + 1) / world) ++rank;
      owner_[size_t(i)] = rank;
      block_offset_[size_t(i)] = share[size_t(rank)];
      share[size_t(rank)] += n;
      running += n;
    }
    block_ = std::max<int64_t>(1, *std::max_element(share.begin(), share.end()));
  }
}

std::vector<NamedParameter> GradientReducer::owned_parameters() const {
  std::vector<NamedParameter> owned;
  for (size_t i = 0; i < parameters_.size(); ++i)
    if (!shard_ || owner_[i] == comm_.rank()) owned.push_back(parameters_[i]);
  return owned;
}

Tensor GradientReducer::blocks_of(const std::vector<const float*>& sources) const {
  Tensor blocks = Tensor::zeros({block_ * comm_.world_size()});
  float* out = blocks.data_ptr<float>();
  for (size_t i = 0; i < parameters_.size(); ++i)
    if (sources[i] != nullptr)
      std::memcpy(out + owner_[i] * block_ + block_offset_[i], sources[i],
                  size_t(parameters_[i].value->numel()) * sizeof(float));
  return blocks;
}

void GradientReducer::reduce_sharded() {
  const size_t count = parameters_.size();
  Tensor flags = Tensor::empty({int64_t(count)});
  std::memcpy(flags.data(), reached_.data(), count * sizeof(float));
  Handle flags_done = comm_.all_reduce(flags, ReduceOp::sum);
  const float* flat = flat_.data_ptr<float>();
  std::vector<const float*> sources(count);
  for (size_t i = 0; i < count; ++i) sources[i] = flat + offset_[i];
  const Tensor blocks = blocks_of(sources);
  Tensor mine = Tensor::empty({block_});
  comm_.reduce_scatter(blocks, mine, ReduceOp::sum)->wait();
  flags_done->wait();
  std::memcpy(any_reached_.data(), flags.data(), count * sizeof(float));
  for (size_t i = 0; i < count; ++i) {
    const Tensor& value = *parameters_[i].value;
    value.zero_grad();
    if (owner_[i] != comm_.rank() || any_reached_[i] == 0.0f) continue;
    Tensor grad = Tensor::empty(value.shape(), DType::f32);
    std::memcpy(grad.data(), mine.data_ptr<float>() + block_offset_[i], size_t(value.numel()) * sizeof(float));
    value.set_grad(grad);
  }
}

double GradientReducer::grad_norm() {
  if (!shard_) throw std::logic_error("GradientReducer::grad_norm: for the sharded reducer");
  // Each owner's per-parameter sum of squares (what global_grad_norm adds), then every rank
  // adds them in parameter order.
  std::vector<double> partial(parameters_.size(), 0.0);
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const Tensor grad = parameters_[i].value->grad();
    if (owner_[i] != comm_.rank() || !grad.defined()) continue;
    const float* ptr = grad.data_ptr<float>();
    const int64_t n = grad.numel();
    partial[i] = kernels::cpu::sum_squares<float>(&ptr, &n, 1);
  }
  const std::vector<std::string> all = comm_.all_gather_bytes(
      std::string(reinterpret_cast<const char*>(partial.data()), partial.size() * sizeof(double)));
  double total = 0.0;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    if (any_reached_[i] == 0.0f) continue;  // no gradient anywhere: global_grad_norm skips it
    double value = 0;
    std::memcpy(&value, all[size_t(owner_[i])].data() + i * sizeof(double), sizeof(double));
    total += value;
  }
  return std::sqrt(total);
}

void GradientReducer::gather_parameters() {
  std::vector<const float*> mine(parameters_.size(), nullptr);
  for (size_t i = 0; i < parameters_.size(); ++i)
    if (owner_[i] == comm_.rank()) mine[i] = parameters_[i].value->data_ptr<float>();
  const Tensor blocks = blocks_of(mine);
  const Tensor own = narrow(blocks, 0, comm_.rank() * block_, block_).contiguous();
  Tensor all = Tensor::empty({block_ * comm_.world_size()});
  comm_.all_gather(own, all)->wait();
  for (size_t i = 0; i < parameters_.size(); ++i)
    if (owner_[i] != comm_.rank())
      std::memcpy(parameters_[i].value->data(), all.data_ptr<float>() + owner_[i] * block_ + block_offset_[i],
                  size_t(parameters_[i].value->numel()) * sizeof(float));
}

std::map<std::string, AdamW::Moments> GradientReducer::gather_moments(
    const std::map<std::string, AdamW::Moments>& mine) {
  const auto gather = [&](bool second) {
    std::vector<const float*> sources(parameters_.size(), nullptr);
    for (size_t i = 0; i < parameters_.size(); ++i)
      if (owner_[i] == comm_.rank()) {
        const AdamW::Moments& m = mine.at(parameters_[i].name);
        sources[i] = (second ? m.exp_avg_sq : m.exp_avg).data_ptr<float>();
      }
    const Tensor own = narrow(blocks_of(sources), 0, comm_.rank() * block_, block_).contiguous();
    Tensor all = Tensor::empty({block_ * comm_.world_size()});
    comm_.all_gather(own, all)->wait();
    return all;
  };
  const Tensor avg = gather(false), avg_sq = gather(true);
  std::map<std::string, AdamW::Moments> out;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const Tensor& value = *parameters_[i].value;
    const int64_t at = owner_[i] * block_ + block_offset_[i];
    AdamW::Moments m{Tensor::empty(value.shape()), Tensor::empty(value.shape())};
    std::memcpy(m.exp_avg.data(), avg.data_ptr<float>() + at, size_t(value.numel()) * sizeof(float));
    std::memcpy(m.exp_avg_sq.data(), avg_sq.data_ptr<float>() + at, size_t(value.numel()) * sizeof(float));
    out.emplace(parameters_[i].name, std::move(m));
  }
  return out;
}

Tensor GradientReducer::place(int i) const {
  const Tensor& value = *parameters_[size_t(i)].value;
  return reshape(narrow(flat_, 0, offset_[size_t(i)], value.numel()), value.shape());
}

GradReadyHook GradientReducer::ready_hook(bool last) {
  if (!last) return {};
  ready_reports_ = 0;
  started_in_backward_ = 0;
  comm_s_ = 0;
  in_backward_ = true;
  return [this](const TensorImpl& leaf) { ready(leaf); };
}

void GradientReducer::ready(const TensorImpl& leaf) {
  const auto found = index_of_.find(&leaf);
  if (found == index_of_.end()) return;  // another leaf (an activation-checkpointed block's input)
  const int i = found->second;
  if (reported_[size_t(i)])
    throw std::logic_error("GradientReducer: the gradient of " + parameters_[size_t(i)].name +
                           " was reported final twice in one backward pass");
  reported_[size_t(i)] = 1;
  ++ready_reports_;
  pack(i);
  if (--buckets_[size_t(bucket_of_[size_t(i)])].missing == 0) start_buckets();
}

void GradientReducer::pack(int i) {
  const Tensor& value = *parameters_[size_t(i)].value;
  const Tensor grad = value.grad();
  if (grad.defined()) reached_[size_t(i)] = 1.0f;
  if (ordered_) {
    float* to = term_.data() + offset_[size_t(i)];
    if (grad.defined()) {
      const Tensor g = grad.is_contiguous() ? grad : grad.contiguous();
      std::memcpy(to, g.data(), size_t(value.numel()) * sizeof(float));
    } else {
      std::memset(to, 0, size_t(value.numel()) * sizeof(float));
    }
    value.zero_grad();
  } else {
    // Every rank takes part in every bucket: a parameter without a gradient here adds zeros.
    copy_into(place(i), grad.defined() ? grad : Tensor::zeros(value.shape(), DType::f32, value.device()));
  }
}

void GradientReducer::start_buckets() {
  while (next_bucket_ < buckets_.size() && buckets_[next_bucket_].missing == 0) {
    start(buckets_[next_bucket_++]);
    if (in_backward_) ++started_in_backward_;
  }
}

void GradientReducer::start(Bucket& bucket) {
  if (ordered_)  // the earlier micro-batches of this rank plus the last one, in the tree order
    sum_.fold_range(term_.data() + bucket.begin, bucket.begin, bucket.count,
                    flat_.data_ptr<float>() + bucket.begin);
  if (comm_.world_size() > 1 && !shard_) {
    const auto t0 = Clock::now();
    bucket.pending = comm_.all_reduce(bucket.buffer, ReduceOp::sum);
    comm_s_ += seconds(t0);
  }
}

void GradientReducer::after_backward(bool last) {
  if (!last) {
    if (!ordered_) return;  // autograd adds the micro-batches in .grad
    for (size_t i = 0; i < parameters_.size(); ++i) pack(int(i));
    sum_.add(term_.data());
    return;
  }
  in_backward_ = false;
  backward_end_ = Clock::now();
  // What backward did not report (parameters it did not reach, or no hook installed).
  for (size_t i = 0; i < parameters_.size(); ++i)
    if (!reported_[i]) {
      pack(int(i));
      --buckets_[size_t(bucket_of_[i])].missing;
    }
  start_buckets();
  finish_step();
}

void GradientReducer::finish_step() {
  const size_t count = parameters_.size();
  const auto wait = [&](Handle& h) {
    const auto t0 = Clock::now();
    h->wait();
    h.reset();
    comm_s_ += seconds(t0);
  };
  if (shard_) {
    const auto t0 = Clock::now();
    reduce_sharded();
    comm_s_ += seconds(t0);
  } else if (ordered_) {
    Tensor flags = Tensor::empty({int64_t(count)});
    std::memcpy(flags.data(), reached_.data(), count * sizeof(float));
    // After the buckets, in the same place on every rank.
    Handle flags_done = comm_.world_size() > 1 ? comm_.all_reduce(flags, ReduceOp::sum) : Handle();
    for (Bucket& b : buckets_)
      if (b.pending) wait(b.pending);
    if (flags_done) wait(flags_done);
    std::memcpy(any_reached_.data(), flags.data(), count * sizeof(float));
    for (size_t i = 0; i < count; ++i) {
      if (any_reached_[i] == 0.0f) continue;  // no micro-batch anywhere reached it
      parameters_[i].value->set_grad(place(int(i)));
    }
  } else {
    for (Bucket& b : buckets_)
      if (b.pending) wait(b.pending);
    for (size_t i = 0; i < count; ++i) {
      any_reached_[i] = 1.0f;
      parameters_[i].value->set_grad(place(int(i)));
    }
  }
  exposed_s_ = std::chrono::duration<double>(Clock::now() - backward_end_).count();
  // Ready for the next step.
  if (ordered_) sum_.clear();
  std::fill(reported_.begin(), reported_.end(), 0);
  std::fill(reached_.begin(), reached_.end(), 0.0f);
  for (Bucket& b : buckets_) b.missing = int(b.parameters.size());
  next_bucket_ = 0;
}

}  // namespace ssmtrain::dist
