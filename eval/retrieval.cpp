// See retrieval.h. Prompts are assembled in tokens from separately encoded parts, so the
// needle's position is known exactly and the length is exact; the text the parts spell is the
// filler, needle and question joined as written.
#include "eval/retrieval.h"

#include <fmt/core.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "eval/generate.h"
#include "kernels/philox.h"
#include "train/svg.h"

namespace ssmtrain::eval {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::string fill_number(const std::string& templ, int64_t number) {
  std::string out;
  const std::string n = std::to_string(number);
  for (size_t i = 0; i < templ.size(); ++i) {
    if (templ.compare(i, 2, "{}") == 0) {
      out += n;
      ++i;
    } else {
      out += templ[i];
    }
  }
  return out;
}

// Philox(seed, block) for (what, length_index, depth_index, trial): 64 bits.
uint64_t draw(uint64_t seed, uint64_t what, int64_t li, int64_t di, int64_t trial) {
  const uint64_t block = (what << 60) ^ (uint64_t(li) << 44) ^ (uint64_t(di) << 28) ^ uint64_t(trial);
  const kernels::Philox4 r = kernels::philox_block(seed, block);
  return (uint64_t(r.v[0]) << 32) | r.v[1];
}

std::string depth_text(double depth) { return fmt::format("{:g}", depth); }

}  // namespace

std::vector<std::string> split_sentences(const std::string& text) {
  std::vector<std::string> out;
  std::string current;
  auto flush = [&] {
    const bool blank = std::all_of(current.begin(), current.end(), is_space);
    if (!blank) out.push_back(current);
    current.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    current += c;
    const bool end_mark = (c == '.' || c == '!' || c == '?') && i + 1 < text.size() && is_space(text[i + 1]);
    if (c == '\n' || end_mark) {
      // Keep the whitespace that follows with this sentence.
      while (i + 1 < text.size() && is_space(text[i + 1])) current += text[++i];
      flush();
    }
  }
  if (!current.empty() && !is_space(current.back())) current += ' ';
  flush();
  return out;
}

RetrievalTask niah_task(const std::string& haystack_text) {
  RetrievalTask t;
  t.name = "niah";
  t.filler = split_sentences(haystack_text);
  if (t.filler.empty()) throw std::invalid_argument("niah: the held-out text is empty; no haystack to hide a needle in");
  t.needle_template = "The special magic number is {}. ";
  t.question = "\nWhat is the special magic number? The special magic number is";
  return t;
}

RetrievalTask passkey_task() {
  RetrievalTask t;
  t.name = "passkey";
  t.preamble =
      "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
      "I will quiz you about the important information there. ";
  t.filler = {"The grass is green. ", "The sky is blue. ", "The sun is yellow. ", "Here we go. ",
              "There and back again. "};
  t.needle_template = "The pass key is {}. Remember it. {} is the pass key. ";
  t.question = "What is the pass key? The pass key is";
  return t;
}

RetrievalPrompt build_prompt(const RetrievalTask& task, const TextCodec& codec, int64_t length, double depth,
                             int64_t number, int64_t first_unit) {
  if (!(depth >= 0.0 && depth <= 1.0))
    throw std::invalid_argument(fmt::format("{}: depth {} is outside [0, 1]", task.name, depth));
  if (task.filler.empty()) throw std::invalid_argument(task.name + ": no filler text");
  const std::vector<int64_t> preamble = task.preamble.empty() ? std::vector<int64_t>{} : codec.encode(task.preamble);
  const std::vector<int64_t> needle = codec.encode(fill_number(task.needle_template, number));
  const std::vector<int64_t> question = codec.encode(task.question);
  const int64_t fixed = int64_t(codec.prefix.size() + preamble.size() + needle.size() + question.size());
  const int64_t budget = length - fixed;  // filler tokens
  if (budget < 1)
    throw std::invalid_argument(fmt::format("{}: a context of {} tokens cannot hold the needle and the question; "
                                            "use a length of at least {}",
                                            task.name, length, fixed + 1));
  // Filler units (cycled) until the budget is reached; the last is cut to fit.
  std::vector<int64_t> filler;
  std::vector<int64_t> boundaries = {0};  // token offsets where a unit starts, and the end
  const int64_t units = int64_t(task.filler.size());
  int64_t empty_in_a_row = 0;
  for (int64_t u = ((first_unit % units) + units) % units; int64_t(filler.size()) < budget; u = (u + 1) % units) {
    const std::vector<int64_t> ids = codec.encode(task.filler[size_t(u)]);
    if (ids.empty()) {
      if (++empty_in_a_row == units) throw std::invalid_argument(task.name + ": the filler text encodes to no tokens");
      continue;
    }
    empty_in_a_row = 0;
    filler.insert(filler.end(), ids.begin(), ids.end());
    boundaries.push_back(std::min(int64_t(filler.size()), budget));
  }
  filler.resize(size_t(budget));
  // The needle goes at the last unit boundary at or before depth * budget.
  const int64_t target = int64_t(std::llround(depth * double(budget)));
  int64_t at = 0;
  for (int64_t b : boundaries)
    if (b <= target) at = b;
  RetrievalPrompt p;
  p.answer = std::to_string(number);
  p.tokens = codec.prefix;
  p.tokens.insert(p.tokens.end(), preamble.begin(), preamble.end());
  p.tokens.insert(p.tokens.end(), filler.begin(), filler.begin() + at);
  p.needle_begin = int64_t(p.tokens.size());
  p.tokens.insert(p.tokens.end(), needle.begin(), needle.end());
  p.needle_end = int64_t(p.tokens.size());
  p.tokens.insert(p.tokens.end(), filler.begin() + at, filler.end());
  p.tokens.insert(p.tokens.end(), question.begin(), question.end());
  return p;
}

bool answer_matches(const std::string& generated, const std::string& answer) {
  size_t i = 0;
  while (i < generated.size() && !std::isdigit(static_cast<unsigned char>(generated[i]))) ++i;
  size_t j = i;
  while (j < generated.size() && std::isdigit(static_cast<unsigned char>(generated[j]))) ++j;
  return j > i && generated.compare(i, j - i, answer) == 0 && j - i == answer.size();
}

int64_t needle_number(uint64_t seed, int64_t length_index, int64_t depth_index, int64_t trial) {
  return 10000 + int64_t(draw(seed, 1, length_index, depth_index, trial) % 90000);
}

int64_t first_filler_unit(uint64_t seed, int64_t length_index, int64_t depth_index, int64_t trial, int64_t units) {
  return units > 0 ? int64_t(draw(seed, 2, length_index, depth_index, trial) % uint64_t(units)) : 0;
}

double RetrievalResult::accuracy() const {
  int64_t correct = 0;
  for (const RetrievalSample& s : samples) correct += s.correct ? 1 : 0;
  return samples.empty() ? 0.0 : double(correct) / double(samples.size());
}

RetrievalResult run_retrieval(const LanguageModel& model, const RetrievalTask& task, const TextCodec& codec,
                              const RetrievalOptions& o, const CellCallback& on_cell) {
  if (o.lengths.empty() || o.depths.empty()) throw std::invalid_argument(task.name + ": no lengths or no depths to test");
  if (o.trials < 1) throw std::invalid_argument(fmt::format("{}: trials must be positive, got {}", task.name, o.trials));
  if (o.batch < 1) throw std::invalid_argument(fmt::format("{}: batch must be positive, got {}", task.name, o.batch));
  RetrievalResult result;
  result.task = task.name;
  result.options = o;
  const int64_t n_lengths = int64_t(o.lengths.size()), n_depths = int64_t(o.depths.size());
  // Every prompt is built first, so a bad length fails before any generation.
  struct Job {
    int64_t li, di, trial;
    RetrievalPrompt prompt;
  };
  std::vector<Job> jobs;
  for (int64_t li = 0; li < n_lengths; ++li)
    for (int64_t di = 0; di < n_depths; ++di)
      for (int64_t t = 0; t < o.trials; ++t) {
        const int64_t number = needle_number(o.seed, li, di, t);
        const int64_t first = first_filler_unit(o.seed, li, di, t, int64_t(task.filler.size()));
        jobs.push_back({li, di, t, build_prompt(task, codec, o.lengths[size_t(li)], o.depths[size_t(di)], number, first)});
      }
  GenerateOptions g;
  g.sampling.temperature = 0.0;
  g.stop_tokens = codec.stop_tokens;
  g.compute_dtype = o.compute_dtype;
  g.max_new_tokens = o.max_new_tokens > 0 ? o.max_new_tokens : int64_t(codec.encode(" 99999.").size()) + 4;
  result.cells.resize(size_t(n_lengths * n_depths));
  result.samples.resize(jobs.size());
  // Batches hold prompts of one cell after another (every prompt of a length has the same size).
  int64_t cells_done = 0;
  for (size_t begin = 0; begin < jobs.size(); begin += size_t(o.batch)) {
    const size_t end = std::min(jobs.size(), begin + size_t(o.batch));
    std::vector<std::vector<int64_t>> prompts;
    for (size_t j = begin; j < end; ++j) prompts.push_back(jobs[j].prompt.tokens);
    const std::vector<Generated> answers = generate(model, prompts, g);
    for (size_t j = begin; j < end; ++j) {
      const Job& job = jobs[j];
      RetrievalSample& s = result.samples[j];
      s.length = o.lengths[size_t(job.li)];
      s.depth = o.depths[size_t(job.di)];
      s.trial = job.trial;
      s.needle_position = job.prompt.needle_begin;
      s.answer = job.prompt.answer;
      s.generated = codec.decode(answers[j - begin].tokens);
      s.correct = answer_matches(s.generated, s.answer);
      RetrievalCell& cell = result.cells[size_t(job.li * n_depths + job.di)];
      cell.length = s.length;
      cell.depth = s.depth;
      cell.correct += s.correct ? 1 : 0;
      ++cell.trials;
      if (cell.trials == o.trials && on_cell) on_cell(cell, ++cells_done, n_lengths * n_depths);
    }
  }
  return result;
}

void write_retrieval_files(const RetrievalResult& r, const std::string& checkpoint, int64_t train_seq_len,
                           const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error(dir + ": cannot create the output directory: " + ec.message());
  auto write = [&](const std::string& name, const std::string& text) {
    const std::string path = (fs::path(dir) / name).string();
    std::ofstream out(path);
    out << text;
    if (!out) throw std::runtime_error(path + ": cannot write the " + r.task + " result");
  };
  nlohmann::ordered_json j;
  j["task"] = r.task;
  j["checkpoint"] = checkpoint;
  j["train_seq_len"] = train_seq_len;
  j["seed"] = r.options.seed;
  j["trials"] = r.options.trials;
  j["lengths"] = r.options.lengths;
  j["depths"] = r.options.depths;
  j["accuracy"] = r.accuracy();
  j["cells"] = nlohmann::json::array();
  for (const RetrievalCell& c : r.cells)
    j["cells"].push_back({{"length", c.length}, {"depth", c.depth}, {"trials", c.trials}, {"correct", c.correct},
                          {"accuracy", c.accuracy()}});
  j["samples"] = nlohmann::json::array();
  for (const RetrievalSample& s : r.samples)
    j["samples"].push_back(nlohmann::ordered_json{{"length", s.length},
                                                  {"depth", s.depth},
                                                  {"trial", s.trial},
                                                  {"needle_position", s.needle_position},
                                                  {"answer", s.answer},
                                                  {"generated", s.generated},
                                                  {"correct", s.correct}});
  // Generated text may hold invalid UTF-8 (a cut multi-byte piece): replace it, do not throw.
  write(r.task + ".json", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");

  std::string csv = "length,depth,trials,correct,accuracy\n";
  for (const RetrievalCell& c : r.cells)
    csv += fmt::format("{},{},{},{},{:.4f}\n", c.length, depth_text(c.depth), c.trials, c.correct, c.accuracy());
  write(r.task + ".csv", csv);

  Heatmap map;
  map.title = fmt::format("{} accuracy, {} trials per cell, seed {}",
                          r.task == "niah" ? "Needle-in-a-haystack" : "Passkey retrieval", r.options.trials,
                          r.options.seed);
  map.subtitle = checkpoint;
  map.x_label = train_seq_len > 0 ? fmt::format("context length (tokens; trained on {})", train_seq_len)
                                  : "context length (tokens)";
  map.y_label = "needle depth (0: start, 1: end)";
  map.value_label = "exact-match accuracy";
  for (int64_t len : r.options.lengths) map.x_ticks.push_back(std::to_string(len));
  for (double d : r.options.depths) map.y_ticks.push_back(depth_text(d));
  const size_t n_depths = r.options.depths.size();
  map.values.assign(n_depths, std::vector<double>(r.options.lengths.size(), std::nan("")));
  for (size_t i = 0; i < r.cells.size(); ++i)
    if (r.cells[i].trials > 0) map.values[i % n_depths][i / n_depths] = r.cells[i].accuracy();
  write(r.task + ".svg", heatmap_svg(map));
}

}  // namespace ssmtrain::eval
