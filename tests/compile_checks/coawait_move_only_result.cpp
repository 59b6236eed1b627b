// Compile check (registered with CTest as TaskCompile.CoAwaitMoveOnlyResult):
// co_await of an RdmaTask whose result type is move-only must compile.
#include <btsp/task.hpp>

#include <memory>

namespace {
btsp::RdmaTask<std::unique_ptr<int>> make() { co_return std::make_unique<int>(1); }
btsp::RdmaTask<int> use() {
    std::unique_ptr<int> p = co_await make();  // rvalue task: the result is moved out
    co_return *p;
}
}  // namespace

int main() { return btsp::sync_wait(use()) == 1 ? 0 : 1; }
