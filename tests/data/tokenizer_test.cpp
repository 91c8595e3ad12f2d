// Tests of data/tokenizer.h, data/text_input.h and data/hash.h: SentencePiece training from
// directories, .gz and JSONL, the encode/decode round trip with byte fallback, input errors.
#include "data/tokenizer.h"

#include <gtest/gtest.h>

#include "data/commands.h"
#include "data/errors.h"
#include "data/hash.h"
#include "data/text_input.h"
#include "tests/data/data_fixture.h"

namespace ssmtrain::data {
namespace {

using testing::TempDir;

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

}  // namespace
}  // namespace ssmtrain::data
