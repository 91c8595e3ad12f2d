// The `data prepare` pipeline: one reader thread cuts the inputs into document pieces and
// groups them into jobs, N worker threads encode jobs, and the calling thread puts the results
// back in input order, appends EOS after each document and writes the shards.
#include "data/prepare.h"

#include <algorithm>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "data/errors.h"
#include "data/hash.h"
#include "data/shard.h"
#include "data/text_input.h"
#include "data/tokenizer.h"

namespace ssmtrain::data {
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

// A FIFO with a capacity; close() wakes everyone, pop() then drains and returns nullopt.
template <typename T>
class BoundedQueue {
 public:
  explicit BoundedQueue(size_t capacity) : capacity_(capacity) {}
  bool push(T item) {  // false when closed
    std::unique_lock<std::mutex> lock(mutex_);
    not_full_.wait(lock, [&] { return items_.size() < capacity_ || closed_; });
    if (closed_) return false;
    items_.push_back(std::move(item));
    not_empty_.notify_one();
    return true;
  }
  std::optional<T> pop() {
    std::unique_lock<std::mutex> lock(mutex_);
    not_empty_.wait(lock, [&] { return !items_.empty() || closed_; });
    if (items_.empty()) return std::nullopt;
    T item = std::move(items_.front());
    items_.pop_front();
    not_full_.notify_one();
    return item;
  }
  void close() {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    not_empty_.notify_all();
    not_full_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable not_empty_, not_full_;
  std::deque<T> items_;
  size_t capacity_;
  bool closed_ = false;
};

struct EncodeJob {
  uint64_t sequence = 0;
  std::vector<DocumentPiece> pieces;
  uint64_t text_bytes = 0;
  uint64_t raw_bytes_read = 0;  // input bytes on disk consumed when this job was cut
};

struct EncodedJob {
  uint64_t sequence = 0;
  std::vector<int> ids;                 // all pieces' ids, concatenated
  std::vector<uint32_t> piece_lengths;  // ids per piece
  std::vector<bool> ends_document;
  uint64_t text_bytes = 0;
  uint64_t raw_bytes_read = 0;
};

std::string human(double value) {
  char text[32];
  if (value >= 1e9) std::snprintf(text, sizeof(text), "%.2fG", value / 1e9);
  else if (value >= 1e6) std::snprintf(text, sizeof(text), "%.2fM", value / 1e6);
  else if (value >= 1e3) std::snprintf(text, sizeof(text), "%.1fk", value / 1e3);
  else std::snprintf(text, sizeof(text), "%.0f", value);
  return text;
}

// Progress on stderr: redrawn in place on a terminal (at most 4 times a second), one line
// every `every_s` seconds otherwise.
class Progress {
 public:
  Progress(bool enabled, uint64_t total_raw_bytes, double every_s)
      : enabled_(enabled), tty_(isatty(STDERR_FILENO) == 1), total_(total_raw_bytes),
        every_s_(tty_ ? 0.25 : every_s), start_(Clock::now()), last_(start_) {}

  void update(uint64_t documents, uint64_t tokens, uint64_t raw_bytes, bool final_line = false) {
    if (!enabled_) return;
    const auto now = Clock::now();
    if (!final_line && std::chrono::duration<double>(now - last_).count() < every_s_) return;
    last_ = now;
    const double elapsed = std::max(1e-9, std::chrono::duration<double>(now - start_).count());
    std::string line = "prepare: " + human(static_cast<double>(documents)) + " docs, " +
                       human(static_cast<double>(tokens)) + " tokens, " +
                       human(static_cast<double>(tokens) / elapsed) + " tokens/s";
    if (total_ > 0) {
      const double done = std::min(1.0, static_cast<double>(raw_bytes) / static_cast<double>(total_));
      char text[96];
      if (final_line || done <= 0) {
        std::snprintf(text, sizeof(text), ", %.0f%% of %s B input, %.1f s", done * 100,
                      human(static_cast<double>(total_)).c_str(), elapsed);
      } else {
        const double eta = elapsed * (1 - done) / done;
        std::snprintf(text, sizeof(text), ", %.0f%% of %s B input, ETA %d:%02d", done * 100,
                      human(static_cast<double>(total_)).c_str(), static_cast<int>(eta) / 60,
                      static_cast<int>(eta) % 60);
      }
      line += text;
    }
    if (tty_) std::fprintf(stderr, "\r%-100s%s", line.c_str(), final_line ? "\n" : "");
    else std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
  }

 private:
  bool enabled_, tty_;
  uint64_t total_;
  double every_s_;
  Clock::time_point start_, last_;
};

// Accumulates one split's documents and writes a shard whenever it is full.
class ShardBuilder {
 public:
  ShardBuilder(std::string split, const std::string& directory, int64_t vocab_size,
               std::string tokenizer_checksum, uint64_t shard_tokens)
      : split_(std::move(split)), directory_(directory), vocab_size_(vocab_size),
        tokenizer_checksum_(std::move(tokenizer_checksum)), shard_tokens_(shard_tokens) {}

  void append(const int* ids, size_t count) {
    tokens_.insert(tokens_.end(), ids, ids + count);
    for (size_t i = 0; i < count; ++i) ++frequency_[static_cast<size_t>(ids[i])];
  }
  void end_document(int eos_id, std::vector<ShardInfo>* written) {
    tokens_.push_back(static_cast<uint32_t>(eos_id));
    ++frequency_[static_cast<size_t>(eos_id)];
    doc_offsets_.push_back(tokens_.size());
    ++counts_.documents;
    if (tokens_.size() >= shard_tokens_) flush(written);
  }
  void flush(std::vector<ShardInfo>* written) {
    if (doc_offsets_.size() == 1) return;
    char name[64];
    std::snprintf(name, sizeof(name), "%s-%05llu.h5", split_.c_str(),
                  static_cast<unsigned long long>(counts_.shards));
    written->push_back(write_shard(directory_, name, split_, tokens_, doc_offsets_, vocab_size_,
                                   tokenizer_checksum_));
    counts_.tokens += tokens_.size();
    ++counts_.shards;
    tokens_.clear();
    doc_offsets_.assign(1, 0);
  }
  uint64_t pending_tokens() const { return tokens_.size(); }
  // Token counts, the entropy of their frequencies filled in.
  SplitCounts counts() const {
    SplitCounts counts = counts_;
    uint64_t total = 0;
    for (uint64_t f : frequency_) total += f;
    for (uint64_t f : frequency_)
      if (f > 0) counts.unigram_entropy -= double(f) / double(total) * std::log(double(f) / double(total));
    return counts;
  }

 private:
  std::string split_, directory_;
  int64_t vocab_size_;
  std::string tokenizer_checksum_;
  uint64_t shard_tokens_;
  std::vector<uint32_t> tokens_;
  std::vector<uint64_t> doc_offsets_{0};
  SplitCounts counts_;
  std::vector<uint64_t> frequency_ = std::vector<uint64_t>(size_t(vocab_size_), 0);  // by token id
};

void validate(const PrepareOptions& options) {
  if (options.tokenizer_path.empty()) throw InputError("--tokenizer FILE.model is required");
  if (options.output_dir.empty()) throw InputError("--out DIR is required");
  if (!(options.val_fraction >= 0.0 && options.val_fraction < 1.0))
    throw InputError("--val-fraction must be in [0, 1), got " + std::to_string(options.val_fraction));
  if (options.threads < 0) throw InputError("--threads must be >= 0 (0: all cores)");
  if (options.shard_tokens == 0 || options.piece_bytes == 0 || options.max_document_bytes == 0)
    throw InputError("shard_tokens, piece_bytes and max_document_bytes must be positive");
  std::error_code error;
  if (fs::exists(options.output_dir, error) && !fs::is_directory(options.output_dir, error))
    throw InputError(options.output_dir + ": exists and is not a directory (--out)");
}

}  // namespace

bool is_validation_document(uint64_t document_index, uint64_t seed, double val_fraction) {
  if (val_fraction <= 0) return false;
  const uint64_t hash = splitmix64(splitmix64(seed) ^ document_index);
  // The top 53 bits as a uniform double in [0, 1).
  return static_cast<double>(hash >> 11) * 0x1.0p-53 < val_fraction;
}

PrepareSummary prepare_corpus(const PrepareOptions& options) {
  validate(options);
  const Tokenizer tokenizer(options.tokenizer_path);
  const std::vector<InputFile> files = expand_inputs(options.inputs);
  if (tokenizer.eos_id() < 0)
    throw InputError(options.tokenizer_path + ": the model has no EOS piece, which marks the end "
                     "of every document; train it with `ssmtrain data tokenizer`");
  std::error_code error;
  fs::create_directories(options.output_dir, error);
  if (error) throw InputError(options.output_dir + ": cannot create the directory: " + error.message());

  uint64_t total_raw_bytes = 0;
  for (const InputFile& file : files) total_raw_bytes += file.bytes_on_disk;
  const int workers = options.threads > 0 ? options.threads
                                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const size_t job_bytes = std::max<size_t>(options.piece_bytes, 1 << 20);

  BoundedQueue<EncodeJob> jobs(static_cast<size_t>(2 * workers + 2));
  std::mutex results_mutex;
  std::condition_variable results_changed;
  std::map<uint64_t, EncodedJob> results;  // finished jobs waiting for their turn
  uint64_t jobs_total = UINT64_MAX;       // set by the reader when it is done
  std::exception_ptr failure;
  std::atomic<bool> stop{false};
  auto fail = [&](std::exception_ptr error) {
    std::lock_guard<std::mutex> lock(results_mutex);
    if (!failure) failure = error;
    stop = true;
    results_changed.notify_all();
  };

  // Reader: pieces of documents, grouped into jobs of about job_bytes.
  std::thread reader([&] {
    try {
      EncodeJob job;
      uint64_t sequence = 0, raw_before = 0, raw_in_file = 0;
      auto hand_over = [&] {
        job.sequence = sequence++;
        job.raw_bytes_read = raw_before + raw_in_file;
        if (!jobs.push(std::move(job))) throw std::runtime_error("cancelled");
        job = EncodeJob();
      };
      for (const InputFile& file : files) {
        raw_in_file = 0;
        for_each_document_piece(
            file, options.piece_bytes, options.max_document_bytes,
            [&](DocumentPiece&& piece) {
              if (stop) throw std::runtime_error("cancelled");
              job.text_bytes += piece.text.size();
              job.pieces.push_back(std::move(piece));
              if (job.text_bytes >= job_bytes) hand_over();
            },
            [&](uint64_t raw_offset) { raw_in_file = raw_offset; });
        raw_before += file.bytes_on_disk;
        raw_in_file = 0;
      }
      if (!job.pieces.empty()) hand_over();
      std::lock_guard<std::mutex> lock(results_mutex);
      jobs_total = sequence;
      results_changed.notify_all();
    } catch (...) {
      if (!stop) fail(std::current_exception());
    }
    jobs.close();
  });

  std::vector<std::thread> encoders;
  for (int w = 0; w < workers; ++w) {
    encoders.emplace_back([&] {
      try {
        while (std::optional<EncodeJob> job = jobs.pop()) {
          EncodedJob done;
          done.sequence = job->sequence;
          done.text_bytes = job->text_bytes;
          done.raw_bytes_read = job->raw_bytes_read;
          for (const DocumentPiece& piece : job->pieces) {
            const size_t before = done.ids.size();
            tokenizer.encode(piece.text, &done.ids);
            done.piece_lengths.push_back(static_cast<uint32_t>(done.ids.size() - before));
            done.ends_document.push_back(piece.ends_document);
          }
          std::lock_guard<std::mutex> lock(results_mutex);
          results.emplace(done.sequence, std::move(done));
          results_changed.notify_all();
        }
      } catch (...) {
        fail(std::current_exception());
        jobs.close();
      }
    });
  }

  // Writer (this thread): results in input order -> documents -> shards.
  Manifest manifest;
  ShardBuilder train("train", options.output_dir, tokenizer.vocab_size(), tokenizer.checksum(),
                     options.shard_tokens);
  ShardBuilder val("val", options.output_dir, tokenizer.vocab_size(), tokenizer.checksum(),
                   options.shard_tokens);
  Progress progress(options.progress, total_raw_bytes, options.progress_every_s);
  const auto start = Clock::now();
  uint64_t document_index = 0, tokens_done = 0, text_bytes = 0, raw_bytes = 0;
  bool in_val = is_validation_document(0, options.seed, options.val_fraction);
  try {
    for (uint64_t next = 0;; ++next) {
      EncodedJob job;
      {
        std::unique_lock<std::mutex> lock(results_mutex);
        results_changed.wait(lock, [&] { return failure || results.count(next) || next >= jobs_total; });
        if (failure) break;
        if (next >= jobs_total) break;
        job = std::move(results.at(next));
        results.erase(next);
      }
      size_t position = 0;
      for (size_t p = 0; p < job.piece_lengths.size(); ++p) {
        ShardBuilder& split = in_val ? val : train;
        split.append(job.ids.data() + position, job.piece_lengths[p]);
        position += job.piece_lengths[p];
        tokens_done += job.piece_lengths[p];
        if (job.ends_document[p]) {
          split.end_document(tokenizer.eos_id(), &manifest.shards);
          ++tokens_done;
          in_val = is_validation_document(++document_index, options.seed, options.val_fraction);
        }
      }
      text_bytes += job.text_bytes;
      raw_bytes = job.raw_bytes_read;
      progress.update(document_index, tokens_done, raw_bytes);
    }
  } catch (...) {
    fail(std::current_exception());
  }
  jobs.close();
  reader.join();
  for (std::thread& encoder : encoders) encoder.join();
  if (failure) std::rethrow_exception(failure);

  train.flush(&manifest.shards);
  val.flush(&manifest.shards);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  progress.update(document_index, tokens_done, total_raw_bytes, /*final_line=*/true);
  if (train.counts().tokens == 0)
    throw InputError("the inputs hold no text to encode (every document is empty)");

  // The tokenizer travels with the shards, so a data directory is complete on its own.
  const std::string tokenizer_copy = (fs::path(options.output_dir) / "tokenizer.model").string();
  if (!fs::exists(tokenizer_copy) || fs::canonical(tokenizer_copy) != fs::canonical(options.tokenizer_path)) {
    fs::copy_file(options.tokenizer_path, tokenizer_copy, fs::copy_options::overwrite_existing, error);
    if (error) throw DataError(tokenizer_copy + ": cannot copy the tokenizer: " + error.message());
  }
  manifest.tokenizer_file = "tokenizer.model";
  manifest.tokenizer_checksum = tokenizer.checksum();
  manifest.vocab_size = tokenizer.vocab_size();
  manifest.bos_id = tokenizer.bos_id();
  manifest.eos_id = tokenizer.eos_id();
  manifest.token_bytes = token_bytes_for_vocab(tokenizer.vocab_size());
  manifest.val_fraction = options.val_fraction;
  manifest.split_seed = options.seed;
  manifest.input_bytes = text_bytes;
  manifest.unigram_entropy["train"] = train.counts().unigram_entropy;
  manifest.unigram_entropy["val"] = val.counts().unigram_entropy;
  write_manifest(options.output_dir, manifest);

  PrepareSummary summary;
  summary.train = train.counts();
  summary.val = val.counts();
  summary.input_bytes = text_bytes;
  summary.seconds = seconds;
  summary.tokens_per_second = static_cast<double>(tokens_done) / std::max(seconds, 1e-9);
  summary.token_bytes = manifest.token_bytes;
  summary.manifest_path = (fs::path(options.output_dir) / kManifestFileName).string();
  return summary;
}

}  // namespace ssmtrain::data
