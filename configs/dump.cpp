// Writing a Config as YAML (configs/load.h dump_config): every key of the schema, defaults
// included, in schema order, two spaces per section level.
#include "configs/load.h"
#include "configs/schema.h"

namespace ssmtrain::configs {
namespace {

class Writer {
 public:
  explicit Writer(std::string& out, std::string indent = "")
      : out_(out), indent_(std::move(indent)) {}

  template <class T>
  void field(std::string_view key, T& value, std::string_view, Rule rule = {}) {
    const std::string text = ValueCodec<T>::write(value, rule);
    // A value written as a block starts on the next line.
    out_ += indent_ + std::string(key) + ":" + (text.starts_with('\n') ? "" : " ") + text + "\n";
  }

  template <class Section>
  void section(std::string_view key, Section& section, std::string_view) {
    out_ += indent_ + std::string(key) + ":\n";
    Writer inner(out_, indent_ + "  ");
    schema::describe(section, inner);
  }

 private:
  std::string& out_;
  std::string indent_;
};

}  // namespace

std::string dump_config(const Config& config) {
  Config copy = config;  // describe() visits mutable fields; the writer only reads them
  std::string out;
  Writer writer(out);
  schema::describe(copy, writer);
  return out;
}

}  // namespace ssmtrain::configs
