// The training loop end to end on the CPU: tiny Mamba-1 and Jamba recipes on a generated
// corpus. The loss falls, metrics.jsonl has a line per step, the validation losses and the
// experts' token counts, config.yaml loads back as the same config, loss_curve.svg is
// written, and the same seed gives the same bits.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "configs/load.h"
#include "data/loader.h"
#include "layers/from_config.h"
#include "train/checkpoint.h"
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

// train --dump-batches (the parity harness's input): batches.bin holds every step's batch
// exactly as a token loader of the same data, seed and batch yields it, and init.h5 the
// weights a model of the recipe's seed starts from.
TEST_F(TrainerTest, DumpBatchesWritesTheLoadersBatchesAndTheInitialWeights) {
  const configs::Config c = config("dump");
  TrainOptions options;
  options.dump_batches = *dir_ / "dump";
  train(c, options);

  std::ifstream in(*dir_ / "dump/batches.bin", std::ios::binary);
  char magic[8];
  uint32_t version[2];
  int64_t rows = 0, seq_len = 0;
  in.read(magic, 8);
  in.read(reinterpret_cast<char*>(version), 8);
  in.read(reinterpret_cast<char*>(&rows), 8);
  in.read(reinterpret_cast<char*>(&seq_len), 8);
  ASSERT_EQ(std::string(magic, 8), "SSMBATCH");
  EXPECT_EQ(version[0], 1u);
  ASSERT_EQ(rows, 8);  // global_batch_tokens / seq_len
  ASSERT_EQ(seq_len, 32);

  data::LoaderOptions lo;
  lo.data_dir = c.data.train;
  lo.seq_len = seq_len;
  lo.global_batch = rows;
  lo.seed = uint64_t(c.run.seed);
  lo.prefetch = 0;
  data::TokenLoader loader(lo);
  const int64_t n = rows * seq_len;
  int64_t steps = 0;
  for (int64_t step; in.read(reinterpret_cast<char*>(&step), 8); ++steps) {
    EXPECT_EQ(step, steps);
    std::vector<int32_t> arrays[3];
    for (auto& a : arrays) {
      a.resize(size_t(n));
      in.read(reinterpret_cast<char*>(a.data()), n * 4);
    }
    const data::Batch want = loader.next();
    const Tensor* tensors[3] = {&want.inputs, &want.targets, &want.doc_index};
    for (int k = 0; k < 3; ++k) {
      const std::vector<float> v = tensors[k]->to_vector();
      EXPECT_EQ(arrays[k], std::vector<int32_t>(v.begin(), v.end())) << "step " << step << " array " << k;
    }
    for (int64_t r = 0; r < rows; ++r)  // targets are the inputs one token on
      for (int64_t t = 0; t + 1 < seq_len; ++t) ASSERT_EQ(arrays[1][size_t(r * seq_len + t)], arrays[0][size_t(r * seq_len + t + 1)]);
  }
  EXPECT_EQ(steps, c.training.max_steps);

  const CheckpointContents init = read_checkpoint(*dir_ / "dump/init.h5");
  LanguageModel fresh(model_options(c.model), uint64_t(c.run.seed));
  const auto arrays = model_arrays(fresh);
  ASSERT_EQ(init.model.size(), arrays.size());
  for (const auto& [name, want] : arrays) {
    const auto it = std::find_if(init.model.begin(), init.model.end(), [&](const auto& p) { return p.first == name; });
    ASSERT_NE(it, init.model.end()) << name << " is not in init.h5";
    ASSERT_EQ(it->second.size(), want.size()) << name;
    EXPECT_TRUE(std::equal(want.data(), want.data() + want.size(), it->second.data())) << name << " is not the step-0 weight";
  }
  EXPECT_EQ(init.progress.step, 0);
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
