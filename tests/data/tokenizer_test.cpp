// Tests of data/tokenizer.h, data/text_input.h and data/hash.h: SentencePiece training from
// directories, .gz and JSONL, the encode/decode round trip with byte fallback, input errors.
#include "data/tokenizer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>

#include "data/commands.h"
#include "data/errors.h"
#include "data/hash.h"
#include "data/text_input.h"
#include "tests/data/data_fixture.h"

namespace ssmtrain::data {
namespace {

using testing::TempDir;
namespace fs = std::filesystem;

TEST(Hash, Xxh64MatchesReferenceVectors) {
  EXPECT_EQ(xxh64("", 0), 0xEF46DB3751D8E999ull);
  EXPECT_EQ(xxh64("abc", 3), 0x44BC2CF5AD770999ull);
  const std::string long_text = "Nobody inspects the spammish repetition";  // 39 bytes: stripes
  EXPECT_EQ(xxh64(long_text.data(), long_text.size()), 0xFBCEA83C8A378BF1ull);
  EXPECT_EQ(checksum_string(0xEF46DB3751D8E999ull), "xxh64:ef46db3751d8e999");
}

TEST(TextInput, ExpandsDirectoriesRecursivelyInSortedOrderWithGzipAndJsonl) {
  TempDir dir("text-input");
  const testing::Corpus corpus = testing::make_corpus(dir.str(), 12);
  const std::vector<InputFile> files = expand_inputs({corpus.directory});
  ASSERT_EQ(files.size(), 10u);  // 3 + 3 + 3 files and d.jsonl; notes.bin skipped
  EXPECT_TRUE(std::is_sorted(files.begin(), files.end(),
                             [](const InputFile& a, const InputFile& b) { return a.path < b.path; }));
  EXPECT_EQ(files.back().format, InputFormat::jsonl);
  EXPECT_EQ(files.front().format, InputFormat::text);

  // Document pieces reassemble into the original documents, in order.
  std::vector<std::string> documents(1);
  for (const InputFile& file : files) {
    for_each_document_piece(file, /*piece_bytes=*/100, /*max_document_bytes=*/1 << 30,
                            [&](DocumentPiece&& piece) {
                              documents.back() += piece.text;
                              if (piece.ends_document) documents.emplace_back();
                            });
  }
  documents.pop_back();
  EXPECT_EQ(documents, corpus.documents);
}

TEST(TextInput, LongPlainFilesAreCutIntoDocumentsAtLineEnds) {
  TempDir dir("text-cut");
  std::string text;
  for (int i = 0; i < 200; ++i) text += "line number " + std::to_string(i) + "\n";
  testing::write_text(dir / "big.txt", text);
  std::vector<std::string> documents(1);
  for_each_document_piece({dir / "big.txt", InputFormat::text, 0}, 64, 1000,
                          [&](DocumentPiece&& piece) {
                            EXPECT_TRUE(piece.text.empty() || piece.text.back() == '\n');
                            documents.back() += piece.text;
                            if (piece.ends_document) documents.emplace_back();
                          });
  documents.pop_back();
  EXPECT_GT(documents.size(), 2u);
  std::string joined;
  for (const std::string& d : documents) {
    EXPECT_LE(d.size(), 1000u + 64u);
    joined += d;
  }
  EXPECT_EQ(joined, text);
}

TEST(TextInput, BadJsonlLineNamesFileAndLine) {
  TempDir dir("jsonl-bad");
  testing::write_text(dir / "x.jsonl", "{\"text\": \"fine\"}\n{\"body\": \"no text\"}\n");
  try {
    for_each_line(expand_inputs({dir / "x.jsonl"}), [](std::string_view) {});
    FAIL() << "expected InputError";
  } catch (const InputError& error) {
    EXPECT_NE(std::string(error.what()).find(dir / "x.jsonl:2"), std::string::npos) << error.what();
    EXPECT_NE(std::string(error.what()).find("\"text\""), std::string::npos) << error.what();
  }
}

class TokenizerTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerTest, TrainEncodeDecodeRoundTripWithByteFallback) {
  TempDir dir("tokenizer");
  const testing::Corpus corpus = testing::make_corpus(dir.str(), 40);
  const std::string model = dir / "tok.model";
  const TokenizerSummary summary =
      train_tokenizer(testing::small_tokenizer_options(corpus.directory, model, GetParam()));
  EXPECT_EQ(summary.vocab_size, 400);
  EXPECT_GT(summary.sentences_seen, 100u);
  EXPECT_EQ(summary.checksum, file_checksum(model));

  const Tokenizer tokenizer(model);
  EXPECT_EQ(tokenizer.vocab_size(), 400);
  EXPECT_EQ(tokenizer.unk_id(), 0);
  EXPECT_EQ(tokenizer.bos_id(), 1);
  EXPECT_EQ(tokenizer.eos_id(), 2);
  EXPECT_EQ(tokenizer.checksum(), summary.checksum);

  // Seen text compresses (merges were learned) and round-trips byte for byte.
  for (const std::string& document : corpus.documents) {
    const std::vector<int> ids = tokenizer.encode(document);
    EXPECT_LT(ids.size() * 10, document.size() * 6);
    EXPECT_EQ(tokenizer.decode(ids), document);
  }
  // Unseen characters fall back to bytes: no <unk>, exact round trip, whitespace kept.
  const std::string unseen = "Ωμέγα ünïcödé 😀 «quotes»\n\ttab  two spaces\n\nend ";
  const std::vector<int> ids = tokenizer.encode(unseen);
  for (int id : ids) EXPECT_NE(id, tokenizer.unk_id());
  EXPECT_EQ(tokenizer.decode(ids), unseen);
  bool used_byte_piece = false;
  for (int id : ids) used_byte_piece |= tokenizer.piece(id).rfind("<0x", 0) == 0;
  EXPECT_TRUE(used_byte_piece);

  // Encoding pieces cut at line ends gives the same ids as the whole text.
  const std::string& document = corpus.documents[3];
  const size_t cut = document.find('\n', document.size() / 2) + 1;
  std::vector<int> pieces = tokenizer.encode(document.substr(0, cut));
  tokenizer.encode(document.substr(cut), &pieces);
  EXPECT_EQ(pieces, tokenizer.encode(document));
}

INSTANTIATE_TEST_SUITE_P(ModelTypes, TokenizerTest, ::testing::Values("bpe", "unigram"));

TEST(TokenizerCommand, InputErrorsExitWithStatus2AndNameThePath) {
  TempDir dir("tokenizer-errors");
  TokenizerOptions options = testing::small_tokenizer_options(dir / "missing.txt", dir / "t.model");
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(run_tokenizer_command(options), 2);
  const std::string message = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(message.find(dir / "missing.txt"), std::string::npos) << message;

  testing::write_text(dir / "a.txt", "some text\n");
  options.inputs = {dir / "a.txt"};
  options.model_type = "wordpiece";
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(run_tokenizer_command(options), 2);
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("bpe or unigram"), std::string::npos);

  EXPECT_THROW(Tokenizer(dir / "a.txt"), InputError);  // not a model
}

// A hand-counted case: characters {a, b, c, ' ', 'é'}; words "ab", " abc", " é" (a word starts
// at a run of spaces). BPE: 1 + 3 + 1 merges; unigram: 1 + (3 + 2 + 1) + 1 substrings.
TEST(VocabularyBound, CountsCharactersAndWordPiecesByHand) {
  TempDir dir("vocab-bound");
  testing::write_text(dir / "a.txt", "ab abc \xc3\xa9\n\nab\n");
  const std::vector<InputFile> files = expand_inputs({dir / "a.txt"});
  const VocabularyBound bpe = max_vocabulary_size(files, "bpe", 1'000'000, 16384);
  EXPECT_TRUE(bpe.complete);
  EXPECT_EQ(bpe.sentences, 2u);
  EXPECT_EQ(bpe.characters, 5u);
  EXPECT_EQ(bpe.words, 3u);
  EXPECT_EQ(bpe.max_pieces, 259u + 5u + 5u);
  EXPECT_EQ(max_vocabulary_size(files, "unigram", 1'000'000, 16384).max_pieces, 259u + 5u + 8u);
  // Lines longer than the trainer's limit are left out, as the trainer leaves them out.
  EXPECT_EQ(max_vocabulary_size(files, "bpe", 1'000'000, 4).sentences, 1u);
  // The scan stops once the bound reaches what was asked.
  const VocabularyBound early = max_vocabulary_size(files, "bpe", 260, 16384);
  EXPECT_FALSE(early.complete);
  EXPECT_EQ(early.sentences, 1u);
}

// The bound is an upper bound: SentencePiece fills a vocabulary a little below it, and one above
// it is refused before training, in well under a second.
TEST(VocabularyBound, ImpossibleVocabularyIsRefusedBeforeTraining) {
  TempDir dir("vocab-impossible");
  const testing::Corpus corpus = testing::make_corpus(dir.str(), 8);
  TokenizerOptions options = testing::small_tokenizer_options(corpus.directory, dir / "t.model");
  const VocabularyBound bound = max_vocabulary_size(expand_inputs(options.inputs), "bpe", 1u << 30,
                                                    options.max_sentence_bytes);
  ASSERT_TRUE(bound.complete);
  options.vocab_size = static_cast<int>(bound.max_pieces) + 1;
  const auto start = std::chrono::steady_clock::now();
  try {
    train_tokenizer(options);
    FAIL() << "expected InputError";
  } catch (const InputError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("--vocab-size " + std::to_string(options.vocab_size) + " is more than"),
              std::string::npos) << message;
    EXPECT_NE(message.find("use --vocab-size " + std::to_string(bound.max_pieces) + " or less"),
              std::string::npos) << message;
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 1.0);
  EXPECT_FALSE(fs::exists(dir / "t.model"));
  // 259 fixed pieces, one per character and a few merges: what the corpus can fill.
  options.vocab_size = static_cast<int>(259 + bound.characters + 10);
  ASSERT_LT(static_cast<uint64_t>(options.vocab_size), bound.max_pieces);
  EXPECT_EQ(train_tokenizer(options).vocab_size, options.vocab_size);
}

}  // namespace
}  // namespace ssmtrain::data
