// See reducer.h.
#include "distributed/reducer.h"

#include <cstring>

namespace ssmtrain::dist {

GradientReducer::GradientReducer(Communicator& comm, std::vector<NamedParameter> parameters, double bucket_mb,
                                 bool ordered)
    : comm_(comm), parameters_(std::move(parameters)), ordered_(ordered) {
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
