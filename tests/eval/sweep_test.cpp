// eval/sweep.h on hand-made cases: the swept key and its x values (attention fraction from the
// resolved layout, numbers, else the index), variant directory names (unsafe characters
// replaced, clashes made unique), a result file written and read back (a measure not taken stays
// NaN) and refused when it is not one, and the report from hand-made points: the exact CSV,
// rows in x order in report.md, a plot only for a measure some variant has.
#include "eval/sweep.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "tests/data/data_fixture.h"

namespace ssmtrain::eval {
namespace {

namespace fs = std::filesystem;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

configs::SweepVariant variant(std::vector<std::pair<std::string, std::string>> overrides) {
  return configs::SweepVariant{std::move(overrides)};
}

std::string read(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(SweepAxis, TheKeyThatDiffersAndItsValuesOnX) {
  const std::vector<configs::SweepVariant> v = {
      variant({{"training.max_steps", "10"}, {"model.layout.attention_ratio", "\"0:1\""}}),
      variant({{"training.max_steps", "10"}, {"model.layout.attention_ratio", "\"1:7\""}})};
  const SweepAxis axis = sweep_axis(v);
  EXPECT_EQ(axis.key, "model.layout.attention_ratio");  // max_steps is the same in both
  EXPECT_EQ(sweep_value(v[1], axis.key), "1:7");
  EXPECT_NE(axis.label.find("attention"), std::string::npos);
  // The fraction the layout has, not the nominal ratio: 1:15 on 24 layers places one.
  EXPECT_DOUBLE_EQ(sweep_x(axis, "1:15", 1, "MMMMMMMMAMMMMMMMMMMMMMMM"), 1.0 / 24);
  EXPECT_DOUBLE_EQ(sweep_x(axis, "0:1", 0, "MMMM"), 0.0);

  const SweepAxis lr = sweep_axis({variant({{"optim.lr", "1e-3"}}), variant({{"optim.lr", "3e-3"}})});
  EXPECT_EQ(lr.key, "optim.lr");
  EXPECT_EQ(lr.label, "optim.lr");
  EXPECT_DOUBLE_EQ(sweep_x(lr, "3e-3", 1, "MMMM"), 3e-3);
  const SweepAxis kind = sweep_axis({variant({{"schedule.kind", "cosine"}}), variant({{"schedule.kind", "wsd"}})});
  EXPECT_DOUBLE_EQ(sweep_x(kind, "wsd", 1, "MMMM"), 1.0);  // not a number: the index
  EXPECT_EQ(sweep_axis({variant({{"optim.lr", "1e-3"}})}).key, "");
}

TEST(SweepVariantDirs, SafeAndUnique) {
  const std::vector<std::string> dirs =
      sweep_variant_dirs({variant({{"model.layout.attention_ratio", "\"1:7\""}}), variant({{"run.name", "a/b"}}),
                          variant({{"run.name", "a-b"}}), variant({{"optim.lr", "0.001"}})});
  EXPECT_EQ(dirs, (std::vector<std::string>{"attention_ratio=1-7", "a-b", "a-b-2", "lr=0.001"}));
}

SweepPoint point(const std::string& name, double x, double val, double niah) {
  SweepPoint p;
  p.name = name;
  p.overrides = "model.layout.attention_ratio=" + name;
  p.value = name;
  p.x = x;
  p.layout = "MMAM / ----";
  p.parameters = 1500000;
  p.steps = 10;
  p.train_loss = 3.0;
  p.val_loss = val;
  p.perplexity = std::isfinite(val) ? std::exp(val) : kNaN;
  p.tokens_per_second = 1000;
  p.niah_accuracy = niah;
  p.mqar_accuracy = kNaN;
  return p;
}

TEST(SweepPoint, WrittenAndReadBackNaNStaysNaN) {
  data::testing::TempDir dir("sweep");
  const SweepPoint p = point("1:3", 0.25, 2.5, kNaN);
  write_sweep_point(p, dir.str());
  const SweepPoint q = read_sweep_point(dir.str());
  EXPECT_EQ(q.name, "1:3");
  EXPECT_EQ(q.layout, p.layout);
  EXPECT_EQ(q.parameters, 1500000);
  EXPECT_DOUBLE_EQ(q.val_loss, 2.5);
  EXPECT_DOUBLE_EQ(q.x, 0.25);
  EXPECT_TRUE(std::isnan(q.niah_accuracy));
  EXPECT_TRUE(std::isnan(q.mqar_accuracy));
  std::ofstream(dir / "sweep_result.json") << "{\"format\": \"something-else\"}";
  EXPECT_THROW(read_sweep_point(dir.str()), std::runtime_error);
  try {
    read_sweep_point(dir / "missing");
    ADD_FAILURE();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("sweep_result.json: missing"), std::string::npos) << e.what();
  }
}

TEST(SweepReport, CsvTableAndOnlyThePlotsOfMeasuresTaken) {
  data::testing::TempDir dir("sweep");
  // Given out of x order; the second has no validation data.
  const std::vector<SweepPoint> points = {point("1:1", 0.5, 2.0, 0.5), point("0:1", 0.0, kNaN, 0.25)};
  SweepAxis axis{"model.layout.attention_ratio", "fraction of layers that are attention"};
  write_sweep_report(points, axis, "demo", dir.str());
  EXPECT_EQ(read(dir / "report.csv"),
            "variant,swept_key,value,x,layout,parameters,steps,train_loss,val_loss,perplexity,tokens_per_second,"
            "niah_accuracy,mqar_accuracy\n"
            "\"1:1\",\"model.layout.attention_ratio\",\"1:1\",0.5,\"MMAM / ----\",1500000,10,3,2,7.38906,1000,0.5,\n"
            "\"0:1\",\"model.layout.attention_ratio\",\"0:1\",0,\"MMAM / ----\",1500000,10,3,,,1000,0.25,\n");
  const std::string md = read(dir / "report.md");
  EXPECT_LT(md.find("| 0:1 |"), md.find("| 1:1 |"));  // rows in x order
  EXPECT_NE(md.find("| 2.0000 | 7.39 |"), std::string::npos) << md;
  for (const char* svg : {"val_loss.svg", "throughput.svg", "niah_accuracy.svg"}) {
    SCOPED_TRACE(svg);
    const std::string text = read(dir / svg);
    EXPECT_NE(text.find("demo: "), std::string::npos);
    EXPECT_NE(text.find("fraction of layers that are attention"), std::string::npos);
    EXPECT_NE(md.find(std::string("](") + svg + ")"), std::string::npos);
  }
  EXPECT_FALSE(fs::exists(dir / "mqar_accuracy.svg"));  // no variant measured it
  EXPECT_EQ(md.find("mqar_accuracy.svg"), std::string::npos);
  // The validation-loss plot has one point (the other variant has none): one circle.
  const std::string val = read(dir / "val_loss.svg");
  size_t circles = 0;
  for (size_t at = val.find("<circle"); at != std::string::npos; at = val.find("<circle", at + 1)) ++circles;
  EXPECT_EQ(circles, 1u);
}

TEST(SlurmScript, OneArrayTaskPerVariant) {
  const std::string s = slurm_script("/opt/ssmtrain", "/r/sweep.yaml", "/out", {"optim.lr=1e-3"}, 5, "abl");
  EXPECT_NE(s.find("#SBATCH --array=0-4\n"), std::string::npos) << s;
  EXPECT_NE(s.find("#SBATCH --job-name=abl\n"), std::string::npos) << s;
  EXPECT_NE(s.find("'/opt/ssmtrain' sweep '/r/sweep.yaml' --out '/out' --set 'optim.lr=1e-3' --variant "
                   "\"$SLURM_ARRAY_TASK_ID\""),
            std::string::npos)
      << s;
  const std::string submit = slurm_submit_script("/opt/ssmtrain", "/r/sweep.yaml", "/out", {}, "abl");
  EXPECT_NE(submit.find("sbatch --parsable '/out'/sweep.sbatch"), std::string::npos) << submit;
  EXPECT_NE(submit.find("--dependency=afterok:"), std::string::npos) << submit;
}

}  // namespace
}  // namespace ssmtrain::eval
