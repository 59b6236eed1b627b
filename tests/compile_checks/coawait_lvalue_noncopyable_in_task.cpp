// Compile check (registered with CTest as TaskCompile.CoAwaitLvalueNonCopyableInTask):
// inside an RdmaTask, co_await of a non-copyable awaitable named by an lvalue must compile
// and await that object in place (e.g. `auto w = manager.wait_for_connection();
// co_await w;`). RdmaTask's promise must not route it through something that copies it.
#include <btsp/task.hpp>

#include <coroutine>

namespace {
struct MoveOnlyAwaitable {
    MoveOnlyAwaitable() = default;
    MoveOnlyAwaitable(const MoveOnlyAwaitable&) = delete;
    MoveOnlyAwaitable(MoveOnlyAwaitable&&) noexcept = default;
    bool await_ready() const noexcept { return true; }
    void await_suspend(std::coroutine_handle<>) noexcept {}
    int await_resume() const noexcept { return 7; }
};

btsp::RdmaTask<int> use() {
    MoveOnlyAwaitable a;
    const int v = co_await a;
    co_return v;
}
}  // namespace

int main() { return btsp::sync_wait(use()) == 7 ? 0 : 1; }
