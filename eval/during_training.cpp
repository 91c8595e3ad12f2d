// See during_training.h.
#include "eval/during_training.h"

#include <memory>
#include <stdexcept>

#include "eval/context.h"
#include "eval/retrieval.h"

namespace ssmtrain::eval {

bool recipe_writes(const configs::Recipe& recipe, const std::string& key_path) {
  for (const auto& [path, where] : recipe.where)
    if (path == key_path || path.rfind(key_path + ".", 0) == 0) return true;
  return false;
}

TrainEvaluate training_evaluator(const configs::Config& config, bool niah) {
  if (!niah) return {};
  struct State {
    configs::Config config;
    std::string data_dir;
    std::unique_ptr<data::Tokenizer> tokenizer;
  };
  auto state = std::make_shared<State>();
  state->config = config;
  return [state](const LanguageModel& model, std::optional<DType> compute) {
    if (!state->tokenizer) {
      state->data_dir = recipe_data_dir(state->config);
      state->tokenizer = recipe_tokenizer(state->config, state->data_dir);
      if (!state->tokenizer)
        throw std::runtime_error("eval.niah: the recipe names no tokenizer (data.tokenizer or a prepared data.train) "
                                 "to build the prompts with");
    }
    RetrievalOptions o;
    o.lengths = state->config.eval.niah.lengths;
    o.depths = state->config.eval.niah.depths;
    o.compute_dtype = compute;
    const RetrievalResult r = run_niah(model, *state->tokenizer, state->data_dir, o);
    return std::vector<std::pair<std::string, double>>{{"niah_accuracy", r.accuracy()}};
  };
}

}  // namespace ssmtrain::eval
