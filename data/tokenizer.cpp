// Tokenizer training through SentencePiece's sentence-iterator API (sentences stream from the
// inputs; nothing is copied to temporary files) and the Tokenizer wrapper around
// SentencePieceProcessor.
#include "data/tokenizer.h"

#include <algorithm>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "data/errors.h"
#include "data/hash.h"
#include "data/text_input.h"

namespace ssmtrain::data {
namespace fs = std::filesystem;

namespace {

// Hands SentencePiece the non-empty lines of the inputs one at a time. A reader thread walks
// the files and passes lines through a small queue so files are read while the trainer parses.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<InputFile>& files)
      : reader_([this, files] { read_all(files); }) {
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
        done_ = true;
        return;
      }
      current_ = std::move(ready_.front());
      ready_.erase(ready_.begin());
      batch_pos_ = 0;
      changed_.notify_all();
    }
    value_ = std::move(current_[batch_pos_++]);
    ++seen_;
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
    LineIterator lines(files);
    const auto status = sentencepiece::SentencePieceTrainer::Train(spec, &lines, &model_bytes);
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
