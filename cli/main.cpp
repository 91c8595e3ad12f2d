// The ssmtrain command (placeholder until the CLI issue lands).
#include <cstdio>
int main() {
  std::puts("ssmtrain 0.1.0");
  return 0;
}
