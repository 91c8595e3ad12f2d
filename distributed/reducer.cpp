// See reducer.h.
#include "distributed/reducer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "autograd/ops.h"
#include "kernels/adamw.h"

namespace ssmtrain::dist {

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
      buckets_.push_back(bucket);
      bucket = Bucket{flat_size_, 0, {}};
    }
    offset_[size_t(i)] = flat_size_;
    bucket.parameters.push_back(i);
    bucket.count += n;
    flat_size_ += n;
  }
  if (!bucket.parameters.empty()) buckets_.push_back(bucket);
  if (ordered_) {
    // The flags (1: this micro-batch reached the parameter) travel as one more "bucket".
    sum_ = OrderedSum(flat_size_ + int64_t(parameters_.size()));
    flat_.assign(size_t(flat_size_) + parameters_.size(), 0.0f);
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
  std::memcpy(flags.data(), flat_.data() + flat_size_, count * sizeof(float));
  Handle flags_done = comm_.all_reduce(flags, ReduceOp::sum);
  std::vector<const float*> sources(count);
  for (size_t i = 0; i < count; ++i) sources[i] = flat_.data() + offset_[i];
  const Tensor blocks = blocks_of(sources);
  Tensor mine = Tensor::empty({block_});
  comm_.reduce_scatter(blocks, mine, ReduceOp::sum)->wait();
  flags_done->wait();
  std::memcpy(flat_.data() + flat_size_, flags.data(), count * sizeof(float));
  for (size_t i = 0; i < count; ++i) {
    if (owner_[i] != comm_.rank() || flat_[size_t(flat_size_) + i] == 0.0f) continue;
    const Tensor& value = *parameters_[i].value;
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
    if (flat_[size_t(flat_size_) + i] == 0.0f) continue;  // no gradient anywhere: global_grad_norm skips it
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

void GradientReducer::after_backward(bool last) {
  if (!ordered_) {
    if (last) reduce_accumulated();
    return;
  }
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const Tensor& value = *parameters_[i].value;
    const Tensor grad = value.grad();
    float* to = flat_.data() + offset_[i];
    if (grad.defined()) {
      const Tensor g = grad.is_contiguous() ? grad : grad.contiguous();
      std::memcpy(to, g.data(), size_t(value.numel()) * sizeof(float));
      value.zero_grad();
    } else {
      std::memset(to, 0, size_t(value.numel()) * sizeof(float));
    }
    flat_[size_t(flat_size_) + i] = grad.defined() ? 1.0f : 0.0f;
  }
  sum_.add(flat_.data());
  if (last) reduce_ordered();
}

void GradientReducer::reduce_ordered() {
  sum_.finish(flat_.data());
  if (shard_) {
    reduce_sharded();
    return;
  }
  if (comm_.world_size() > 1) {
    std::vector<Tensor> views;
    std::vector<Handle> pending;
    const auto start = [&](int64_t begin, int64_t count) {
      Tensor t = Tensor::empty({count});
      std::memcpy(t.data(), flat_.data() + begin, size_t(count) * sizeof(float));
      pending.push_back(comm_.all_reduce(t, ReduceOp::sum));
      views.push_back(t);
    };
    for (const Bucket& b : buckets_) start(b.begin, b.count);
    start(flat_size_, int64_t(parameters_.size()));
    for (size_t k = 0; k < pending.size(); ++k) {
      pending[k]->wait();
      const int64_t begin = k < buckets_.size() ? buckets_[k].begin : flat_size_;
      std::memcpy(flat_.data() + begin, views[k].data(), size_t(views[k].nbytes()));
    }
  }
  for (size_t i = 0; i < parameters_.size(); ++i) {
    if (flat_[size_t(flat_size_) + i] == 0.0f) continue;  // no micro-batch anywhere reached it
    const Tensor& value = *parameters_[i].value;
    Tensor grad = Tensor::empty(value.shape(), DType::f32);
    std::memcpy(grad.data(), flat_.data() + offset_[i], size_t(value.numel()) * sizeof(float));
    value.set_grad(grad);
  }
}

void GradientReducer::reduce_accumulated() {
  if (comm_.world_size() == 1) return;
  // Every rank must take part in every bucket's collective: a parameter without a gradient
  // here may have one on another rank, so it gets zeros.
  std::vector<Handle> pending;
  for (const Bucket& b : buckets_) {
    for (int i : b.parameters) {
      const Tensor& value = *parameters_[size_t(i)].value;
      if (!value.grad().defined()) value.set_grad(Tensor::zeros(value.shape(), DType::f32, value.device()));
      Tensor grad = value.grad();
      pending.push_back(comm_.all_reduce(grad, ReduceOp::sum));
    }
  }
  for (Handle& h : pending) h->wait();
}

}  // namespace ssmtrain::dist
