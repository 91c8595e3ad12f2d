// Reading a recipe into a Config (configs/load.h). The YAML tree is parsed once, with the
// position of every key; --set and sweep overrides are placed into a copy of the tree (their
// keys positioned at "--set" or at the sweep entry), and the copy is read through the schema.
#include "configs/load.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>

#include "configs/schema.h"
#include "configs/values.h"

namespace ssmtrain::configs {
namespace {

using LocationMap = std::map<std::string, Location>;  // key path -> where it was written

Location locate_key(const LocationMap& where, const std::string& source, std::string_view path) {
  while (true) {
    const auto found = where.find(std::string(path));
    if (found != where.end()) return found->second;
    const size_t dot = path.rfind('.');
    if (dot == std::string_view::npos) return {source};
    path = path.substr(0, dot);
  }
}

const Location kSetLocation{"--set"};

// A recipe's YAML tree and where each of its key paths was written.
struct SourceTree {
  std::string source;
  YAML::Node root;
  LocationMap where;

  SourceTree clone() const { return {source, YAML::Clone(root), where}; }

  // The position of `path`, else of its nearest written parent section, else the file alone.
  Location locate(std::string_view path) const { return locate_key(where, source, path); }

  // A ConfigError found on typed values, placed at the first of its keys this tree wrote.
  ConfigError placed(const ConfigError& error) const {
    std::string key = error.keys().empty() ? "" : error.keys().front();
    for (const std::string& candidate : error.keys()) {
      if (where.contains(candidate)) {
        key = candidate;
        break;
      }
    }
    return ConfigError(locate(key), key, error.message());
  }
};

// A value to place at a key path before reading: from --set or from a sweep entry.
struct Override {
  std::string path;
  YAML::Node value;
  Location where;
};

// Whether key path `path` is `section` or a key inside it.
bool is_within(std::string_view path, std::string_view section) {
  return path.starts_with(section) &&
         (path.size() == section.size() || path[section.size()] == '.');
}

Location mark_location(const std::string& file, const YAML::Mark& mark) {
  return {file, mark.line + 1, mark.column + 1};
}

// Records where every key of `map` (and of its nested maps) was written; a key must be a
// scalar and appear once in its map.
void record_locations(const YAML::Node& map, const std::string& prefix, SourceTree& tree) {
  for (const auto& entry : map) {
    const Location at = mark_location(tree.source, entry.first.Mark());
    if (!entry.first.IsScalar()) {
      throw ConfigError(at, prefix, "expected a key name, found " + describe_found(entry.first));
    }
    const std::string path = prefix + entry.first.Scalar();
    const auto [earlier, first_time] = tree.where.emplace(path, at);
    if (!first_time) {
      throw ConfigError(at, path,
                        fmt::format("expected each key once, found it again (first at line {})",
                                    earlier->second.line));
    }
    if (entry.second.IsMap()) record_locations(entry.second, path + ".", tree);
  }
}

// YAML indents with spaces only; yaml-cpp's own message for a tab there is obscure (or the tab
// silently changes the nesting), so the first one is named at its line and column.
void check_no_tab_indentation(std::string_view text, const std::string& source) {
  int line = 1;
  for (size_t start = 0; start <= text.size(); ++line) {
    const size_t end = std::min(text.find('\n', start), text.size());
    for (size_t i = start; i < end && (text[i] == ' ' || text[i] == '\t'); ++i) {
      if (text[i] == '\t')
        throw ConfigError(Location{source, line, int(i - start) + 1}, "",
                          "a tab in the indentation: YAML indents with spaces only");
    }
    start = end + 1;
  }
}

SourceTree parse_tree(std::string_view text, const std::string& source) {
  SourceTree tree{source, {}, {}};
  check_no_tab_indentation(text, source);
  try {
    tree.root = YAML::Load(std::string(text));
  } catch (const YAML::ParserException& error) {
    throw ConfigError(mark_location(source, error.mark), "", "invalid YAML: " + error.msg);
  }
  if (tree.root.IsNull()) tree.root = YAML::Node(YAML::NodeType::Map);
  if (!tree.root.IsMap()) {
    throw ConfigError(mark_location(source, tree.root.Mark()), "",
                      "expected a recipe (a mapping of sections: run, model, ...), found " +
                          describe_found(tree.root));
  }
  record_locations(tree.root, "", tree);
  return tree;
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    parts.push_back(path.substr(start, dot - start));
    if (dot == std::string::npos) return parts;
    start = dot + 1;
  }
}

// "key.path=value" -> the path and the value read as YAML.
Override parse_set(const std::string& assignment) {
  const size_t equals = assignment.find('=');
  const std::string path = assignment.substr(0, equals);
  const std::vector<std::string> parts = split_path(path);
  const bool empty_part =
      std::any_of(parts.begin(), parts.end(), [](const std::string& part) { return part.empty(); });
  if (equals == std::string::npos || empty_part) {
    throw ConfigError(kSetLocation, "",
                      fmt::format("expected key.path=value, found {}", quote_yaml(assignment)));
  }
  const std::string text = assignment.substr(equals + 1);
  try {
    return {path, YAML::Load(text), kSetLocation};
  } catch (const YAML::ParserException& error) {
    throw ConfigError(
        kSetLocation, path,
        fmt::format("expected a YAML value, found {} ({})", quote_yaml(text), error.msg));
  }
}

// Places `value` at parts[depth...] under `map`. A section on the way that is missing or not a
// mapping becomes an empty mapping, positioned where the override was given.
void set_at_path(YAML::Node map, const std::vector<std::string>& parts, size_t depth,
                 const Override& override_value, LocationMap& where, const std::string& prefix) {
  const std::string& key = parts[depth];
  if (depth + 1 == parts.size()) {
    map[key] = YAML::Clone(override_value.value);
    return;
  }
  const std::string path = prefix + key;
  if (!map[key].IsMap()) {
    map[key] = YAML::Node(YAML::NodeType::Map);
    where[path] = override_value.where;
  }
  set_at_path(map[key], parts, depth + 1, override_value, where, path + ".");
}

// Every key path inside an override's value is positioned where the override was given.
void record_override_locations(const YAML::Node& value, const std::string& path, const Location& at,
                               LocationMap& where) {
  where[path] = at;
  if (!value.IsMap()) return;
  for (const auto& entry : value) {
    if (entry.first.IsScalar()) {
      record_override_locations(entry.second, path + "." + entry.first.Scalar(), at, where);
    }
  }
}

void apply_override(const Override& override_value, SourceTree& tree) {
  const std::string& path = override_value.path;
  set_at_path(tree.root, split_path(path), 0, override_value, tree.where, "");
  // The file's positions under the replaced value no longer apply.
  std::erase_if(tree.where, [&](const auto& entry) { return is_within(entry.first, path); });
  record_override_locations(override_value.value, path, override_value.where, tree.where);
}

// Every key must be in the schema, and a section must hold a mapping.
void check_known_keys(const YAML::Node& map, const std::string& prefix, const SourceTree& tree) {
  for (const auto& entry : map) {
    const std::string path = prefix + entry.first.Scalar();
    const KeyInfo* key = find_schema_key(path);
    if (key == nullptr) throw ConfigError(tree.locate(path), path, unknown_key_message(path));
    if (!key->is_section) continue;
    if (entry.second.IsMap()) {
      check_known_keys(entry.second, path + ".", tree);
    } else if (!entry.second.IsNull()) {
      throw ConfigError(
          tree.locate(path), path,
          "expected a section (a mapping of keys), found " + describe_found(entry.second));
    }
  }
}

// Reads the keys a tree has into a section of the Config; absent keys keep their defaults.
class Reader {
 public:
  Reader(const YAML::Node& map, std::string prefix, const SourceTree& tree)
      : map_(map), prefix_(std::move(prefix)), tree_(tree) {}

  template <class T>
  void field(std::string_view key, T& value, std::string_view, Rule rule = {}) {
    const YAML::Node node = map_[std::string(key)];
    if (!node.IsDefined()) return;
    if (!ValueCodec<T>::read(node, rule, value)) {
      const std::string path = prefix_ + std::string(key);
      throw ConfigError(tree_.locate(path), path,
                        fmt::format("expected {}, found {}", ValueCodec<T>::expected(rule),
                                    describe_found(node)));
    }
  }

  template <class Section>
  void section(std::string_view key, Section& section, std::string_view) {
    const YAML::Node node = map_[std::string(key)];
    if (!node.IsDefined() || !node.IsMap()) return;  // absent or empty: all defaults
    Reader inner(node, prefix_ + std::string(key) + ".", tree_);
    schema::describe(section, inner);
  }

 private:
  const YAML::Node map_;
  std::string prefix_;
  const SourceTree& tree_;
};

// One Config from a tree with the overrides placed into it, in order.
Config build_config(SourceTree tree, const std::vector<Override>& overrides,
                    const std::string& default_name) {
  for (const Override& override_value : overrides) apply_override(override_value, tree);
  check_known_keys(tree.root, "", tree);
  Config config;
  Reader reader(tree.root, "", tree);
  schema::describe(config, reader);
  if (!tree.where.contains("run.name")) config.run.name = default_name;
  try {
    validate(config);
  } catch (const ConfigError& error) {
    throw tree.placed(error);
  }
  resolve_auto_values(config);
  return config;
}

// The overrides of sweep entry `index` (already read, so a list of maps): from the file's
// tree, whose nodes keep their positions, unless --set replaced the sweep.
std::vector<Override> sweep_overrides(const SourceTree& file_tree, const SourceTree& with_overrides,
                                      size_t index) {
  const bool from_command_line = with_overrides.locate("sweep") == kSetLocation;
  const SourceTree& tree = from_command_line ? with_overrides : file_tree;
  const YAML::Node entry = tree.root["sweep"][index];
  std::vector<Override> overrides;
  for (const auto& item : entry) {
    const std::string path = item.first.Scalar();
    const Location at =
        from_command_line ? kSetLocation : mark_location(tree.source, item.first.Mark());
    if (is_within(path, "sweep")) {
      throw ConfigError(at, path,
                        "expected a key outside sweep, found sweep (a variant cannot "
                        "hold a sweep)");
    }
    overrides.push_back({path, item.second, at});
  }
  return overrides;
}

std::string default_run_name(const std::string& source) {
  const std::string stem = std::filesystem::path(source).stem().string();
  return stem.empty() ? "run" : stem;
}

}  // namespace

Recipe parse_recipe(std::string_view yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides) {
  const SourceTree file_tree = parse_tree(yaml_text, source_name);
  std::vector<Override> command_line;
  for (const std::string& assignment : overrides) command_line.push_back(parse_set(assignment));
  const std::string name = default_run_name(source_name);

  Recipe recipe;
  recipe.config = build_config(file_tree.clone(), command_line, name);

  // Each variant: the file without its sweep, the variant's overrides, then the command line's.
  SourceTree with_overrides = file_tree.clone();
  for (const Override& override_value : command_line) {
    apply_override(override_value, with_overrides);
  }
  recipe.source = with_overrides.source;
  recipe.where = with_overrides.where;
  SourceTree without_sweep = file_tree.clone();
  without_sweep.root.remove("sweep");
  std::erase_if(without_sweep.where,
                [](const auto& entry) { return is_within(entry.first, "sweep"); });
  const size_t n_variants = recipe.config.sweep.size();
  for (size_t index = 0; index < n_variants; ++index) {
    std::vector<Override> variant = sweep_overrides(file_tree, with_overrides, index);
    for (const Override& override_value : command_line) {
      if (!is_within(override_value.path, "sweep")) variant.push_back(override_value);
    }
    try {
      recipe.sweep_variants.push_back(build_config(without_sweep.clone(), variant, name));
    } catch (const ConfigError& error) {
      throw ConfigError(
          error.where(), error.key(),
          fmt::format("{} (in sweep variant {} of {})", error.message(), index + 1, n_variants));
    }
  }
  return recipe;
}

Location Recipe::locate(std::string_view key_path) const { return locate_key(where, source, key_path); }

Recipe load_recipe(const std::filesystem::path& file, const std::vector<std::string>& overrides) {
  const std::string source = file.string();
  std::FILE* stream = std::fopen(source.c_str(), "rb");
  if (stream == nullptr) {
    throw ConfigError(Location{source}, "", "cannot open: " + std::string(std::strerror(errno)));
  }
  std::string text;
  char buffer[65536];
  size_t got = 0;
  while ((got = std::fread(buffer, 1, sizeof buffer, stream)) > 0) text.append(buffer, got);
  const bool failed = std::ferror(stream) != 0;
  const int read_errno = errno;
  std::fclose(stream);
  if (failed) {
    throw ConfigError(Location{source}, "",
                      "cannot open: " + std::string(std::strerror(read_errno)));
  }
  return parse_recipe(text, source, overrides);
}

Config load_config(const std::filesystem::path& file, const std::vector<std::string>& overrides) {
  return load_recipe(file, overrides).config;
}

Config parse_config(std::string_view yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides) {
  return parse_recipe(yaml_text, source_name, overrides).config;
}

}  // namespace ssmtrain::configs
