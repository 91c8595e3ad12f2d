// What `ssmtrain train` and `config show` refuse before any work, through the binary: recipes
// the kernels of the CPU or the GPU cannot run (named at file:line:column with the allowed
// values, on either device, also on a machine without a GPU via `config show --device`),
// layouts and head counts that name the key at fault, tabs in YAML, mistyped commands, models
// too large for the machine (refused in milliseconds, nothing allocated), and a tokenizer that
// is not the corpus's or a vocabulary smaller than its.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/cli/binary.h"
#include "tests/train/run_fixture.h"

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;

using Result = testing::CliResult;

class Preflight : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ssmtrain-preflight-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  Result run(const std::vector<std::string>& args) const { return testing::run_binary(dir_, args); }
  void write(const std::string& name, const std::string& text) const { std::ofstream(dir_ / name) << text; }

  fs::path dir_;
};

// Exit 2 with one stderr line holding each of `parts`.
void expect_one_line_error(const Result& r, const std::vector<std::string>& parts) {
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  for (const std::string& p : parts) EXPECT_NE(r.err.find(p), std::string::npos) << "missing '" << p << "' in: " << r.err;
}

// A Mamba-2 recipe the GPU kernels accept (head_dim 32, d_state 16, chunk 64, d_conv 4); line 5
// holds the mamba2 keys a test edits. The corpus does not exist: a check that came after data
// would say so instead.
std::string mamba2_recipe(const std::string& mamba2_line) {
  return "model:\n"
         "  family: mamba2\n"
         "  d_model: 64\n"
         "  n_layers: 2\n" +
         mamba2_line +
         "\n"
         "data:\n"
         "  train: corpus/none\n"
         "training:\n"
         "  seq_len: 64\n"
         "  global_batch_tokens: 1024\n"
         "  micro_batch: 4\n"
         "  max_steps: 20\n"
         "schedule: {warmup_steps: 2}\n";
}

TEST_F(Preflight, KernelLimitsAreNamedAtTheirLineForEachDevice) {
  struct Case {
    std::string line;      // line 5 of the recipe
    std::string key;       // named in the error
    std::string allowed;   // named in the error
    bool cpu_refuses;      // the CPU references refuse it too
  };
  const std::vector<Case> cases = {
      {"  mamba2: {head_dim: 32, d_state: 16, chunk_size: 32}", "model.mamba2.chunk_size", "64..256 on the GPU", false},
      {"  mamba2: {head_dim: 32, d_state: 16, d_conv: 5}", "model.mamba2.d_conv", "2, 3 or 4", true},
      {"  mamba2: {head_dim: 32, d_state: 300}", "model.mamba2.d_state", "16, 32, 64, 128 or 256 on the GPU", false},
      {"  mamba2: {head_dim: 48, d_state: 16}", "model.mamba2.head_dim", "divisible by head_dim", true},
  };
  write("good.yaml", mamba2_recipe("  mamba2: {head_dim: 32, d_state: 16, chunk_size: 64}"));
  for (const char* device : {"cpu", "cuda"}) {
    const Result good = run({"config", "show", "good.yaml", "--device", device});
    EXPECT_EQ(good.status, 0) << device << ": " << good.err;
  }
  for (const Case& c : cases) {
    write("r.yaml", mamba2_recipe(c.line));
    for (const char* device : {"cpu", "cuda"}) {
      const Result r = run({"config", "show", "r.yaml", "--device", device});
      if (std::string(device) == "cpu" && !c.cpu_refuses) {
        EXPECT_EQ(r.status, 0) << c.line << ": " << r.err;
        continue;
      }
      SCOPED_TRACE(c.line + " on " + device);
      expect_one_line_error(r, {"r.yaml:5:", c.key, c.allowed});
    }
  }
  // train refuses on this machine's device before the missing corpus is noticed.
  write("r.yaml", mamba2_recipe("  mamba2: {head_dim: 32, d_state: 16, d_conv: 5}"));
  expect_one_line_error(run({"train", "r.yaml"}), {"r.yaml:5:", "model.mamba2.d_conv", "it must be 2, 3 or 4"});
}

TEST_F(Preflight, AttentionHeadsAndMamba1StateAreCheckedToo) {
  const std::string hybrid = "model:\n"
                             "  family: hybrid\n"
                             "  ssm: mamba1\n"
                             "  d_model: 64\n"
                             "  n_layers: 4\n"
                             "  layout: {attention_ratio: \"1:1\"}\n";
  const std::string rest = "data:\n  train: corpus/none\ntraining: {seq_len: 64, global_batch_tokens: 1024, micro_batch: 4, max_steps: 20}\nschedule: {warmup_steps: 2}\n";
  write("kv.yaml", hybrid + "  attention: {n_heads: 4, n_kv_heads: 3}\n" + rest);
  expect_one_line_error(run({"config", "show", "kv.yaml", "--device", "cuda"}),
                        {"kv.yaml:7:", "model.attention.n_kv_heads", "divisor of n_heads = 4"});
  write("state.yaml", hybrid + "  attention: {n_heads: 4}\n  mamba1: {d_state: 300}\n" + rest);
  expect_one_line_error(run({"config", "show", "state.yaml", "--device", "cuda"}),
                        {"state.yaml:8:", "model.mamba1.d_state", "1..64 on the GPU"});
  EXPECT_EQ(run({"config", "show", "state.yaml", "--device", "cpu"}).status, 0);
  // The default n_heads (12) does not divide 64: the error names n_heads and what would.
  write("heads.yaml", hybrid + rest);
  expect_one_line_error(run({"config", "show", "heads.yaml"}),
                        {"model.attention.n_heads = 12 does not divide d_model = 64", "1, 2, 4, 8, 16, 32, 64"});
}

TEST_F(Preflight, RatioThatPlacesNoAttentionLayerNamesTheDepthItNeeds) {
  write("r.yaml", "model:\n  family: hybrid\n  ssm: mamba2\n  d_model: 64\n  n_layers: 4\n"
                  "  layout: {attention_ratio: \"1:7\"}\n  attention: {n_heads: 4}\n  mamba2: {head_dim: 32}\n"
                  "data:\n  train: corpus/none\ntraining: {max_steps: 20}\nschedule: {warmup_steps: 2}\n");
  expect_one_line_error(run({"config", "show", "r.yaml"}),
                        {"r.yaml:6:", "\"1:7\" places its first attention layer at layer 4", "n_layers >= 5",
                         "found n_layers = 4"});
  EXPECT_EQ(run({"config", "show", "r.yaml", "--set", "model.n_layers=8"}).status, 0);
}

TEST_F(Preflight, TabsInTheIndentationAreNamed) {
  write("t.yaml", "model:\n  family: mamba2\n\td_model: 64\n");
  expect_one_line_error(run({"config", "show", "t.yaml"}), {"t.yaml:3:1", "a tab in the indentation"});
}

TEST_F(Preflight, UnknownCommandsListTheCommands) {
  expect_one_line_error(run({"bogus"}), {"unknown command 'bogus'", "train, config", "eval"});
  expect_one_line_error(run({"eval", "bogus"}), {"unknown command 'eval bogus'", "perplexity", "niah"});
}

TEST_F(Preflight, OversizedModelsAreRefusedInMillisecondsWithoutAllocating) {
  write("good.yaml", mamba2_recipe("  mamba2: {head_dim: 32, d_state: 16}"));
  // 5.86B parameters: shown from the shapes in well under a second (building it took minutes).
  const Result shown = run({"config", "show", "good.yaml", "--set", "model.d_model=20000"});
  EXPECT_EQ(shown.status, 0) << shown.err;
  EXPECT_NE(shown.out.find("5857427820 (5.86B)"), std::string::npos) << shown.out;
  EXPECT_LT(shown.seconds, 1.0);
  expect_one_line_error(run({"config", "show", "good.yaml", "--set", "model.n_layers=1000000000"}),
                        {"model.n_layers", "[1, 100000]"});
  // train: the state alone (16 bytes a parameter) exceeds this machine's memory.
  const Result train = run({"train", "good.yaml", "--set", "model.d_model=40000"});  // 23B: no GPU holds it either
  expect_one_line_error(train, {"model.d_model", "GiB for weights, gradients and AdamW state", "GiB free"});
  EXPECT_LT(train.seconds, 1.0);
}

// A copy of the shared prepared corpus whose tokenizer the test may spoil.
fs::path copy_corpus(const fs::path& to) {
  fs::copy(testing::prepared_corpus(), to, fs::copy_options::recursive);
  return to;
}

std::string corpus_recipe(const fs::path& corpus, const std::string& extra = "") {
  return "model:\n  family: mamba2\n  d_model: 32\n  n_layers: 1\n  vocab_size: 512\n"
         "  mamba2: {head_dim: 16, d_state: 16, chunk_size: 16}\n"
         "data:\n  train: " + corpus.string() + "\n" + extra +
         "training: {seq_len: 32, global_batch_tokens: 256, micro_batch: 4, max_steps: 1, precision: fp32}\n"
         "schedule: {warmup_steps: 0}\n"
         "run: {output_dir: runs}\n";
}

TEST_F(Preflight, TheTokenizerMustBeTheCorpussAndFitTheEmbedding) {
  const fs::path corpus = copy_corpus(dir_ / "corpus");
  write("ok.yaml", corpus_recipe(corpus));
  const Result ok = run({"train", "ok.yaml"});
  ASSERT_EQ(ok.status, 0) << ok.err;

  write("small.yaml", corpus_recipe(corpus));
  expect_one_line_error(run({"train", "small.yaml", "--set", "model.vocab_size=100", "--set", "run.name=small"}),
                        {"model.vocab_size", "at least the tokenizer's vocabulary of", "found 100"});

  write("missing.yaml", corpus_recipe(corpus, "  tokenizer: nowhere.model\n"));
  expect_one_line_error(run({"train", "missing.yaml", "--set", "run.name=missing"}),
                        {"missing.yaml:9:", "data.tokenizer", "no tokenizer file at 'nowhere.model'"});

  write("garbage.model", "this is not a SentencePiece model");
  write("other.yaml", corpus_recipe(corpus, "  tokenizer: garbage.model\n"));
  expect_one_line_error(run({"train", "other.yaml", "--set", "run.name=other"}),
                        {"garbage.model", "checksum", "is not its tokenizer"});

  std::ofstream(corpus / "tokenizer.model", std::ios::trunc) << "garbage beside the shards";
  expect_one_line_error(run({"train", "ok.yaml", "--set", "run.name=beside"}),
                        {(corpus / "tokenizer.model").string(), "is not its tokenizer"});
}

}  // namespace
}  // namespace ssmtrain
