// The key reference built from the schema's describe functions (configs/schema.h), and the
// did-you-mean suggestion for an unknown key.
#include "configs/schema.h"

#include <algorithm>
#include <limits>
#include <unordered_map>

namespace ssmtrain::configs {
namespace {

// Collects every key with its documentation and default value.
class Lister {
 public:
  explicit Lister(std::vector<KeyInfo>& keys, std::string prefix = "")
      : keys_(keys), prefix_(std::move(prefix)) {}

  template <class T>
  void field(std::string_view key, T& value, std::string_view doc, Rule rule = {}) {
    keys_.push_back({prefix_ + std::string(key), false, ValueCodec<T>::expected(rule),
                     ValueCodec<T>::write(value, rule), std::string(doc)});
  }

  template <class Section>
  void section(std::string_view key, Section& section, std::string_view doc) {
    keys_.push_back({prefix_ + std::string(key), true, "", "", std::string(doc)});
    Lister inner(keys_, prefix_ + std::string(key) + ".");
    schema::describe(section, inner);
  }

 private:
  std::vector<KeyInfo>& keys_;
  std::string prefix_;
};

std::string_view parent_of(std::string_view path) {
  const size_t dot = path.rfind('.');
  return dot == std::string_view::npos ? std::string_view() : path.substr(0, dot);
}

std::string_view leaf_of(std::string_view path) {
  const size_t dot = path.rfind('.');
  return dot == std::string_view::npos ? path : path.substr(dot + 1);
}

// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
// neighbouring letters (d_modle -> d_model) each cost 1.
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t substitution = d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, substitution});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

// How far apart two key names are: their edit distance, or 1 when one begins with the other
// and both have at least 4 letters (optimizer -> optim, warmup -> warmup_steps).
size_t name_distance(std::string_view a, std::string_view b) {
  const bool prefix = std::min(a.size(), b.size()) >= 4 && (a.starts_with(b) || b.starts_with(a));
  return prefix ? std::min<size_t>(1, edit_distance(a, b)) : edit_distance(a, b);
}

}  // namespace

const std::vector<KeyInfo>& schema_keys() {
  static const std::vector<KeyInfo> keys = [] {
    std::vector<KeyInfo> all;
    Config defaults;
    Lister lister(all);
    schema::describe(defaults, lister);
    return all;
  }();
  return keys;
}

const KeyInfo* find_schema_key(std::string_view path) {
  static const std::unordered_map<std::string_view, const KeyInfo*> by_path = [] {
    std::unordered_map<std::string_view, const KeyInfo*> index;
    for (const KeyInfo& key : schema_keys()) index.emplace(key.path, &key);
    return index;
  }();
  const auto found = by_path.find(path);
  return found == by_path.end() ? nullptr : found->second;
}

std::string unknown_key_message(std::string_view path) {
  const std::string_view parent = parent_of(path), leaf = leaf_of(path);
  // Up to a third of the name may be wrong (at least 1 letter, at most 3).
  const size_t tolerance = std::clamp<size_t>(leaf.size() / 3, 1, 3);
  const KeyInfo* nearest_sibling = nullptr;
  const KeyInfo* nearest_elsewhere = nullptr;
  size_t sibling_distance = std::numeric_limits<size_t>::max();
  size_t elsewhere_distance = std::numeric_limits<size_t>::max();
  std::string siblings;
  for (const KeyInfo& key : schema_keys()) {
    const size_t distance = name_distance(leaf, leaf_of(key.path));
    if (parent_of(key.path) == parent) {
      siblings += (siblings.empty() ? "" : ", ") + std::string(leaf_of(key.path));
      if (distance < sibling_distance) {
        sibling_distance = distance;
        nearest_sibling = &key;
      }
    } else if (distance < elsewhere_distance) {
      elsewhere_distance = distance;
      nearest_elsewhere = &key;
    }
  }
  if (nearest_sibling && sibling_distance <= tolerance && sibling_distance <= elsewhere_distance) {
    return "unknown key; did you mean " + std::string(leaf_of(nearest_sibling->path)) + "?";
  }
  if (nearest_elsewhere && elsewhere_distance <= tolerance) {
    return "unknown key; did you mean " + nearest_elsewhere->path + "?";
  }
  if (siblings.empty()) return "unknown key; " + std::string(parent) + " is not a section";
  return "unknown key; " +
         (parent.empty() ? std::string("the sections are ") : std::string(parent) + " takes ") +
         siblings;
}

}  // namespace ssmtrain::configs
