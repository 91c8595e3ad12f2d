// `ssmtrain data prepare`: encodes a corpus with a trained tokenizer on many threads into HDF5
// token shards (train and a held-out val split, by document) plus manifest.json. The output is
// the same bytes for any number of threads.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ssmtrain::data {

// Options of `ssmtrain data prepare --tokenizer FILE.model --input PATH... --out DIR
// [--val-fraction F] [--threads N]`.
struct PrepareOptions {
  std::string tokenizer_path;       // a .model from `data tokenizer` (copied into DIR)
  std::vector<std::string> inputs;  // files (.txt, .rst, .md, .jsonl, any .gz) or directories
  std::string output_dir;           // created when missing; shards + manifest.json go here
  // Fraction of documents held out for validation, chosen per document by a hash of
  // (document index, seed): deterministic, independent of threads and shard sizes.
  double val_fraction = 0.01;
  int threads = 0;         // encoding threads; 0: all cores
  uint64_t seed = 0;       // of the train/val split
  // A shard is closed once it holds at least this many tokens; documents never straddle
  // shards. 2^27 tokens = 256 MiB as uint16.
  uint64_t shard_tokens = uint64_t{1} << 27;
  // Documents are encoded in pieces of about this many bytes, cut at line ends (docs/data.md):
  // the same ids as whole documents, and faster (SentencePiece's BPE slows down on long
  // inputs: 64 KiB pieces ran 25% slower than 256-byte ones on linux-doc).
  size_t piece_bytes = 256;
  // A plain-text file is one document; one larger than this is cut into several at line ends.
  uint64_t max_document_bytes = 64ull << 20;
  // Progress on stderr: on a terminal, one line redrawn at most 4 times a second; otherwise a
  // line every `progress_every_s` seconds. Off when false.
  bool progress = true;
  double progress_every_s = 10.0;
};

struct SplitCounts {
  uint64_t documents = 0;
  uint64_t tokens = 0;
  uint64_t shards = 0;
  // Entropy of the split's token frequencies, in nats: the loss of a model that knows only
  // how often each token occurs, the bar a trained model's validation loss must beat.
  double unigram_entropy = 0;
};

struct PrepareSummary {
  SplitCounts train, val;
  uint64_t input_bytes = 0;  // decompressed text bytes encoded
  double seconds = 0;
  double tokens_per_second = 0;
  int token_bytes = 2;
  std::string manifest_path;
};

// Throws InputError for bad options or inputs (named), DataError for write failures.
PrepareSummary prepare_corpus(const PrepareOptions& options);

// Whether document `document_index` (0-based, in input order) goes to the val split.
bool is_validation_document(uint64_t document_index, uint64_t seed, double val_fraction);

}  // namespace ssmtrain::data
