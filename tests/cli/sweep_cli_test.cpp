// `ssmtrain sweep` through the binary: recipes/ablate/attention-ratio-tiny.yaml (0, 1:15, 1:7,
// 1:3, 1:1) shrunk to a few steps on the test corpus runs every variant, evaluates validation
// loss, NIAH and MQAR, and writes report.md, report.csv and the four SVG plots with the swept
// value on x; --report-only rebuilds the same report from the variants' results; --slurm writes
// a job array and its submit script without training; a recipe without sweep: exits 2.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tests/cli/binary.h"
#include "tests/train/run_fixture.h"

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;
using testing::read_text;
using testing::run_binary;

const std::string kAblate = std::string(SSMTRAIN_SOURCE_DIR) + "/recipes/ablate/attention-ratio-tiny.yaml";

std::vector<std::string> tiny_sweep_args(const std::vector<std::string>& head) {
  std::vector<std::string> args = head;
  for (const std::string& o :
       {"data.train=" + testing::prepared_corpus(), std::string("model.d_model=32"), std::string("model.vocab_size=512"),
        std::string("model.mamba2.head_dim=16"), std::string("model.mamba2.chunk_size=16"),
        std::string("model.mamba2.d_state=16"), std::string("training.seq_len=32"),
        std::string("training.global_batch_tokens=128"), std::string("training.micro_batch=4"),
        std::string("training.max_steps=3"), std::string("training.eval_every=0"),
        std::string("schedule.warmup_steps=1"), std::string("eval.perplexity_tokens=512"),
        std::string("eval.niah.lengths=[96]"), std::string("eval.niah.depths=[0.0, 1.0]"),
        std::string("mqar.vocab_size=65"), std::string("mqar.num_pairs=4"), std::string("mqar.test_examples=8"),
        std::string("logging.every=1")}) {
    args.push_back("--set");
    args.push_back(o);
  }
  return args;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::vector<std::string> fields_of(const std::string& line) {
  std::vector<std::string> fields;
  std::string field;
  bool quoted = false;
  for (char c : line) {
    if (c == '"') quoted = !quoted;
    else if (c == ',' && !quoted) fields.push_back(field), field.clear();
    else field += c;
  }
  fields.push_back(field);
  return fields;
}

TEST(SweepCli, TinyAttentionRatioSweepRunsEveryVariantAndWritesTheReport) {
  data::testing::TempDir dir("sweep-cli");
  const testing::CliResult r = run_binary(dir.str(), tiny_sweep_args({"sweep", kAblate, "--out", "sweep"}));
  ASSERT_EQ(r.status, 0) << r.err.substr(r.err.size() > 4000 ? r.err.size() - 4000 : 0);
  std::printf("tiny sweep of 5 variants: %.1f s\n", r.seconds);
  // 45 s of CPU time here (two cores shared with other builds: 114 s to 322 s of wall time);
  // the bound catches a sweep that stopped being a CI-sized job, not machine load.
  EXPECT_LT(r.seconds, 600.0);
  const fs::path out = fs::path(dir.str()) / "sweep";

  const std::vector<std::string> csv = lines_of(read_text(out / "report.csv"));
  ASSERT_EQ(csv.size(), 6u);
  EXPECT_EQ(csv[0],
            "variant,swept_key,value,x,layout,parameters,steps,train_loss,val_loss,perplexity,tokens_per_second,"
            "niah_accuracy,mqar_accuracy");
  const std::vector<std::string> values = {"0:1", "1:15", "1:7", "1:3", "1:1"};
  const std::vector<double> xs = {0.0, 1.0 / 16, 2.0 / 16, 4.0 / 16, 8.0 / 16};
  for (size_t i = 0; i < 5; ++i) {
    SCOPED_TRACE(csv[i + 1]);
    const std::vector<std::string> f = fields_of(csv[i + 1]);
    ASSERT_EQ(f.size(), 13u);
    EXPECT_EQ(f[1], "model.layout.attention_ratio");
    EXPECT_EQ(f[2], values[i]);
    EXPECT_NEAR(std::stod(f[3]), xs[i], 1e-9);
    EXPECT_EQ(std::count(f[4].begin(), f[4].end(), 'A'), int64_t(xs[i] * 16 + 0.5));
    EXPECT_EQ(f[6], "3");
    for (size_t k = 7; k < 13; ++k) EXPECT_FALSE(f[k].empty()) << "column " << csv[0] << " " << k;
    EXPECT_NEAR(std::stod(f[9]), std::exp(std::stod(f[8])), 1e-3 * std::stod(f[9]));
    EXPECT_TRUE(fs::exists(out / f[0] / "sweep_result.json"));
    EXPECT_TRUE(fs::exists(out / f[0] / "niah" / "niah.svg"));
    EXPECT_TRUE(fs::exists(out / f[0] / "mqar" / "mqar.json"));
  }
  const std::string md = read_text(out / "report.md");
  EXPECT_NE(md.find("| attention_ratio=1-7 | 1:7 |"), std::string::npos) << md;
  for (const char* svg : {"val_loss.svg", "throughput.svg", "niah_accuracy.svg", "mqar_accuracy.svg"}) {
    SCOPED_TRACE(svg);
    const std::string text = read_text(out / svg);
    EXPECT_NE(text.find("ablate-attention-ratio-tiny"), std::string::npos);            // title
    EXPECT_NE(text.find("fraction of layers that are attention"), std::string::npos);  // x label
    EXPECT_EQ(std::count(text.begin(), text.end(), '\n') > 10, true);
    EXPECT_NE(md.find(std::string("](") + svg + ")"), std::string::npos);
  }
  EXPECT_NE(read_text(out / "val_loss.svg").find("validation loss (nats per token)"), std::string::npos);

  // --report-only reads the results back into the same report.
  const std::string csv_text = read_text(out / "report.csv");
  fs::remove(out / "report.csv");
  const testing::CliResult again =
      run_binary(dir.str(), tiny_sweep_args({"sweep", kAblate, "--out", "sweep", "--report-only"}));
  ASSERT_EQ(again.status, 0) << again.err;
  EXPECT_EQ(read_text(out / "report.csv"), csv_text);
}

TEST(SweepCli, SlurmWritesAJobArrayAndSubmitScriptWithoutTraining) {
  data::testing::TempDir dir("sweep-cli");
  const testing::CliResult r =
      run_binary(dir.str(), {"sweep", kAblate, "--out", "s", "--slurm", "--set", "training.max_steps=7", "--set", "schedule.warmup_steps=1"});
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string sbatch = read_text(fs::path(dir.str()) / "s" / "sweep.sbatch");
  EXPECT_NE(sbatch.find("#SBATCH --array=0-4\n"), std::string::npos) << sbatch;
  EXPECT_NE(sbatch.find("--variant \"$SLURM_ARRAY_TASK_ID\""), std::string::npos) << sbatch;
  EXPECT_NE(sbatch.find("--set 'training.max_steps=7'"), std::string::npos) << sbatch;
  const std::string submit = read_text(fs::path(dir.str()) / "s" / "submit.sh");
  EXPECT_NE(submit.find("--dependency=afterok:"), std::string::npos) << submit;
  EXPECT_NE(submit.find("--report-only"), std::string::npos) << submit;
  EXPECT_FALSE(fs::exists(fs::path(dir.str()) / "s" / "attention_ratio=0-1"));  // nothing trained
  EXPECT_EQ(std::system(("bash -n '" + (fs::path(dir.str()) / "s" / "submit.sh").string() + "'").c_str()), 0);
  EXPECT_EQ(std::system(("bash -n '" + (fs::path(dir.str()) / "s" / "sweep.sbatch").string() + "'").c_str()), 0);
}

TEST(SweepCli, ARecipeWithoutSweepOrABadVariantExitsTwo) {
  data::testing::TempDir dir("sweep-cli");
  const testing::CliResult none =
      run_binary(dir.str(), {"sweep", std::string(SSMTRAIN_SOURCE_DIR) + "/recipes/tiny/mamba2.yaml"});
  EXPECT_EQ(none.status, 2);
  EXPECT_NE(none.err.find("sweep"), std::string::npos) << none.err;
  const testing::CliResult bad = run_binary(dir.str(), {"sweep", kAblate, "--variant", "5"});
  EXPECT_EQ(bad.status, 2);
  EXPECT_NE(bad.err.find("variants 0 to 4"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace ssmtrain
