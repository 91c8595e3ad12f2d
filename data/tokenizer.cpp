// Tokenizer training through SentencePiece's sentence-iterator API (sentences stream from the
// inputs; nothing is copied to temporary files) and the Tokenizer wrapper around
// SentencePieceProcessor.
#include "data/tokenizer.h"

#include <algorithm>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>
#include <functional>
#include <unordered_map>
#include <unordered_set>

#include "data/errors.h"
#include "data/hash.h"
#include "data/text_input.h"

namespace ssmtrain::data {
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Progress lines of `data tokenizer` on stderr, flushed at once (they must show through a pipe).
void progress_line(const char* format, ...) __attribute__((format(printf, 1, 2)));
void progress_line(const char* format, ...) {
  std::fputs("data tokenizer: ", stderr);
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fputc('\n', stderr);
  std::fflush(stderr);
}

// Prints the sentences read so far every `every_s` seconds (checked every 4096 sentences).
class ReadProgress {
 public:
  ReadProgress(bool enabled, double every_s) : enabled_(enabled), every_s_(every_s) {}
  void sentence() {
    ++sentences_;
    if (!enabled_ || sentences_ % 4096 != 0 || seconds_since(last_) < every_s_) return;
    last_ = Clock::now();
    progress_line("read %llu sentences, %.0f s", static_cast<unsigned long long>(sentences_),
                  seconds_since(start_));
  }
  uint64_t sentences() const { return sentences_; }
  double seconds() const { return seconds_since(start_); }

 private:
  bool enabled_;
  double every_s_;
  uint64_t sentences_ = 0;
  Clock::time_point start_ = Clock::now(), last_ = start_;
};

// Hands SentencePiece the non-empty lines of the inputs one at a time. A reader thread walks
// the files and passes lines through a small queue so files are read while the trainer parses.
// SentencePiece reads every sentence before it trains: `done_reading` runs when the last one
// has been handed over.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  LineIterator(const std::vector<InputFile>& files, ReadProgress* progress,
               std::function<void()> done_reading)
      : progress_(progress), done_reading_(std::move(done_reading)),
        reader_([this, files] { read_all(files); }) {
    Next();
  }
  ~LineIterator() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      cancelled_ = true;
    }
    changed_.notify_all();
    reader_.join();
  }

  bool done() const override { return done_; }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override {
    if (error_.empty()) return sentencepiece::util::Status();
    return sentencepiece::util::Status(sentencepiece::util::StatusCode::kInternal, error_);
  }

  void Next() override {
    std::unique_lock<std::mutex> lock(mutex_);
    if (batch_pos_ >= current_.size()) {
      changed_.wait(lock, [this] { return !ready_.empty() || finished_; });
      if (ready_.empty()) {
        const bool first = !done_;
        done_ = true;
        lock.unlock();
        if (first && done_reading_) done_reading_();
        return;
      }
      current_ = std::move(ready_.front());
      ready_.erase(ready_.begin());
      batch_pos_ = 0;
      changed_.notify_all();
    }
    value_ = std::move(current_[batch_pos_++]);
    ++seen_;
    progress_->sentence();
  }

  uint64_t seen() const { return seen_; }
  const std::string& error() const { return error_; }

 private:
  void read_all(const std::vector<InputFile>& files) {
    std::vector<std::string> batch;
    auto hand_over = [this, &batch] {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [this] { return ready_.size() < 4 || cancelled_; });
      if (cancelled_) throw Cancelled{};
      ready_.push_back(std::move(batch));
      batch.clear();
      changed_.notify_all();
    };
    try {
      for_each_line(files, [&](std::string_view line) {
        batch.emplace_back(line);
        if (batch.size() == 4096) hand_over();
      });
      if (!batch.empty()) hand_over();
    } catch (const Cancelled&) {
    } catch (const std::exception& error) {
      std::lock_guard<std::mutex> lock(mutex_);
      error_ = error.what();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    finished_ = true;
    changed_.notify_all();
  }

  struct Cancelled {};
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::vector<std::string>> ready_;
  bool finished_ = false;
  bool cancelled_ = false;
  std::string error_;
  // Consumer side (the trainer's thread).
  std::vector<std::string> current_;
  size_t batch_pos_ = 0;
  std::string value_;
  bool done_ = false;
  uint64_t seen_ = 0;
  ReadProgress* progress_;
  std::function<void()> done_reading_;
  std::thread reader_;  // last: starts after the members above exist
};

void write_file_atomically(const std::string& path, const std::string& bytes) {
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) throw DataError(path + ": cannot write (check the directory exists and is writable)");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) throw DataError(temp + ": write failed (disk full?)");
  }
  std::error_code error;
  fs::rename(temp, path, error);
  if (error) throw DataError(path + ": cannot rename " + temp + " into place: " + error.message());
}

std::string read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": cannot open the tokenizer model (no such file?)");
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}


// While SentencePiece trains, a line every `every_s` seconds says it still does.
class TrainingHeartbeat {
 public:
  TrainingHeartbeat(bool enabled, double every_s) : enabled_(enabled), every_s_(every_s) {}
  ~TrainingHeartbeat() { stop(); }
  void start() {
    if (!enabled_ || thread_.joinable()) return;
    start_ = Clock::now();
    thread_ = std::thread([this] {
      std::unique_lock<std::mutex> lock(mutex_);
      while (!stop_.load()) {
        if (stopped_.wait_for(lock, std::chrono::duration<double>(every_s_), [this] { return stop_.load(); }))
          break;
        progress_line("training, %.0f s", seconds_since(start_));
      }
    });
  }
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    stopped_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  double seconds() const { return seconds_since(start_); }

 private:
  bool enabled_;
  double every_s_;
  Clock::time_point start_ = Clock::now();
  std::mutex mutex_;
  std::condition_variable stopped_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Unicode code points of UTF-8 text: every byte that is not a continuation byte starts one.
uint64_t code_points(std::string_view text) {
  uint64_t n = 0;
  for (const char c : text) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

constexpr uint64_t kMaxPieceLength = 16;  // SentencePiece's max_piece_length default

// Pieces a distinct word of n characters can add. BPE: each merge takes one symbol away and no
// piece is longer than 16 characters, so at least ceil(n / 16) symbols stay. Unigram: every
// substring of 2..16 characters.
uint64_t word_pieces(uint64_t n, bool unigram) {
  if (n < 2) return 0;
  if (!unigram) return n - (n + kMaxPieceLength - 1) / kMaxPieceLength;
  uint64_t pieces = 0;
  for (uint64_t length = 2; length <= std::min(n, kMaxPieceLength); ++length) pieces += n - length + 1;
  return pieces;
}

struct StopScan {};

}  // namespace

VocabularyBound max_vocabulary_size(const std::vector<InputFile>& files, const std::string& model_type,
                                    uint64_t stop_at, int max_sentence_bytes) {
  constexpr uint64_t kFixedPieces = 3 + 256;  // unk, bos, eos and the byte-fallback pieces
  const bool unigram = model_type == "unigram";
  VocabularyBound bound;
  std::unordered_set<uint32_t> characters;
  std::unordered_set<std::string> words;
  uint64_t word_bound = 0;
  // Unigram keeps its final pieces out of at most seed_sentencepiece_size seed pieces.
  constexpr uint64_t kUnigramSeedPieces = 1'000'000;
  auto total = [&] {
    return kFixedPieces + characters.size() + (unigram ? std::min(word_bound, kUnigramSeedPieces) : word_bound);
  };
  auto add_word = [&](std::string_view word) {
    if (word.empty() || !words.emplace(word).second) return;
    word_bound += word_pieces(code_points(word), unigram);
  };
  try {
    for_each_line(files, [&](std::string_view line) {
      if (line.size() > static_cast<size_t>(max_sentence_bytes)) return;
      ++bound.sentences;
      for (size_t i = 0; i < line.size();) {  // distinct characters, packed into 32 bits
        size_t length = 1;
        const auto lead = static_cast<unsigned char>(line[i]);
        if (lead >= 0xF0) length = 4;
        else if (lead >= 0xE0) length = 3;
        else if (lead >= 0xC0) length = 2;
        length = std::min(length, line.size() - i);
        uint32_t key = 0;
        for (size_t k = 0; k < length; ++k) key = key << 8 | static_cast<unsigned char>(line[i + k]);
        characters.insert(key);
        i += length;
      }
      // Words start where a run of spaces starts; a digit is a piece of its own (split_digits),
      // so it ends a word and joins none.
      size_t begin = 0;
      for (size_t i = 0; i < line.size(); ++i) {
        const bool digit = line[i] >= '0' && line[i] <= '9';
        if (digit || (i > 0 && line[i] == ' ' && line[i - 1] != ' ')) {
          add_word(line.substr(begin, i - begin));
          begin = digit ? i + 1 : i;
        }
      }
      add_word(line.substr(begin));
      if (total() >= stop_at) throw StopScan{};
    });
    bound.complete = true;
  } catch (const StopScan&) {
  }
  bound.characters = characters.size();
  bound.words = words.size();
  bound.max_pieces = total();
  return bound;
}

namespace {

}  // namespace

TokenizerSummary train_tokenizer(const TokenizerOptions& options) {
  if (options.model_type != "bpe" && options.model_type != "unigram")
    throw InputError("--model-type must be bpe or unigram, got '" + options.model_type + "'");
  if (options.vocab_size < 260 + 16)
    throw InputError("--vocab-size " + std::to_string(options.vocab_size) +
                     " is too small: byte fallback alone takes 256 + 3 pieces; use at least 276");
  if (options.output_path.empty()) throw InputError("--out FILE.model is required");
  if (options.max_sentences <= 0) throw InputError("the sentence cap must be positive");
  const fs::path out_dir = fs::path(options.output_path).parent_path();
  if (!out_dir.empty() && !fs::is_directory(out_dir)) {
    std::error_code error;
    fs::create_directories(out_dir, error);
    if (error) throw InputError(options.output_path + ": cannot create the directory " + out_dir.string() + ": " + error.message());
  }
  const std::vector<InputFile> files = expand_inputs(options.inputs);
  uint64_t input_bytes = 0;
  for (const InputFile& file : files) input_bytes += file.bytes_on_disk;
  if (options.progress)
    progress_line("%zu input files, %.1f MB on disk", files.size(), static_cast<double>(input_bytes) / 1e6);

  // A vocabulary the inputs cannot fill fails here, in one read of the text, instead of after
  // SentencePiece has trained for as long as the corpus takes.
  const auto wanted = static_cast<uint64_t>(options.vocab_size);
  const VocabularyBound bound =
      max_vocabulary_size(files, options.model_type, wanted, options.max_sentence_bytes);
  if (bound.sentences == 0) throw InputError("the inputs hold no text (every file is empty)");
  if (bound.max_pieces < wanted) {
    throw InputError(
        "--vocab-size " + std::to_string(options.vocab_size) + " is more than these inputs can give a " +
        options.model_type + " tokenizer: their " + std::to_string(bound.sentences) + " sentences hold " +
        std::to_string(bound.characters) + " distinct characters and " + std::to_string(bound.words) +
        " distinct words, which make at most " + std::to_string(bound.max_pieces) +
        " pieces (259 fixed ones included); use --vocab-size " + std::to_string(bound.max_pieces) +
        " or less (in practice well below it), or add text");
  }

  const int threads = options.threads > 0 ? options.threads
                                          : std::max(1u, std::thread::hardware_concurrency());
  const std::unordered_map<std::string, std::string> spec = {
      {"model_type", options.model_type},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"byte_fallback", "true"},
      {"character_coverage", std::to_string(options.character_coverage)},
      {"input_sentence_size", std::to_string(options.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"max_sentence_length", std::to_string(options.max_sentence_bytes)},
      {"num_threads", std::to_string(threads)},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "false"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"minloglevel", options.verbose ? "0" : "2"},
  };
  sentencepiece::SetRandomGeneratorSeed(static_cast<unsigned>(splitmix64(options.seed)));

  std::string model_bytes;
  uint64_t seen = 0;
  {
    ReadProgress read(options.progress, options.progress_every_s);
    TrainingHeartbeat heartbeat(options.progress, options.progress_every_s);
    auto done_reading = [&] {
      if (options.progress) {
        progress_line("read %llu sentences in %.1f s; training a %s model of %d pieces on up to %lld of them",
                      static_cast<unsigned long long>(read.sentences()), read.seconds(),
                      options.model_type.c_str(), options.vocab_size,
                      static_cast<long long>(options.max_sentences));
      }
      heartbeat.start();
    };
    LineIterator lines(files, &read, done_reading);
    const auto status = sentencepiece::SentencePieceTrainer::Train(spec, &lines, &model_bytes);
    heartbeat.stop();
    if (options.progress && status.ok()) progress_line("trained in %.1f s", heartbeat.seconds());
    seen = lines.seen();
    if (!lines.error().empty()) throw InputError(lines.error());
    if (!status.ok()) {
      std::string hint;
      if (status.ToString().find("Vocabulary size") != std::string::npos)
        hint = "; the inputs are too small for this --vocab-size: lower it or add text";
      throw DataError("SentencePiece training failed: " + status.ToString() + hint);
    }
  }
  if (seen == 0) throw InputError("the inputs hold no text (every file is empty)");
  write_file_atomically(options.output_path, model_bytes);

  TokenizerSummary summary;
  summary.output_path = options.output_path;
  summary.sentences_seen = seen;
  summary.checksum = checksum_string(xxh64(model_bytes.data(), model_bytes.size()));
  summary.vocab_size = Tokenizer(options.output_path).vocab_size();
  return summary;
}

Tokenizer::Tokenizer(const std::string& model_path)
    : path_(model_path),
      model_bytes_(read_file_bytes(model_path)),
      checksum_(checksum_string(xxh64(model_bytes_.data(), model_bytes_.size()))),
      processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  const auto status = processor_->LoadFromSerializedProto(model_bytes_);
  if (!status.ok())
    throw InputError(model_path + ": not a SentencePiece model (" + status.ToString() +
                     "); train one with `ssmtrain data tokenizer`");
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

void Tokenizer::encode(std::string_view text, std::vector<int>* ids) const {
  if (text.empty()) return;
  std::vector<int> piece_ids;
  const auto status = processor_->Encode(text, &piece_ids);
  if (!status.ok()) throw DataError(path_ + ": encoding failed: " + status.ToString());
  ids->insert(ids->end(), piece_ids.begin(), piece_ids.end());
}

std::vector<int> Tokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  encode(text, &ids);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  std::string text;
  const auto status = processor_->Decode(ids, &text);
  if (!status.ok()) throw DataError(path_ + ": decoding failed: " + status.ToString());
  return text;
}

std::string Tokenizer::piece(int id) const { return processor_->IdToPiece(id); }
int Tokenizer::vocab_size() const { return processor_->GetPieceSize(); }
int Tokenizer::bos_id() const { return processor_->bos_id(); }
int Tokenizer::eos_id() const { return processor_->eos_id(); }
int Tokenizer::unk_id() const { return processor_->unk_id(); }

}  // namespace ssmtrain::data
