// `ssmtrain data tokenizer` and `ssmtrain data prepare`: summaries on stdout, one-line errors
// on stderr, exit statuses 0 / 2 (InputError, std::invalid_argument) / 1 (anything else).
#include "data/commands.h"

#include <cstdio>
#include <exception>
#include <stdexcept>

#include "data/errors.h"

namespace ssmtrain::data {
namespace {

template <typename Work>
int run_reporting_errors(const char* command, Work&& work) {
  try {
    work();
    return 0;
  } catch (const InputError& error) {
    std::fprintf(stderr, "ssmtrain %s: error: %s\n", command, error.what());
    return 2;
  } catch (const std::invalid_argument& error) {
    std::fprintf(stderr, "ssmtrain %s: error: %s\n", command, error.what());
    return 2;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "ssmtrain %s: error: %s\n", command, error.what());
    return 1;
  }
}

}  // namespace

int run_tokenizer_command(const TokenizerOptions& options) {
  return run_reporting_errors("data tokenizer", [&] {
    const TokenizerSummary summary = train_tokenizer(options);
    std::printf("wrote %s: %s tokenizer, %d pieces, trained on up to %lld of %llu sentences, %s\n",
                summary.output_path.c_str(), options.model_type.c_str(), summary.vocab_size,
                static_cast<long long>(options.max_sentences),
                static_cast<unsigned long long>(summary.sentences_seen), summary.checksum.c_str());
  });
}

int run_prepare_command(const PrepareOptions& options) {
  return run_reporting_errors("data prepare", [&] {
    const PrepareSummary summary = prepare_corpus(options);
    std::printf("wrote %s: train %llu tokens in %llu documents (%llu shards), val %llu tokens in "
                "%llu documents (%llu shards), %s, %.1f s, %.0f tokens/s; unigram entropy %.3f nats "
                "(train)\n",
                summary.manifest_path.c_str(),
                static_cast<unsigned long long>(summary.train.tokens),
                static_cast<unsigned long long>(summary.train.documents),
                static_cast<unsigned long long>(summary.train.shards),
                static_cast<unsigned long long>(summary.val.tokens),
                static_cast<unsigned long long>(summary.val.documents),
                static_cast<unsigned long long>(summary.val.shards),
                summary.token_bytes == 2 ? "uint16" : "uint32", summary.seconds,
                summary.tokens_per_second, summary.train.unigram_entropy);
  });
}

}  // namespace ssmtrain::data
