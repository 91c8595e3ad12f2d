// See mamba1.h. Initialisation follows the reference implementation (mamba_ssm):
// dt_proj.weight ~ U(+-r^-1/2), dt_bias = softplus^-1(dt) with dt log-uniform in
// [dt_min, dt_max] (at least dt_init_floor), A_log = log(1..n), D = 1, the convolution as
// PyTorch's Conv1d, out_proj scaled by 1 / sqrt(n_layers).
#include "layers/mamba1.h"

#include <cmath>
#include <vector>

#include "autograd/causal_conv1d_ops.h"
#include "autograd/decode_ops.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/selective_scan_ops.h"

namespace ssmtrain {
namespace {

// The RMSNorms on dt, B and C (dt_bc_norm) use Jamba's default epsilon whatever model.norm_eps
// says (interop/hf.cpp asks for model.norm_eps 1e-6 so that Jamba's one rms_norm_eps matches).
constexpr double kDtBcNormEps = 1e-6;

Tensor a_log_init(int64_t e, int64_t n, DType dtype) {
  std::vector<double> v(e * n);
  for (int64_t i = 0; i < e; ++i)
    for (int64_t k = 0; k < n; ++k) v[i * n + k] = std::log(double(k + 1));
  return Tensor::from_vector(v, {e, n}, dtype);
}

}  // namespace

Mamba1Mixer::Mamba1Mixer(const configs::ModelConfig& model, Generator& gen, DType dtype)
    : model_(model),
      in_proj_(register_module("in_proj", std::make_unique<Linear>(model.d_model, 2 * model.mamba1_d_inner(), false, gen, dtype))),
      conv_weight_(register_parameter("conv1d.weight",
                                      uniform_init({model.mamba1_d_inner(), model.mamba1.d_conv}, 1.0 / std::sqrt(double(model.mamba1.d_conv)), gen, dtype))),
      conv_bias_(register_parameter("conv1d.bias",
                                    uniform_init({model.mamba1_d_inner()}, 1.0 / std::sqrt(double(model.mamba1.d_conv)), gen, dtype),
                                    /*weight_decay=*/false)),
      x_proj_(register_module("x_proj", std::make_unique<Linear>(model.mamba1_d_inner(), model.mamba1_dt_rank() + 2 * model.mamba1.d_state, false, gen, dtype))),
      dt_proj_(register_module("dt_proj", std::make_unique<Linear>(model.mamba1_dt_rank(), model.mamba1_d_inner(), true, gen, dtype))),
      A_log_(register_parameter("A_log", a_log_init(model.mamba1_d_inner(), model.mamba1.d_state, dtype), /*weight_decay=*/false)),
      D_(register_parameter("D", Tensor::ones({model.mamba1_d_inner()}, dtype), /*weight_decay=*/false)),
      out_proj_(register_module("out_proj", std::make_unique<Linear>(model.mamba1_d_inner(), model.d_model, false, gen, dtype))) {
  NoGradGuard no_grad;
  const double dt_std = 1.0 / std::sqrt(double(model.mamba1_dt_rank()));
  copy_into(dt_proj_.weight, uniform_init(dt_proj_.weight.shape(), dt_std, gen, dtype));
  copy_into(*dt_proj_.bias, dt_bias_init(model.mamba1_d_inner(), model.mamba1.dt_min, model.mamba1.dt_max, model.mamba1.dt_init_floor, gen, dtype));
  copy_into(out_proj_.weight, mul(out_proj_.weight, 1.0 / std::sqrt(double(std::max<int64_t>(model.n_layers, 1)))));
  if (model.mamba1.dt_bc_norm) {
    dt_norm_ = &register_module("dt_layernorm", std::make_unique<RMSNorm>(model.mamba1_dt_rank(), kDtBcNormEps, dtype));
    B_norm_ = &register_module("b_layernorm", std::make_unique<RMSNorm>(model.mamba1.d_state, kDtBcNormEps, dtype));
    C_norm_ = &register_module("c_layernorm", std::make_unique<RMSNorm>(model.mamba1.d_state, kDtBcNormEps, dtype));
  }
}

Tensor Mamba1Mixer::forward(const Tensor& x, const Tensor& doc_index) const { return run(x, doc_index, nullptr); }

// Channel-major from in_proj to out_proj: every GEMM writes the (b, channels, l) layout the
// convolution and the scan read, with its weight shared by the batch, so no activation is
// transposed (the dt/B/C norms of Jamba-style stacks transpose their small inputs only).
Tensor Mamba1Mixer::run(const Tensor& x, const Tensor& doc_index, const MixerCache* cache) const {
  const int64_t b = x.size(0), l = x.size(1), e = model_.mamba1_d_inner(), n = model_.mamba1.d_state, r = model_.mamba1_dt_rank();
  const Tensor w_in = weight_for(in_proj_.weight, x);                    // (2e, d)
  const Tensor x_bel = matmul(narrow(w_in, 0, 0, e), x, false, true);    // (b, e, l)
  const Tensor z_bel = matmul(narrow(w_in, 0, e, e), x, false, true);    // (b, e, l)
  CausalConv1dInputs conv{x_bel, conv_weight_, conv_bias_, {}, doc_index, true};
  const CausalConv1dOutputs conv_out = causal_conv1d(conv, cache != nullptr);
  const Tensor& u = conv_out.out;                                        // (b, e, l)
  std::vector<Tensor> dbc = split(matmul(weight_for(x_proj_.weight, u), u), {r, n, n}, 1);  // (b, r|n|n, l)
  Tensor dt = dbc[0], B = dbc[1], C = dbc[2];
  if (dt_norm_) {
    dt = transpose(dt_norm_->forward(transpose(dt, 1, 2)), 1, 2);
    B = transpose(B_norm_->forward(transpose(B, 1, 2)), 1, 2);
    C = transpose(C_norm_->forward(transpose(C, 1, 2)), 1, 2);
  }
  const Tensor delta = matmul(weight_for(dt_proj_.weight, dt), dt);       // (b, e, l), bias in the scan
  const Tensor B_bgnl = reshape(B, {b, 1, n, l});            // (b, 1, n, l)
  const Tensor C_bgnl = reshape(C, {b, 1, n, l});
  SelectiveScanInputs scan{u, delta, neg(exp(A_log_)), B_bgnl, C_bgnl, D_, z_bel, *dt_proj_.bias, {}, doc_index, true};
  const SelectiveScanOutputs scanned = selective_scan(scan, cache != nullptr);  // (b, e, l)
  if (cache) {
    copy_into(cache->conv, conv_out.final_state);
    copy_into(cache->ssm, scanned.final_state);
  }
  return matmul(scanned.out, weight_for(out_proj_.weight, scanned.out), true, true);  // (b, l, d)
}

MixerCache Mamba1Mixer::new_cache(int64_t batch, int64_t, DType dtype, Device device) const {
  const DType state_dtype = dtype == DType::f64 ? DType::f64 : DType::f32;
  MixerCache c;
  c.conv = Tensor::zeros({batch, model_.mamba1_d_inner(), model_.mamba1.d_conv - 1}, dtype, device);  // (b, e, w-1)
  c.ssm = Tensor::zeros({batch, model_.mamba1_d_inner(), model_.mamba1.d_state}, state_dtype, device);  // (b, e, n)
  return c;
}

Tensor Mamba1Mixer::prefill(const Tensor& x, const MixerCache& cache) const { return run(x, Tensor(), &cache); }

Tensor Mamba1Mixer::step(const Tensor& x, const MixerCache& cache, const std::vector<int64_t>&) const {
  const int64_t b = x.size(0), e = model_.mamba1_d_inner(), n = model_.mamba1.d_state, r = model_.mamba1_dt_rank();
  std::vector<Tensor> xz = split(reshape(in_proj_.forward(x), {b, 2 * e}), {e, e}, -1);  // 2 x (b, e)
  const Tensor u = causal_conv1d_step(xz[0], conv_weight_, conv_bias_, cache.conv, true);  // (b, e)
  std::vector<Tensor> dbc = split(x_proj_.forward(u), {r, n, n}, -1);  // (b, r), (b, n) x 2
  Tensor dt = dbc[0], B = dbc[1], C = dbc[2];
  if (dt_norm_) {
    dt = dt_norm_->forward(dt);
    B = B_norm_->forward(B);
    C = C_norm_->forward(C);
  }
  SelectiveScanStepInputs in;
  in.u = u;
  in.delta = linear(dt, weight_for(dt_proj_.weight, dt));  // (b, e)
  in.A = neg(exp(A_log_));                                 // (e, n)
  in.B = reshape(B, {b, 1, n});
  in.C = reshape(C, {b, 1, n});
  in.D = D_;
  in.z = xz[1];
  in.delta_bias = *dt_proj_.bias;
  const Tensor y = selective_scan_step(in, cache.ssm);     // (b, e)
  return out_proj_.forward(reshape(y, {b, 1, e}));         // (b, 1, d)
}

}  // namespace ssmtrain
