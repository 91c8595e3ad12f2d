// The CUDA mixture-of-experts pieces and the whole op against the CPU: router (top-k indices
// exactly, ties included), dispatch (counts, offsets and rows exactly, experts without tokens),
// losses, gather / combine and their backwards, the expert SwiGLU with both GEMM modes, and
// moe_swiglu forward + every gradient in f32 and bf16 for e in {4, 16, 64}, k in {1, 2, 8} and
// odd token counts; repeated runs bitwise identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <cstring>
#include <vector>

#include "autograd/moe_ops.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/stream.h"
#include "kernels/moe.h"
#include "kernels/philox.h"
#include "tests/support/compare.h"

namespace ssmtrain {
namespace {

using kernels::MoeExpertShape;
using kernels::MoeShape;
const Device kGpu = Device::cuda(0);

std::vector<float> rnd(int64_t n, uint64_t seed, float std = 1.0f) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = kernels::philox_normal_at(seed, 0, i, 0.0f, std);
  return v;
}
// Values on a grid of `step`, clamped to +-limit: exact in bf16 and in every partial sum, so
// router logits are the same bits on both sides (and ties are common).
std::vector<float> grid(int64_t n, uint64_t seed, float step, float limit) {
  std::vector<float> v = rnd(n, seed);
  for (float& x : v) x = std::fmin(limit, std::fmax(-limit, std::round(x * limit / step / 2) * step));
  return v;
}
Tensor cpu_tensor(const std::vector<float>& v, const Shape& shape) { return Tensor::from_vector(v, shape); }
Tensor gpu_tensor(const std::vector<float>& v, const Shape& shape, DType dtype = DType::f32) {
  return Tensor::from_vector(v, shape, dtype, kGpu);
}
template <typename T> std::vector<T> host(const Tensor& t) {
  const Tensor c = t.to(Device::cpu()).contiguous();
  std::vector<T> out(static_cast<size_t>(c.numel()));
  std::memcpy(out.data(), c.data(), out.size() * sizeof(T));
  return out;
}
cudaStream_t stream() { return current_stream(0); }


struct RouterCase {
  int64_t t, e, k;
  bool normalize, ties;
};

// Router, dispatch and losses (and the two router backwards) on both devices.
TEST(MoeGpu, RouterDispatchLossesMatchCpu) {
  SSM_REQUIRE_GPU();
  const std::vector<RouterCase> cases{{1, 4, 1, false, false},  {37, 4, 2, true, true},   {1001, 16, 2, false, false},
                                      {333, 16, 8, true, true},  {1001, 64, 8, false, true}, {129, 64, 1, false, false},
                                      {4097, 64, 2, true, false}};
  for (const RouterCase& c : cases) {
    SCOPED_TRACE("t " + std::to_string(c.t) + " e " + std::to_string(c.e) + " k " + std::to_string(c.k));
    const MoeShape s{c.t, c.e, c.k, c.normalize};
    const int64_t a = s.assignments();
    const std::vector<float> logits = c.ties ? grid(c.t * c.e, c.e + c.k, 0.25f, 2.0f) : rnd(c.t * c.e, c.e + c.k, 2.0f);
    // CPU reference in f32.
    std::vector<float> probs(c.t * c.e), lse(c.t), weight(a), mean_probs(c.e);
    std::vector<int32_t> index(a), counts(c.e), offsets(c.e + 1), row_of(a), assignment_of(a);
    float aux = 0, z = 0;
    kernels::cpu::moe_router_forward<float>(s, logits.data(), probs.data(), lse.data(), index.data(), weight.data());
    kernels::cpu::moe_dispatch(s, index.data(), counts.data(), offsets.data(), row_of.data(), assignment_of.data());
    kernels::cpu::moe_router_losses<float>(s, probs.data(), lse.data(), counts.data(), mean_probs.data(), &aux, &z);
    const std::vector<float> dweight = rnd(a, 77);
    std::vector<float> dlogits(c.t * c.e), dlogits_loss(c.t * c.e);
    kernels::cpu::moe_router_backward<float>(s, probs.data(), index.data(), weight.data(), dweight.data(),
                                             dlogits.data());
    kernels::cpu::moe_router_losses_backward<float>(s, probs.data(), lse.data(), counts.data(), 0.7f, 0.3f,
                                                    dlogits_loss.data());

    std::vector<std::vector<float>> first_bits;
    for (int repeat = 0; repeat < 2; ++repeat) {
      Tensor g_logits = gpu_tensor(logits, {c.t, c.e});
      Tensor g_probs = Tensor::empty({c.t, c.e}, DType::f32, kGpu), g_lse = Tensor::empty({c.t}, DType::f32, kGpu);
      Tensor g_index = Tensor::empty({a}, DType::i32, kGpu), g_weight = Tensor::empty({a}, DType::f32, kGpu);
      Tensor g_counts = Tensor::empty({c.e}, DType::i32, kGpu), g_offsets = Tensor::empty({c.e + 1}, DType::i32, kGpu);
      Tensor g_row_of = Tensor::empty({a}, DType::i32, kGpu), g_assign = Tensor::empty({a}, DType::i32, kGpu);
      Tensor scratch = Tensor::empty({kernels::cuda::moe_dispatch_scratch_elems(s)}, DType::i32, kGpu);
      Tensor g_mean = Tensor::empty({c.e}, DType::f32, kGpu), g_aux = Tensor::empty({}, DType::f32, kGpu),
             g_z = Tensor::empty({}, DType::f32, kGpu);
      Tensor g_dweight = gpu_tensor(dweight, {a}), g_dlogits = Tensor::empty({c.t, c.e}, DType::f32, kGpu),
             g_dlogits_loss = Tensor::empty({c.t, c.e}, DType::f32, kGpu);
      Tensor g_daux = gpu_tensor({0.7f}, {}), g_dz = gpu_tensor({0.3f}, {});
      auto f32 = [](const Tensor& t) { return static_cast<float*>(t.data()); };
      auto i32 = [](const Tensor& t) { return static_cast<int32_t*>(t.data()); };
      kernels::cuda::moe_router_forward(s, f32(g_logits), f32(g_probs), f32(g_lse), i32(g_index), f32(g_weight), stream());
      kernels::cuda::moe_dispatch(s, i32(g_index), i32(g_counts), i32(g_offsets), i32(g_row_of), i32(g_assign),
                                  i32(scratch), stream());
      kernels::cuda::moe_router_losses(s, f32(g_probs), f32(g_lse), i32(g_counts), f32(g_mean), f32(g_aux), f32(g_z),
                                       stream());
      kernels::cuda::moe_router_backward(s, f32(g_probs), i32(g_index), f32(g_weight), f32(g_dweight), f32(g_dlogits),
                                         stream());
      kernels::cuda::moe_router_losses_backward(s, f32(g_probs), f32(g_lse), i32(g_counts), f32(g_daux), f32(g_dz),
                                                f32(g_dlogits_loss), stream());
      EXPECT_EQ(host<int32_t>(g_index), index);
      EXPECT_EQ(host<int32_t>(g_counts), counts);
      EXPECT_EQ(host<int32_t>(g_offsets), offsets);
      EXPECT_EQ(host<int32_t>(g_row_of), row_of);
      EXPECT_EQ(host<int32_t>(g_assign), assignment_of);
      EXPECT_TRUE(testing::close(host<float>(g_probs), probs, DType::f32, c.e));
      EXPECT_TRUE(testing::close(host<float>(g_lse), lse, DType::f32, c.e));
      EXPECT_TRUE(testing::close(host<float>(g_weight), weight, DType::f32, c.e));
      EXPECT_TRUE(testing::close(host<float>(g_mean), mean_probs, DType::f32, c.t));
      EXPECT_TRUE(testing::close({host<float>(g_aux)[0], host<float>(g_z)[0]}, {aux, z}, DType::f32, c.t));
      EXPECT_TRUE(testing::close_cancelling(host<float>(g_dlogits), dlogits, DType::f32, c.e));
      EXPECT_TRUE(testing::close_cancelling(host<float>(g_dlogits_loss), dlogits_loss, DType::f32, c.e));
      std::vector<std::vector<float>> bits;
      for (const Tensor* t : {&g_probs, &g_weight, &g_mean, &g_aux, &g_z, &g_dlogits, &g_dlogits_loss})
        bits.push_back(host<float>(*t));
      if (repeat == 0) first_bits = bits;
      for (size_t i = 0; i < bits.size(); ++i)
        EXPECT_EQ(std::memcmp(bits[i].data(), first_bits[i].data(), bits[i].size() * sizeof(float)), 0)
            << "output " << i << " differs between runs";
    }
  }
}

// Dispatch of given expert choices where most experts receive nothing, and t k not a multiple
// of the 256-assignment chunk.
TEST(MoeGpu, DispatchWithEmptyExperts) {
  SSM_REQUIRE_GPU();
  const MoeShape s{2049, 64, 3, false};
  std::vector<int32_t> index(s.assignments());
  for (int64_t a = 0; a < s.assignments(); ++a) index[a] = int32_t((a * 7 + a / 5) % 9) * 7;  // experts 0, 7, ..., 56
  std::vector<int32_t> counts(64), offsets(65), row_of(index.size()), assignment_of(index.size());
  kernels::cpu::moe_dispatch(s, index.data(), counts.data(), offsets.data(), row_of.data(), assignment_of.data());
  Tensor g_index = Tensor::from_vector(std::vector<int64_t>(index.begin(), index.end()), {s.assignments()}, DType::i32, kGpu);
  Tensor g_counts = Tensor::empty({64}, DType::i32, kGpu), g_offsets = Tensor::empty({65}, DType::i32, kGpu);
  Tensor g_row_of = Tensor::empty({s.assignments()}, DType::i32, kGpu), g_assign = Tensor::empty({s.assignments()}, DType::i32, kGpu);
  Tensor scratch = Tensor::empty({kernels::cuda::moe_dispatch_scratch_elems(s)}, DType::i32, kGpu);
  kernels::cuda::moe_dispatch(s, static_cast<int32_t*>(g_index.data()), static_cast<int32_t*>(g_counts.data()),
                              static_cast<int32_t*>(g_offsets.data()), static_cast<int32_t*>(g_row_of.data()),
                              static_cast<int32_t*>(g_assign.data()), static_cast<int32_t*>(scratch.data()), stream());
  EXPECT_EQ(host<int32_t>(g_counts), counts);
  EXPECT_EQ(host<int32_t>(g_offsets), offsets);
  EXPECT_EQ(host<int32_t>(g_row_of), row_of);
  EXPECT_EQ(host<int32_t>(g_assign), assignment_of);
  EXPECT_EQ(counts[1], 0);
}

// Gather, combine, their backwards and the expert SwiGLU (both GEMM modes) in f32 and bf16.
TEST(MoeGpu, PermuteCombineAndExpertsMatchCpu) {
  SSM_REQUIRE_GPU();
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (auto [t, d, e, f, k] : std::vector<std::array<int64_t, 5>>{{37, 24, 4, 40, 2}, {101, 13, 16, 7, 1}, {65, 64, 64, 96, 8}}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " t " + std::to_string(t) + " d " + std::to_string(d) + " e " +
                   std::to_string(e) + " k " + std::to_string(k));
      const MoeShape s{t, e, k, false};
      const int64_t a = s.assignments();
      // Routing from CPU logits; the GPU uses the same rows.
      const std::vector<float> logits = rnd(t * e, 5);
      std::vector<float> probs(t * e), lse(t), weight(a);
      std::vector<int32_t> index(a), counts(e), offsets32(e + 1), row_of(a), assign(a);
      kernels::cpu::moe_router_forward<float>(s, logits.data(), probs.data(), lse.data(), index.data(), weight.data());
      kernels::cpu::moe_dispatch(s, index.data(), counts.data(), offsets32.data(), row_of.data(), assign.data());
      std::vector<int64_t> offsets(offsets32.begin(), offsets32.end());
      auto round = [&](std::vector<float> v) { return testing::round_to(dtype, std::move(v)); };
      const std::vector<float> x = round(rnd(t * d, 11)), wg = round(rnd(e * f * d, 12, 0.2f)),
                               wu = round(rnd(e * f * d, 13, 0.2f)), wd = round(rnd(e * d * f, 14, 0.2f)),
                               dout = round(rnd(t * d, 15));
      const MoeExpertShape es{e, d, f};
      // CPU in f32.
      std::vector<float> xp(a * d), gate_up(a * 2 * f), act(a * f), yp(a * d), out(t * d), dyp(a * d), dweight(a),
          dgate_up(a * 2 * f), dxp(a * d), dx(t * d), dwg(e * f * d), dwu(e * f * d), dwd(e * d * f);
      kernels::cpu::moe_permute<float>(s, d, x.data(), assign.data(), xp.data());
      kernels::cpu::moe_experts_forward<float>(es, offsets.data(), xp.data(), wg.data(), wu.data(), wd.data(),
                                               gate_up.data(), act.data(), yp.data());
      kernels::cpu::moe_unpermute<float>(s, d, yp.data(), row_of.data(), weight.data(), out.data());
      // The backward starts from the GPU's rounded forward values below; here from the CPU's.
      kernels::cpu::moe_unpermute_backward<float>(s, d, dout.data(), yp.data(), row_of.data(), weight.data(),
                                                  dyp.data(), dweight.data());
      kernels::cpu::moe_experts_backward<float>(es, offsets.data(), xp.data(), wg.data(), wu.data(), wd.data(),
                                                gate_up.data(), dyp.data(), act.data(), dgate_up.data(), dxp.data(),
                                                dwg.data(), dwu.data(), dwd.data());
      kernels::cpu::moe_permute_backward<float>(s, d, dxp.data(), row_of.data(), dx.data());

      for (kernels::cuda::MoeGemm mode : {kernels::cuda::MoeGemm::grouped, kernels::cuda::MoeGemm::per_expert}) {
        SCOPED_TRACE(mode == kernels::cuda::MoeGemm::grouped ? "grouped" : "per expert");
        Tensor g_x = gpu_tensor(x, {t, d}, dtype), g_wg = gpu_tensor(wg, {e, f, d}, dtype),
               g_wu = gpu_tensor(wu, {e, f, d}, dtype), g_wd = gpu_tensor(wd, {e, d, f}, dtype),
               g_dout = gpu_tensor(dout, {t, d}, dtype), g_weight = gpu_tensor(weight, {a});
        Tensor g_row_of = Tensor::from_vector(std::vector<int64_t>(row_of.begin(), row_of.end()), {a}, DType::i32, kGpu);
        Tensor g_assign = Tensor::from_vector(std::vector<int64_t>(assign.begin(), assign.end()), {a}, DType::i32, kGpu);
        auto buf = [&](const Shape& shape, DType dt) { return Tensor::empty(shape, dt, kGpu); };
        Tensor g_xp = buf({a, d}, dtype), g_gate_up = buf({a, 2 * f}, dtype), g_act = buf({a, f}, dtype),
               g_yp = buf({a, d}, dtype), g_out = buf({t, d}, dtype), g_dyp = buf({a, d}, dtype),
               g_dweight = buf({a}, DType::f32), g_dgate_up = buf({a, 2 * f}, dtype), g_dxp = buf({a, d}, dtype),
               g_dx = buf({t, d}, dtype), g_dwg = buf({e, f, d}, dtype), g_dwu = buf({e, f, d}, dtype),
               g_dwd = buf({e, d, f}, dtype);
        const int32_t* rows = static_cast<const int32_t*>(g_row_of.data());
        kernels::cuda::moe_permute(s, d, dtype, g_x.data(), static_cast<int32_t*>(g_assign.data()), g_xp.data(), stream());
        kernels::cuda::moe_experts_forward(es, dtype, offsets.data(), g_xp.data(), g_wg.data(), g_wu.data(),
                                           g_wd.data(), g_gate_up.data(), g_act.data(), g_yp.data(), stream(), mode);
        kernels::cuda::moe_unpermute(s, d, dtype, g_yp.data(), rows, static_cast<float*>(g_weight.data()),
                                     g_out.data(), stream());
        kernels::cuda::moe_unpermute_backward(s, d, dtype, g_dout.data(), g_yp.data(), rows,
                                              static_cast<float*>(g_weight.data()), g_dyp.data(),
                                              static_cast<float*>(g_dweight.data()), stream());
        kernels::cuda::moe_experts_backward(es, dtype, offsets.data(), g_xp.data(), g_wg.data(), g_wu.data(),
                                            g_wd.data(), g_gate_up.data(), g_dyp.data(), g_act.data(),
                                            g_dgate_up.data(), g_dxp.data(), g_dwg.data(), g_dwu.data(), g_dwd.data(),
                                            stream(), mode);
        kernels::cuda::moe_permute_backward(s, d, dtype, g_dxp.data(), rows, g_dx.data(), stream());
        EXPECT_EQ(g_xp.to_vector(), xp);  // a copy: exact
        EXPECT_TRUE(testing::close(g_gate_up.to_vector(), gate_up, dtype, d));
        EXPECT_TRUE(testing::close_cancelling(g_yp.to_vector(), yp, dtype, f));
        EXPECT_TRUE(testing::close_cancelling(g_out.to_vector(), out, dtype, f * k));
        EXPECT_TRUE(testing::close(g_dweight.to_vector(), dweight, dtype, d));
        EXPECT_TRUE(testing::close_cancelling(g_dxp.to_vector(), dxp, dtype, f + d));
        EXPECT_TRUE(testing::close_cancelling(g_dx.to_vector(), dx, dtype, (f + d) * k));
        EXPECT_TRUE(testing::close(g_dwd.to_vector(), dwd, dtype, a));
        EXPECT_TRUE(testing::close(g_dwg.to_vector(), dwg, dtype, a * d));
        EXPECT_TRUE(testing::close(g_dwu.to_vector(), dwu, dtype, a * d));
      }
    }
  }
}

struct OpCase {
  int64_t t, d, e, f, k;
  bool normalize;
  DType dtype;
};

struct OpResult {
  std::vector<std::vector<float>> values;  // out, aux, z, dx, d router, d gate, d up, d down
  std::vector<int64_t> counts;
};

// moe_swiglu forward and backward on `device`; inputs given as f32 values (already rounded).
OpResult run_op(const OpCase& c, Device device, DType dtype, const std::vector<std::vector<float>>& in,
                const std::vector<float>& dout) {
  const std::vector<Shape> shapes{{c.t, c.d}, {c.e, c.d}, {c.e, c.f, c.d}, {c.e, c.f, c.d}, {c.e, c.d, c.f}};
  std::vector<Tensor> leaves;
  for (size_t i = 0; i < in.size(); ++i) {
    Tensor leaf = Tensor::from_vector(in[i], shapes[i], dtype, device);
    leaf.set_requires_grad(true);
    leaves.push_back(leaf);
  }
  MoeOutputs o = moe_swiglu(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], MoeOptions{c.k, c.normalize});
  const DType loss_dtype = o.aux_loss.dtype();
  run_backward({o.out, o.aux_loss, o.z_loss},
               {Tensor::from_vector(dout, {c.t, c.d}, dtype, device), Tensor::full({}, 0.7, loss_dtype, device),
                Tensor::full({}, 0.3, loss_dtype, device)});
  OpResult r;
  r.values = {o.out.to_vector(), o.aux_loss.to_vector(), o.z_loss.to_vector()};
  for (const Tensor& leaf : leaves) r.values.push_back(leaf.grad().to_vector());
  r.counts = o.expert_counts.values<int64_t>();
  return r;
}

class MoeOpGpu : public ::testing::TestWithParam<OpCase> {};

TEST_P(MoeOpGpu, ForwardAndGradientsMatchCpuAndRepeatBitwise) {
  SSM_REQUIRE_GPU();
  const OpCase c = GetParam();
  auto round = [&](std::vector<float> v) { return testing::round_to(c.dtype, std::move(v)); };
  // x and the router weight on exact grids: logits are the same bits on both sides, so both
  // pick the same experts (ties included).
  const std::vector<std::vector<float>> in{grid(c.t * c.d, 1, 0.5f, 2.0f), grid(c.e * c.d, 2, 0.25f, 0.5f),
                                           round(rnd(c.e * c.f * c.d, 3, 0.3f)), round(rnd(c.e * c.f * c.d, 4, 0.3f)),
                                           round(rnd(c.e * c.d * c.f, 5, 0.3f))};
  const std::vector<float> dout = round(rnd(c.t * c.d, 6));
  const OpResult ref = run_op(c, Device::cpu(), DType::f32, in, dout);
  const OpResult got = run_op(c, kGpu, c.dtype, in, dout);
  const OpResult again = run_op(c, kGpu, c.dtype, in, dout);
  EXPECT_EQ(got.counts, ref.counts);
  const char* names[] = {"out", "aux_loss", "z_loss", "dx", "d router", "d w_gate", "d w_up", "d w_down"};
  const int64_t a = c.t * c.k;
  const int64_t lengths[] = {c.d + c.f * c.k, c.t, c.t, (c.d + c.f) * c.k + c.e, a * c.d, a * c.d, a * c.d, a};
  for (size_t i = 0; i < ref.values.size(); ++i) {
    EXPECT_TRUE(testing::close(got.values[i], ref.values[i], c.dtype, lengths[i])) << names[i];
    EXPECT_EQ(std::memcmp(got.values[i].data(), again.values[i].data(), got.values[i].size() * sizeof(float)), 0)
        << names[i] << " differs between two runs";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MoeOpGpu,
    ::testing::Values(OpCase{37, 48, 4, 40, 1, false, DType::f32}, OpCase{37, 48, 4, 40, 2, true, DType::bf16},
                      OpCase{257, 64, 16, 96, 2, false, DType::bf16}, OpCase{257, 64, 16, 96, 8, true, DType::f32},
                      OpCase{101, 32, 64, 48, 8, false, DType::bf16}, OpCase{5, 32, 64, 48, 1, false, DType::f32},
                      OpCase{1001, 96, 16, 128, 2, false, DType::f32}, OpCase{63, 40, 64, 24, 2, true, DType::bf16}));

}  // namespace
}  // namespace ssmtrain
