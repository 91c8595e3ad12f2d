// See mamba2.h. Initialisation follows the reference implementation (mamba_ssm's Mamba2):
// dt_bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max] (at least dt_init_floor);
// A_log = log(U(1, 16)); D = 1; norm weight 1; the convolution as PyTorch's
// Conv1d; out_proj scaled by 1 / sqrt(n_layers).
#include "layers/mamba2.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/causal_conv1d_ops.h"
#include "autograd/decode_ops.h"
#include "autograd/gated_rmsnorm_ops.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/ssd_ops.h"

namespace ssmtrain {
namespace {

const configs::ModelConfig& checked(const configs::ModelConfig& model) {
  const configs::Mamba2Config& o = model.mamba2;
  if (o.head_dim < 1 || model.mamba2_d_inner() % o.head_dim != 0)
    throw std::invalid_argument("mamba2: d_inner " + std::to_string(model.mamba2_d_inner()) + " (expand x d_model) is not a multiple of head_dim " +
                                std::to_string(o.head_dim));
  if (o.ngroups < 1 || model.mamba2_n_heads() % o.ngroups != 0)
    throw std::invalid_argument("mamba2: ngroups " + std::to_string(o.ngroups) + " does not divide the " +
                                std::to_string(model.mamba2_n_heads()) + " heads");
  return model;
}

// A = -U(kAInitMin, kAInitMax), as mamba_ssm's Mamba2 (A_init_range).
constexpr double kAInitMin = 1.0, kAInitMax = 16.0;

Tensor a_log_init(int64_t heads, Generator& gen, DType dtype) {
  const std::vector<float> u = Tensor::rand({heads}, gen, DType::f32, Device::cpu(), float(kAInitMin),
                                            float(kAInitMax)).to_vector();
  std::vector<double> v(heads);
  for (int64_t i = 0; i < heads; ++i) v[i] = std::log(double(u[i]));
  return Tensor::from_vector(v, {heads}, dtype);
}

}  // namespace

Mamba2Mixer::Mamba2Mixer(const configs::ModelConfig& model, Generator& gen, DType dtype)
    : model_(checked(model)),
      in_proj_(register_module("in_proj", std::make_unique<Linear>(model.d_model, 2 * model.mamba2_d_inner() + 2 * model.mamba2.ngroups * model.mamba2.d_state + model.mamba2_n_heads(),
                                                                   false, gen, dtype))),
      conv_weight_(register_parameter("conv1d.weight",
                                      uniform_init({model.mamba2_conv_dim(), model.mamba2.d_conv}, 1.0 / std::sqrt(double(model.mamba2.d_conv)), gen, dtype))),
      conv_bias_(register_parameter("conv1d.bias", uniform_init({model.mamba2_conv_dim()}, 1.0 / std::sqrt(double(model.mamba2.d_conv)), gen, dtype),
                                    /*weight_decay=*/false)),
      dt_bias_(register_parameter("dt_bias", dt_bias_init(model.mamba2_n_heads(), model.mamba2.dt_min, model.mamba2.dt_max, model.mamba2.dt_init_floor, gen, dtype), /*weight_decay=*/false)),
      A_log_(register_parameter("A_log", a_log_init(model.mamba2_n_heads(), gen, dtype), /*weight_decay=*/false)),
      D_(register_parameter("D", Tensor::ones({model.mamba2_n_heads()}, dtype), /*weight_decay=*/false)),
      norm_weight_(register_parameter("norm.weight", Tensor::ones({model.mamba2_d_inner()}, dtype), /*weight_decay=*/false)),
      out_proj_(register_module("out_proj", std::make_unique<Linear>(model.mamba2_d_inner(), model.d_model, false, gen, dtype))) {
  NoGradGuard no_grad;
  copy_into(out_proj_.weight, mul(out_proj_.weight, 1.0 / std::sqrt(double(std::max<int64_t>(model.n_layers, 1)))));
}

Tensor Mamba2Mixer::forward(const Tensor& x, const Tensor& doc_index) const { return run(x, doc_index, nullptr); }

Tensor Mamba2Mixer::run(const Tensor& x, const Tensor& doc_index, const MixerCache* cache) const {
  const configs::Mamba2Config& o = model_.mamba2;
  const int64_t b = x.size(0), l = x.size(1), e = model_.mamba2_d_inner(), h = model_.mamba2_n_heads(), p = o.head_dim, g = o.ngroups,
                n = o.d_state, gn = g * n;
  std::vector<Tensor> parts = split(in_proj_.forward(x), {e, e + 2 * gn, h}, -1);  // z, xBC, dt
  const Tensor& z = parts[0];                                                       // (b, l, e)
  // The conv reads the xBC columns of the in_proj output in place and writes (b, l, e + 2gn):
  // no layout copy on either side, forward or backward.
  CausalConv1dInputs conv{parts[1], conv_weight_, conv_bias_, {}, doc_index, true, /*channel_last=*/true};
  const CausalConv1dOutputs conv_out = causal_conv1d(conv, cache != nullptr);
  const Tensor& xBC = conv_out.out;                                                 // (b, l, e + 2gn)
  std::vector<Tensor> xbc = split(xBC, {e, gn, gn}, -1);
  SsdInputs in;
  in.x = reshape(xbc[0], {b, l, h, p});
  in.dt = parts[2];                                                                 // (b, l, h)
  in.A = neg(exp(A_log_));
  in.B = reshape(xbc[1], {b, l, g, n});
  in.C = reshape(xbc[2], {b, l, g, n});
  in.D = D_;
  in.dt_bias = dt_bias_;
  in.doc_index = doc_index;
  in.chunk_size = o.chunk_size;
  const SsdOutputs scanned = ssd(in, cache != nullptr);
  if (cache) {
    copy_into(cache->conv, conv_out.final_state);
    copy_into(cache->ssm, scanned.final_states);
  }
  const Tensor y = reshape(scanned.out, {b, l, e});                                 // (b, l, e)
  const Tensor normed = gated_rmsnorm(y, z, weight_for(norm_weight_, y), model_.norm_eps, e / g);
  return out_proj_.forward(normed);                                                 // (b, l, d)
}

MixerCache Mamba2Mixer::new_cache(int64_t batch, int64_t, DType dtype, Device device) const {
  const configs::Mamba2Config& o = model_.mamba2;
  const DType state_dtype = dtype == DType::f64 ? DType::f64 : DType::f32;
  MixerCache c;
  c.conv = Tensor::zeros({batch, model_.mamba2_conv_dim(), o.d_conv - 1}, dtype, device);                    // (b, e + 2gn, w-1)
  c.ssm = Tensor::zeros({batch, model_.mamba2_n_heads(), o.head_dim, o.d_state}, state_dtype, device);     // (b, h, p, n)
  return c;
}

Tensor Mamba2Mixer::prefill(const Tensor& x, const MixerCache& cache) const { return run(x, Tensor(), &cache); }

Tensor Mamba2Mixer::step(const Tensor& x, const MixerCache& cache, const std::vector<int64_t>&) const {
  const configs::Mamba2Config& o = model_.mamba2;
  const int64_t b = x.size(0), e = model_.mamba2_d_inner(), h = model_.mamba2_n_heads(), p = o.head_dim, g = o.ngroups, n = o.d_state,
                gn = g * n;
  std::vector<Tensor> parts = split(reshape(in_proj_.forward(x), {b, 2 * e + 2 * gn + h}), {e, e + 2 * gn, h}, -1);
  const Tensor xBC = causal_conv1d_step(parts[1], conv_weight_, conv_bias_, cache.conv, true);  // (b, e + 2gn)
  std::vector<Tensor> xbc = split(xBC, {e, gn, gn}, -1);
  SsdStepInputs in;
  in.x = reshape(xbc[0], {b, h, p});
  in.dt = parts[2];  // (b, h)
  in.A = neg(exp(A_log_));
  in.B = reshape(xbc[1], {b, g, n});
  in.C = reshape(xbc[2], {b, g, n});
  in.D = D_;
  in.dt_bias = dt_bias_;
  const Tensor y = reshape(ssd_step(in, cache.ssm), {b, 1, e});  // (b, 1, e)
  const Tensor z = reshape(parts[0], {b, 1, e});
  const Tensor normed = gated_rmsnorm(y, z, weight_for(norm_weight_, y), model_.norm_eps, e / g);
  return out_proj_.forward(normed);  // (b, 1, d)
}

}  // namespace ssmtrain
