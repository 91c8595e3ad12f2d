// The bucketed gradient reduction (distributed/reducer.h) on the ranks of a job, shared by the
// tcp test (forked ranks) and the mpi test (mpirun). A hand-made model of five parameters:
// E never used (no gradient anywhere), A and C larger than the smallest buckets, B used twice
// in the graph, D reached only by some micro-batches. Every rank also computes, alone, every
// rank's micro-batch gradients with plain autograd and sums them in the fixed tree order over
// all world x accumulation terms: the world-1 result. The reducer must give exactly those
// bits for every bucket size, in every step, and the hook must report each reached parameter
// once.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "autograd/grad_ready.h"
#include "autograd/ops.h"
#include "distributed/communicator.h"
#include "distributed/ordered_sum.h"
#include "distributed/reducer.h"

namespace ssmtrain::dist::testing {

struct TinyModel {
  static constexpr int count = 5;
  std::vector<Tensor> values;  // E, A, B, C, D (parameter order)
  std::vector<NamedParameter> named;
  TinyModel() {
    const int64_t sizes[count] = {5, 300, 7, 1000, 50};
    const char* names[count] = {"e", "a", "b", "c", "d"};
    values.reserve(count);
    for (int p = 0; p < count; ++p) {
      Tensor t = Tensor::empty({sizes[p]});
      float* v = t.data_ptr<float>();
      for (int64_t i = 0; i < sizes[p]; ++i) v[i] = 0.5f * std::cos(float(i * 3 + p * 17));
      t.set_requires_grad(true);
      values.push_back(t);
    }
    for (int p = 0; p < count; ++p) named.push_back({names[p], &values[size_t(p)], true});
  }
};

inline Tensor input(int rank, int micro, int step, int which, int64_t n) {
  Tensor t = Tensor::empty({n});
  float* v = t.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i)
    v[i] = std::sin(float(i * 7 + rank * 131 + micro * 31 + step * 71 + which * 13)) *
           std::pow(10.0f, float((i + rank + micro) % 5) - 2);
  return t;
}

inline bool d_reached(int rank, int micro, int step) { return (rank + micro + step) % 3 != 0; }

// One micro-batch's loss, scaled by 1 / (accum * world) as the trainer scales it.
inline Tensor tiny_loss(const TinyModel& m, int rank, int micro, int step, int accum, int world) {
  const Tensor& a = m.values[1];
  const Tensor& b = m.values[2];
  const Tensor& c = m.values[3];
  const Tensor& d = m.values[4];
  Tensor loss = sum(silu(a * input(rank, micro, step, 0, 300)) * input(rank, micro, step, 1, 300)) +
                sum(b * b * input(rank, micro, step, 2, 7)) + sum(sigmoid(c * input(rank, micro, step, 3, 1000)));
  if (d_reached(rank, micro, step)) loss = loss + sum(d * input(rank, micro, step, 4, 50));
  return loss * (1.0 / double(accum * world));
}

// Exit status 0 when every bucket size gives the world-1 gradients bit for bit; else 1 with
// the differences on stderr.
inline int bucketed_equals_world_one(Communicator& comm, int accum) {
  const int world = comm.world_size(), rank = comm.rank();
  std::vector<std::string> problems;
  const int steps = 2;
  // Expected: plain autograd per (rank, micro-batch), summed in the tree order.
  std::vector<std::vector<std::vector<float>>> expected(steps);  // [step][parameter] (empty: none)
  for (int step = 0; step < steps; ++step) {
    TinyModel model;
    std::vector<std::vector<std::vector<float>>> terms(TinyModel::count);
    std::vector<bool> any(TinyModel::count, false);
    for (int r = 0; r < world; ++r)
      for (int micro = 0; micro < accum; ++micro) {
        for (Tensor& v : model.values) v.zero_grad();
        tiny_loss(model, r, micro, step, accum, world).backward();
        for (int p = 0; p < TinyModel::count; ++p) {
          const Tensor g = model.values[size_t(p)].grad();
          any[size_t(p)] = any[size_t(p)] || g.defined();
          terms[size_t(p)].push_back(g.defined() ? g.to_vector()
                                                 : std::vector<float>(size_t(model.values[size_t(p)].numel()), 0.0f));
        }
      }
    for (int p = 0; p < TinyModel::count; ++p) {
      std::vector<float> out;
      if (any[size_t(p)]) {
        std::vector<const float*> ptrs;
        for (const auto& t : terms[size_t(p)]) ptrs.push_back(t.data());
        out.resize(terms[size_t(p)][0].size());
        ordered_sum(ptrs, int64_t(out.size()), out.data());
      }
      expected[size_t(step)].push_back(out);
    }
  }
  for (double bucket_mb : {1e-7, 0.001, 1000.0}) {
    TinyModel model;
    GradientReducer reducer(comm, model.named, bucket_mb, /*ordered=*/true);
    const std::string label = "bucket_mb " + std::to_string(bucket_mb) + " (" + std::to_string(reducer.buckets()) +
                              " buckets), accum " + std::to_string(accum);
    for (int step = 0; step < steps; ++step) {
      for (Tensor& v : model.values) v.zero_grad();
      for (int micro = 0; micro < accum; ++micro) {
        const bool last = micro + 1 == accum;
        {
          const GradReadyHookGuard hook(reducer.ready_hook(last));
          tiny_loss(model, rank, micro, step, accum, world).backward();
        }
        reducer.after_backward(last);
      }
      const bool d_last = d_reached(rank, accum - 1, step);
      const int64_t reached = 3 + (d_last ? 1 : 0);
      const std::string at = label + ", step " + std::to_string(step) + ": ";
      if (reducer.ready_reports() != reached)
        problems.push_back(at + "the hook reported " + std::to_string(reducer.ready_reports()) +
                           " parameters, expected " + std::to_string(reached));
      // E's bucket is the last: every bucket before it is complete during backward when D is
      // reached (with D unreached the first bucket waits for the end of backward).
      const int started = reducer.buckets_started_in_backward();
      if (reducer.buckets() > 1 && d_last && started != reducer.buckets() - 1)
        problems.push_back(at + std::to_string(started) + " buckets started during backward, expected " +
                           std::to_string(reducer.buckets() - 1));
      for (int p = 0; p < TinyModel::count; ++p) {
        const Tensor g = model.values[size_t(p)].grad();
        const std::vector<float>& want = expected[size_t(step)][size_t(p)];
        const std::string name = model.named[size_t(p)].name;
        if (want.empty()) {
          if (g.defined()) problems.push_back(at + name + " has a gradient, expected none");
          continue;
        }
        if (!g.defined()) {
          problems.push_back(at + name + " has no gradient");
          continue;
        }
        const std::vector<float> got = g.to_vector();
        for (size_t i = 0; i < want.size(); ++i)
          if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
            problems.push_back(at + name + "[" + std::to_string(i) + "] is " + std::to_string(got[i]) +
                               ", world 1 gives " + std::to_string(want[i]));
            break;
          }
      }
    }
  }
  for (const std::string& p : problems) std::fprintf(stderr, "rank %d: %s\n", rank, p.c_str());
  return problems.empty() ? 0 : 1;
}

}  // namespace ssmtrain::dist::testing
