// `ssmtrain generate` and `ssmtrain eval perplexity` through the binary, on a tiny Mamba-2
// hybrid (one attention layer) trained for a few steps: generation streams the prompt and its
// continuation, repeats with a seed, batches several prompts; perplexity writes JSON whose
// loss equals the library's computation on the same checkpoint and tokens; `eval niah` and
// `eval passkey` write valid JSON, CSV and SVG with one cell per length x depth, the same bits
// for the same seed; bad options exit 2 with the option named, a missing checkpoint exits 1
// naming the path.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <regex>
#include <string>
#include <vector>

#include "eval/context.h"
#include "eval/perplexity.h"
#include "tests/train/run_fixture.h"

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string quote(const std::string& s) {
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

struct Exit {
  int code = -1;
  std::string out, err;
};

class EvalCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new data::testing::TempDir("eval-cli");
    std::vector<std::string> args = {"train", std::string(SSMTRAIN_SOURCE_DIR) + "/recipes/tiny/hybrid-mamba2.yaml"};
    for (const std::string& o : testing::tiny_overrides(
             "hybrid-mamba2", fs::path(dir_->str()) / "runs", "tiny",
             {"training.max_steps=4", "checkpoint.every=0", "model.n_layers=3", "model.layout.mixer_pattern=MAM",
              "model.mamba2.head_dim=16", "model.mamba2.chunk_size=16", "model.mamba2.d_state=16"})) {
      args.push_back("--set");
      args.push_back(o);
    }
    train_ = run(args);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string checkpoint() { return (fs::path(dir_->str()) / "runs" / "tiny").string(); }

  // `timeout 300 ssmtrain ARGS` with stdout and stderr captured in files.
  static Exit run(const std::vector<std::string>& args) {
    const fs::path out = fs::path(dir_->str()) / "out.txt", err = fs::path(dir_->str()) / "err.txt";
    std::string command = "timeout 300 " + quote(SSMTRAIN_BINARY);
    for (const std::string& a : args) command += " " + quote(a);
    command += " > " + quote(out.string()) + " 2> " + quote(err.string());
    const int status = std::system(command.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_text(out), read_text(err)};
  }

  static data::testing::TempDir* dir_;
  static Exit train_;
};
data::testing::TempDir* EvalCli::dir_ = nullptr;
Exit EvalCli::train_;

TEST_F(EvalCli, GenerateStreamsRepeatsWithASeedAndBatches) {
  ASSERT_EQ(train_.code, 0) << train_.err;
  const Exit greedy = run({"generate", "--checkpoint", checkpoint(), "--prompt", "The kernel", "--max-new-tokens", "12"});
  ASSERT_EQ(greedy.code, 0) << greedy.err;
  EXPECT_EQ(greedy.out.rfind("The kernel", 0), 0u) << greedy.out;
  EXPECT_GT(greedy.out.size(), std::string("The kernel\n").size()) << "nothing generated: " << greedy.out;
  const std::vector<std::string> sampled = {"generate", "--checkpoint", checkpoint(), "--prompt", "The kernel",
                                            "--max-new-tokens", "12", "--temperature", "1.0", "--top-p", "0.9",
                                            "--seed", "5"};
  const Exit a = run(sampled), b = run(sampled);
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  const Exit batch = run({"generate", "--checkpoint", checkpoint(), "--prompt", "A", "--prompt", "The kernel module",
                          "--max-new-tokens", "5"});
  ASSERT_EQ(batch.code, 0) << batch.err;
  EXPECT_NE(batch.out.find("=== 0 ===\nA"), std::string::npos) << batch.out;
  EXPECT_NE(batch.out.find("=== 1 ===\nThe kernel module"), std::string::npos) << batch.out;
}

// --out writes the token ids: the prompt's (EOS first, as training documents follow one) and the
// generated ones, which decode to exactly the text the command printed.
TEST_F(EvalCli, GenerateWritesTheTokenIdsOfWhatItPrinted) {
  ASSERT_EQ(train_.code, 0) << train_.err;
  const std::string ids_path = (fs::path(dir_->str()) / "ids.json").string();
  const Exit r = run({"generate", "--checkpoint", checkpoint(), "--prompt", "The kernel", "--max-new-tokens", "12",
                      "--out", ids_path});
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(read_text(ids_path));
  ASSERT_EQ(j["sequences"].size(), 1u);
  const nlohmann::json& seq = j["sequences"][0];
  EXPECT_EQ(seq["prompt"], "The kernel");
  const eval::EvalContext ctx = eval::open_checkpoint(checkpoint());
  ASSERT_TRUE(ctx.tokenizer);
  std::vector<int> prompt_ids = seq["prompt_ids"].get<std::vector<int>>(), new_ids;
  ASSERT_FALSE(prompt_ids.empty());
  EXPECT_EQ(prompt_ids[0], ctx.tokenizer->eos_id());
  EXPECT_EQ(ctx.tokenizer->decode(std::vector<int>(prompt_ids.begin() + 1, prompt_ids.end())), "The kernel");
  for (int t : seq["new_ids"].get<std::vector<int>>())
    if (t != ctx.tokenizer->eos_id()) new_ids.push_back(t);
  ASSERT_FALSE(seq["new_ids"].empty());
  EXPECT_LE(seq["new_ids"].size(), 12u);
  EXPECT_EQ("The kernel" + ctx.tokenizer->decode(new_ids) + "\n", r.out);
}

TEST_F(EvalCli, PerplexityJsonEqualsTheLibrarysComputation) {
  ASSERT_EQ(train_.code, 0) << train_.err;
  const std::string json_path = (fs::path(dir_->str()) / "ppl.json").string();
  const Exit r = run({"eval", "perplexity", "--checkpoint", checkpoint(), "--tokens", "300", "--seq-len", "32",
                      "--stride", "16", "--out", json_path});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_text(json_path), r.out);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex("\"loss\": ([0-9.]+), \"perplexity\": ([0-9.]+), "
                                                     "\"bits_per_byte\": ([0-9.]+), \"bytes\": ([0-9]+)")))
      << r.out;
  const double loss = std::stod(m[1]), ppl = std::stod(m[2]), bpb = std::stod(m[3]);
  EXPECT_NEAR(ppl, std::exp(loss), 1e-5 * ppl);
  EXPECT_GT(bpb, 0.0);
  EXPECT_NE(r.out.find("\"tokens\": 299"), std::string::npos) << r.out;

  const eval::EvalContext ctx = eval::open_checkpoint(checkpoint());
  eval::PerplexityOptions o;
  o.seq_len = 32;
  o.stride = 16;
  const eval::PerplexityResult direct = eval::perplexity(ctx.model(), eval::held_out_tokens(ctx.data_dir, 300), o);
  EXPECT_NEAR(loss, direct.loss, 2e-6);
}

// The CSV as rows of fields, the header first; every row has the header's field count.
std::vector<std::vector<std::string>> read_csv(const fs::path& path) {
  std::vector<std::vector<std::string>> rows;
  std::istringstream in(read_text(path));
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> fields;
    std::istringstream fs_line(line);
    for (std::string f; std::getline(fs_line, f, ',');) fields.push_back(f);
    rows.push_back(fields);
  }
  return rows;
}

TEST_F(EvalCli, NiahAndPasskeyWriteJsonCsvAndHeatmap) {
  ASSERT_EQ(train_.code, 0) << train_.err;
  for (const std::string task : {"niah", "passkey"}) {
    SCOPED_TRACE(task);
    const fs::path out = fs::path(dir_->str()) / ("out-" + task);
    const std::vector<std::string> args = {"eval", task, "--checkpoint", checkpoint(), "--lengths", "200,320",
                                           "--depths", "0,0.5,1", "--trials", "2", "--seed", "9", "--batch", "4",
                                           "--out", out.string()};
    const Exit r = run(args);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.err.find(task + ": [6/6] length 320 depth 1:"), std::string::npos) << r.err;  // progress lines
    EXPECT_NE(r.out.find(task + ": accuracy "), std::string::npos) << r.out;
    std::ifstream json_in(out / (task + ".json"));
    const nlohmann::json j = nlohmann::json::parse(json_in);  // throws on invalid JSON
    EXPECT_EQ(j["task"], task);
    EXPECT_EQ(j["trials"], 2);
    ASSERT_EQ(j["cells"].size(), 6u);
    ASSERT_EQ(j["samples"].size(), 12u);
    int64_t correct = 0;
    for (const nlohmann::json& s : j["samples"]) {
      EXPECT_EQ(s["answer"].get<std::string>().size(), 5u);
      correct += s["correct"].get<bool>() ? 1 : 0;
    }
    EXPECT_NEAR(j["accuracy"].get<double>(), double(correct) / 12.0, 1e-12);
    const auto csv = read_csv(out / (task + ".csv"));
    ASSERT_EQ(csv.size(), 7u);
    EXPECT_EQ(csv[0], (std::vector<std::string>{"length", "depth", "trials", "correct", "accuracy"}));
    EXPECT_EQ(csv[6][0], "320");
    EXPECT_EQ(csv[6][1], "1");
    for (size_t i = 1; i < csv.size(); ++i) EXPECT_EQ(csv[i].size(), 5u);
    const std::string svg = read_text(out / (task + ".svg"));
    EXPECT_EQ(svg.rfind("<svg ", 0), 0u);
    EXPECT_NE(svg.find(checkpoint()), std::string::npos);
    EXPECT_NE(svg.find("</svg>"), std::string::npos);
    // The same seed gives the same answers.
    const std::string first = read_text(out / (task + ".json"));
    ASSERT_EQ(run(args).code, 0);
    EXPECT_EQ(read_text(out / (task + ".json")), first);
  }
  // A length that cannot hold the needle and question is named.
  const Exit shortlen = run({"eval", "passkey", "--checkpoint", checkpoint(), "--lengths", "8", "--out",
                             (fs::path(dir_->str()) / "short").string()});
  EXPECT_NE(shortlen.code, 0);
  EXPECT_NE(shortlen.err.find("a context of 8 tokens"), std::string::npos) << shortlen.err;
}

TEST_F(EvalCli, BadOptionsAreNamed) {
  ASSERT_EQ(train_.code, 0) << train_.err;
  const Exit stride = run({"eval", "perplexity", "--checkpoint", checkpoint(), "--seq-len", "16", "--stride", "32"});
  EXPECT_EQ(stride.code, 2);
  EXPECT_NE(stride.err.find("--stride 32 exceeds the window of 16 tokens"), std::string::npos) << stride.err;
  const Exit missing = run({"generate", "--checkpoint", (fs::path(dir_->str()) / "nowhere").string(), "--prompt", "x"});
  EXPECT_NE(missing.code, 0);
  EXPECT_NE(missing.err.find("nowhere"), std::string::npos) << missing.err;
  const Exit stop = run({"generate", "--checkpoint", checkpoint(), "--prompt", "x", "--stop-token", "99999"});
  EXPECT_EQ(stop.code, 2);
  EXPECT_NE(stop.err.find("--stop-token 99999"), std::string::npos) << stop.err;
}

}  // namespace
}  // namespace ssmtrain
