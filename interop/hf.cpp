// See hf.h. The tables are written as name rules, one per kind of parameter, applied to the
// parameters of the model itself, so a model's table always covers exactly its parameters.
#include "interop/hf.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <regex>
#include <set>

#include "configs/layout.h"
#include "configs/load.h"
#include "data/shard.h"
#include "interop/safetensors.h"
#include "layers/from_config.h"

namespace ssmtrain::interop {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using configs::Ffn;
using configs::Mixer;

std::vector<configs::LayerSpec> layers_of(const configs::ModelConfig& m) { return configs::resolve_layout(m).layers; }

// The period p and offset o with {i < n : i % p == o} == marked, or {0, 0} when none exists.
std::pair<int64_t, int64_t> periodic(const std::vector<bool>& marked) {
  const auto n = int64_t(marked.size());
  const auto first = std::find(marked.begin(), marked.end(), true);
  if (first == marked.end()) return {n + 1, n};  // none: an offset no layer reaches
  const int64_t o = first - marked.begin();
  for (int64_t p = o + 1; p <= n + 1; ++p) {
    bool same = true;
    for (int64_t i = 0; i < n && same; ++i) same = marked[size_t(i)] == (i % p == o);
    if (same) return {p, o};
  }
  return {0, 0};
}

std::string letters(const std::vector<configs::LayerSpec>& layers, bool mixers) {
  std::string s;
  for (const auto& l : layers)
    s += mixers ? (l.mixer == Mixer::attention ? 'A' : 'M') : (l.ffn == Ffn::none ? '-' : l.ffn == Ffn::mlp ? 'F' : 'E');
  return s;
}

void refuse(HfFamily family, const std::string& feature) {
  throw InteropError(std::string(hf_class_name(family)) + " cannot express " + feature);
}

}  // namespace

const char* hf_class_name(HfFamily f) {
  switch (f) {
    case HfFamily::mamba: return "MambaForCausalLM";
    case HfFamily::mamba2: return "Mamba2ForCausalLM";
    case HfFamily::jamba: return "JambaForCausalLM";
    case HfFamily::nemotron_h: return "NemotronHForCausalLM";
  }
  return "?";
}

const char* hf_model_type(HfFamily f) {
  switch (f) {
    case HfFamily::mamba: return "mamba";
    case HfFamily::mamba2: return "mamba2";
    case HfFamily::jamba: return "jamba";
    case HfFamily::nemotron_h: return "nemotron_h";
  }
  return "?";
}

HfFamily choose_family(const configs::ModelConfig& m) {
  const auto layers = layers_of(m);
  bool m1 = false, m2 = false, attn = false, ffn = false, all_ffn = true, mlp = false, moe = false;
  for (const auto& l : layers) {
    m1 |= l.mixer == Mixer::mamba1;
    m2 |= l.mixer == Mixer::mamba2;
    attn |= l.mixer == Mixer::attention;
    ffn |= l.ffn != Ffn::none;
    all_ffn &= l.ffn != Ffn::none;
    mlp |= l.ffn == Ffn::mlp;
    moe |= l.ffn == Ffn::moe;
  }
  if (m1 && m2) throw InteropError("no transformers class mixes Mamba-1 and Mamba-2 layers (layout " + letters(layers, true) + ")");
  if (m2 || (!m1 && attn && !ffn)) {
    const HfFamily f = attn ? HfFamily::nemotron_h : HfFamily::mamba2;
    if (ffn) refuse(f, "feed-forward layers (layout " + letters(layers, false) +
                           "): Mamba2ForCausalLM has none and NemotronH's MLP is a squared-ReLU, not SwiGLU, with another router for MoE");
    if (attn && m.attention.rope) refuse(f, "RoPE in attention (model.attention.rope: true); NemotronH attention has no position encoding");
    return f;
  }
  if (m1 && !attn && !ffn) {
    if (m.mamba1.dt_bc_norm) refuse(HfFamily::mamba, "RMSNorms on dt, B and C (model.mamba1.dt_bc_norm: true); JambaForCausalLM has them but needs a feed-forward in every layer");
    return HfFamily::mamba;
  }
  // Jamba: Mamba-1 with dt/B/C norms, attention, an MLP or MoE in every layer.
  const HfFamily j = HfFamily::jamba;
  if (!all_ffn) refuse(j, "layers without a feed-forward (ffn layout " + letters(layers, false) + "); every Jamba layer has an MLP or MoE");
  if (m1 && !m.mamba1.dt_bc_norm) refuse(j, "Mamba layers without RMSNorms on dt, B and C (set model.mamba1.dt_bc_norm: true)");
  if (attn && m.attention.rope) refuse(j, "RoPE in attention (model.attention.rope: true)");
  if (attn && m.attention.head_dim != m.d_model / m.attention.n_heads)
    refuse(j, "attention.head_dim " + std::to_string(m.attention.head_dim) + " other than d_model / n_heads");
  if (std::abs(m.norm_eps - 1e-6) > 1e-12)
    refuse(j, "model.norm_eps " + std::to_string(m.norm_eps) + ": ssmtrain's dt/B/C norms use 1e-6 and Jamba uses one rms_norm_eps for all norms (set model.norm_eps: 1.0e-6)");
  if (mlp && moe && m.moe.d_ff_expert != m.mlp.d_ff)
    refuse(j, "experts of another width than the MLP (moe.d_ff_expert " + std::to_string(m.moe.d_ff_expert) + " vs mlp.d_ff " +
                  std::to_string(m.mlp.d_ff) + "); Jamba has one intermediate_size");
  if (moe && m.moe.n_experts < 2) refuse(j, "MoE with one expert");
  std::vector<bool> is_attn, is_moe;
  for (const auto& l : layers) {
    is_attn.push_back(l.mixer == Mixer::attention);
    is_moe.push_back(l.ffn == Ffn::moe);
  }
  if (periodic(is_attn).first == 0) refuse(j, "attention layers that are not periodic (layout " + letters(layers, true) + "); Jamba places them by attn_layer_period/offset");
  if (periodic(is_moe).first == 0) refuse(j, "MoE layers that are not periodic (ffn layout " + letters(layers, false) + "); Jamba places them by expert_layer_period/offset");
  return j;
}

json hf_config(const configs::ModelConfig& m, HfFamily f) {
  json c;
  c["architectures"] = {hf_class_name(f)};
  c["model_type"] = hf_model_type(f);
  c["vocab_size"] = m.vocab_size;
  c["hidden_size"] = m.d_model;
  c["tie_word_embeddings"] = m.tie_embeddings;
  c["torch_dtype"] = "float32";
  c["pad_token_id"] = 0;  // SentencePiece as `ssmtrain data tokenizer` trains it: unk 0, bos 1, eos 2
  c["bos_token_id"] = 1;
  c["eos_token_id"] = 2;
  c["use_cache"] = true;
  const auto layers = layers_of(m);
  switch (f) {
    case HfFamily::mamba:
      c["num_hidden_layers"] = m.n_layers;
      c["state_size"] = m.mamba1.d_state;
      c["conv_kernel"] = m.mamba1.d_conv;
      c["expand"] = m.mamba1.expand;
      c["intermediate_size"] = m.mamba1_d_inner();
      c["time_step_rank"] = m.mamba1.dt_rank;
      c["time_step_min"] = m.mamba1.dt_min;
      c["time_step_max"] = m.mamba1.dt_max;
      c["time_step_floor"] = m.mamba1.dt_init_floor;
      c["layer_norm_epsilon"] = m.norm_eps;
      c["use_bias"] = false;
      c["use_conv_bias"] = true;
      c["residual_in_fp32"] = true;
      c["use_mambapy"] = false;
      break;
    case HfFamily::mamba2:
      c["num_hidden_layers"] = m.n_layers;
      c["state_size"] = m.mamba2.d_state;
      c["conv_kernel"] = m.mamba2.d_conv;
      c["expand"] = m.mamba2.expand;
      c["head_dim"] = m.mamba2.head_dim;
      c["num_heads"] = m.mamba2_n_heads();
      c["n_groups"] = m.mamba2.ngroups;
      c["chunk_size"] = m.mamba2.chunk_size;
      c["time_step_min"] = m.mamba2.dt_min;
      c["time_step_max"] = m.mamba2.dt_max;
      c["time_step_floor"] = m.mamba2.dt_init_floor;
      c["layer_norm_epsilon"] = m.norm_eps;
      c["use_bias"] = false;
      c["use_conv_bias"] = true;
      c["rms_norm"] = true;
      c["norm_before_gate"] = false;
      c["residual_in_fp32"] = true;
      break;
    case HfFamily::jamba: {
      std::vector<bool> is_attn, is_moe;
      for (const auto& l : layers) {
        is_attn.push_back(l.mixer == Mixer::attention);
        is_moe.push_back(l.ffn == Ffn::moe);
      }
      const auto [ap, ao] = periodic(is_attn);
      const bool any_moe = std::find(is_moe.begin(), is_moe.end(), true) != is_moe.end();
      const auto [ep, eo] = any_moe ? periodic(is_moe) : std::pair<int64_t, int64_t>{1, 0};
      c["num_hidden_layers"] = m.n_layers;
      c["attn_layer_period"] = ap;
      c["attn_layer_offset"] = ao;
      c["expert_layer_period"] = ep;
      c["expert_layer_offset"] = eo;
      c["num_experts"] = any_moe ? m.moe.n_experts : 1;
      c["num_experts_per_tok"] = any_moe ? m.moe.top_k : 1;
      c["router_aux_loss_coef"] = m.moe.aux_loss_coef;
      c["output_router_logits"] = false;
      c["intermediate_size"] = any_moe ? m.moe.d_ff_expert : m.mlp.d_ff;
      if (std::find(is_moe.begin(), is_moe.end(), false) != is_moe.end()) c["intermediate_size"] = m.mlp.d_ff;
      c["hidden_act"] = "silu";
      c["num_attention_heads"] = m.attention.n_heads;
      c["num_key_value_heads"] = m.attention.n_kv_heads;
      c["rms_norm_eps"] = m.norm_eps;
      c["mamba_d_state"] = m.mamba1.d_state;
      c["mamba_d_conv"] = m.mamba1.d_conv;
      c["mamba_expand"] = m.mamba1.expand;
      c["mamba_dt_rank"] = m.mamba1.dt_rank;
      c["mamba_conv_bias"] = true;
      c["mamba_proj_bias"] = false;
      c["use_mamba_kernels"] = false;  // the CUDA kernels are optional; transformers picks them when installed
      c["max_position_embeddings"] = 262144;
      break;
    }
    case HfFamily::nemotron_h: {
      json types = json::array();
      std::string pattern;
      for (const auto& l : layers) {
        types.push_back(l.mixer == Mixer::attention ? "full_attention" : "linear_attention");
        pattern += l.mixer == Mixer::attention ? '*' : 'M';
      }
      c["layers_block_type"] = types;  // transformers 5
      c["hybrid_override_pattern"] = pattern;  // transformers 4
      c["num_hidden_layers"] = m.n_layers;
      c["num_attention_heads"] = m.attention.n_heads;
      c["num_key_value_heads"] = m.attention.n_kv_heads;
      c["head_dim"] = m.attention.head_dim;
      c["attention_bias"] = false;
      c["ssm_state_size"] = m.mamba2.d_state;
      c["mamba_num_heads"] = m.mamba2_n_heads();
      c["mamba_head_dim"] = m.mamba2.head_dim;
      c["n_groups"] = m.mamba2.ngroups;
      c["conv_kernel"] = m.mamba2.d_conv;
      c["expand"] = m.mamba2.expand;
      c["chunk_size"] = m.mamba2.chunk_size;
      // NemotronH clamps dt from below at time_step_min (its time_step_limit); ssmtrain does
      // not clamp, so the export sets it to 0 (it only shapes the initialisation otherwise).
      c["time_step_min"] = 0.0;
      c["time_step_max"] = m.mamba2.dt_max;
      c["time_step_floor"] = m.mamba2.dt_init_floor;
      c["use_conv_bias"] = true;
      c["mamba_proj_bias"] = false;
      c["use_bias"] = false;
      c["layer_norm_epsilon"] = m.norm_eps;
      c["residual_in_fp32"] = false;
      c["use_mamba_kernels"] = false;
      c["intermediate_size"] = 4 * m.d_model;  // unused: no MLP layers
      c["max_position_embeddings"] = 4096;
      break;
    }
  }
  return c;
}

namespace {

// Reads config.json values with errors that name the key.
struct Reader {
  const json& c;
  std::string where;
  const json& at(const std::string& key) const {
    if (!c.contains(key)) throw InteropError(where + ": config.json lacks '" + key + "'");
    return c[key];
  }
  int64_t integer(const std::string& key) const {
    const json& v = at(key);
    if (!v.is_number_integer()) throw InteropError(where + ": config.json '" + key + "' is " + v.dump() + ", not an integer");
    return v.get<int64_t>();
  }
  int64_t integer_or(const std::string& key, int64_t fallback) const { return c.contains(key) && !c[key].is_null() ? integer(key) : fallback; }
  double number_or(const std::string& key, double fallback) const {
    if (!c.contains(key) || c[key].is_null()) return fallback;
    if (!c[key].is_number()) throw InteropError(where + ": config.json '" + key + "' is " + c[key].dump() + ", not a number");
    return c[key].get<double>();
  }
  bool flag_or(const std::string& key, bool fallback) const {
    if (!c.contains(key) || c[key].is_null()) return fallback;
    if (!c[key].is_boolean()) throw InteropError(where + ": config.json '" + key + "' is " + c[key].dump() + ", not true/false");
    return c[key].get<bool>();
  }
  // A value that ssmtrain supports only as `want`.
  void require(const std::string& key, const json& want, const std::string& why) const {
    if (c.contains(key) && !c[key].is_null() && c[key] != want)
      throw InteropError(where + ": config.json '" + key + "' = " + c[key].dump() + " is not supported (" + why + ")");
  }
};

}  // namespace

configs::ModelConfig model_config_from_hf(const json& c, HfFamily& family) {
  if (!c.is_object()) throw InteropError("config.json is not a JSON object");
  const std::string type = c.value("model_type", std::string());
  const std::map<std::string, HfFamily> types = {{"mamba", HfFamily::mamba}, {"mamba2", HfFamily::mamba2},
                                                 {"jamba", HfFamily::jamba}, {"nemotron_h", HfFamily::nemotron_h}};
  if (!types.count(type))
    throw InteropError("config.json model_type '" + type + "' is not supported (supported: mamba, mamba2, jamba, nemotron_h)");
  family = types.at(type);
  const Reader r{c, type};
  configs::ModelConfig m;
  m.vocab_size = r.integer("vocab_size");
  m.d_model = r.integer("hidden_size");
  m.tie_embeddings = r.flag_or("tie_word_embeddings", true);
  switch (family) {
    case HfFamily::mamba: {
      m.family = configs::Family::mamba1;
      m.n_layers = r.integer("num_hidden_layers");
      m.norm_eps = r.number_or("layer_norm_epsilon", 1e-5);
      m.mamba1.d_state = r.integer_or("state_size", 16);
      m.mamba1.d_conv = r.integer_or("conv_kernel", 4);
      m.mamba1.expand = r.integer_or("expand", 2);
      m.mamba1.dt_rank = c.contains("time_step_rank") && c["time_step_rank"].is_string() ? 0 : r.integer_or("time_step_rank", 0);
      m.mamba1.dt_min = r.number_or("time_step_min", 0.001);
      m.mamba1.dt_max = r.number_or("time_step_max", 0.1);
      m.mamba1.dt_init_floor = r.number_or("time_step_floor", 1e-4);
      r.require("use_bias", false, "ssmtrain's Mamba projections have no bias");
      r.require("use_conv_bias", true, "ssmtrain's conv1d has a bias");
      r.require("hidden_act", "silu", "ssmtrain's Mamba uses SiLU");
      if (c.contains("intermediate_size") && r.integer("intermediate_size") != m.mamba1_d_inner())
        throw InteropError("mamba: config.json 'intermediate_size' " + c["intermediate_size"].dump() + " is not expand x hidden_size");
      break;
    }
    case HfFamily::mamba2:
    case HfFamily::nemotron_h: {
      const bool nemo = family == HfFamily::nemotron_h;
      m.family = nemo ? configs::Family::hybrid : configs::Family::mamba2;
      if (nemo) m.ssm = configs::Ssm::mamba2;
      m.norm_eps = r.number_or("layer_norm_epsilon", 1e-5);
      m.mamba2.d_state = r.integer(nemo ? "ssm_state_size" : "state_size");
      m.mamba2.d_conv = r.integer_or("conv_kernel", 4);
      m.mamba2.expand = r.integer_or("expand", 2);
      m.mamba2.head_dim = r.integer(nemo ? "mamba_head_dim" : "head_dim");
      m.mamba2.ngroups = r.integer_or("n_groups", 1);
      m.mamba2.chunk_size = r.integer_or("chunk_size", 256);
      m.mamba2.dt_min = r.number_or("time_step_min", 0.001);
      if (nemo && m.mamba2.dt_min > 0)
        throw InteropError("nemotron_h: config.json 'time_step_min' " + c["time_step_min"].dump() +
                           " is not supported: NemotronH clamps dt at time_step_min and ssmtrain does not clamp dt "
                           "(a model exported by ssmtrain has 0)");
      if (m.mamba2.dt_min <= 0) m.mamba2.dt_min = 0.001;  // the initialisation range only
      m.mamba2.dt_max = r.number_or("time_step_max", 0.1);
      m.mamba2.dt_init_floor = r.number_or("time_step_floor", 1e-4);
      const int64_t heads = r.integer(nemo ? "mamba_num_heads" : "num_heads");
      if (heads * m.mamba2.head_dim != m.mamba2.expand * m.d_model)
        throw InteropError(type + ": config.json heads x head_dim (" + std::to_string(heads) + " x " + std::to_string(m.mamba2.head_dim) +
                           ") is not expand x hidden_size (" + std::to_string(m.mamba2.expand * m.d_model) + "), which ssmtrain requires");
      r.require("use_bias", false, "ssmtrain's Mamba projections have no bias");
      r.require("mamba_proj_bias", false, "ssmtrain's Mamba projections have no bias");
      r.require("use_conv_bias", true, "ssmtrain's conv1d has a bias");
      r.require("rms_norm", true, "ssmtrain's Mamba-2 has the gated RMSNorm");
      r.require("norm_before_gate", false, "ssmtrain gates before the norm: norm(y * silu(z))");
      r.require("attention_bias", false, "ssmtrain's attention has no biases");
      if (c.contains("time_step_limit") && c["time_step_limit"].is_array() && c["time_step_limit"].size() == 2 &&
          (c["time_step_limit"][0] != 0.0 || (c["time_step_limit"][1].is_number() && std::isfinite(c["time_step_limit"][1].get<double>()))))
        throw InteropError(type + ": config.json 'time_step_limit' " + c["time_step_limit"].dump() + " is not supported (ssmtrain does not clamp dt)");
      if (!nemo) {
        m.n_layers = r.integer("num_hidden_layers");
        break;
      }
      std::vector<std::string> kinds;
      if (c.contains("layers_block_type") && c["layers_block_type"].is_array()) {
        for (const json& k : c["layers_block_type"]) kinds.push_back(k.is_string() ? k.get<std::string>() : k.dump());
      } else if (c.contains("hybrid_override_pattern") && c["hybrid_override_pattern"].is_string()) {
        for (char ch : c["hybrid_override_pattern"].get<std::string>())
          kinds.push_back(ch == 'M' ? "mamba" : ch == '*' ? "attention" : ch == '-' ? "mlp" : ch == 'E' ? "moe" : std::string(1, ch));
      } else {
        throw InteropError("nemotron_h: config.json has neither 'layers_block_type' nor 'hybrid_override_pattern'");
      }
      std::string pattern;
      for (size_t i = 0; i < kinds.size(); ++i) {
        if (kinds[i] == "mamba" || kinds[i] == "linear_attention") pattern += 'M';
        else if (kinds[i] == "attention" || kinds[i] == "full_attention") pattern += 'A';
        else
          throw InteropError("nemotron_h: layer " + std::to_string(i) + " is '" + kinds[i] +
                             "'; ssmtrain imports Mamba-2 and attention layers only (its MLP is SwiGLU, NemotronH's squared ReLU)");
      }
      m.n_layers = int64_t(pattern.size());
      m.layout.mixer_pattern = pattern;
      m.layout.ffn = Ffn::none;
      m.attention.n_heads = r.integer("num_attention_heads");
      m.attention.n_kv_heads = r.integer_or("num_key_value_heads", m.attention.n_heads);
      m.attention.head_dim = r.integer_or("head_dim", m.d_model / m.attention.n_heads);
      m.attention.rope = false;
      break;
    }
    case HfFamily::jamba: {
      m.family = configs::Family::hybrid;
      m.ssm = configs::Ssm::mamba1;
      m.n_layers = r.integer("num_hidden_layers");
      m.norm_eps = r.number_or("rms_norm_eps", 1e-6);
      if (std::abs(m.norm_eps - 1e-6) > 1e-12)
        throw InteropError("jamba: config.json 'rms_norm_eps' " + c["rms_norm_eps"].dump() +
                           " is not supported (ssmtrain's dt/B/C norms use 1e-6; the block norms must match)");
      m.mamba1.d_state = r.integer_or("mamba_d_state", 16);
      m.mamba1.d_conv = r.integer_or("mamba_d_conv", 4);
      m.mamba1.expand = r.integer_or("mamba_expand", 2);
      m.mamba1.dt_rank = c.contains("mamba_dt_rank") && c["mamba_dt_rank"].is_string() ? 0 : r.integer_or("mamba_dt_rank", 0);
      m.mamba1.dt_bc_norm = true;
      r.require("mamba_proj_bias", false, "ssmtrain's Mamba projections have no bias");
      r.require("mamba_conv_bias", true, "ssmtrain's conv1d has a bias");
      r.require("hidden_act", "silu", "ssmtrain's MLP is SwiGLU");
      m.attention.n_heads = r.integer("num_attention_heads");
      m.attention.n_kv_heads = r.integer_or("num_key_value_heads", m.attention.n_heads);
      m.attention.head_dim = m.d_model / m.attention.n_heads;
      m.attention.rope = false;
      const int64_t ff = r.integer("intermediate_size");
      m.mlp.d_ff = ff;
      m.moe.d_ff_expert = ff;
      const int64_t experts = r.integer_or("num_experts", 16);
      m.moe.n_experts = experts;
      m.moe.top_k = r.integer_or("num_experts_per_tok", 2);
      m.moe.aux_loss_coef = r.number_or("router_aux_loss_coef", 0.001);
      const int64_t ap = r.integer_or("attn_layer_period", 8), ao = r.integer_or("attn_layer_offset", 4);
      const int64_t ep = r.integer_or("expert_layer_period", 2), eo = r.integer_or("expert_layer_offset", 1);
      if (ap < 1 || ep < 1) throw InteropError("jamba: config.json layer periods must be at least 1");
      std::string mixers, ffns;
      for (int64_t i = 0; i < m.n_layers; ++i) {
        mixers += i % ap == ao ? 'A' : 'M';
        ffns += experts > 1 && i % ep == eo ? 'E' : 'F';
      }
      m.layout.mixer_pattern = mixers;
      m.layout.ffn_pattern = ffns;
      break;
    }
  }
  configs::Config full;
  full.model = m;
  configs::resolve_auto_values(full);
  return full.model;
}

std::vector<MappedParameter> mapping_table(HfFamily family, const std::vector<std::pair<std::string, Shape>>& parameters,
                                           const configs::ModelConfig& model) {
  const auto layers = layers_of(model);
  const bool jamba = family == HfFamily::jamba;
  const std::string root = jamba ? "model." : "backbone.";
  static const std::regex block_re(R"(blocks\.(\d+)\.(.+))");
  std::vector<MappedParameter> table;
  for (const auto& [name, shape] : parameters) {
    MappedParameter row{name, shape, {}};
    auto one = [&](const std::string& hf, Shape s) { row.hf.push_back({hf, std::move(s)}); };
    std::smatch match;
    if (name == "embedding.weight") {
      one(root + (jamba ? "embed_tokens.weight" : "embeddings.weight"), shape);
    } else if (name == "norm_f.weight") {
      one(root + (jamba ? "final_layernorm.weight" : "norm_f.weight"), shape);
    } else if (name == "lm_head.weight") {
      one("lm_head.weight", shape);
    } else if (std::regex_match(name, match, block_re)) {
      const std::string i = match[1].str(), rest = match[2].str();
      const std::string layer = root + "layers." + i + ".";
      const bool attn = layers.at(std::stoul(i)).mixer == Mixer::attention;
      const std::string mixer = layer + (!jamba ? "mixer." : attn ? "self_attn." : "mamba.");
      if (rest == "norm.weight") {
        one(layer + (jamba ? "input_layernorm.weight" : "norm.weight"), shape);
      } else if (rest == "ffn_norm.weight" && jamba) {
        one(layer + "pre_ff_layernorm.weight", shape);
      } else if (rest == "mixer.conv1d.weight") {
        one(mixer + "conv1d.weight", {shape.at(0), 1, shape.at(1)});  // (c, w) -> nn.Conv1d's (c, 1, w)
      } else if (rest.rfind("mixer.", 0) == 0) {
        one(mixer + rest.substr(6), shape);
      } else if (jamba && rest == "mlp.gate_up.weight") {
        const Shape half{shape.at(0) / 2, shape.at(1)};  // (2f, d): gate rows, then up rows
        one(layer + "feed_forward.gate_proj.weight", half);
        one(layer + "feed_forward.up_proj.weight", half);
      } else if (jamba && rest == "mlp.down.weight") {
        one(layer + "feed_forward.down_proj.weight", shape);
      } else if (jamba && rest == "moe.router") {
        one(layer + "feed_forward.router.weight", shape);
      } else if (jamba && (rest == "moe.w_gate" || rest == "moe.w_up" || rest == "moe.w_down")) {
        const std::string proj = rest == "moe.w_gate" ? "gate_proj" : rest == "moe.w_up" ? "up_proj" : "down_proj";
        for (int64_t e = 0; e < shape.at(0); ++e)  // (E, out, in): one nn.Linear weight per expert
          one(layer + "feed_forward.experts." + std::to_string(e) + "." + proj + ".weight", {shape.at(1), shape.at(2)});
      } else {
        throw InteropError(std::string(hf_class_name(family)) + " has no tensor for parameter " + name);
      }
    } else {
      throw InteropError(std::string(hf_class_name(family)) + " has no tensor for parameter " + name);
    }
    table.push_back(std::move(row));
  }
  return table;
}

namespace {

std::string shape_text(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t v : s) n *= v;
  return n;
}

json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw InteropError(path.string() + ": missing or unreadable");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw InteropError(path.string() + ": not valid JSON: " + e.what());
  }
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  if (!out.flush()) throw InteropError(path.string() + ": cannot write");
}

std::vector<std::pair<std::string, Shape>> shapes_of(LanguageModel& model) {
  std::vector<std::pair<std::string, Shape>> out;
  for (const NamedParameter& p : model.named_parameters()) out.emplace_back(p.name, p.value->shape());
  return out;
}

// The recipe's SentencePiece model: data.tokenizer, else the one data.train's manifest names;
// empty when neither is there (a checkpoint moved away from its corpus).
fs::path find_tokenizer(const configs::Config& config) {
  if (!config.data.tokenizer.empty()) return fs::exists(config.data.tokenizer) ? fs::path(config.data.tokenizer) : fs::path();
  if (config.data.train.empty() || !fs::exists(fs::path(config.data.train) / "manifest.json")) return {};
  try {
    const data::Manifest manifest = data::read_manifest(config.data.train);
    const fs::path file = fs::path(config.data.train) / manifest.tokenizer_file;
    return fs::exists(file) ? file : fs::path();
  } catch (const std::exception&) {
    return {};
  }
}

// tokenizer.model with the files AutoTokenizer reads: LlamaTokenizer over the SentencePiece
// model, which `ssmtrain data tokenizer` trains with unk 0, bos 1, eos 2 and no pad, and which
// the data pipeline encodes without adding bos or eos. The model has no dummy prefix, so
// add_prefix_space is false: with it, transformers' Llama tokenizer puts a "▁" before the
// first word (an id ssmtrain never produces there) and strips a leading space on decode.
void write_tokenizer(const fs::path& model_file, const fs::path& out, int64_t max_length) {
  fs::copy_file(model_file, out / "tokenizer.model", fs::copy_options::overwrite_existing);
  const json config = {{"tokenizer_class", "LlamaTokenizer"}, {"model_max_length", max_length},
                       {"unk_token", "<unk>"},          {"bos_token", "<s>"},
                       {"eos_token", "</s>"},           {"pad_token", nullptr},
                       {"add_bos_token", false},        {"add_eos_token", false},
                       {"legacy", false},               {"add_prefix_space", false},
                       {"clean_up_tokenization_spaces", false}, {"sp_model_kwargs", json::object()}};
  write_text(out / "tokenizer_config.json", config.dump(2) + "\n");
  const json special = {{"unk_token", "<unk>"}, {"bos_token", "<s>"}, {"eos_token", "</s>"}};
  write_text(out / "special_tokens_map.json", special.dump(2) + "\n");
}

}  // namespace

ImportedModel read_hf_model(const fs::path& dir) {
  const json hf = read_json(dir / "config.json");
  ImportedModel result{};
  configs::ModelConfig m = model_config_from_hf(hf, result.family);
  result.config.model = m;
  result.config.run.name = dir.filename().empty() ? dir.parent_path().filename().string() : dir.filename().string();
  std::unique_ptr<LanguageModel> model;
  try {
    model = std::make_unique<LanguageModel>(model_options(m), 0);
  } catch (const std::exception& e) {
    throw InteropError((dir / "config.json").string() + ": describes a model ssmtrain cannot build: " + e.what());
  }
  TensorFile file = read_safetensors_dir(dir);
  std::map<std::string, HostArray*> by_name;
  for (auto& [name, array] : file.tensors) {
    std::string key = name;
    if (result.family == HfFamily::nemotron_h && key.rfind("model.", 0) == 0) key = "backbone." + key.substr(6);  // transformers 5 names
    by_name[key] = &array;
  }
  std::set<std::string> used;
  const auto table = mapping_table(result.family, shapes_of(*model), m);
  for (const MappedParameter& row : table) {
    HostArray out;
    out.shape = row.shape;
    const bool tied_head = row.name == "lm_head.weight" && m.tie_embeddings;
    for (const HfPart& part : row.hf) {
      const auto it = by_name.find(part.name);
      if (it == by_name.end()) throw InteropError(dir.string() + ": tensor " + part.name + " (for " + row.name + ") is missing");
      const HostArray& a = *it->second;
      if (a.shape != part.shape)
        throw InteropError(dir.string() + ": tensor " + part.name + " has shape " + shape_text(a.shape) + ", config.json implies " +
                           shape_text(part.shape));
      out.values.insert(out.values.end(), a.values.begin(), a.values.end());
      used.insert(part.name);
    }
    if (!tied_head) result.parameters.emplace_back(row.name, std::move(out));
  }
  for (const auto& [name, array] : by_name) {
    if (used.count(name)) continue;
    if (name == "lm_head.weight" && m.tie_embeddings) continue;  // a tied head saved anyway
    throw InteropError(dir.string() + ": tensor " + name + " " + shape_text(array->shape) + " has no place in an ssmtrain " +
                       hf_model_type(result.family) + " model");
  }
  // Parameters in the model's order, checked by the loader itself.
  load_model_arrays(*model, result.parameters, dir.string());
  result.parameters = model_arrays(*model);
  for (auto& [name, a] : result.parameters)
    if (a.host.defined()) {
      a.values.assign(a.data(), a.data() + a.size());
      a.host = Tensor();
    }
  return result;
}

HfFamily export_hf(const fs::path& checkpoint, const fs::path& out, const std::function<void(const std::string&)>& note) {
  LoadedModel loaded = load_model(checkpoint, Device::cpu());
  const configs::ModelConfig& m = loaded.config.model;
  const HfFamily family = choose_family(m);
  const auto table = mapping_table(family, shapes_of(*loaded.model), m);
  const auto arrays = model_arrays(*loaded.model);
  std::map<std::string, const HostArray*> by_name;
  for (const auto& [name, array] : arrays) by_name[name] = &array;
  std::vector<std::pair<std::string, HostArray>> tensors;
  for (const MappedParameter& row : table) {
    if (row.name == "lm_head.weight" && m.tie_embeddings) continue;
    const HostArray* a = by_name.at(row.name);
    // NemotronH does not tie lm_head to the embedding on load (transformers 5 reports it
    // missing), so a tied model stores the shared matrix under both names.
    if (row.name == "embedding.weight" && m.tie_embeddings && family == HfFamily::nemotron_h) tensors.emplace_back("lm_head.weight", *a);
    int64_t offset = 0;
    for (const HfPart& part : row.hf) {
      HostArray piece;
      piece.shape = part.shape;
      piece.values.assign(a->data() + offset, a->data() + offset + numel(part.shape));
      offset += numel(part.shape);
      tensors.emplace_back(part.name, std::move(piece));
    }
  }
  std::sort(tensors.begin(), tensors.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  fs::create_directories(out);
  write_safetensors(out / "model.safetensors", tensors, {{"format", "pt"}});
  write_text(out / "config.json", hf_config(m, family).dump(2) + "\n");
  json generation = {{"bos_token_id", 1}, {"eos_token_id", 2}, {"pad_token_id", 0}, {"do_sample", false}};
  write_text(out / "generation_config.json", generation.dump(2) + "\n");
  const fs::path tokenizer = find_tokenizer(loaded.config);
  if (!tokenizer.empty()) {
    write_tokenizer(tokenizer, out, loaded.config.training.seq_len);
  } else if (note) {
    note("no tokenizer found (data.tokenizer, or the manifest of data.train): the directory has no tokenizer files");
  }
  if (note) note(std::string("wrote ") + hf_class_name(family) + " to " + out.string());
  return family;
}

HfFamily import_hf(const fs::path& dir, const fs::path& out, const std::function<void(const std::string&)>& note) {
  ImportedModel imported = read_hf_model(dir);
  CheckpointContents contents;
  configs::Config& config = imported.config;
  config.checkpoint.allow_data_change = true;
  config.training.max_steps = 1000;  // a length to edit; the recipe needs one
  contents.config_yaml = configs::dump_config(config);
  contents.layout = model_options(config.model).layout_string();
  contents.ssmtrain_version = "imported";
  contents.commit = "hf:" + dir.string();
  contents.model = std::move(imported.parameters);
  if (out.has_parent_path()) fs::create_directories(out.parent_path());
  write_checkpoint(out, contents);
  fs::path recipe = out;
  recipe.replace_extension(".yaml");
  write_text(recipe, "# Imported from " + dir.string() + " (" + hf_class_name(imported.family) +
                         ") by `ssmtrain import hf`.\n# Set data.train (and the training section), then:\n#   ssmtrain train " +
                         recipe.string() + " --resume " + out.string() + "\n" + contents.config_yaml);
  if (note) note("wrote " + out.string() + " and " + recipe.string());
  return imported.family;
}

}  // namespace ssmtrain::interop
