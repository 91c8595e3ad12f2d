// interop/hf.h against transformers: the committed fixtures of tests/fixtures/hf/ (made by
// tests/fixtures/make_hf_fixtures.py with transformers on the CPU) import into ssmtrain and give
// the same logits (within 1e-4, fp32) and the same 32 greedy tokens; tiny ssmtrain models of
// each family export and import back bit for bit; what a class cannot express, and a directory
// with a foreign, missing or misshapen tensor or an unsupported config value, are refused with
// a message naming it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/rng.h"
#include "configs/load.h"
#include "data/tokenizer.h"
#include "interop/hf.h"
#include "interop/safetensors.h"
#include "layers/from_config.h"
#include "tests/data/data_fixture.h"

namespace ssmtrain::interop {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kFixtures = fs::path(SSMTRAIN_SOURCE_DIR) / "tests" / "fixtures" / "hf";

fs::path temp_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("ssmtrain_hf_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::vector<int64_t> as_ids(const HostArray& a) {
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < a.size(); ++i) ids.push_back(int64_t(std::lround(a.data()[i])));
  return ids;
}

std::unique_ptr<LanguageModel> build(const ImportedModel& m) {
  auto model = std::make_unique<LanguageModel>(model_options(m.config.model), 0);
  load_model_arrays(*model, m.parameters, "test");
  return model;
}

// 32 greedy tokens after `prompt`, each from a full forward over the sequence so far.
std::vector<int64_t> greedy(const LanguageModel& model, std::vector<int64_t> seq, int64_t steps, int64_t vocab) {
  NoGradGuard no_grad;
  std::vector<int64_t> added;
  for (int64_t s = 0; s < steps; ++s) {
    const std::vector<float> logits = model.logits(Tensor::from_vector(seq, {1, int64_t(seq.size())})).to_vector();
    const auto last = logits.begin() + int64_t(logits.size()) - vocab;
    const int64_t next = std::max_element(last, logits.end()) - last;
    seq.push_back(next);
    added.push_back(next);
  }
  return added;
}

class Fixture : public ::testing::TestWithParam<std::string> {};

TEST_P(Fixture, ImportGivesTransformersLogitsAndGreedyTokens) {
  const fs::path dir = kFixtures / GetParam();
  const ImportedModel imported = read_hf_model(dir);
  EXPECT_EQ(hf_model_type(imported.family), json::parse(std::ifstream(dir / "config.json"))["model_type"].get<std::string>());
  const TensorFile expected = read_safetensors(dir / "expected.safetensors");
  const HostArray& input = *expected.find("input_ids");
  const HostArray& want = *expected.find("logits");  // (b, l, vocab)
  const auto model = build(imported);
  NoGradGuard no_grad;
  const std::vector<float> got = model->logits(Tensor::from_vector(as_ids(input), input.shape)).to_vector();
  ASSERT_EQ(int64_t(got.size()), want.size());
  double worst = 0, scale = 0;
  for (int64_t i = 0; i < want.size(); ++i) {
    const double d = std::abs(got[size_t(i)] - want.data()[i]);
    worst = std::max(worst, d);
    scale = std::max(scale, double(std::abs(want.data()[i])));
  }
  EXPECT_GT(scale, 0.5) << "the fixture's logits are too small to test anything";
  EXPECT_LE(worst, 1e-4) << GetParam() << ": max |ssmtrain - transformers| over the logits (max |logit| " << scale << ")";

  const std::vector<int64_t> tokens =
      greedy(*model, as_ids(*expected.find("prompt")), 32, imported.config.model.vocab_size);
  EXPECT_EQ(tokens, as_ids(*expected.find("greedy"))) << GetParam() << ": greedy continuation differs";
}

INSTANTIATE_TEST_SUITE_P(Hf, Fixture, ::testing::Values("mamba", "mamba2", "mamba2_ngroups2", "jamba", "nemotron_h"));

// Grouped B/C (ngroups > 1) changes the layout of in_proj (z, x, B, C, dt), conv1d (x, B, C)
// and the gated norm (one RMS per group): transformers' fixtures with n_groups 2, imported and
// exported again, give back the fixture's tensors bit for bit under the same names and shapes,
// and the exported directory gives transformers' logits.
class GroupedExport : public ::testing::TestWithParam<std::string> {};

TEST_P(GroupedExport, ReExportIsTheTransformersFile) {
  const fs::path fixture = kFixtures / GetParam();
  ASSERT_EQ(json::parse(std::ifstream(fixture / "config.json"))["n_groups"], 2) << "the fixture must have groups";
  const fs::path dir = temp_dir("groups_" + GetParam());
  import_hf(fixture, dir / "imported.h5");
  export_hf(dir / "imported.h5", dir / "hf");
  const json config = json::parse(std::ifstream(dir / "hf" / "config.json"));
  EXPECT_EQ(config["n_groups"], 2);
  const bool tied = config["tie_word_embeddings"].get<bool>();

  const TensorFile want = read_safetensors(fixture / "model.safetensors"), got = read_safetensors(dir / "hf" / "model.safetensors");
  size_t compared = 0;
  for (const auto& [name, a] : want.tensors) {
    if (name == "lm_head.weight" && tied) continue;  // a tied head is the embedding
    const HostArray* b = got.find(name);
    ASSERT_NE(b, nullptr) << name << " is not in the export";
    EXPECT_EQ(b->shape, a.shape) << name;
    EXPECT_TRUE(std::equal(a.data(), a.data() + a.size(), b->data())) << name << " differs from transformers'";
    ++compared;
  }
  for (const auto& [name, b] : got.tensors)
    EXPECT_TRUE(want.find(name) != nullptr || (name == "lm_head.weight" && tied)) << name << " is not a transformers tensor";

  // The grouped shapes, from the config alone: d_inner e = expand * d, g groups of state n, h heads.
  const int64_t d = config["hidden_size"], e = config["expand"].get<int64_t>() * d, g = 2, w = config["conv_kernel"];
  const bool nemo = config["model_type"] == "nemotron_h";
  const int64_t n = config[nemo ? "ssm_state_size" : "state_size"], h = config[nemo ? "mamba_num_heads" : "num_heads"];
  const HostArray* in_proj = got.find("backbone.layers.0.mixer.in_proj.weight");
  const HostArray* conv = got.find("backbone.layers.0.mixer.conv1d.weight");
  const HostArray* norm = got.find("backbone.layers.0.mixer.norm.weight");
  ASSERT_TRUE(in_proj && conv && norm);
  EXPECT_EQ(in_proj->shape, (Shape{2 * e + 2 * g * n + h, d}));
  EXPECT_EQ(conv->shape, (Shape{e + 2 * g * n, 1, w}));
  EXPECT_EQ(norm->shape, (Shape{e}));
  EXPECT_GE(compared, size_t(10));

  // And the export loads back to transformers' logits.
  const ImportedModel back = read_hf_model(dir / "hf");
  const TensorFile expected = read_safetensors(fixture / "expected.safetensors");
  const HostArray& input = *expected.find("input_ids");
  NoGradGuard no_grad;
  const std::vector<float> logits = build(back)->logits(Tensor::from_vector(as_ids(input), input.shape)).to_vector();
  const HostArray& ref = *expected.find("logits");
  ASSERT_EQ(int64_t(logits.size()), ref.size());
  double worst = 0;
  for (int64_t i = 0; i < ref.size(); ++i) worst = std::max(worst, double(std::abs(logits[size_t(i)] - ref.data()[i])));
  EXPECT_LE(worst, 1e-4);
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Hf, GroupedExport, ::testing::Values("mamba2_ngroups2", "nemotron_h"));

// A tiny recipe of each family, shrunk for speed.
configs::Config tiny(const std::string& recipe, std::vector<std::string> overrides) {
  overrides.insert(overrides.begin(), {"model.vocab_size=96", "model.d_model=32"});  // the caller's overrides win
  return configs::load_config(fs::path(SSMTRAIN_SOURCE_DIR) / "recipes" / "tiny" / recipe, overrides);
}

// A checkpoint of the model `config` describes, its initial weights moved by N(0, 0.1) (0.3
// for vectors) so that no norm weight or D keeps the value 1 that would hide a transposition.
fs::path save_checkpoint(const configs::Config& config, const fs::path& dir) {
  LanguageModel model(model_options(config.model), 77);
  {
    NoGradGuard no_grad;
    Generator gen(4242);
    for (const NamedParameter& p : model.named_parameters()) {
      const double scale = p.value->shape().size() <= 1 ? 0.3 : 0.1;
      copy_into(*p.value, add(*p.value, mul(Tensor::randn(p.value->shape(), gen), scale)));
    }
  }
  CheckpointContents c;
  c.config_yaml = configs::dump_config(config);
  c.layout = model.options().layout_string();
  c.model = model_arrays(model);
  const fs::path path = dir / "step_00000000.h5";
  write_checkpoint(path, c);
  return path;
}

struct RoundTrip {
  std::string recipe;
  std::vector<std::string> overrides;
  HfFamily family;
};

class Export : public ::testing::TestWithParam<RoundTrip> {};

TEST_P(Export, ExportThenImportIsExact) {
  const RoundTrip& p = GetParam();
  const fs::path dir = temp_dir("export_" + std::string(hf_model_type(p.family)) + "_" + std::to_string(p.overrides.size()));
  const configs::Config config = tiny(p.recipe, p.overrides);
  const fs::path checkpoint = save_checkpoint(config, dir);
  EXPECT_EQ(export_hf(checkpoint, dir / "hf"), p.family);
  const json hf = json::parse(std::ifstream(dir / "hf" / "config.json"));
  EXPECT_EQ(hf["architectures"][0], hf_class_name(p.family));
  EXPECT_TRUE(fs::exists(dir / "hf" / "generation_config.json"));

  import_hf(dir / "hf", dir / "imported.h5");
  const CheckpointContents original = read_checkpoint(checkpoint), back = read_checkpoint(dir / "imported.h5");
  EXPECT_EQ(back.layout, original.layout);
  ASSERT_EQ(back.model.size(), original.model.size());
  for (size_t i = 0; i < back.model.size(); ++i) {
    EXPECT_EQ(back.model[i].first, original.model[i].first);
    EXPECT_EQ(back.model[i].second.shape, original.model[i].second.shape) << back.model[i].first;
    EXPECT_TRUE(std::equal(back.model[i].second.data(), back.model[i].second.data() + back.model[i].second.size(),
                           original.model[i].second.data()))
        << back.model[i].first << " changed in the round trip";
  }
  // The recipe beside the checkpoint parses back to the imported model.
  const configs::Config recipe = configs::load_config(dir / "imported.yaml");
  EXPECT_EQ(model_options(recipe.model).layout_string(), original.layout);
  EXPECT_EQ(recipe.model.d_model, config.model.d_model);
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(
    Hf, Export,
    ::testing::Values(RoundTrip{"mamba1.yaml", {}, HfFamily::mamba},
                      RoundTrip{"mamba2.yaml", {"model.tie_embeddings=false"}, HfFamily::mamba2},
                      RoundTrip{"mamba2.yaml", {"model.mamba2.ngroups=2", "model.mamba2.d_state=16"}, HfFamily::mamba2},
                      RoundTrip{"jamba.yaml", {"model.moe.d_ff_expert=64", "model.mlp.d_ff=64", "model.norm_eps=1e-6"}, HfFamily::jamba},
                      RoundTrip{"hybrid-mamba2.yaml", {"model.n_layers=4", "model.layout.mixer_pattern=MAMA"}, HfFamily::nemotron_h}),
    [](const auto& info) {
      return std::string(hf_model_type(info.param.family)) + (info.param.overrides.size() > 0 && info.param.overrides[0] == "model.mamba2.ngroups=2" ? "_ngroups2" : "");
    });

// The ssmtrain side of the live check against transformers (tests/fixtures/check_hf_export.py):
// each family's tiny model exported to $SSMTRAIN_HF_LIVE_DIR/<model_type> (a temporary folder
// when unset) with expected.safetensors holding ssmtrain's logits for fixed ids and its 32
// greedy tokens after a prompt, in the layout of the committed fixtures.
TEST(HfLive, ExportsTinyModelsWithTheirLogits) {
  const char* env = std::getenv("SSMTRAIN_HF_LIVE_DIR");
  const fs::path root = env ? fs::path(env) : temp_dir("live");
  const std::vector<RoundTrip> cases = {
      {"mamba1.yaml", {}, HfFamily::mamba},
      {"mamba2.yaml", {"model.tie_embeddings=false"}, HfFamily::mamba2},
      {"jamba.yaml", {"model.moe.d_ff_expert=64", "model.mlp.d_ff=64", "model.norm_eps=1e-6"}, HfFamily::jamba},
      {"hybrid-mamba2.yaml", {"model.n_layers=4", "model.layout.mixer_pattern=MAMA"}, HfFamily::nemotron_h}};
  for (const RoundTrip& c : cases) {
    const fs::path dir = root / hf_model_type(c.family);
    fs::create_directories(dir);
    const configs::Config config = tiny(c.recipe, c.overrides);
    const fs::path checkpoint = save_checkpoint(config, dir);
    EXPECT_EQ(export_hf(checkpoint, dir), c.family);
    const LoadedModel loaded = load_model(checkpoint, Device::cpu());
    fs::remove(checkpoint);
    const int64_t vocab = config.model.vocab_size;
    std::vector<int64_t> ids, prompt;
    for (int64_t i = 0; i < 2 * 12; ++i) ids.push_back(3 + (i * 37 + 11) % (vocab - 3));
    for (int64_t i = 0; i < 5; ++i) prompt.push_back(3 + (i * 53 + 7) % (vocab - 3));
    std::vector<float> logits;
    {
      NoGradGuard no_grad;
      logits = loaded.model->logits(Tensor::from_vector(ids, {2, 12})).to_vector();
    }
    const std::vector<int64_t> tokens = greedy(*loaded.model, prompt, 32, vocab);
    auto floats = [](const std::vector<int64_t>& v) { return std::vector<float>(v.begin(), v.end()); };
    write_safetensors(dir / "expected.safetensors",
                      {{"input_ids", HostArray{{2, 12}, floats(ids)}},
                       {"logits", HostArray{{2, 12, vocab}, logits}},
                       {"prompt", HostArray{{1, 5}, floats(prompt)}},
                       {"greedy", HostArray{{1, 32}, floats(tokens)}}});
    EXPECT_TRUE(fs::exists(dir / "model.safetensors"));
    EXPECT_TRUE(fs::exists(dir / "config.json"));
  }
  if (!env) fs::remove_all(root);
}

std::string file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The tokenizer files of an export: tokenizer.model is the run's SentencePiece model byte for
// byte; tokenizer_config.json names the class AutoTokenizer maps to the SentencePiece Llama
// tokenizer, and its special pieces, special_tokens_map.json's and the ids in config.json and
// generation_config.json are the model's own (unk 0, bos 1, eos 2; pad is unk: no pad piece);
// neither bos nor eos is added on encode, as ssmtrain's data pipeline adds none. With
// SSMTRAIN_HF_LIVE_DIR set, the checkpoint and its export stay in <dir>/tokenizer for
// tests/fixtures/check_hf_tokenizer.py (AutoTokenizer against `ssmtrain generate --out`'s ids).
TEST(HfExport, WritesTheRunsTokenizerWithItsSpecialIds) {
  const char* live = std::getenv("SSMTRAIN_HF_LIVE_DIR");
  const fs::path dir = live ? fs::path(live) / "tokenizer" : temp_dir("tokenizer");
  fs::create_directories(dir);
  const data::testing::Corpus corpus = data::testing::make_corpus(dir.string(), 24);
  data::train_tokenizer(data::testing::small_tokenizer_options(corpus.directory, (dir / "tok.model").string()));
  const data::Tokenizer tokenizer((dir / "tok.model").string());
  const configs::Config config = tiny("mamba2.yaml", {"model.vocab_size=400", "data.tokenizer=" + (dir / "tok.model").string()});
  export_hf(save_checkpoint(config, dir), dir / "hf");

  EXPECT_EQ(file_bytes(dir / "hf" / "tokenizer.model"), tokenizer.model_bytes());
  const json tc = json::parse(std::ifstream(dir / "hf" / "tokenizer_config.json"));
  const json special = json::parse(std::ifstream(dir / "hf" / "special_tokens_map.json"));
  const json model = json::parse(std::ifstream(dir / "hf" / "config.json"));
  const json generation = json::parse(std::ifstream(dir / "hf" / "generation_config.json"));
  EXPECT_EQ(tc["tokenizer_class"], "LlamaTokenizer");
  EXPECT_EQ(tc["add_bos_token"], false);
  EXPECT_EQ(tc["add_eos_token"], false);
  EXPECT_EQ(tc["add_prefix_space"], false);  // the model is trained without a dummy prefix
  EXPECT_EQ(tc["model_max_length"], config.training.seq_len);
  ASSERT_GE(tokenizer.bos_id(), 0);
  ASSERT_GE(tokenizer.eos_id(), 0);
  const std::vector<std::pair<std::string, int>> roles = {
      {"unk", tokenizer.unk_id()}, {"bos", tokenizer.bos_id()}, {"eos", tokenizer.eos_id()}};
  for (const auto& [role, id] : roles) {
    EXPECT_EQ(tc[role + "_token"], tokenizer.piece(id)) << role;
    EXPECT_EQ(special[role + "_token"], tokenizer.piece(id)) << role;
    if (role != "unk") {
      EXPECT_EQ(model[role + "_token_id"], id) << role;
      EXPECT_EQ(generation[role + "_token_id"], id) << role;
    }
  }
  EXPECT_TRUE(tc["pad_token"].is_null());
  EXPECT_EQ(model["pad_token_id"], tokenizer.unk_id());
  EXPECT_EQ(generation["pad_token_id"], tokenizer.unk_id());
  EXPECT_EQ(model["vocab_size"], tokenizer.vocab_size());
  if (!live) fs::remove_all(dir);
}

std::string refusal(const configs::Config& config) {
  try {
    choose_family(config.model);
  } catch (const InteropError& e) {
    return e.what();
  }
  return "";
}

TEST(HfExport, RefusesWhatNoClassExpresses) {
  EXPECT_NE(refusal(tiny("hybrid-mamba2.yaml", {"model.layout.ffn=mlp"})).find("feed-forward"), std::string::npos);
  EXPECT_NE(refusal(tiny("hybrid-mamba2.yaml", {"model.attention.rope=true"})).find("RoPE"), std::string::npos);
  EXPECT_NE(refusal(tiny("jamba.yaml", {"model.norm_eps=1e-6"})).find("one intermediate_size"), std::string::npos);
  EXPECT_NE(refusal(tiny("jamba.yaml", {"model.moe.d_ff_expert=384"})).find("model.norm_eps"), std::string::npos);
  EXPECT_NE(refusal(tiny("jamba.yaml", {"model.mlp.d_ff=128", "model.norm_eps=1e-6", "model.layout.ffn=none",
                                        "model.layout.moe_period=0", "model.layout.moe_offset=0"}))
                .find("without a feed-forward"),
            std::string::npos);
  EXPECT_NE(refusal(tiny("jamba.yaml", {"model.mlp.d_ff=128", "model.norm_eps=1e-6", "model.layout.attention_period=0", "model.layout.attention_offset=0",
                                        "model.layout.mixer_pattern=MAAMMMMM"}))
                .find("not periodic"),
            std::string::npos);
  EXPECT_NE(refusal(tiny("mamba1.yaml", {"model.mamba1.dt_bc_norm=true"})).find("dt_bc_norm"), std::string::npos);
}

// A copy of a fixture to damage.
fs::path copy_fixture(const std::string& family, const std::string& name) {
  const fs::path dir = temp_dir(name);
  for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(kFixtures / family / f, dir / f);
  return dir;
}

std::string import_error(const fs::path& dir) {
  try {
    read_hf_model(dir);
  } catch (const InteropError& e) {
    return e.what();
  }
  return "";
}

TEST(HfImport, NamesTheTensorOrConfigValueItCannotUse) {
  const fs::path dir = copy_fixture("mamba", "bad_import");
  TensorFile f = read_safetensors(dir / "model.safetensors");
  auto rewrite = [&](const TensorFile& t) { write_safetensors(dir / "model.safetensors", t.tensors); };

  TensorFile extra = f;
  extra.tensors.emplace_back("backbone.layers.0.mixer.mystery", HostArray{{2}, {1, 2}});
  rewrite(extra);
  EXPECT_NE(import_error(dir).find("tensor backbone.layers.0.mixer.mystery (2) has no place"), std::string::npos) << import_error(dir);

  TensorFile missing = f;
  missing.tensors.erase(std::find_if(missing.tensors.begin(), missing.tensors.end(),
                                     [](const auto& t) { return t.first == "backbone.layers.1.mixer.D"; }));
  rewrite(missing);
  EXPECT_NE(import_error(dir).find("tensor backbone.layers.1.mixer.D (for blocks.1.mixer.D) is missing"), std::string::npos);

  TensorFile misshapen = f;
  for (auto& [name, a] : misshapen.tensors)
    if (name == "backbone.layers.0.mixer.A_log") a.shape = {8, 64};
  rewrite(misshapen);
  EXPECT_NE(import_error(dir).find("backbone.layers.0.mixer.A_log has shape (8, 64), config.json implies (64, 8)"), std::string::npos)
      << import_error(dir);

  rewrite(f);
  json config = json::parse(std::ifstream(dir / "config.json"));
  config["use_bias"] = true;
  std::ofstream(dir / "config.json") << config.dump();
  EXPECT_NE(import_error(dir).find("'use_bias' = true is not supported"), std::string::npos) << import_error(dir);
  config["use_bias"] = false;
  config["model_type"] = "llama";
  std::ofstream(dir / "config.json") << config.dump();
  EXPECT_NE(import_error(dir).find("model_type 'llama' is not supported"), std::string::npos);
  config.erase("model_type");
  config["model_type"] = "mamba";
  config.erase("hidden_size");
  std::ofstream(dir / "config.json") << config.dump();
  EXPECT_NE(import_error(dir).find("lacks 'hidden_size'"), std::string::npos);
  fs::remove_all(dir);

  const fs::path nemo = copy_fixture("nemotron_h", "bad_nemotron");
  json nc = json::parse(std::ifstream(nemo / "config.json"));
  nc["layers_block_type"][1] = "mlp";
  std::ofstream(nemo / "config.json") << nc.dump();
  EXPECT_NE(import_error(nemo).find("layer 1 is 'mlp'"), std::string::npos) << import_error(nemo);
  fs::remove_all(nemo);
}

}  // namespace
}  // namespace ssmtrain::interop
