// `ssmtrain data tokenizer` through the binary: progress on stderr as it reads and trains
// (flushed, so it shows through a pipe), and a vocabulary the corpus cannot fill refused in
// seconds with the most it can give, before any training.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "tests/cli/binary.h"

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;

class DataTokenizerCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ssmtrain-data-cli-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    // A tiny corpus: 40 lines over 12 words.
    std::ofstream text(dir_ / "tiny.txt");
    const char* words[] = {"the", "kernel", "maps", "a", "page", "when", "memory", "is", "free", "lock", "task", "runs"};
    for (int line = 0; line < 40; ++line) {
      for (int w = 0; w < 6; ++w) text << words[(line * 7 + w * 5) % 12] << (w < 5 ? " " : ".\n");
    }
  }
  void TearDown() override { fs::remove_all(dir_); }

  testing::CliResult run(const std::vector<std::string>& args) const { return testing::run_binary(dir_, args); }

  fs::path dir_;
};

TEST_F(DataTokenizerCli, AbsurdVocabularySizeIsRefusedInSecondsWithTheMostTheCorpusGives) {
  const testing::CliResult r =
      run({"data", "tokenizer", "--input", "tiny.txt", "--vocab-size", "100000", "--out", "tok.model"});
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_LT(r.seconds, 5.0);
  EXPECT_NE(r.err.find("ssmtrain data tokenizer: error: --vocab-size 100000 is more than these inputs can "
                       "give a bpe tokenizer: their 40 sentences hold"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("or less"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("training"), std::string::npos) << r.err;  // refused before SentencePiece ran
  EXPECT_FALSE(fs::exists(dir_ / "tok.model"));

  const testing::CliResult unigram = run({"data", "tokenizer", "--input", "tiny.txt", "--vocab-size", "100000",
                                          "--model-type", "unigram", "--out", "tok.model"});
  EXPECT_EQ(unigram.status, 2) << unigram.err;
  EXPECT_NE(unigram.err.find("give a unigram tokenizer"), std::string::npos) << unigram.err;
}

TEST_F(DataTokenizerCli, PrintsReadingThenTrainingProgress) {
  const testing::CliResult r =
      run({"data", "tokenizer", "--input", "tiny.txt", "--vocab-size", "280", "--out", "tok.model"});
  ASSERT_EQ(r.status, 0) << r.err;
  const size_t files = r.err.find("data tokenizer: 1 input files");
  const size_t read = r.err.find("data tokenizer: read 40 sentences in ");
  const size_t trained = r.err.find("data tokenizer: trained in ");
  EXPECT_NE(files, std::string::npos) << r.err;
  EXPECT_NE(read, std::string::npos) << r.err;
  EXPECT_NE(r.err.find("training a bpe model of 280 pieces"), std::string::npos) << r.err;
  EXPECT_NE(trained, std::string::npos) << r.err;
  EXPECT_TRUE(files < read && read < trained) << r.err;
  EXPECT_NE(r.out.find("wrote tok.model: bpe tokenizer, 280 pieces"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace ssmtrain
