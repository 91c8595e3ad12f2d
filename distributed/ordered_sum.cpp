// See ordered_sum.h.
#include "distributed/ordered_sum.h"

#include <algorithm>
#include <cstring>

namespace ssmtrain::dist {

void OrderedSum::add(const float* term) {
  std::vector<float> values;
  if (!spare_.empty()) values = std::move(spare_.back()), spare_.pop_back();
  values.assign(term, term + n_);
  stack_.push_back({1, std::move(values)});
  ++terms_;
  while (stack_.size() >= 2 && stack_[stack_.size() - 1].count == stack_[stack_.size() - 2].count) {
    Partial newer = std::move(stack_.back());
    stack_.pop_back();
    Partial& older = stack_.back();
    for (int64_t i = 0; i < n_; ++i) older.values[size_t(i)] += newer.values[size_t(i)];
    older.count += newer.count;
    spare_.push_back(std::move(newer.values));
  }
}

void OrderedSum::finish(float* out) {
  if (stack_.empty()) {
    std::fill(out, out + n_, 0.0f);
    return;
  }
  std::vector<float> acc = std::move(stack_.back().values);
  stack_.pop_back();
  while (!stack_.empty()) {
    const std::vector<float>& older = stack_.back().values;
    for (int64_t i = 0; i < n_; ++i) acc[size_t(i)] = older[size_t(i)] + acc[size_t(i)];
    spare_.push_back(std::move(stack_.back().values));
    stack_.pop_back();
  }
  std::memcpy(out, acc.data(), size_t(n_) * sizeof(float));
  spare_.push_back(std::move(acc));
  terms_ = 0;
}

// add(last) adds the newest partial to `last` (older + newer) while their counts match, and
// finish() folds the rest the same way, newest first: either way each partial, newest first,
// is added on the left of what came after it.
void OrderedSum::fold_range(const float* last, int64_t begin, int64_t count, float* out) const {
  if (out != last) std::memmove(out, last, size_t(count) * sizeof(float));
  for (auto p = stack_.rbegin(); p != stack_.rend(); ++p) {
    const float* older = p->values.data() + begin;
    for (int64_t i = 0; i < count; ++i) out[i] = older[i] + out[i];
  }
}

void OrderedSum::clear() {
  for (Partial& p : stack_) spare_.push_back(std::move(p.values));
  stack_.clear();
  terms_ = 0;
}

void ordered_sum(const std::vector<const float*>& terms, int64_t n, float* out) {
  if (terms.size() == 1) {
    if (terms[0] != out) std::memcpy(out, terms[0], size_t(n) * sizeof(float));
    return;
  }
  if (terms.size() == 2) {  // the common case without copies
    for (int64_t i = 0; i < n; ++i) out[i] = terms[0][i] + terms[1][i];
    return;
  }
  OrderedSum sum(n);
  for (const float* t : terms) sum.add(t);
  sum.finish(out);
}

}  // namespace ssmtrain::dist
