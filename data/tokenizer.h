// SentencePiece tokenizers: training one (BPE or unigram, byte fallback on) from text, JSONL or
// directories with a bounded sample of sentences, and the Tokenizer that loads a .model file to
// encode and decode. Both `ssmtrain data tokenizer` and `data prepare` go through here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/text_input.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace ssmtrain::data {

// Options of `ssmtrain data tokenizer --input PATH... --vocab-size N [--model-type bpe|unigram]
// --out FILE.model`. Fixed choices (see docs/data.md): byte_fallback on, identity
// normalisation (text is kept byte for byte: decode(encode(x)) == x for valid UTF-8),
// whitespace kept as is, no dummy prefix, digits split, ids unk=0, bos=1, eos=2, no pad.
struct TokenizerOptions {
  std::vector<std::string> inputs;  // files (.txt, .jsonl, any .gz) or directories (recursive)
  int vocab_size = 32000;           // pieces in the model, including unk/bos/eos and 256 bytes
  std::string model_type = "bpe";   // "bpe" or "unigram"
  std::string output_path;          // FILE.model, written atomically (temp file + rename)
  // At most this many sentences (non-empty lines) are kept for training, sampled uniformly
  // from all of them (reservoir sampling inside SentencePiece); this bounds memory.
  int64_t max_sentences = 2'000'000;
  int max_sentence_bytes = 16384;    // longer lines are left out of training
  double character_coverage = 0.9995;
  int threads = 0;                   // 0: all cores
  uint64_t seed = 0;                 // for the sentence sample
  bool verbose = false;              // SentencePiece's own log on stderr
  // Progress on stderr: sentences read while reading, then a line every `progress_every_s`
  // seconds while SentencePiece trains (it reports nothing itself until it is done).
  bool progress = true;
  double progress_every_s = 10.0;
};

// The most pieces SentencePiece can make of the inputs, judged in one pass over them before
// training (see max_vocabulary_size): the 3 meta pieces, the 256 byte pieces, one piece per
// distinct character and, for BPE, one merge per symbol a distinct word can lose (a word of n
// characters takes at most n - ceil(n / 16) merges: no piece is longer than 16); for unigram,
// every substring of 2..16 characters of a distinct word, at most SentencePiece's 10^6 seed
// pieces. Words are cut before every run of spaces and at every digit (digits stay single
// pieces), more coarsely than SentencePiece cuts them, so the bound is never below what it can
// make; a vocabulary below the bound can still be too large, and SentencePiece then says so.
struct VocabularyBound {
  uint64_t sentences = 0;        // non-empty lines looked at
  uint64_t characters = 0;       // distinct characters (Unicode code points)
  uint64_t words = 0;            // distinct words
  uint64_t max_pieces = 0;       // the bound
  bool complete = false;         // false when the scan stopped early at `stop_at`
};

// Scans the lines of `files` (lines over `max_sentence_bytes` are left out, as the trainer
// leaves them out) and stops as soon as the bound reaches `stop_at`. `model_type` is "bpe" or
// "unigram".
VocabularyBound max_vocabulary_size(const std::vector<InputFile>& files,
                                    const std::string& model_type, uint64_t stop_at,
                                    int max_sentence_bytes);

struct TokenizerSummary {
  std::string output_path;
  int vocab_size = 0;
  uint64_t sentences_seen = 0;  // non-empty lines offered to the trainer
  std::string checksum;         // of the written .model file ("xxh64:...")
};

// Trains and writes the model. Throws InputError for bad options or inputs, DataError when
// SentencePiece fails or the file cannot be written.
TokenizerSummary train_tokenizer(const TokenizerOptions& options);

// A loaded SentencePiece model. Encoding is const and safe to call from many threads.
class Tokenizer {
 public:
  explicit Tokenizer(const std::string& model_path);  // throws InputError naming the file
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Appends the ids of `text` to `ids` (no BOS/EOS added).
  void encode(std::string_view text, std::vector<int>* ids) const;
  std::vector<int> encode(std::string_view text) const;
  std::string decode(const std::vector<int>& ids) const;
  std::string piece(int id) const;

  int vocab_size() const;
  int bos_id() const;  // -1 when the model has none
  int eos_id() const;
  int unk_id() const;
  const std::string& path() const { return path_; }
  const std::string& checksum() const { return checksum_; }  // "xxh64:..." of the .model bytes
  const std::string& model_bytes() const { return model_bytes_; }

 private:
  std::string path_;
  std::string model_bytes_;
  std::string checksum_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
};

}  // namespace ssmtrain::data
