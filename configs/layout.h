// The layer layout (DESIGN.md section 3): the model section's explicit patterns, Jamba-style
// periods and offsets, or attention_ratio shortcut, resolved into one list of (mixer,
// feed-forward) per layer, and its display strings such as MMMMAMMM / -E-E-E-E.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "configs/config.h"

namespace ssmtrain::configs {

struct LayerSpec {
  Mixer mixer = Mixer::mamba2;
  Ffn ffn = Ffn::none;
  bool operator==(const LayerSpec&) const = default;
};

// The letters of the display strings and of layout.mixer_pattern / layout.ffn_pattern.
inline constexpr std::string_view kLayoutLegend =
    "M Mamba, A attention; - no feed-forward, F MLP, E MoE";

struct Layout {
  std::vector<LayerSpec> layers;  // one per block, input side first

  std::string mixer_string() const;  // e.g. "MMMMAMMM"
  std::string ffn_string() const;    // e.g. "-E-E-E-E"
  int64_t count(Mixer mixer) const;
  int64_t count(Ffn ffn) const;
  bool operator==(const Layout&) const = default;
};

char mixer_letter(Mixer mixer);  // M or A
char ffn_letter(Ffn ffn);        // -, F or E

// Resolves model.layout for model.n_layers layers whose Mamba layers are model.mamba_mixer().
// Throws ConfigError naming the layout key at fault (loading adds its file position): patterns
// of the wrong length or with unknown letters, two ways of placing the same thing, offsets
// not below their period, a malformed ratio.
Layout resolve_layout(const ModelConfig& model);

}  // namespace ssmtrain::configs
