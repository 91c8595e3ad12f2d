// Retrieval probes (DESIGN.md section 8): needle-in-a-haystack and passkey. A prompt of a given
// token length is filler text with one needle sentence holding a random 5-digit number placed
// at a depth (0: start, 1: end of the filler), then a question; the greedy answer is correct
// when its first run of digits is exactly that number. Both probes share one engine and differ
// only in filler, needle and question (RetrievalTask).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "layers/model.h"

namespace ssmtrain::eval {

// Text <-> tokens for building prompts and reading answers. encode(text) must give the tokens
// of `text` exactly as written (spaces included): a prompt is the concatenation of its parts'
// encodings. decode drops control tokens. prefix (e.g. the EOS every training document
// follows) starts each prompt and counts in its length; stop tokens end an answer.
struct TextCodec {
  std::function<std::vector<int64_t>(const std::string&)> encode;
  std::function<std::string(const std::vector<int64_t>&)> decode;
  std::vector<int64_t> prefix;
  std::vector<int64_t> stop_tokens;
};

struct RetrievalTask {
  std::string name;                   // "niah" | "passkey": names the files and progress lines
  std::string preamble;               // before the filler (may be empty)
  std::vector<std::string> filler;    // units in order, cycled; each ends with its separator
  std::string needle_template;        // "{}" stands for the number; ends with its separator
  std::string question;               // after the filler; the answer continues it
};

// "The special magic number is N." in held-out text split into sentences.
RetrievalTask niah_task(const std::string& haystack_text);
// The usual passkey form: a preamble, "The grass is green. The sky is blue. ..." repeated,
// "The pass key is N. Remember it. N is the pass key.", "What is the pass key? The pass key is".
RetrievalTask passkey_task();

// Splits text into sentences, each keeping the whitespace after it: a sentence ends after
// '.', '!' or '?' followed by whitespace, or at a newline. Joining the pieces gives the text
// back (a piece that ends the text without whitespace gets one space appended). Empty and
// whitespace-only pieces are dropped.
std::vector<std::string> split_sentences(const std::string& text);

struct RetrievalPrompt {
  std::vector<int64_t> tokens;  // exactly `length` tokens
  int64_t needle_begin = 0;     // token index of the needle's first token
  int64_t needle_end = 0;       // one past its last
  std::string answer;           // the number, as digits
};

// The prompt for one cell and trial: prefix, preamble, filler units from `first_unit`
// (cycled), the needle at the unit boundary at or before depth * (filler tokens), more filler,
// then the question. The last filler unit is cut at a token so the prompt has exactly `length`
// tokens. Throws std::invalid_argument when `length` cannot hold the prefix, preamble, needle
// and question with at least one filler token, naming the shortest length that would.
RetrievalPrompt build_prompt(const RetrievalTask& task, const TextCodec& codec, int64_t length, double depth,
                             int64_t number, int64_t first_unit);

// The first maximal run of ASCII digits in `generated` equals `answer` ("48213." and
// " 48213\n" match 48213; "482130", "4821" and "" do not).
bool answer_matches(const std::string& generated, const std::string& answer);

// The needle number (10000..99999) and the first filler unit of trial `trial` of cell
// (length_index, depth_index), from Philox(seed): fixed per seed and independent of the grid's
// other cells and of the batch.
int64_t needle_number(uint64_t seed, int64_t length_index, int64_t depth_index, int64_t trial);
int64_t first_filler_unit(uint64_t seed, int64_t length_index, int64_t depth_index, int64_t trial, int64_t units);

struct RetrievalOptions {
  std::vector<int64_t> lengths{1024, 2048, 4096};
  std::vector<double> depths{0.0, 0.25, 0.5, 0.75, 1.0};
  int64_t trials = 4;
  uint64_t seed = 0;
  int64_t batch = 8;            // prompts generated together
  int64_t max_new_tokens = 0;   // 0: the number's tokens plus 4
  std::optional<DType> compute_dtype;
};

struct RetrievalSample {
  int64_t length = 0;
  double depth = 0;
  int64_t trial = 0;
  int64_t needle_position = 0;  // token index of the needle
  std::string answer;           // the number
  std::string generated;        // the decoded greedy continuation
  bool correct = false;
};

struct RetrievalCell {
  int64_t length = 0;
  double depth = 0;
  int64_t correct = 0, trials = 0;
  double accuracy() const { return trials > 0 ? double(correct) / double(trials) : 0.0; }
};

struct RetrievalResult {
  std::string task;
  RetrievalOptions options;
  std::vector<RetrievalCell> cells;  // length-major: cells[li * depths + di]
  std::vector<RetrievalSample> samples;
  double accuracy() const;           // over every sample
};

// Called after each cell: (cell, cells done, cells in all).
using CellCallback = std::function<void(const RetrievalCell& cell, int64_t done, int64_t total)>;

// Builds every prompt of the grid, generates greedy answers in batches and scores them.
// Throws std::invalid_argument for an empty grid, a depth outside [0, 1], trials < 1 or a length
// too short (see build_prompt).
RetrievalResult run_retrieval(const LanguageModel& model, const RetrievalTask& task, const TextCodec& codec,
                              const RetrievalOptions& options, const CellCallback& on_cell = {});

// The result files in `dir` (created): <task>.json (options, per-cell accuracy and every
// sample), <task>.csv (one row per cell: length,depth,trials,correct,accuracy) and <task>.svg
// (accuracy heatmap, length on x, depth on y). `checkpoint` names the model in the JSON and
// the heatmap's title. Throws std::runtime_error naming a file it cannot write.
void write_retrieval_files(const RetrievalResult& result, const std::string& checkpoint, int64_t train_seq_len,
                           const std::string& dir);

}  // namespace ssmtrain::eval
