// `ssmtrain data tokenizer` and `ssmtrain data prepare`: the options fill the data library's
// structs directly (data/tokenizer.h and data/prepare.h document every field and default).
#include <vector>

#include "cli/options.h"
#include "cli/subcommand.h"
#include "data/commands.h"

namespace ssmtrain::cli {
namespace {

void data_tokenizer_options(CLI::App& app, data::TokenizerOptions& a) {
  app.add_option("--input", a.inputs,
                 "Text, JSONL (text field) or directories (recursive, .gz too); linux-doc: the default corpus")
      ->required()
      ->transform(kCorpusInput);
  app.add_option("--vocab-size", a.vocab_size, "Vocabulary size")->required()->check(kPositive);
  app.add_option("--model-type", a.model_type, "SentencePiece model type")
      ->check(CLI::IsMember({"bpe", "unigram"}))
      ->capture_default_str();
  app.add_option("--max-sentences", a.max_sentences, "Sentences sampled for training at most (bounds memory)")
      ->check(kPositive)
      ->capture_default_str();
  add_out(app, a.output_path, "Tokenizer model file to write (FILE.model)");
}

void data_prepare_options(CLI::App& app, data::PrepareOptions& a) {
  app.add_option("--tokenizer", a.tokenizer_path, "SentencePiece model (FILE.model)")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--input", a.inputs,
                 "Text, JSONL (text field) or directories (recursive, .gz too); linux-doc: the default corpus")
      ->required()
      ->transform(kCorpusInput);
  add_out(app, a.output_dir, "Directory for the HDF5 shards and the manifest");
  app.add_option("--val-fraction", a.val_fraction, "Fraction of documents held out for validation")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--threads", a.threads, "Encoding threads (0: every hardware thread)")
      ->check(kNonNegative)
      ->capture_default_str();
}

}  // namespace

std::vector<Subcommand> data_commands() {
  return {
      command<data::TokenizerOptions>("data tokenizer", "Train a SentencePiece tokenizer", data_tokenizer_options,
                                      data::run_tokenizer_command),
      command<data::PrepareOptions>("data prepare", "Encode a corpus into HDF5 token shards", data_prepare_options,
                                    data::run_prepare_command),
  };
}

}  // namespace ssmtrain::cli
