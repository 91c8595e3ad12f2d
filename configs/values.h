// How one recipe value is read from YAML and written back, by YAML scalar rules: plain
// integers and floats (3e-4), true/false/yes/no/on/off, quoted scalars are always strings.
// One ValueCodec<T> per field type; the schema (configs/schema.h) pairs each key with one.
#pragma once

#include <yaml-cpp/yaml.h>

#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "configs/config.h"

namespace ssmtrain::configs {

// What a numeric field (or each element of a numeric list) accepts: an inclusive or open
// range, and whether the recipe may write `auto`, stored as 0.
struct Rule {
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  bool min_open = false;  // value > min rather than >= min
  bool max_open = false;  // value < max rather than <= max
  bool zero_is_auto = false;
};

// "what was found", for error messages: abc, "abc" (quoted in the recipe), a list, a mapping,
// nothing.
std::string describe_found(const YAML::Node& node);
// A YAML value as one line of flow YAML that reads back to the same value, e.g. [1, 2] or
// {a: "x y"}; plain scalars made of letters, digits and _.+- stay plain.
std::string to_flow_yaml(const YAML::Node& node);
// `text` as a double-quoted YAML string.
std::string quote_yaml(std::string_view text);

// For each field type T:
//   expected(rule)            what the key takes, e.g. "an integer >= 1 or auto"
//   read(node, rule, value)   false when the node is not that (value is then unchanged)
//   write(value, rule)        the YAML text of value (on one line)
template <class T>
struct ValueCodec;

template <>
struct ValueCodec<int64_t> {
  static std::string expected(const Rule& rule);
  static bool read(const YAML::Node& node, const Rule& rule, int64_t& value);
  static std::string write(int64_t value, const Rule& rule);
};

template <>
struct ValueCodec<double> {
  static std::string expected(const Rule& rule);
  static bool read(const YAML::Node& node, const Rule& rule, double& value);
  static std::string write(double value, const Rule& rule);
};

template <>
struct ValueCodec<bool> {
  static std::string expected(const Rule& rule);
  static bool read(const YAML::Node& node, const Rule& rule, bool& value);
  static std::string write(bool value, const Rule& rule);
};

template <>
struct ValueCodec<std::string> {
  static std::string expected(const Rule& rule);
  static bool read(const YAML::Node& node, const Rule& rule, std::string& value);
  static std::string write(const std::string& value, const Rule& rule);
};

template <>
struct ValueCodec<std::vector<SweepVariant>> {
  static std::string expected(const Rule& rule);
  static bool read(const YAML::Node& node, const Rule& rule, std::vector<SweepVariant>& value);
  static std::string write(const std::vector<SweepVariant>& value, const Rule& rule);
};

// Enumerations: a scalar spelling one of enum_names(E).
template <class E>
requires requires(E e) { enum_names(e); }
struct ValueCodec<E> {
  static std::string expected(const Rule&) {
    std::string names;
    for (const auto& [enumerator, name] : enum_names(E{})) {
      names += (names.empty() ? "" : ", ") + std::string(name);
    }
    return "one of " + names;
  }
  static bool read(const YAML::Node& node, const Rule&, E& value) {
    if (!node.IsScalar()) return false;
    for (const auto& [enumerator, name] : enum_names(E{})) {
      if (node.Scalar() == name) {
        value = enumerator;
        return true;
      }
    }
    return false;
  }
  static std::string write(E value, const Rule&) { return std::string(to_string(value)); }
};

// Lists of numbers, each element checked against the rule; a std::array takes exactly N.
template <class Element, class List>
struct ListCodec {
  static constexpr bool kFixed = !requires(List list) { list.resize(0); };
  static std::string expected(const Rule& rule) {
    const std::string each = ValueCodec<Element>::expected(rule);
    if constexpr (kFixed) {
      return "a list of " + std::to_string(std::tuple_size_v<List>) + " values, each " + each;
    } else {
      return "a list, each " + each;
    }
  }
  static bool read(const YAML::Node& node, const Rule& rule, List& value) {
    if (!node.IsSequence()) return false;
    if (kFixed && node.size() != List{}.size()) return false;
    List parsed{};
    if constexpr (!kFixed) parsed.resize(node.size());
    for (size_t i = 0; i < node.size(); ++i) {
      if (!ValueCodec<Element>::read(node[i], rule, parsed[i])) return false;
    }
    value = parsed;
    return true;
  }
  static std::string write(const List& value, const Rule& rule) {
    std::string text = "[";
    for (size_t i = 0; i < value.size(); ++i) {
      text += (i ? ", " : "") + ValueCodec<Element>::write(value[i], rule);
    }
    return text + "]";
  }
};

template <class Element>
struct ValueCodec<std::vector<Element>> : ListCodec<Element, std::vector<Element>> {};
template <class Element, size_t N>
struct ValueCodec<std::array<Element, N>> : ListCodec<Element, std::array<Element, N>> {};

}  // namespace ssmtrain::configs
