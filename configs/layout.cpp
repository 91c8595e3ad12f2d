// Layout resolution (configs/layout.h): which layers are attention (explicit pattern,
// attention_ratio, or attention period/offset) and which feed-forward each layer has (explicit
// pattern, or MoE period/offset over layout.ffn). Layers are numbered from 0.
#include "configs/layout.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <iterator>
#include <optional>

#include "configs/errors.h"

namespace ssmtrain::configs {
namespace {

const std::string kMixerPattern = "model.layout.mixer_pattern";
const std::string kFfnPattern = "model.layout.ffn_pattern";
const std::string kRatio = "model.layout.attention_ratio";
const std::string kAttentionPeriod = "model.layout.attention_period";
const std::string kAttentionOffset = "model.layout.attention_offset";
const std::string kMoePeriod = "model.layout.moe_period";
const std::string kMoeOffset = "model.layout.moe_offset";
const std::string kLayers = "model.n_layers";

[[noreturn]] void invalid(std::vector<std::string> keys, std::string message) {
  throw ConfigError(std::move(keys), std::move(message));
}

// The letters of a pattern, spaces removed (they may group layers for the reader), checked to
// be one per layer and each one of `letters`.
std::string pattern_letters(const std::string& pattern, const std::string& key, int64_t n_layers,
                            std::string_view letters) {
  std::string kept;
  std::copy_if(pattern.begin(), pattern.end(), std::back_inserter(kept),
               [](char c) { return c != ' '; });
  for (size_t layer = 0; layer < kept.size(); ++layer) {
    if (letters.find(kept[layer]) == std::string_view::npos) {
      invalid({key}, fmt::format("expected one of the letters {} for each layer ({}), found '{}' "
                                 "at layer {}",
                                 letters, kLayoutLegend, kept[layer], layer));
    }
  }
  if (static_cast<int64_t>(kept.size()) != n_layers) {
    invalid({key, kLayers}, fmt::format("expected one letter per layer (n_layers = {}), found {} "
                                        "letters",
                                        n_layers, kept.size()));
  }
  return kept;
}

std::string leaf(const std::string& key) { return key.substr(key.rfind('.') + 1); }

// An offset needs a period and lies below it.
void check_offset(int64_t period, int64_t offset, const std::string& period_key,
                  const std::string& offset_key) {
  if (period == 0 && offset != 0) {
    invalid({offset_key, period_key},
            fmt::format("expected no offset while {} is 0 (nothing placed), found {}",
                        leaf(period_key), offset));
  }
  if (period > 0 && offset >= period) {
    invalid({offset_key, period_key}, fmt::format("expected an offset below {} = {}, found {}",
                                                  leaf(period_key), period, offset));
  }
}

// Layers i with i % period == offset; period 0 places none.
std::vector<bool> periodic_layers(int64_t n_layers, int64_t period, int64_t offset) {
  std::vector<bool> placed(n_layers, false);
  for (int64_t layer = 0; period > 0 && layer < n_layers; ++layer) {
    placed[layer] = layer % period == offset;
  }
  return placed;
}

// A whole number in [0, 1e9] (larger ratio terms are no layout, and would overflow below).
std::optional<int64_t> whole_number(std::string_view text) {
  while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  while (!text.empty() && text.back() == ' ') text.remove_suffix(1);
  int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size() || value < 0 ||
      value > 1'000'000'000) {
    return std::nullopt;
  }
  return value;
}

// "A:M": in every group of A + M layers, A attention layers sit at the middles of A equal
// slices of the group (1:7 -> layer 4 of 8, 2:6 -> layers 2 and 6, 1:1 -> MA); the group's
// pattern repeats, and a last partial group keeps its first layers.
std::vector<bool> ratio_layers(int64_t n_layers, const std::string& ratio) {
  const size_t colon = ratio.find(':');
  const std::optional<int64_t> attention =
      colon == std::string::npos ? std::nullopt
                                 : whole_number(std::string_view(ratio).substr(0, colon));
  const std::optional<int64_t> mamba =
      colon == std::string::npos ? std::nullopt
                                 : whole_number(std::string_view(ratio).substr(colon + 1));
  if (!attention || !mamba || *attention + *mamba == 0) {
    invalid({kRatio}, fmt::format("expected \"A:M\", attention to Mamba layers, whole numbers "
                                  "with A + M >= 1 (e.g. \"1:7\"), found \"{}\"",
                                  ratio));
  }
  // Only the group's first n_layers positions can matter; positions grow with i.
  const int64_t group = *attention + *mamba;
  std::vector<bool> in_group(std::min(group, n_layers), false);
  for (int64_t i = 0; i < *attention; ++i) {
    const int64_t position = (2 * i + 1) * group / (2 * *attention);
    if (position >= n_layers) break;
    in_group[position] = true;
  }
  // A ratio that asks for attention but places none on this stack is a mistake, not a pure
  // Mamba model: say how deep the stack must be.
  const int64_t first = *attention > 0 ? group / (2 * *attention) : 0;
  if (*attention > 0 && first >= n_layers) {
    invalid({kRatio, kLayers},
            fmt::format("\"{}\" places its first attention layer at layer {} (0-based), which needs n_layers >= {}, "
                        "found n_layers = {}: no layer would be attention (use \"0:1\" for none)",
                        ratio, first, first + 1, n_layers));
  }
  std::vector<bool> placed(n_layers);
  for (int64_t layer = 0; layer < n_layers; ++layer) placed[layer] = in_group[layer % group];
  return placed;
}

std::vector<Mixer> resolve_mixers(const ModelConfig& model) {
  const LayoutConfig& layout = model.layout;
  std::vector<std::string> ways;
  if (!layout.mixer_pattern.empty()) ways.push_back(kMixerPattern);
  if (!layout.attention_ratio.empty()) ways.push_back(kRatio);
  if (layout.attention_period > 0) ways.push_back(kAttentionPeriod);
  if (ways.size() > 1) {
    invalid({ways[1], ways[0]},
            fmt::format("expected one way to place attention layers, found both {} and {}",
                        leaf(ways[0]), leaf(ways[1])));
  }
  check_offset(layout.attention_period, layout.attention_offset, kAttentionPeriod,
               kAttentionOffset);

  std::vector<bool> attention;
  if (!layout.mixer_pattern.empty()) {
    const std::string letters =
        pattern_letters(layout.mixer_pattern, kMixerPattern, model.n_layers, "MA");
    for (const char letter : letters) attention.push_back(letter == 'A');
  } else if (!layout.attention_ratio.empty()) {
    attention = ratio_layers(model.n_layers, layout.attention_ratio);
  } else {
    attention = periodic_layers(model.n_layers, layout.attention_period, layout.attention_offset);
  }

  std::vector<Mixer> mixers;
  for (const bool is_attention : attention) {
    mixers.push_back(is_attention ? Mixer::attention : model.mamba_mixer());
  }
  return mixers;
}

std::vector<Ffn> resolve_ffns(const ModelConfig& model) {
  const LayoutConfig& layout = model.layout;
  if (!layout.ffn_pattern.empty() && layout.moe_period > 0) {
    invalid({kMoePeriod, kFfnPattern},
            "expected one way to place feed-forwards, found both ffn_pattern and moe_period");
  }
  check_offset(layout.moe_period, layout.moe_offset, kMoePeriod, kMoeOffset);
  std::vector<Ffn> ffns;
  if (!layout.ffn_pattern.empty()) {
    const std::string letters =
        pattern_letters(layout.ffn_pattern, kFfnPattern, model.n_layers, "-FE");
    for (const char letter : letters) {
      ffns.push_back(letter == 'E' ? Ffn::moe : letter == 'F' ? Ffn::mlp : Ffn::none);
    }
    return ffns;
  }
  const std::vector<bool> moe =
      periodic_layers(model.n_layers, layout.moe_period, layout.moe_offset);
  for (const bool is_moe : moe) ffns.push_back(is_moe ? Ffn::moe : layout.ffn);
  return ffns;
}

}  // namespace

char mixer_letter(Mixer mixer) { return mixer == Mixer::attention ? 'A' : 'M'; }

char ffn_letter(Ffn ffn) { return ffn == Ffn::moe ? 'E' : ffn == Ffn::mlp ? 'F' : '-'; }

std::string Layout::mixer_string() const {
  std::string text;
  for (const LayerSpec& layer : layers) text += mixer_letter(layer.mixer);
  return text;
}

std::string Layout::ffn_string() const {
  std::string text;
  for (const LayerSpec& layer : layers) text += ffn_letter(layer.ffn);
  return text;
}

int64_t Layout::count(Mixer mixer) const {
  return std::count_if(layers.begin(), layers.end(),
                       [&](const LayerSpec& layer) { return layer.mixer == mixer; });
}

int64_t Layout::count(Ffn ffn) const {
  return std::count_if(layers.begin(), layers.end(),
                       [&](const LayerSpec& layer) { return layer.ffn == ffn; });
}

Layout resolve_layout(const ModelConfig& model) {
  const std::vector<Mixer> mixers = resolve_mixers(model);
  const std::vector<Ffn> ffns = resolve_ffns(model);
  Layout layout;
  for (size_t layer = 0; layer < mixers.size(); ++layer) {
    layout.layers.push_back({mixers[layer], ffns[layer]});
  }
  return layout;
}

}  // namespace ssmtrain::configs
