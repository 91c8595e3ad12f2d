// YAML scalar rules for recipe values (configs/values.h): integers, floats, booleans and
// strings read from plain or quoted scalars, range checks, and the text written back, which
// reads back to the same value.
#include "configs/values.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <optional>

namespace ssmtrain::configs {
namespace {

// A plain (unquoted) scalar: the only kind that can be a number or a boolean.
bool is_plain_scalar(const YAML::Node& node) { return node.IsScalar() && node.Tag() == "?"; }

std::string_view without_plus(std::string_view text) {
  return !text.empty() && text.front() == '+' ? text.substr(1) : text;
}

std::optional<double> parse_float(std::string_view text) {
  text = without_plus(text);
  double value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || !std::isfinite(value)) {
    return std::nullopt;
  }
  return value;
}

// Decimal integers; a float literal that is a whole number (1e6, 2.5e9) counts too.
std::optional<int64_t> parse_integer(std::string_view text) {
  const std::string_view digits = without_plus(text);
  int64_t value = 0;
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (error == std::errc() && end == digits.data() + digits.size() && !digits.empty()) {
    return value;
  }
  const std::optional<double> real = parse_float(text);
  if (real && *real == std::floor(*real) && std::abs(*real) < 9.2e18) {
    return static_cast<int64_t>(*real);
  }
  return std::nullopt;
}

std::optional<bool> parse_boolean(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (text == "true" || text == "yes" || text == "on") return true;
  if (text == "false" || text == "no" || text == "off") return false;
  return std::nullopt;
}

bool in_range(double value, const Rule& rule) {
  const bool above = rule.min_open ? value > rule.min : value >= rule.min;
  const bool below = rule.max_open ? value < rule.max : value <= rule.max;
  return above && below;
}

// " >= 1", " in [0, 1)", or "" for an unbounded rule.
std::string range_text(const Rule& rule) {
  const bool has_min = std::isfinite(rule.min), has_max = std::isfinite(rule.max);
  if (has_min && has_max) {
    return fmt::format(" in {}{}, {}{}", rule.min_open ? '(' : '[', rule.min, rule.max,
                       rule.max_open ? ')' : ']');
  }
  if (has_min) return fmt::format(" {} {}", rule.min_open ? ">" : ">=", rule.min);
  if (has_max) return fmt::format(" {} {}", rule.max_open ? "<" : "<=", rule.max);
  return "";
}

bool is_auto(const YAML::Node& node) { return is_plain_scalar(node) && node.Scalar() == "auto"; }

}  // namespace

std::string describe_found(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return is_plain_scalar(node) ? node.Scalar() : quote_yaml(node.Scalar());
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a mapping";
    default: return "nothing";
  }
}

std::string quote_yaml(std::string_view text) {
  std::string quoted = "\"";
  for (const char c : text) {
    switch (c) {
      case '"': quoted += "\\\""; break;
      case '\\': quoted += "\\\\"; break;
      case '\n': quoted += "\\n"; break;
      case '\t': quoted += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          quoted += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
        } else {
          quoted += c;
        }
    }
  }
  return quoted + "\"";
}

std::string to_flow_yaml(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar: {
      const std::string& text = node.Scalar();
      const bool safe_plain =
          is_plain_scalar(node) && std::all_of(text.begin(), text.end(), [](char c) {
            return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' ||
                   c == '+' || c == '-';
          });
      return safe_plain ? text : quote_yaml(text);
    }
    case YAML::NodeType::Sequence: {
      std::string text = "[";
      for (size_t i = 0; i < node.size(); ++i) text += (i ? ", " : "") + to_flow_yaml(node[i]);
      return text + "]";
    }
    case YAML::NodeType::Map: {
      std::string text = "{";
      for (const auto& entry : node) {
        text += (text.size() > 1 ? ", " : "") + to_flow_yaml(entry.first) + ": " +
                to_flow_yaml(entry.second);
      }
      return text + "}";
    }
    default: return "null";
  }
}

// ---- integers ----

std::string ValueCodec<int64_t>::expected(const Rule& rule) {
  return "an integer" + range_text(rule) + (rule.zero_is_auto ? " or auto" : "");
}

bool ValueCodec<int64_t>::read(const YAML::Node& node, const Rule& rule, int64_t& value) {
  if (rule.zero_is_auto && is_auto(node)) {
    value = 0;
    return true;
  }
  if (!is_plain_scalar(node)) return false;
  const std::optional<int64_t> parsed = parse_integer(node.Scalar());
  if (!parsed || !in_range(static_cast<double>(*parsed), rule)) return false;
  value = *parsed;
  return true;
}

std::string ValueCodec<int64_t>::write(int64_t value, const Rule& rule) {
  return rule.zero_is_auto && value == 0 ? "auto" : std::to_string(value);
}

// ---- floats ----

std::string ValueCodec<double>::expected(const Rule& rule) { return "a number" + range_text(rule); }

bool ValueCodec<double>::read(const YAML::Node& node, const Rule& rule, double& value) {
  if (!is_plain_scalar(node)) return false;
  const std::optional<double> parsed = parse_float(node.Scalar());
  if (!parsed || !in_range(*parsed, rule)) return false;
  value = *parsed;
  return true;
}

// The shortest text that reads back to the same double (e.g. 0.0003, 1e-08).
std::string ValueCodec<double>::write(double value, const Rule&) {
  return fmt::format("{}", value);
}

// ---- booleans ----

std::string ValueCodec<bool>::expected(const Rule&) { return "true or false"; }

bool ValueCodec<bool>::read(const YAML::Node& node, const Rule&, bool& value) {
  if (!is_plain_scalar(node)) return false;
  const std::optional<bool> parsed = parse_boolean(node.Scalar());
  if (!parsed) return false;
  value = *parsed;
  return true;
}

std::string ValueCodec<bool>::write(bool value, const Rule&) { return value ? "true" : "false"; }

// ---- strings: any scalar's text; an empty value (null) is the empty string ----

std::string ValueCodec<std::string>::expected(const Rule&) { return "a string"; }

bool ValueCodec<std::string>::read(const YAML::Node& node, const Rule&, std::string& value) {
  if (node.IsNull()) {
    value.clear();
    return true;
  }
  if (!node.IsScalar()) return false;
  value = node.Scalar();
  return true;
}

std::string ValueCodec<std::string>::write(const std::string& value, const Rule&) {
  return quote_yaml(value);
}

// ---- sweeps: a list of maps {key.path: value, ...} ----

std::string ValueCodec<std::vector<SweepVariant>>::expected(const Rule&) {
  return "a list of override maps ({key.path: value, ...})";
}

bool ValueCodec<std::vector<SweepVariant>>::read(const YAML::Node& node, const Rule&,
                                                 std::vector<SweepVariant>& value) {
  if (node.IsNull()) {
    value.clear();
    return true;
  }
  if (!node.IsSequence()) return false;
  std::vector<SweepVariant> variants;
  for (const YAML::Node& entry : node) {
    if (!entry.IsMap()) return false;
    SweepVariant variant;
    for (const auto& override_entry : entry) {
      if (!override_entry.first.IsScalar()) return false;
      variant.overrides.emplace_back(override_entry.first.Scalar(),
                                     to_flow_yaml(override_entry.second));
    }
    variants.push_back(std::move(variant));
  }
  value = std::move(variants);
  return true;
}

// Block style, one flow map per variant: "\n  - {a.b: 1}\n  - {a.b: 2}" (the text starts on
// the line after the key), or "[]".
std::string ValueCodec<std::vector<SweepVariant>>::write(const std::vector<SweepVariant>& value,
                                                         const Rule&) {
  if (value.empty()) return "[]";
  std::string text;
  for (const SweepVariant& variant : value) {
    text += "\n  - {";
    for (size_t i = 0; i < variant.overrides.size(); ++i) {
      text += (i ? ", " : "") + variant.overrides[i].first + ": " + variant.overrides[i].second;
    }
    text += "}";
  }
  return text;
}

}  // namespace ssmtrain::configs
