// The "gradient ready" hook of the backward engine (autograd/node.cpp): called on this thread
// after a leaf's AccumulateGrad has added its gradient, which is then final for the running
// backward pass (the engine sums every path into a leaf before its AccumulateGrad runs; a leaf
// used only inside an activation-checkpointed block is reached in that block's nested
// backward). The data-parallel reducer (distributed/reducer.h) starts each gradient bucket's
// all-reduce from it while the rest of backward runs.
#pragma once

#include <functional>

namespace ssmtrain {

struct TensorImpl;

using GradReadyHook = std::function<void(const TensorImpl& leaf)>;

// Installs `hook` for this thread for its lifetime (the previous one comes back after).
class GradReadyHookGuard {
 public:
  explicit GradReadyHookGuard(GradReadyHook hook);
  ~GradReadyHookGuard();
  GradReadyHookGuard(const GradReadyHookGuard&) = delete;
  GradReadyHookGuard& operator=(const GradReadyHookGuard&) = delete;

 private:
  GradReadyHook previous_;
};

// The hook installed on this thread (empty: none), for the engine.
const GradReadyHook& grad_ready_hook();

}  // namespace ssmtrain
