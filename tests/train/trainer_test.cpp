// The training loop end to end on the CPU: a tiny Mamba-1 recipe on a generated corpus. The
// loss falls, metrics.jsonl has a line per step and the validation losses, config.yaml loads
// back as the same config, loss_curve.svg is written, and the same seed gives the same bits.
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

TEST_F(TrainerTest, SameSeedSameBits) {
  const TrainSummary a = train(config("b")), b = train(config("c"));
  EXPECT_EQ(a.final_loss, b.final_loss);
  EXPECT_EQ(a.final_val_loss, b.final_val_loss);
}

}  // namespace
}  // namespace ssmtrain
