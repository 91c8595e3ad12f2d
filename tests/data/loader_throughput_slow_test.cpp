// Measurements of the data pipeline on the default corpus (Debian's linux-doc), printed, not
// asserted beyond sanity: tokenizer training time, `data prepare` tokens/s, and TokenLoader
// batches/s for (8 x 2048) batches on the CPU. Keeps its files in $SSMTRAIN_DATA_BENCH_DIR
// (default /tmp/ssmtrain-data-bench), including corpus.txt for comparing with spm_encode.
// SSMTRAIN_PREPARE_THREADS and SSMTRAIN_PREPARE_PIECE_BYTES override those prepare options.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "data/loader.h"
#include "data/prepare.h"
#include "data/text_input.h"
#include "data/tokenizer.h"

namespace ssmtrain::data {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string bench_dir() {
  const char* env = std::getenv("SSMTRAIN_DATA_BENCH_DIR");
  const std::string dir = env && *env ? env : "/tmp/ssmtrain-data-bench";
  fs::create_directories(dir);
  return dir;
}

TEST(DataThroughput, LinuxDocPrepareAndLoader) {
  const std::string corpus = find_linux_doc_corpus();
  if (corpus.empty()) GTEST_SKIP() << "linux-doc is not installed (apt-get install linux-doc)";
  const std::string dir = bench_dir();
  const std::string model = dir + "/linux-doc-16k.model";

  // The same text as one file, for `spm_encode --output_format=id < corpus.txt`.
  const std::vector<InputFile> files = expand_inputs({corpus});
  uint64_t text_bytes = 0;
  if (!fs::exists(dir + "/corpus.txt")) {
    std::ofstream out(dir + "/corpus.txt", std::ios::binary);
    for (const InputFile& file : files) {
      TextFileReader reader(file.path);
      std::string text;
      while (reader.read(&text, 1 << 20) > 0) {}
      out << text;
    }
  }
  text_bytes = fs::file_size(dir + "/corpus.txt");
  std::printf("corpus: %s, %zu files, %.1f MB of text\n", corpus.c_str(), files.size(), text_bytes / 1e6);

  if (!fs::exists(model)) {
    TokenizerOptions options;
    options.inputs = {corpus};
    options.vocab_size = 16384;
    options.model_type = "bpe";
    options.output_path = model;
    options.max_sentences = 2'000'000;
    const auto start = Clock::now();
    const TokenizerSummary summary = train_tokenizer(options);
    std::printf("tokenizer: bpe 16384 trained on %llu sentences in %.1f s\n",
                static_cast<unsigned long long>(summary.sentences_seen), seconds_since(start));
  }

  PrepareOptions prepare;
  prepare.tokenizer_path = model;
  prepare.inputs = {corpus};
  prepare.output_dir = dir + "/shards";
  prepare.val_fraction = 0.005;
  prepare.threads = 0;
  if (const char* env = std::getenv("SSMTRAIN_PREPARE_THREADS")) prepare.threads = std::atoi(env);
  if (const char* env = std::getenv("SSMTRAIN_PREPARE_PIECE_BYTES"))
    prepare.piece_bytes = static_cast<size_t>(std::atoll(env));
  const PrepareSummary summary = prepare_corpus(prepare);
  const uint64_t tokens = summary.train.tokens + summary.val.tokens;
  std::printf("prepare: %llu tokens (%llu documents) in %.2f s = %.0f tokens/s with %d threads\n",
              static_cast<unsigned long long>(tokens),
              static_cast<unsigned long long>(summary.train.documents + summary.val.documents),
              summary.seconds, tokens / summary.seconds,
              prepare.threads > 0 ? prepare.threads : static_cast<int>(std::thread::hardware_concurrency()));
  EXPECT_GT(tokens, 1'000'000u);

  for (int prefetch : {4, 0}) {
    LoaderOptions options;
    options.data_dir = prepare.output_dir;
    options.seq_len = 2048;
    options.global_batch = 8;
    options.prefetch = prefetch;
    TokenLoader loader(options);
    for (int i = 0; i < 20; ++i) loader.next();  // warm up the page cache and the thread
    const int batches = 2000;
    const auto start = Clock::now();
    int64_t checksum = 0;
    for (int i = 0; i < batches; ++i) checksum += loader.next().inputs.data_ptr<int64_t>()[0];
    const double elapsed = seconds_since(start);
    std::printf("loader: (8 x 2048) i64 batches, prefetch %d: %.0f batches/s (%.2f M tokens/s)\n",
                prefetch, batches / elapsed, batches * 8 * 2048 / elapsed / 1e6);
    EXPECT_GE(checksum, 0);
  }
}

}  // namespace
}  // namespace ssmtrain::data
