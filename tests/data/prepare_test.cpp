// Tests of data/prepare.h and data/shard.h: shards agree with the manifest and with the input
// documents (EOS after each), uint16 vs uint32 storage, the same bytes for any thread count,
// a deterministic document-level validation split, and exit statuses of the command.
#include "data/prepare.h"

#include <gtest/gtest.h>
#include <hdf5.h>

#include <cmath>
#include <map>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/commands.h"
#include "data/errors.h"
#include "data/hash.h"
#include "data/shard.h"
#include "tests/data/data_fixture.h"

namespace ssmtrain::data {
namespace {

using testing::TempDir;

// One shard read back through plain HDF5 calls, independent of MappedShard.
struct ShardContents {
  std::vector<uint32_t> tokens;
  std::vector<uint64_t> doc_offsets;
  size_t token_bytes = 0;
  std::string format;
  uint64_t format_version = 0, token_count = 0, document_count = 0, vocab_size = 0;
};

ShardContents read_shard_with_hdf5(const std::string& path) {
  ShardContents out;
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  EXPECT_GE(file, 0) << path;
  const hid_t tokens = H5Dopen2(file, "tokens", H5P_DEFAULT);
  const hid_t type = H5Dget_type(tokens);
  out.token_bytes = H5Tget_size(type);
  const hid_t space = H5Dget_space(tokens);
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space, &n, nullptr);
  out.tokens.resize(n);
  H5Dread(tokens, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.tokens.data());
  H5Sclose(space);
  H5Tclose(type);
  H5Dclose(tokens);
  const hid_t offsets = H5Dopen2(file, "doc_offsets", H5P_DEFAULT);
  const hid_t offsets_space = H5Dget_space(offsets);
  H5Sget_simple_extent_dims(offsets_space, &n, nullptr);
  out.doc_offsets.resize(n);
  H5Dread(offsets, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.doc_offsets.data());
  H5Sclose(offsets_space);
  H5Dclose(offsets);
  auto u64 = [&](const char* name) {
    uint64_t value = 0;
    const hid_t attribute = H5Aopen(file, name, H5P_DEFAULT);
    H5Aread(attribute, H5T_NATIVE_UINT64, &value);
    H5Aclose(attribute);
    return value;
  };
  out.format_version = u64("format_version");
  out.token_count = u64("token_count");
  out.document_count = u64("document_count");
  out.vocab_size = u64("vocab_size");
  const hid_t attribute = H5Aopen(file, "format", H5P_DEFAULT);
  const hid_t string_type = H5Aget_type(attribute);
  out.format.assign(H5Tget_size(string_type), '\0');
  H5Aread(attribute, string_type, out.format.data());
  H5Tclose(string_type);
  H5Aclose(attribute);
  H5Fclose(file);
  return out;
}

class PrepareTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("prepare");
    corpus_ = new testing::Corpus(testing::make_corpus(dir_->str(), 60));
    train_tokenizer(testing::small_tokenizer_options(corpus_->directory, model_path()));
  }
  static void TearDownTestSuite() {
    delete corpus_;
    delete dir_;
  }
  static std::string model_path() { return *dir_ / "tok.model"; }
  static PrepareOptions options(const std::string& out, int threads) {
    PrepareOptions options;
    options.tokenizer_path = model_path();
    options.inputs = {corpus_->directory};
    options.output_dir = out;
    options.val_fraction = 0.2;
    options.threads = threads;
    options.shard_tokens = 3000;  // several shards per split
    options.piece_bytes = 256;    // documents are cut into many pieces
    options.progress = false;
    return options;
  }
  static TempDir* dir_;
  static testing::Corpus* corpus_;
};
TempDir* PrepareTest::dir_ = nullptr;
testing::Corpus* PrepareTest::corpus_ = nullptr;

TEST_F(PrepareTest, ShardsMatchManifestAndDecodeToTheInputDocuments) {
  const std::string out = *dir_ / "out";
  const PrepareSummary summary = prepare_corpus(options(out, 2));
  const Manifest manifest = read_manifest(out);
  const Tokenizer tokenizer(model_path());
  EXPECT_EQ(manifest.tokenizer_checksum, tokenizer.checksum());
  EXPECT_EQ(file_checksum(out + "/tokenizer.model"), tokenizer.checksum());
  EXPECT_EQ(manifest.vocab_size, 400);
  EXPECT_EQ(manifest.token_bytes, 2);
  EXPECT_EQ(manifest.eos_id, tokenizer.eos_id());
  EXPECT_GT(summary.train.shards, 1u);
  EXPECT_GT(summary.val.documents, 0u);
  EXPECT_EQ(summary.train.documents + summary.val.documents, corpus_->documents.size());
  EXPECT_EQ(manifest.tokens("train"), summary.train.tokens);
  EXPECT_EQ(manifest.documents("val"), summary.val.documents);

  std::vector<std::string> train_docs, val_docs;
  std::map<std::string, std::map<uint32_t, double>> frequency;  // split -> token -> count
  uint64_t shards_seen = 0;
  for (const ShardInfo& info : manifest.shards) {
    const ShardContents shard = read_shard_with_hdf5(out + "/" + info.file);
    EXPECT_EQ(shard.format, kShardFormatName);
    EXPECT_EQ(shard.format_version, 1u);
    EXPECT_EQ(shard.token_bytes, 2u);
    EXPECT_EQ(shard.vocab_size, 400u);
    EXPECT_EQ(shard.tokens.size(), info.tokens) << info.file;
    EXPECT_EQ(shard.token_count, info.tokens);
    EXPECT_EQ(shard.document_count, info.documents);
    ASSERT_EQ(shard.doc_offsets.size(), info.documents + 1);
    EXPECT_EQ(shard.doc_offsets.front(), 0u);
    EXPECT_EQ(shard.doc_offsets.back(), info.tokens);
    for (uint32_t token : shard.tokens) frequency[info.split][token] += 1;
    std::vector<uint16_t> stored(shard.tokens.begin(), shard.tokens.end());
    EXPECT_EQ(checksum_string(xxh64(stored.data(), stored.size() * 2)), info.tokens_checksum);
    for (uint64_t d = 0; d < info.documents; ++d) {
      // Every document ends with EOS, and nothing else inside it is EOS.
      const uint64_t begin = shard.doc_offsets[d], end = shard.doc_offsets[d + 1];
      ASSERT_LT(begin, end);
      EXPECT_EQ(shard.tokens[end - 1], static_cast<uint32_t>(tokenizer.eos_id()));
      const std::vector<int> ids(shard.tokens.begin() + static_cast<int64_t>(begin),
                                 shard.tokens.begin() + static_cast<int64_t>(end - 1));
      for (int id : ids) EXPECT_NE(id, tokenizer.eos_id());
      (info.split == "train" ? train_docs : val_docs).push_back(tokenizer.decode(ids));
    }
    ++shards_seen;
  }
  EXPECT_EQ(shards_seen, summary.train.shards + summary.val.shards);

  // The unigram entropy of each split, from the tokens read back: -sum p log p in nats.
  for (const char* split : {"train", "val"}) {
    double total = 0, entropy = 0;
    for (const auto& [token, count] : frequency[split]) total += count;
    for (const auto& [token, count] : frequency[split]) entropy -= count / total * std::log(count / total);
    ASSERT_TRUE(manifest.unigram_entropy.count(split)) << split;
    EXPECT_NEAR(manifest.unigram_entropy.at(split), entropy, 1e-9 * entropy) << split;
    EXPECT_GT(entropy, 1.0) << split;
  }
  EXPECT_NEAR(summary.train.unigram_entropy, manifest.unigram_entropy.at("train"), 1e-12);

  // The split is by document, by hash of the document index: rebuild it from the inputs.
  std::vector<std::string> expected_train, expected_val;
  for (size_t d = 0; d < corpus_->documents.size(); ++d)
    (is_validation_document(d, 0, 0.2) ? expected_val : expected_train).push_back(corpus_->documents[d]);
  EXPECT_EQ(train_docs, expected_train);
  EXPECT_EQ(val_docs, expected_val);

  // The manifest file itself lists what a person needs.
  std::ifstream in(out + "/manifest.json");
  const nlohmann::json json = nlohmann::json::parse(in);
  EXPECT_EQ(json["format"], "ssmtrain-token-manifest");
  EXPECT_EQ(json["token_dtype"], "uint16");
  EXPECT_EQ(json["splits"]["train"]["tokens"].get<uint64_t>(), summary.train.tokens);
  EXPECT_EQ(json["shards"].size(), manifest.shards.size());
}

TEST_F(PrepareTest, OutputIsIdenticalForAnyThreadCount) {
  const PrepareSummary one = prepare_corpus(options(*dir_ / "t1", 1));
  const PrepareSummary three = prepare_corpus(options(*dir_ / "t3", 3));
  EXPECT_EQ(one.train.tokens, three.train.tokens);
  const Manifest a = read_manifest(*dir_ / "t1"), b = read_manifest(*dir_ / "t3");
  ASSERT_EQ(a.shards.size(), b.shards.size());
  for (size_t i = 0; i < a.shards.size(); ++i) {
    EXPECT_EQ(a.shards[i].file, b.shards[i].file);
    EXPECT_EQ(a.shards[i].tokens_checksum, b.shards[i].tokens_checksum);
  }
}

TEST(ShardFormat, Uint16WhenTheVocabularyFitsElseUint32) {
  EXPECT_EQ(token_bytes_for_vocab(400), 2);
  EXPECT_EQ(token_bytes_for_vocab(65536), 2);  // ids 0..65535
  EXPECT_EQ(token_bytes_for_vocab(65537), 4);
  TempDir dir("shard-width");
  const std::vector<uint32_t> tokens = {5, 70000, 2, 65535, 1, 2};
  const ShardInfo wide = write_shard(dir.str(), "wide.h5", "train", tokens, {0, 3, 6}, 70001, "xxh64:0");
  const ShardContents contents = read_shard_with_hdf5(dir / "wide.h5");
  EXPECT_EQ(contents.token_bytes, 4u);
  EXPECT_EQ(contents.tokens, tokens);
  EXPECT_EQ(wide.tokens_checksum, checksum_string(xxh64(tokens.data(), tokens.size() * 4)));
  const std::vector<uint32_t> small = {5, 7, 2};
  write_shard(dir.str(), "narrow.h5", "train", small, {0, 3}, 65536, "xxh64:0");
  EXPECT_EQ(read_shard_with_hdf5(dir / "narrow.h5").token_bytes, 2u);
}

TEST(ValidationSplit, DeterministicAndNearTheFraction) {
  int held_out = 0;
  for (uint64_t d = 0; d < 100000; ++d) {
    held_out += is_validation_document(d, 7, 0.05);
    EXPECT_EQ(is_validation_document(d, 7, 0.05), is_validation_document(d, 7, 0.05));
  }
  EXPECT_NEAR(held_out / 100000.0, 0.05, 0.005);
  EXPECT_FALSE(is_validation_document(3, 7, 0.0));
}

TEST_F(PrepareTest, CommandExitStatusesAndMessages) {
  PrepareOptions bad = options(*dir_ / "bad", 1);
  bad.tokenizer_path = *dir_ / "no-such.model";
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(run_prepare_command(bad), 2);
  std::string message = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(message.find("no-such.model"), std::string::npos) << message;

  bad = options(*dir_ / "bad", 1);
  bad.val_fraction = 1.5;
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(run_prepare_command(bad), 2);
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("--val-fraction"), std::string::npos);

  ::testing::internal::CaptureStdout();
  EXPECT_EQ(run_prepare_command(options(*dir_ / "ok", 2)), 0);
  EXPECT_NE(::testing::internal::GetCapturedStdout().find("manifest.json"), std::string::npos);
}

}  // namespace
}  // namespace ssmtrain::data
