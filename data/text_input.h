// Reading the text inputs of the tokenizer trainer and of `data prepare`: plain-text files,
// JSONL files (one document per line, its "text" field) and directories searched recursively;
// any of them may be gzip-compressed (.gz, read directly through zlib).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace ssmtrain::data {

enum class InputFormat { text, jsonl };

struct InputFile {
  std::string path;
  InputFormat format = InputFormat::text;
  uint64_t bytes_on_disk = 0;  // compressed size for .gz files
};

// Expands the given paths into the files to read, in a deterministic order: a file is taken as
// given (any name); a directory is searched recursively, in sorted path order, for files whose
// name, once a trailing ".gz" is removed, ends in .txt, .text, .rst, .md (text) or .jsonl (JSONL).
// A file named *.jsonl or *.jsonl.gz is JSONL, anything else text. Throws InputError for a
// path that does not exist or a directory with no such files.
std::vector<InputFile> expand_inputs(const std::vector<std::string>& paths);

// The documentation directory of Debian's linux-doc package (the default corpus), e.g.
// /usr/share/doc/linux-doc-6.1/Documentation, newest version first; "" when not installed.
// Only Documentation/ is taken: html/_sources/ repeats the same .rst text.
std::string find_linux_doc_corpus();

// Reads a file, gzip-compressed or not (zlib reads plain files transparently), in big blocks.
class TextFileReader {
 public:
  explicit TextFileReader(const std::string& path);  // throws InputError when it cannot open
  ~TextFileReader();
  TextFileReader(const TextFileReader&) = delete;
  TextFileReader& operator=(const TextFileReader&) = delete;

  // Appends up to `max_bytes` decompressed bytes to `out`; returns how many (0 at the end).
  size_t read(std::string* out, size_t max_bytes);
  // The next line without its '\n' (a final '\r' is kept); false at the end of the file.
  bool next_line(std::string* line);
  // Bytes of the file on disk consumed so far (compressed bytes for .gz), for progress.
  uint64_t raw_offset() const;
  const std::string& path() const { return path_; }

 private:
  size_t read_file(std::string* out, size_t max_bytes);  // bypasses buffer_
  std::string path_;
  void* gz_ = nullptr;  // gzFile
  std::string buffer_;
  size_t buffer_pos_ = 0;
  bool eof_ = false;
};

// The "text" string of one JSONL line; throws InputError naming path:line_number when the line
// is not a JSON object with a string "text" field.
std::string jsonl_text(std::string_view line, const std::string& path, uint64_t line_number);

// Calls visit(line) for every non-empty line of the inputs' documents: the lines of text files,
// and the lines of each JSONL document's text. This is what the tokenizer trainer samples sentences from.
void for_each_line(const std::vector<InputFile>& files,
                   const std::function<void(std::string_view line)>& visit);

// One piece of a document, cut at a line boundary ('\n' stays at the end of a piece), so that
// pieces can be encoded independently and concatenated (see docs/data.md for why this gives
// the same tokens as encoding the whole document).
struct DocumentPiece {
  std::string text;
  bool ends_document = false;
};

// Walks the documents of `file`: a text file is one document, cut into more documents of at
// most `max_document_bytes` at line boundaries when larger; each JSONL line with a non-empty
// "text" is one document. Calls visit(piece) for pieces of about `piece_bytes`; empty
// documents are skipped. `consumed(raw_bytes)` reports progress through the file on disk.
void for_each_document_piece(const InputFile& file, size_t piece_bytes,
                             uint64_t max_document_bytes,
                             const std::function<void(DocumentPiece&&)>& visit,
                             const std::function<void(uint64_t raw_offset)>& consumed = {});

}  // namespace ssmtrain::data
