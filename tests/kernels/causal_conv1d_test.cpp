// The CPU causal conv1d against a naive double formula (each row padded on the left with the
// initial state, each document cut out by its first token), the backward in float against
// double, the decode step token by token against the parallel pass, and the final state as
// the next segment's initial state; the channel-last layout (x a strided column slice of a
// wider (b, l, .) buffer) bit for bit against the channel-major kernel on transposed inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/causal_conv1d.h"
#include "kernels/philox.h"
#include "tests/support/compare.h"

namespace ssmtrain::kernels {
namespace {

struct Problem {
  Conv1dShape s;
  std::vector<double> x, weight, bias, init;
  std::vector<int32_t> doc;
};

std::vector<double> rnd(int64_t n, uint64_t seed, double std = 1.0) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = philox_normal_at(seed, 0, i, 0.0f, float(std));
  return v;
}

Problem make(int64_t b, int64_t d, int64_t l, int64_t w, bool silu, bool optional, uint64_t seed) {
  Problem p;
  p.s = {b, d, l, w, silu};
  p.x = rnd(b * d * l, seed);
  p.weight = rnd(d * w, seed + 1, 0.5);
  if (optional) {
    p.bias = rnd(d, seed + 2);
    p.init = rnd(b * d * (w - 1), seed + 3);
  }
  return p;
}

// Documents of uneven lengths: boundaries every 1..5 tokens, different in each row.
void add_documents(Problem& p) {
  for (int64_t b = 0; b < p.s.batch; ++b) {
    int32_t doc = 0;
    int64_t next = 2 + b;
    for (int64_t t = 0; t < p.s.seq_len; ++t) {
      if (t == next) {
        ++doc;
        next += 1 + (t * 7 + b) % 5;
      }
      p.doc.push_back(doc + 100 * int32_t(b));
    }
  }
}

template <typename T> const T* opt(const std::vector<T>& v) { return v.empty() ? nullptr : v.data(); }

Conv1dArgs<double, double> args(const Problem& p) {
  return {p.x.data(), p.weight.data(), opt(p.bias), opt(p.init), opt(p.doc)};
}

// out[t] = act(bias + sum_k weight[k] * padded[t + k]), padded = (init, x) of the row, where
// an input counts only when it lies in t's document (inputs before t = 0 belong to token 0's).
std::vector<double> naive_forward(const Problem& p) {
  const auto& s = p.s;
  const int64_t w = s.width, l = s.seq_len;
  std::vector<double> out(s.batch * s.dim * l);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t c = 0; c < s.dim; ++c) {
      const int64_t row = b * s.dim + c;
      std::vector<double> padded(w - 1, 0.0);
      if (!p.init.empty()) padded.assign(p.init.begin() + row * (w - 1), p.init.begin() + (row + 1) * (w - 1));
      padded.insert(padded.end(), p.x.begin() + row * l, p.x.begin() + (row + 1) * l);
      for (int64_t t = 0; t < l; ++t) {
        int64_t first = 0;  // first token of t's document; -(w-1) when it is the first document
        if (!p.doc.empty())
          while (p.doc[b * l + first] != p.doc[b * l + t]) ++first;
        if (first == 0) first = -(w - 1);
        double acc = p.bias.empty() ? 0.0 : p.bias[c];
        for (int64_t k = 0; k < w; ++k) {
          const int64_t pos = t - (w - 1) + k;
          if (pos >= first) acc += p.weight[c * w + k] * padded[pos + (w - 1)];
        }
        out[row * l + t] = s.silu ? acc / (1 + std::exp(-acc)) : acc;
      }
    }
  return out;
}

void expect_close(const std::vector<double>& got, const std::vector<double>& ref, double tol) {
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], ref[i], tol * (1 + std::fabs(ref[i]))) << "at " << i;
}

TEST(CausalConv1dCpu, MatchesNaiveFormula) {
  for (int64_t w : {2, 3, 4})
    for (bool silu : {false, true})
      for (bool optional : {false, true})
        for (bool docs : {false, true})
          for (int64_t l : {1, 2, 7, 33}) {
            Problem p = make(2, 3, l, w, silu, optional, 10 * l + w);
            if (docs) add_documents(p);
            std::vector<double> out(p.x.size());
            cpu::causal_conv1d_forward<double>(p.s, args(p), out.data(), nullptr);
            SCOPED_TRACE("w " + std::to_string(w) + " l " + std::to_string(l) + " silu " + std::to_string(silu) +
                         " optional " + std::to_string(optional) + " docs " + std::to_string(docs));
            expect_close(out, naive_forward(p), 1e-14);
          }
}

TEST(CausalConv1dCpu, FinalStateContinuesTheSequence) {
  // Running [0, l) at once equals running [0, k) then [k, l) from the first final state,
  // also when the split falls in a short last document or before the width fills.
  for (int64_t w : {2, 3, 4})
    for (bool docs : {false, true})
      for (int64_t split : {1, 2, 9}) {
        const int64_t l = 16;
        Problem whole = make(2, 3, l, w, true, true, 7 + w);
        if (docs) add_documents(whole);
        std::vector<double> out(whole.x.size()), end_state(2 * 3 * (w - 1));
        cpu::causal_conv1d_forward<double>(whole.s, args(whole), out.data(), end_state.data());
        auto part = [&](int64_t from, int64_t len, const std::vector<double>& init, std::vector<double>* final_state) {
          Problem p = whole;
          p.s.seq_len = len;
          p.x.clear();
          p.doc.clear();
          for (int64_t row = 0; row < 6; ++row)
            for (int64_t t = from; t < from + len; ++t) p.x.push_back(whole.x[row * l + t]);
          if (docs)
            for (int64_t b = 0; b < 2; ++b)
              for (int64_t t = from; t < from + len; ++t) p.doc.push_back(whole.doc[b * l + t]);
          p.init = init;
          std::vector<double> o(6 * len);
          cpu::causal_conv1d_forward<double>(p.s, args(p), o.data(), final_state->data());
          return o;
        };
        std::vector<double> mid(end_state.size()), end(end_state.size());
        const std::vector<double> first = part(0, split, whole.init, &mid);
        // A document that starts exactly at the split does not continue: its caller starts
        // from a zero state (the kernel assumes token 0 continues the previous segment).
        for (int64_t b = 0; b < 2 && docs; ++b)
          if (whole.doc[b * l + split] != whole.doc[b * l + split - 1])
            std::fill(mid.begin() + b * 3 * (w - 1), mid.begin() + (b + 1) * 3 * (w - 1), 0.0);
        const std::vector<double> second = part(split, l - split, mid, &end);
        SCOPED_TRACE("w " + std::to_string(w) + " docs " + std::to_string(docs) + " split " + std::to_string(split));
        for (int64_t row = 0; row < 6; ++row)
          for (int64_t t = 0; t < l; ++t) {
            const double got = t < split ? first[row * split + t] : second[row * (l - split) + t - split];
            EXPECT_NEAR(got, out[row * l + t], 1e-14) << "row " << row << " t " << t;
          }
        for (size_t i = 0; i < end.size(); ++i) EXPECT_NEAR(end[i], end_state[i], 1e-14);
      }
}

TEST(CausalConv1dCpu, StepByStepEqualsParallelPass) {
  for (int64_t w : {2, 3, 4}) {
    Problem p = make(2, 5, 11, w, true, true, 21 + w);
    std::vector<double> out(p.x.size()), final_state(p.init.size());
    cpu::causal_conv1d_forward<double>(p.s, args(p), out.data(), final_state.data());
    std::vector<double> state = p.init;
    Conv1dShape step = p.s;
    step.seq_len = 1;
    for (int64_t t = 0; t < 11; ++t) {
      std::vector<double> x, o(10);
      for (int64_t i = 0; i < 10; ++i) x.push_back(p.x[i * 11 + t]);  // (b, d)
      cpu::causal_conv1d_step<double>(step, args(p), x.data(), state.data(), o.data());
      for (int64_t i = 0; i < 10; ++i) EXPECT_NEAR(o[i], out[i * 11 + t], 1e-14) << "w " << w << " t " << t;
    }
    for (size_t i = 0; i < state.size(); ++i) EXPECT_DOUBLE_EQ(state[i], final_state[i]);
  }
}

TEST(CausalConv1dCpu, FloatMatchesDoubleForwardAndBackward) {
  Problem p = make(3, 7, 301, 4, true, true, 31);
  add_documents(p);
  const std::vector<double> dout = rnd(p.x.size(), 99);
  std::vector<double> ref(p.x.size()), dx(p.x.size()), dw(p.weight.size()), db(7), dinit(p.init.size());
  cpu::causal_conv1d_forward<double>(p.s, args(p), ref.data(), nullptr);
  cpu::causal_conv1d_backward<double>(p.s, args(p), {dout.data(), dx.data(), dw.data(), db.data(), dinit.data()});
  auto f = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
  std::vector<float> x = f(p.x), weight = f(p.weight), bias = f(p.bias), init = f(p.init), dy = f(dout);
  std::vector<float> out(x.size()), fdx(x.size()), fdw(weight.size()), fdb(7), fdinit(init.size());
  Conv1dArgs<float, float> a{x.data(), weight.data(), bias.data(), init.data(), p.doc.data()};
  cpu::causal_conv1d_forward<float>(p.s, a, out.data(), nullptr);
  cpu::causal_conv1d_backward<float>(p.s, a, {dy.data(), fdx.data(), fdw.data(), fdb.data(), fdinit.data()});
  EXPECT_TRUE(testing::close(out, f(ref), DType::f32, 4));
  EXPECT_TRUE(testing::close(fdx, f(dx), DType::f32, 4));
  EXPECT_TRUE(testing::close(fdw, f(dw), DType::f32, 3 * 301));
  EXPECT_TRUE(testing::close(fdb, f(db), DType::f32, 3 * 301));
  EXPECT_TRUE(testing::close(fdinit, f(dinit), DType::f32, 4));
}

TEST(CausalConv1dCpu, RejectsBadWidths) {
  Problem p = make(1, 2, 5, 4, false, false, 1);
  std::vector<double> out(p.x.size());
  for (int64_t w : {1, 5}) {
    p.s.width = w;
    EXPECT_THROW(cpu::causal_conv1d_forward<double>(p.s, args(p), out.data(), nullptr), KernelError);
  }
}

// (b, d, l) -> (b, l, stride) with the rows' d channels at column `first`; the other columns
// are NaN, so a read outside the slice shows in the output.
std::vector<float> to_channel_last(const std::vector<double>& v, int64_t b, int64_t d, int64_t l, int64_t stride,
                                   int64_t first) {
  std::vector<float> out(b * l * stride, std::nanf(""));
  for (int64_t i = 0; i < b; ++i)
    for (int64_t c = 0; c < d; ++c)
      for (int64_t t = 0; t < l; ++t) out[(i * l + t) * stride + first + c] = float(v[(i * d + c) * l + t]);
  return out;
}

std::vector<float> to_f32(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

TEST(CausalConv1dCpu, ChannelLastEqualsChannelMajorBitForBit) {
  for (int64_t w : {2, 3, 4})
    for (bool silu : {false, true})
      for (bool optional : {false, true})
        for (bool docs : {false, true})
          for (int64_t l : {1, 3, 17}) {
            const int64_t b = 2, d = 5, stride = d + 3, first = 2;  // a slice of a wider row
            Problem p = make(b, d, l, w, silu, optional, 100 * l + 10 * w + silu);
            if (docs) add_documents(p);
            SCOPED_TRACE("w " + std::to_string(w) + " l " + std::to_string(l) + " silu " + std::to_string(silu) +
                         " optional " + std::to_string(optional) + " docs " + std::to_string(docs));
            const std::vector<float> x = to_f32(p.x), weight = to_f32(p.weight), bias = to_f32(p.bias),
                                     init = to_f32(p.init), dout = to_f32(rnd(b * d * l, 7 + l));
            auto o = [](const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); };
            auto m = [&](std::vector<float>& v) { return optional ? v.data() : nullptr; };
            const Conv1dArgs<float, float> major{x.data(), weight.data(), o(bias), o(init), opt(p.doc)};
            std::vector<float> out(b * d * l), fin(b * d * (w - 1)), dx(b * d * l), dw(d * w), db(d),
                dinit(init.size());
            cpu::causal_conv1d_forward<float>(p.s, major, out.data(), fin.data());
            cpu::causal_conv1d_backward<float>(p.s, major, {dout.data(), dx.data(), dw.data(), m(db), m(dinit)});

            Conv1dShape cl = p.s;
            cl.channel_last = true;
            cl.x_stride = stride;
            const std::vector<float> x_cl = to_channel_last(p.x, b, d, l, stride, first);
            const std::vector<float> dout_cl = to_channel_last(rnd(b * d * l, 7 + l), b, d, l, d, 0);
            const Conv1dArgs<float, float> last{x_cl.data() + first, weight.data(), o(bias), o(init), opt(p.doc)};
            std::vector<float> out_cl(b * l * d), fin_cl(fin.size()), dx_cl(b * l * d), dw_cl(d * w), db_cl(d),
                dinit_cl(init.size());
            cpu::causal_conv1d_forward<float>(cl, last, out_cl.data(), fin_cl.data());
            cpu::causal_conv1d_backward<float>(cl, last,
                                               {dout_cl.data(), dx_cl.data(), dw_cl.data(), m(db_cl), m(dinit_cl)});
            for (int64_t i = 0; i < b; ++i)
              for (int64_t c = 0; c < d; ++c)
                for (int64_t t = 0; t < l; ++t) {
                  EXPECT_EQ(out_cl[(i * l + t) * d + c], out[(i * d + c) * l + t]) << i << " " << c << " " << t;
                  EXPECT_EQ(dx_cl[(i * l + t) * d + c], dx[(i * d + c) * l + t]) << i << " " << c << " " << t;
                }
            EXPECT_EQ(fin_cl, fin);
            EXPECT_EQ(dw_cl, dw);
            if (optional) {
              EXPECT_EQ(db_cl, db);
              EXPECT_EQ(dinit_cl, dinit);
            }
          }
}

TEST(CausalConv1dCpu, ChannelLastRejectsAStrideBelowTheChannels) {
  Problem p = make(1, 4, 5, 4, false, false, 1);
  p.s.channel_last = true;
  p.s.x_stride = 3;
  std::vector<double> out(p.x.size());
  try {
    cpu::causal_conv1d_forward<double>(p.s, args(p), out.data(), nullptr);
    FAIL();
  } catch (const KernelError& e) {
    EXPECT_NE(std::string(e.what()).find("x_stride 3 is below the channel count d 4"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ssmtrain::kernels
