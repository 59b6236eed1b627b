// Compile check (registered with CTest as TaskCompile.SyncWaitLvalueAwaitable):
// sync_wait accepts "any awaitable", including a non-copyable one passed as an lvalue
// (e.g. `auto op = manager.tag_recv(...); btsp::sync_wait(op);`) — it must not copy it.
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
}  // namespace

int main() {
    MoveOnlyAwaitable op;
    return btsp::sync_wait(op) == 7 ? 0 : 1;
}
