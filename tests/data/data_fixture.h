// Shared helpers of the data tests: a temporary directory, a small generated corpus (plain
// text, gzip and JSONL documents with fixed contents) and a small tokenizer trained on it.
#pragma once

#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "data/prepare.h"
#include "data/tokenizer.h"

namespace ssmtrain::data::testing {

namespace fs = std::filesystem;

// A fresh directory under the system temp dir, removed at destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    std::random_device seed;
    path_ = fs::temp_directory_path() / ("ssmtrain-" + tag + "-" + std::to_string(seed()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  std::string str() const { return path_.string(); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

inline void write_text(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

inline void write_gzip(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  gzFile file = gzopen(path.c_str(), "wb");
  gzwrite(file, text.data(), static_cast<unsigned>(text.size()));
  gzclose(file);
}

// A document of `sentences` English-like sentences over a fixed vocabulary, with line breaks,
// indentation and digits, as technical text has.
inline std::string generated_document(std::mt19937_64& rng, int sentences) {
  static const std::vector<std::string> words = {
      "the", "kernel", "driver", "memory", "page", "table", "device", "interrupt", "handler",
      "scheduler", "task", "process", "lock", "spin", "mutex", "buffer", "queue", "register",
      "module", "system", "call", "file", "inode", "block", "network", "packet", "socket",
      "is", "are", "when", "the", "a", "of", "to", "and", "in", "for", "with", "on", "by",
      "returns", "allocates", "frees", "maps", "reads", "writes", "must", "should", "may"};
  std::string text;
  for (int s = 0; s < sentences; ++s) {
    const int length = 4 + static_cast<int>(rng() % 10);
    if (rng() % 5 == 0) text += "    ";
    for (int w = 0; w < length; ++w) {
      std::string word = words[rng() % words.size()];
      if (w == 0) word[0] = static_cast<char>(word[0] - 'a' + 'A');
      text += word;
      if (rng() % 11 == 0) text += " " + std::to_string(rng() % 4096);
      text += w + 1 < length ? " " : ".";
    }
    text += rng() % 3 == 0 ? "\n\n" : "\n";
  }
  return text;
}

struct Corpus {
  std::string directory;               // holds every input file
  std::vector<std::string> documents;  // in input order (sorted paths, JSONL lines in order)
};

// Writes `documents` generated documents into ROOT/corpus: plain .txt files under a/, gzip
// .rst.gz files under b/, plain .rst files under c/ and a JSONL file d.jsonl holding the rest,
// so that the sorted directory walk reads them in exactly the order of `Corpus::documents`.
inline Corpus make_corpus(const std::string& root, int documents, uint64_t seed = 1) {
  std::mt19937_64 rng(seed);
  Corpus corpus;
  corpus.directory = root + "/corpus";
  fs::create_directories(corpus.directory);
  std::vector<std::string> groups[4];
  std::string jsonl;
  for (int d = 0; d < documents; ++d) {
    const std::string text = generated_document(rng, 5 + static_cast<int>(rng() % 40));
    char name[64];
    switch (d % 4) {
      case 0:
        std::snprintf(name, sizeof(name), "/a/doc%04d.txt", d);
        write_text(corpus.directory + name, text);
        break;
      case 1:
        std::snprintf(name, sizeof(name), "/b/doc%04d.rst.gz", d);
        write_gzip(corpus.directory + name, text);
        break;
      case 2:
        std::snprintf(name, sizeof(name), "/c/doc%04d.rst", d);
        write_text(corpus.directory + name, text);
        break;
      default: {
        std::string escaped;
        for (char c : text) {
          if (c == '\n') escaped += "\\n";
          else if (c == '"') escaped += "\\\"";
          else if (c == '\\') escaped += "\\\\";
          else escaped += c;
        }
        jsonl += "{\"id\": " + std::to_string(d) + ", \"text\": \"" + escaped + "\"}\n";
      }
    }
    groups[d % 4].push_back(text);
  }
  write_text(corpus.directory + "/d.jsonl", jsonl);
  for (auto& group : groups)
    corpus.documents.insert(corpus.documents.end(), group.begin(), group.end());
  // A file the directory walk must skip (not a corpus extension).
  write_text(corpus.directory + "/notes.bin", "\x01\x02 not text");
  return corpus;
}

inline TokenizerOptions small_tokenizer_options(const std::string& input, const std::string& out,
                                                const std::string& model_type = "bpe") {
  TokenizerOptions options;
  options.inputs = {input};
  options.vocab_size = 400;
  options.model_type = model_type;
  options.output_path = out;
  options.threads = 2;
  return options;
}

}  // namespace ssmtrain::data::testing
