// eval/retrieval.h on hand-made cases: a byte-level codec (one token per character, so every
// token position can be checked by hand), sentence splitting, prompt construction at each
// depth, answer scoring, the seeded numbers, and the result files (JSON, CSV, SVG heatmap)
// from a hand-made result.
#include "eval/retrieval.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "tests/data/data_fixture.h"

namespace ssmtrain::eval {
namespace {

// Token = byte + 1; token 0 is a prefix/EOS marker that decodes to nothing.
TextCodec byte_codec() {
  TextCodec c;
  c.encode = [](const std::string& text) {
    std::vector<int64_t> ids;
    for (unsigned char ch : text) ids.push_back(int64_t(ch) + 1);
    return ids;
  };
  c.decode = [](const std::vector<int64_t>& ids) {
    std::string s;
    for (int64_t t : ids)
      if (t > 0) s += char(t - 1);
    return s;
  };
  c.prefix = {0};
  c.stop_tokens = {0};
  return c;
}

std::string text_of(const TextCodec& c, const std::vector<int64_t>& ids) { return c.decode(ids); }

TEST(SplitSentences, KeepsWhitespaceAndJoinsBackToTheText) {
  const std::string text = "One two. Three?  Four\nFive! six.seven\n\n  Last";
  const std::vector<std::string> s = split_sentences(text);
  const std::vector<std::string> want = {"One two. ", "Three?  ", "Four\n", "Five! ", "six.seven\n\n  ", "Last "};
  EXPECT_EQ(s, want);
  std::string joined;
  for (const std::string& p : s) joined += p;
  EXPECT_EQ(joined, text + " ");
  EXPECT_TRUE(split_sentences("  \n \n").empty());
}

TEST(BuildPrompt, NeedleAtDepthOnUnitBoundariesAndExactLength) {
  const TextCodec codec = byte_codec();
  RetrievalTask task;
  task.name = "test";
  task.filler = {"aaaa ", "bbbb ", "cccc "};  // 5 tokens each
  task.needle_template = "N={}. ";            // 9 tokens with 5 digits
  task.question = "Q?";                       // 2 tokens
  // length 32: prefix 1 + needle 9 + question 2 = 12 fixed, 20 filler tokens (4 whole units).
  const RetrievalPrompt start = build_prompt(task, codec, 32, 0.0, 12345, 0);
  ASSERT_EQ(start.tokens.size(), 32u);
  EXPECT_EQ(start.tokens[0], 0);
  EXPECT_EQ(text_of(codec, start.tokens), "N=12345. aaaa bbbb cccc aaaa Q?");
  EXPECT_EQ(start.needle_begin, 1);
  EXPECT_EQ(start.needle_end, 10);
  EXPECT_EQ(start.answer, "12345");

  const RetrievalPrompt end = build_prompt(task, codec, 32, 1.0, 12345, 0);
  EXPECT_EQ(text_of(codec, end.tokens), "aaaa bbbb cccc aaaa N=12345. Q?");
  EXPECT_EQ(end.needle_begin, 21);

  // depth 0.5 -> target token 10 of 20: exactly the boundary after "bbbb ".
  const RetrievalPrompt half = build_prompt(task, codec, 32, 0.5, 12345, 0);
  EXPECT_EQ(text_of(codec, half.tokens), "aaaa bbbb N=12345. cccc aaaa Q?");
  // depth 0.6 -> target 12: the boundary at or before it is still 10.
  EXPECT_EQ(text_of(codec, build_prompt(task, codec, 32, 0.6, 12345, 0).tokens), "aaaa bbbb N=12345. cccc aaaa Q?");
  // depth 0.75 -> target 15: after "cccc ".
  EXPECT_EQ(text_of(codec, build_prompt(task, codec, 32, 0.75, 12345, 0).tokens), "aaaa bbbb cccc N=12345. aaaa Q?");

  // Starting at unit 2, cycled; length 30 cuts the last unit to 3 tokens.
  const RetrievalPrompt cut = build_prompt(task, codec, 30, 1.0, 54321, 2);
  ASSERT_EQ(cut.tokens.size(), 30u);
  EXPECT_EQ(text_of(codec, cut.tokens), "cccc aaaa bbbb cccN=54321. Q?");
  EXPECT_EQ(build_prompt(task, codec, 30, 1.0, 54321, 5).tokens, cut.tokens);  // 5 = 2 mod 3
}

TEST(BuildPrompt, PreambleAndTooShortALength) {
  const TextCodec codec = byte_codec();
  RetrievalTask task = passkey_task();
  const RetrievalPrompt p = build_prompt(task, codec, 400, 0.5, 77777, 0);
  ASSERT_EQ(p.tokens.size(), 400u);
  const std::string text = text_of(codec, p.tokens);
  EXPECT_EQ(text.rfind(task.preamble, 0), 0u) << text;
  EXPECT_NE(text.find("The pass key is 77777. Remember it. 77777 is the pass key. "), std::string::npos) << text;
  EXPECT_EQ(text.substr(text.size() - task.question.size()), "What is the pass key? The pass key is");
  const std::string end_text = text_of(codec, build_prompt(task, codec, 400, 1.0, 77777, 0).tokens);
  EXPECT_NE(end_text.find(task.preamble + "The grass is green. The sky is blue. The sun is yellow. Here we go. "
                                          "There and back again. The grass is green. "),
            std::string::npos)
      << end_text;
  // The needle sits between whole filler sentences.
  const std::string before = text_of(codec, std::vector<int64_t>(p.tokens.begin(), p.tokens.begin() + p.needle_begin));
  EXPECT_EQ(before.back(), ' ');
  EXPECT_EQ(before[before.size() - 2], '.');

  RetrievalTask tiny;
  tiny.name = "tiny";
  tiny.filler = {"x "};
  tiny.needle_template = "N={}. ";
  tiny.question = "Q?";
  try {
    build_prompt(tiny, codec, 12, 0.5, 12345, 0);  // 12 fixed tokens, no room for filler
    FAIL() << "expected a length error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("at least 13"), std::string::npos) << e.what();
  }
  EXPECT_THROW(build_prompt(tiny, codec, 40, 1.5, 12345, 0), std::invalid_argument);
}

TEST(NiahTask, HaystackIsTheHeldOutText) {
  const RetrievalTask t = niah_task("First line.\nSecond one. Third.");
  EXPECT_EQ(t.filler, (std::vector<std::string>{"First line.\n", "Second one. ", "Third. "}));
  const RetrievalPrompt p = build_prompt(t, byte_codec(), 120, 0.5, 48213, 0);
  const std::string text = text_of(byte_codec(), p.tokens);
  EXPECT_NE(text.find("The special magic number is 48213. "), std::string::npos) << text;
  EXPECT_NE(text.find("What is the special magic number? The special magic number is"), std::string::npos);
  EXPECT_THROW(niah_task(" \n "), std::invalid_argument);
}

TEST(AnswerMatches, FirstDigitRunExactly) {
  EXPECT_TRUE(answer_matches(" 48213.", "48213"));
  EXPECT_TRUE(answer_matches("48213\n and 11111", "48213"));
  EXPECT_TRUE(answer_matches(" is: 48213", "48213"));
  EXPECT_FALSE(answer_matches(" 482130", "48213"));
  EXPECT_FALSE(answer_matches(" 4821", "48213"));
  EXPECT_FALSE(answer_matches(" 11111 48213", "48213"));
  EXPECT_FALSE(answer_matches("", "48213"));
  EXPECT_FALSE(answer_matches(" the number.", "48213"));
}

TEST(NeedleNumber, FiveDigitsFixedBySeedAndDistinctAcrossCells) {
  std::set<int64_t> seen;
  for (int64_t li = 0; li < 4; ++li)
    for (int64_t di = 0; di < 5; ++di)
      for (int64_t t = 0; t < 5; ++t) {
        const int64_t n = needle_number(7, li, di, t);
        EXPECT_GE(n, 10000);
        EXPECT_LE(n, 99999);
        EXPECT_EQ(n, needle_number(7, li, di, t));
        seen.insert(n);
        const int64_t u = first_filler_unit(7, li, di, t, 13);
        EXPECT_GE(u, 0);
        EXPECT_LT(u, 13);
      }
  EXPECT_GT(seen.size(), 95u);  // 100 draws from 90000 values: collisions are rare
  EXPECT_NE(needle_number(7, 0, 0, 0), needle_number(8, 0, 0, 0));
}

TEST(RetrievalFiles, JsonCsvAndHeatmapFromAHandMadeResult) {
  data::testing::TempDir dir("retrieval-files");
  RetrievalResult r;
  r.task = "niah";
  r.options.lengths = {64, 128};
  r.options.depths = {0.0, 1.0};
  r.options.trials = 2;
  r.options.seed = 3;
  // cells length-major: (64, 0) 2/2, (64, 1) 1/2, (128, 0) 0/2, (128, 1) 1/2
  const int correct[4] = {2, 1, 0, 1};
  for (int i = 0; i < 4; ++i) {
    r.cells.push_back({r.options.lengths[size_t(i / 2)], r.options.depths[size_t(i % 2)], correct[i], 2});
    for (int t = 0; t < 2; ++t)
      r.samples.push_back({r.cells.back().length, r.cells.back().depth, t, 5, "12345", t < correct[i] ? " 12345." : " 1",
                           t < correct[i]});
  }
  write_retrieval_files(r, "runs/a&b", 32, dir.str());
  std::ifstream json_in(dir / "niah.json");
  const nlohmann::json j = nlohmann::json::parse(json_in);
  EXPECT_EQ(j["task"], "niah");
  EXPECT_EQ(j["checkpoint"], "runs/a&b");
  EXPECT_DOUBLE_EQ(j["accuracy"].get<double>(), 0.5);
  ASSERT_EQ(j["cells"].size(), 4u);
  EXPECT_DOUBLE_EQ(j["cells"][1]["accuracy"].get<double>(), 0.5);
  EXPECT_EQ(j["samples"].size(), 8u);
  std::ifstream csv_in(dir / "niah.csv");
  const std::string csv((std::istreambuf_iterator<char>(csv_in)), {});
  EXPECT_EQ(csv,
            "length,depth,trials,correct,accuracy\n64,0,2,2,1.0000\n64,1,2,1,0.5000\n128,0,2,0,0.0000\n"
            "128,1,2,1,0.5000\n");
  std::ifstream svg_in(dir / "niah.svg");
  const std::string svg((std::istreambuf_iterator<char>(svg_in)), {});
  EXPECT_EQ(svg.rfind("<svg ", 0), 0u);
  EXPECT_NE(svg.find("runs/a&amp;b"), std::string::npos);  // the title, escaped
  EXPECT_NE(svg.find("context length (tokens; trained on 32)"), std::string::npos);
  EXPECT_NE(svg.find("needle depth"), std::string::npos);
  EXPECT_NE(svg.find("exact-match accuracy"), std::string::npos);
  // Row depth 0: 100% (length 64) and 0% (length 128); row depth 1: 50% and 50%.
  const size_t p100 = svg.find(">100%</text>"), p0 = svg.find(">0%</text>");
  ASSERT_NE(p100, std::string::npos);
  ASSERT_NE(p0, std::string::npos);
  EXPECT_LT(p100, p0);
  EXPECT_NE(svg.find("#fde725"), std::string::npos);  // accuracy 1: the top colour
  EXPECT_NE(svg.find("#440154"), std::string::npos);  // accuracy 0: the bottom colour
}

}  // namespace
}  // namespace ssmtrain::eval
