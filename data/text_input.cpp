// Input files of the data pipeline: directory expansion, gzip-transparent block and line
// reading through zlib, JSONL "text" extraction, and the cutting of documents into pieces at
// line boundaries so that many threads can encode one long document.
#include "data/text_input.h"

#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "data/errors.h"

namespace ssmtrain::data {
namespace fs = std::filesystem;

namespace {

constexpr size_t kReadBlock = 1 << 20;

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::string without_gz(std::string name) {
  if (ends_with(name, ".gz")) name.resize(name.size() - 3);
  return name;
}

InputFormat format_of(const std::string& path) {
  return ends_with(without_gz(fs::path(path).filename().string()), ".jsonl") ? InputFormat::jsonl
                                                                              : InputFormat::text;
}

bool is_corpus_file_name(const std::string& name) {
  const std::string base = without_gz(name);
  for (const char* ext : {".txt", ".text", ".rst", ".md", ".jsonl"})
    if (ends_with(base, ext)) return true;
  return false;
}

// Where to cut the next piece of `text`: just after the last '\n' within `piece_bytes`, else
// after the first '\n' beyond it. Only a line longer than kLongLine (1 MiB) is cut inside,
// at a UTF-8 character boundary (the one place where pieces may tokenise differently from the
// whole text). Returns 0 when more text is needed to decide (only when !at_end).
constexpr size_t kLongLine = 1 << 20;

size_t next_cut(std::string_view text, size_t piece_bytes, bool at_end) {
  if (text.size() <= piece_bytes) return at_end ? text.size() : 0;
  const size_t last_newline = text.rfind('\n', piece_bytes - 1);
  if (last_newline != std::string_view::npos) return last_newline + 1;
  const size_t next_newline = text.find('\n', piece_bytes);
  if (next_newline != std::string_view::npos) return next_newline + 1;
  if (text.size() <= kLongLine) return at_end ? text.size() : 0;
  size_t cut = kLongLine;
  while (cut > 1 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return cut;
}

}  // namespace

std::vector<InputFile> expand_inputs(const std::vector<std::string>& paths) {
  if (paths.empty()) throw InputError("no input given: pass at least one --input PATH");
  std::vector<InputFile> files;
  for (const std::string& path : paths) {
    std::error_code error;
    const fs::file_status status = fs::status(path, error);
    if (error || !fs::exists(status))
      throw InputError(path + ": no such file or directory (given as --input)");
    if (fs::is_directory(status)) {
      std::vector<std::string> found;
      for (auto it = fs::recursive_directory_iterator(
               path, fs::directory_options::follow_directory_symlink, error);
           !error && it != fs::recursive_directory_iterator(); it.increment(error)) {
        if (it->is_regular_file() && is_corpus_file_name(it->path().filename().string()))
          found.push_back(it->path().string());
      }
      if (error) throw InputError(path + ": cannot list the directory: " + error.message());
      if (found.empty())
        throw InputError(path + ": the directory holds no .txt, .rst, .md or .jsonl files "
                                "(nor their .gz); point --input at files or another directory");
      std::sort(found.begin(), found.end());
      for (std::string& file : found)
        files.push_back({file, format_of(file), static_cast<uint64_t>(fs::file_size(file))});
    } else {
      files.push_back({path, format_of(path), static_cast<uint64_t>(fs::file_size(path, error))});
    }
  }
  return files;
}

std::string find_linux_doc_corpus() {
  const fs::path root = "/usr/share/doc";
  std::error_code error;
  std::vector<std::string> candidates;
  for (const auto& entry : fs::directory_iterator(root, error)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("linux-doc-", 0) == 0 && fs::is_directory(entry.path() / "Documentation"))
      candidates.push_back((entry.path() / "Documentation").string());
  }
  if (candidates.empty()) return "";
  // Newest kernel version first: compare the version numbers, not the strings (6.10 > 6.9).
  std::sort(candidates.begin(), candidates.end(), [](const std::string& a, const std::string& b) {
    auto numbers = [](const std::string& s) {
      std::vector<long> out;
      for (size_t i = 0; i < s.size();) {
        if (std::isdigit(static_cast<unsigned char>(s[i]))) {
          size_t end = i;
          out.push_back(std::stol(s.substr(i), &end));
          i += end;
        } else {
          ++i;
        }
      }
      return out;
    };
    return numbers(a) > numbers(b);
  });
  return candidates.front();
}

TextFileReader::TextFileReader(const std::string& path) : path_(path) {
  gz_ = gzopen(path.c_str(), "rb");
  if (!gz_) throw InputError(path + ": cannot open for reading");
  gzbuffer(static_cast<gzFile>(gz_), 256 * 1024);
}

TextFileReader::~TextFileReader() {
  if (gz_) gzclose(static_cast<gzFile>(gz_));
}

size_t TextFileReader::read(std::string* out, size_t max_bytes) {
  size_t total = 0;
  // Serve what a line read left in the buffer first.
  if (buffer_pos_ < buffer_.size()) {
    total = std::min(max_bytes, buffer_.size() - buffer_pos_);
    out->append(buffer_, buffer_pos_, total);
    buffer_pos_ += total;
  }
  return total + read_file(out, max_bytes - total);
}

size_t TextFileReader::read_file(std::string* out, size_t max_bytes) {
  size_t total = 0;
  while (total < max_bytes && !eof_) {
    const size_t start = out->size();
    const size_t want = std::min(max_bytes - total, kReadBlock);
    out->resize(start + want);
    const int got = gzread(static_cast<gzFile>(gz_), out->data() + start, static_cast<unsigned>(want));
    if (got < 0) {
      int code = 0;
      const char* message = gzerror(static_cast<gzFile>(gz_), &code);
      throw InputError(path_ + ": read error (" + message + "); is the .gz file complete?");
    }
    out->resize(start + static_cast<size_t>(got));
    total += static_cast<size_t>(got);
    if (got == 0) eof_ = true;
  }
  return total;
}

bool TextFileReader::next_line(std::string* line) {
  line->clear();
  size_t search_from = buffer_pos_;
  for (;;) {
    const size_t newline = buffer_.find('\n', search_from);
    if (newline != std::string::npos) {
      line->assign(buffer_, buffer_pos_, newline - buffer_pos_);
      buffer_pos_ = newline + 1;
      return true;
    }
    if (eof_) {
      if (buffer_pos_ >= buffer_.size()) return false;
      line->assign(buffer_, buffer_pos_, std::string::npos);
      buffer_pos_ = buffer_.size();
      return true;
    }
    buffer_.erase(0, buffer_pos_);
    buffer_pos_ = 0;
    search_from = buffer_.size();
    read_file(&buffer_, kReadBlock);
  }
}

uint64_t TextFileReader::raw_offset() const {
  const z_off_t offset = gzoffset(static_cast<gzFile>(gz_));
  return offset < 0 ? 0 : static_cast<uint64_t>(offset);
}

std::string jsonl_text(std::string_view line, const std::string& path, uint64_t line_number) {
  const std::string where = path + ":" + std::to_string(line_number);
  nlohmann::json value = nlohmann::json::parse(line.begin(), line.end(), nullptr, false);
  if (value.is_discarded()) throw InputError(where + ": not valid JSON (JSONL needs one object per line)");
  if (!value.is_object()) throw InputError(where + ": expected a JSON object with a \"text\" field");
  const auto text = value.find("text");
  if (text == value.end()) throw InputError(where + ": the object has no \"text\" field");
  if (!text->is_string()) throw InputError(where + ": the \"text\" field is not a string");
  return text->get<std::string>();
}

void for_each_line(const std::vector<InputFile>& files,
                   const std::function<void(std::string_view line)>& visit) {
  std::string line;
  for (const InputFile& file : files) {
    TextFileReader reader(file.path);
    uint64_t line_number = 0;
    while (reader.next_line(&line)) {
      ++line_number;
      if (file.format == InputFormat::text) {
        if (!line.empty()) visit(line);
        continue;
      }
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string text = jsonl_text(line, file.path, line_number);
      std::string_view rest = text;
      while (!rest.empty()) {
        const size_t newline = rest.find('\n');
        const std::string_view piece = rest.substr(0, newline);
        if (!piece.empty()) visit(piece);
        if (newline == std::string_view::npos) break;
        rest.remove_prefix(newline + 1);
      }
    }
  }
}

void for_each_document_piece(const InputFile& file, size_t piece_bytes,
                             uint64_t max_document_bytes,
                             const std::function<void(DocumentPiece&&)>& visit,
                             const std::function<void(uint64_t raw_offset)>& consumed) {
  TextFileReader reader(file.path);
  if (file.format == InputFormat::jsonl) {
    std::string line;
    uint64_t line_number = 0;
    while (reader.next_line(&line)) {
      ++line_number;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string text = jsonl_text(line, file.path, line_number);
      std::string_view rest = text;
      while (!rest.empty()) {
        const size_t cut = next_cut(rest, piece_bytes, /*at_end=*/true);
        visit({std::string(rest.substr(0, cut)), cut == rest.size()});
        rest.remove_prefix(cut);
      }
      if (consumed && line_number % 256 == 0) consumed(reader.raw_offset());
    }
    if (consumed) consumed(reader.raw_offset());
    return;
  }

  std::string pending;       // text read but not yet handed out, from `start`
  size_t start = 0;
  uint64_t document_bytes = 0;  // bytes handed out in the current document
  bool at_end = false;
  while (!at_end) {
    pending.erase(0, start);
    start = 0;
    at_end = reader.read(&pending, kReadBlock) == 0;
    for (;;) {
      const std::string_view rest(pending.data() + start, pending.size() - start);
      if (rest.empty()) {
        if (at_end && document_bytes > 0) visit({std::string(), true});  // close the document
        break;
      }
      const size_t cut = next_cut(rest, piece_bytes, at_end);
      if (cut == 0) break;  // read more
      document_bytes += cut;
      const bool last = at_end && cut == rest.size();
      const bool ends_document = last || document_bytes >= max_document_bytes;
      visit({std::string(rest.substr(0, cut)), ends_document});
      if (ends_document) document_bytes = 0;
      start += cut;
      if (last) break;
    }
    if (consumed) consumed(reader.raw_offset());
  }
}

}  // namespace ssmtrain::data
