// Tests of configs/layout.h: the three ways of placing attention and MoE (explicit patterns,
// Jamba-style periods and offsets, attention_ratio) resolve to one list of layers, edge cases
// included, and each misuse names its key.
#include "configs/layout.h"

#include <gtest/gtest.h>

#include "configs/errors.h"

namespace ssmtrain::configs {
namespace {

ModelConfig hybrid(int64_t n_layers) {
  ModelConfig model;
  model.family = Family::hybrid;
  model.ssm = Ssm::mamba2;
  model.n_layers = n_layers;
  return model;
}

// "mixers / ffns" of the resolved layout.
std::string strings(const ModelConfig& model) {
  const Layout layout = resolve_layout(model);
  return layout.mixer_string() + " / " + layout.ffn_string();
}

// The what() of the ConfigError resolving throws, or "(resolved)".
std::string layout_error(const ModelConfig& model) {
  try {
    resolve_layout(model);
  } catch (const ConfigError& error) {
    return error.what();
  }
  return "(resolved)";
}

TEST(Layout, DefaultIsAllMambaOfTheFamilyWithoutFeedForward) {
  ModelConfig model;
  model.family = Family::mamba1;
  model.n_layers = 3;
  const Layout layout = resolve_layout(model);
  ASSERT_EQ(layout.layers.size(), 3u);
  for (const LayerSpec& layer : layout.layers) {
    EXPECT_EQ(layer, (LayerSpec{Mixer::mamba1, Ffn::none}));
  }
  EXPECT_EQ(strings(model), "MMM / ---");
}

TEST(Layout, ExplicitPatterns) {
  ModelConfig model = hybrid(4);
  model.layout.mixer_pattern = "MAMA";
  model.layout.ffn_pattern = "-FE-";
  const Layout layout = resolve_layout(model);
  EXPECT_EQ(layout.layers, (std::vector<LayerSpec>{{Mixer::mamba2, Ffn::none},
                                                   {Mixer::attention, Ffn::mlp},
                                                   {Mixer::mamba2, Ffn::moe},
                                                   {Mixer::attention, Ffn::none}}));
  EXPECT_EQ(layout.count(Mixer::attention), 2);
  EXPECT_EQ(layout.count(Ffn::moe), 1);
  model.layout.mixer_pattern = "MA MA";  // spaces group layers for the reader
  EXPECT_EQ(strings(model), "MAMA / -FE-");
}

TEST(Layout, PatternMistakesNameTheKey) {
  ModelConfig model = hybrid(4);
  model.layout.mixer_pattern = "MAM";
  EXPECT_EQ(layout_error(model),
            "model.layout.mixer_pattern: expected one letter per layer "
            "(n_layers = 4), found 3 letters");
  model.layout.mixer_pattern = "MXMA";
  EXPECT_EQ(layout_error(model),
            "model.layout.mixer_pattern: expected one of the letters MA for each layer (M Mamba, "
            "A attention; - no feed-forward, F MLP, E MoE), found 'X' at layer 1");
  model.layout.mixer_pattern.clear();
  model.layout.ffn_pattern = "-F-M";
  EXPECT_EQ(layout_error(model),
            "model.layout.ffn_pattern: expected one of the letters -FE for each layer (M Mamba, "
            "A attention; - no feed-forward, F MLP, E MoE), found 'M' at layer 3");
}

TEST(Layout, JambaPeriodsAndOffsets) {
  ModelConfig model = hybrid(16);
  model.layout.attention_period = 8;
  model.layout.attention_offset = 4;
  model.layout.moe_period = 2;
  model.layout.moe_offset = 1;
  model.layout.ffn = Ffn::mlp;
  EXPECT_EQ(strings(model), "MMMMAMMMMMMMAMMM / FEFEFEFEFEFEFEFE");
}

TEST(Layout, PeriodLargerThanTheModel) {
  ModelConfig model = hybrid(6);
  model.layout.attention_period = 32;
  model.layout.attention_offset = 4;
  EXPECT_EQ(strings(model), "MMMMAM / ------");
  model.layout.attention_offset = 20;  // beyond the last layer: no attention at all
  EXPECT_EQ(strings(model), "MMMMMM / ------");
  model.layout.moe_period = 10;
  EXPECT_EQ(strings(model), "MMMMMM / E-----");
}

TEST(Layout, OffsetsMustFitTheirPeriod) {
  ModelConfig model = hybrid(8);
  model.layout.attention_period = 4;
  model.layout.attention_offset = 4;
  EXPECT_EQ(layout_error(model),
            "model.layout.attention_offset: expected an offset below "
            "attention_period = 4, found 4");
  model.layout.attention_period = 0;
  model.layout.attention_offset = 2;
  EXPECT_EQ(layout_error(model),
            "model.layout.attention_offset: expected no offset while "
            "attention_period is 0 (nothing placed), found 2");
  model.layout.attention_offset = 0;
  model.layout.moe_offset = 1;
  EXPECT_EQ(layout_error(model),
            "model.layout.moe_offset: expected no offset while moe_period "
            "is 0 (nothing placed), found 1");
}

TEST(Layout, AttentionRatioPlacesAttentionEvenly) {
  ModelConfig model = hybrid(16);
  model.layout.attention_ratio = "1:7";
  EXPECT_EQ(resolve_layout(model).mixer_string(), "MMMMAMMMMMMMAMMM");
  model.n_layers = 8;
  model.layout.attention_ratio = "2:6";
  EXPECT_EQ(resolve_layout(model).mixer_string(), "MMAMMMAM");
  model.layout.attention_ratio = "1:3";  // the same as 2:6
  EXPECT_EQ(resolve_layout(model).mixer_string(), "MMAMMMAM");
  model.layout.attention_ratio = " 1 : 1 ";
  EXPECT_EQ(resolve_layout(model).mixer_string(), "MAMAMAMA");
  model.layout.attention_ratio = "0:1";  // no attention
  EXPECT_EQ(resolve_layout(model).mixer_string(), "MMMMMMMM");
  model.layout.attention_ratio = "1:0";  // attention only
  EXPECT_EQ(resolve_layout(model).mixer_string(), "AAAAAAAA");
  model.n_layers = 12;  // a partial last group keeps its first layers
  model.layout.attention_ratio = "1:7";
  EXPECT_EQ(resolve_layout(model).mixer_string(), "MMMMAMMMMMMM");
  model.n_layers = 3;  // fewer layers than the first attention layer needs: an error, not pure Mamba
  EXPECT_THROW(resolve_layout(model), ConfigError);
  model.layout.attention_ratio = "1:999999999";  // one attention layer far beyond the model
  EXPECT_THROW(resolve_layout(model), ConfigError);
  model.layout.attention_ratio = "999999999:1";
  EXPECT_EQ(resolve_layout(model).mixer_string(), "AAA");
}

TEST(Layout, MalformedRatioNamesTheKey) {
  ModelConfig model = hybrid(8);
  for (const char* ratio : {"1-7", "a:b", "0:0", "-1:3", "1:", "1:7:2", "1:99999999999"}) {
    model.layout.attention_ratio = ratio;
    EXPECT_EQ(layout_error(model),
              std::string("model.layout.attention_ratio: expected \"A:M\", attention to Mamba "
                          "layers, whole numbers with A + M >= 1 (e.g. \"1:7\"), found \"") +
                  ratio + "\"");
  }
}

TEST(Layout, OneWayToPlaceEach) {
  ModelConfig model = hybrid(8);
  model.layout.mixer_pattern = "MMMMAMMM";
  model.layout.attention_ratio = "1:7";
  EXPECT_EQ(layout_error(model),
            "model.layout.attention_ratio: expected one way to place "
            "attention layers, found both mixer_pattern and "
            "attention_ratio");
  model = hybrid(8);
  model.layout.ffn_pattern = "--------";
  model.layout.moe_period = 2;
  EXPECT_EQ(layout_error(model),
            "model.layout.moe_period: expected one way to place "
            "feed-forwards, found both ffn_pattern and moe_period");
}

}  // namespace
}  // namespace ssmtrain::configs
