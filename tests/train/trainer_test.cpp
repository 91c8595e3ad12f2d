// The training loop end to end on the CPU: tiny Mamba-1 and Jamba recipes on a generated
// corpus. The loss falls, metrics.jsonl has a line per step, the validation losses and the
// experts' token counts, config.yaml loads back as the same config, loss_curve.svg is
// written, and the same seed gives the same bits.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "configs/load.h"
#include "tests/data/data_fixture.h"
#include "train/trainer.h"

namespace ssmtrain {
namespace {

using data::testing::TempDir;

class TrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("trainer");
    const data::testing::Corpus corpus = data::testing::make_corpus(dir_->str(), 60);
    data::train_tokenizer(data::testing::small_tokenizer_options(corpus.directory, *dir_ / "tok.model"));
    data::PrepareOptions prepare;
    prepare.tokenizer_path = *dir_ / "tok.model";
    prepare.inputs = {corpus.directory};
    prepare.output_dir = *dir_ / "data";
    prepare.val_fraction = 0.1;
    prepare.threads = 2;
    prepare.progress = false;
    data::prepare_corpus(prepare);
  }
  static void TearDownTestSuite() { delete dir_; }

  static configs::Config config(const std::string& run_name) {
    return configs::load_config(std::string(SSMTRAIN_SOURCE_DIR) + "/recipes/tiny/mamba1.yaml",
                                {"data.train=" + (*dir_ / "data"), "run.output_dir=" + (*dir_ / "runs"),
                                 "run.name=" + run_name, "model.d_model=32", "model.n_layers=2", "model.vocab_size=512",
                                 "training.seq_len=32", "training.global_batch_tokens=256", "training.micro_batch=4",
                                 "training.max_steps=25", "training.eval_every=10", "schedule.warmup_steps=3",
                                 "optim.lr=0.01", "eval.perplexity_tokens=1024", "logging.every=5"});
  }
  static TempDir* dir_;
};
TempDir* TrainerTest::dir_ = nullptr;

TEST_F(TrainerTest, LossFallsAndTheRunDirectoryHasItsFiles) {
  const configs::Config cfg = config("a");
  const TrainSummary s = train(cfg);
  EXPECT_EQ(s.steps, 25);
  EXPECT_LT(s.final_loss, s.first_loss - 1.0) << s.first_loss << " -> " << s.final_loss;
  EXPECT_GT(s.final_val_loss, 0);
  const std::filesystem::path run = s.run_dir;
  std::ifstream metrics(run / "metrics.jsonl");
  std::string line;
  int steps = 0, val = 0;
  while (std::getline(metrics, line)) {
    steps += line.find("\"grad_norm\"") != std::string::npos;
    val += line.find("\"val_loss\"") != std::string::npos;
  }
  EXPECT_EQ(steps, 25);
  EXPECT_EQ(val, 3);  // after steps 10, 20 and at the end
  EXPECT_EQ(configs::load_config(run / "config.yaml"), cfg);
  std::stringstream svg;
  svg << std::ifstream(run / "loss_curve.svg").rdbuf();
  EXPECT_NE(svg.str().find("<polyline"), std::string::npos);
}

// The tiny Jamba recipe (Mamba-1 with dt/B/C norms, attention, MLP and MoE layers), shrunk:
// its loss falls too, and metrics.jsonl reports the experts' token counts, which add up to
// tokens x top_k per MoE layer.
TEST_F(TrainerTest, HybridWithAttentionAndMoeTrains) {
  const configs::Config cfg = configs::load_config(
      std::string(SSMTRAIN_SOURCE_DIR) + "/recipes/tiny/jamba.yaml",
      {"data.train=" + (*dir_ / "data"), "run.output_dir=" + (*dir_ / "runs"), "run.name=jamba",
       "model.d_model=32", "model.vocab_size=512", "model.attention.n_heads=4", "model.mlp.d_ff=64",
       "model.moe.n_experts=4", "model.moe.d_ff_expert=32", "training.seq_len=32",
       "training.global_batch_tokens=256", "training.micro_batch=4", "training.max_steps=20",
       "training.eval_every=0", "schedule.warmup_steps=3", "optim.lr=0.01", "eval.perplexity_tokens=1024",
       "logging.every=5"});
  const TrainSummary s = train(cfg);
  EXPECT_LT(s.final_loss, s.first_loss - 1.0) << s.first_loss << " -> " << s.final_loss;
  std::ifstream metrics(std::filesystem::path(s.run_dir) / "metrics.jsonl");
  std::string line;
  int count_lines = 0;
  while (std::getline(metrics, line)) {
    if (line.find("\"expert_counts\"") == std::string::npos) continue;
    ++count_lines;
    // Four MoE layers of four experts; 256 tokens per step, two experts each.
    const std::string counts = line.substr(line.find("[["));
    int layers = 0;
    size_t at = 0;
    while ((at = counts.find('[', at + 1)) != std::string::npos) {
      const std::string row = counts.substr(at + 1, counts.find(']', at) - at - 1);
      std::stringstream values(row);
      double total = 0, value = 0;
      char comma = 0;
      while (values >> value) {
        total += value;
        values >> comma;
      }
      EXPECT_EQ(total, 256 * 2) << line;
      ++layers;
    }
    EXPECT_EQ(layers, 4) << line;
  }
  EXPECT_EQ(count_lines, 5);  // steps 0, 5, 10, 15 and the last
}

TEST_F(TrainerTest, SameSeedSameBits) {
  const TrainSummary a = train(config("b")), b = train(config("c"));
  EXPECT_EQ(a.final_loss, b.final_loss);
  EXPECT_EQ(a.final_val_loss, b.final_val_loss);
}

// A validation shard that is there but damaged stops the run before training, naming the
// file (it used to cost only the validation loss, with a line on stderr).
TEST_F(TrainerTest, ADamagedValidationShardIsAnError) {
  const std::filesystem::path copy = *dir_ / "damaged-val";
  std::filesystem::copy(*dir_ / "data", copy, std::filesystem::copy_options::recursive);
  const std::filesystem::path shard = copy / "val-00000.h5";
  std::filesystem::resize_file(shard, std::filesystem::file_size(shard) / 2);
  configs::Config cfg = config("damaged");
  cfg.data.train = copy.string();
  try {
    train(cfg);
    FAIL() << "trained with a damaged validation shard";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("val-00000.h5"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::path(cfg.run.output_dir) / "damaged" / "metrics.jsonl"));
}

}  // namespace
}  // namespace ssmtrain
