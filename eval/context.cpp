// See context.h.
#include "eval/context.h"

#include <algorithm>
#include <stdexcept>

#include "autograd/device.h"
#include "data/errors.h"

namespace ssmtrain::eval {

EvalContext open_checkpoint(const std::filesystem::path& checkpoint, const std::string& data_dir) {
  EvalContext c;
  c.device = cuda_available() ? Device::cuda(0) : Device::cpu();
  c.loaded = load_model(checkpoint, c.device);
  const configs::Config& config = c.loaded.config;
  const configs::Precision precision = config.training.precision;
  c.compute = c.device.is_cuda() && precision != configs::Precision::fp32 ? DType::bf16 : DType::f32;
  c.data_dir = recipe_data_dir(config, data_dir);
  c.tokenizer = recipe_tokenizer(config, c.data_dir);
  return c;
}

std::string recipe_data_dir(const configs::Config& config, const std::string& data_dir) {
  return !data_dir.empty() ? data_dir : !config.data.val.empty() ? config.data.val : config.data.train;
}

std::unique_ptr<data::Tokenizer> recipe_tokenizer(const configs::Config& config, const std::string& data_dir) {
  std::string tokenizer = config.data.tokenizer;
  if (tokenizer.empty() && !data_dir.empty()) {
    const data::Manifest manifest = data::read_manifest(data_dir);
    tokenizer = (std::filesystem::path(data_dir) / manifest.tokenizer_file).string();
  }
  if (tokenizer.empty()) return nullptr;
  return std::make_unique<data::Tokenizer>(tokenizer);
}

RetrievalResult run_niah(const LanguageModel& model, const data::Tokenizer& tokenizer, const std::string& data_dir,
                         const RetrievalOptions& options, const CellCallback& on_cell) {
  if (options.lengths.empty()) throw std::invalid_argument("niah: no context lengths");
  const int64_t longest = *std::max_element(options.lengths.begin(), options.lengths.end());
  const std::vector<int64_t> tokens = held_out_tokens(data_dir, std::max<int64_t>(65536, 4 * longest));
  return run_retrieval(model, niah_task(held_out_text(tokenizer, tokens)), text_codec(tokenizer), options, on_cell);
}

std::vector<int64_t> held_out_tokens(const std::string& data_dir, int64_t max_tokens) {
  const data::Manifest manifest = data::read_manifest(data_dir);
  std::vector<int64_t> out;
  for (const data::ShardInfo& info : manifest.shards) {
    if (info.split != "val") continue;
    const data::MappedShard shard(manifest, info);
    for (uint64_t i = 0; i < shard.tokens(); ++i) {
      if (max_tokens > 0 && int64_t(out.size()) >= max_tokens) return out;
      out.push_back(int64_t(shard.token(i)));
    }
  }
  if (out.empty()) throw data::DataError(data_dir + "/manifest.json: no held-out (val) tokens; prepare the data with --val-fraction > 0");
  return out;
}

TextCodec text_codec(const data::Tokenizer& tokenizer) {
  TextCodec c;
  c.encode = [&tokenizer](const std::string& text) {
    const std::vector<int> ids = tokenizer.encode(text);
    return std::vector<int64_t>(ids.begin(), ids.end());
  };
  c.decode = [&tokenizer](const std::vector<int64_t>& tokens) {
    std::vector<int> ids;
    for (int64_t t : tokens)
      if (t >= 0 && t != tokenizer.eos_id() && t < tokenizer.vocab_size()) ids.push_back(int(t));
    return tokenizer.decode(ids);
  };
  if (tokenizer.eos_id() >= 0) {
    c.prefix = {tokenizer.eos_id()};
    c.stop_tokens = {tokenizer.eos_id()};
  }
  return c;
}

std::string held_out_text(const data::Tokenizer& tokenizer, const std::vector<int64_t>& tokens) {
  std::string text;
  std::vector<int> document;
  auto flush = [&] {
    if (document.empty()) return;
    if (!text.empty()) text += "\n\n";
    text += tokenizer.decode(document);
    document.clear();
  };
  for (int64_t t : tokens) {
    if (t == tokenizer.eos_id()) flush();
    else if (t >= 0 && t < tokenizer.vocab_size()) document.push_back(int(t));
  }
  flush();
  return text;
}

}  // namespace ssmtrain::eval
