// What build of ssmtrain this is: the project version and the git commit it was configured
// from ("unknown" outside a checkout), recorded in checkpoints and printed by `ssmtrain info`.
#pragma once

namespace ssmtrain {

const char* ssmtrain_version();
const char* ssmtrain_commit();  // 12 hex digits of HEAD at configure time, or "unknown"

}  // namespace ssmtrain
