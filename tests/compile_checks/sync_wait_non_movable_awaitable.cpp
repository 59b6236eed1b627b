// Compile check (registered with CTest as TaskCompile.SyncWaitNonMovableAwaitable):
// sync_wait of a temporary awaitable that can be neither copied nor moved must compile
// (the awaitable is bound by reference; nothing needs to copy it).
#include <btsp/task.hpp>

#include <coroutine>

namespace {
struct PinnedAwaitable {
    PinnedAwaitable() = default;
    PinnedAwaitable(const PinnedAwaitable&) = delete;
    PinnedAwaitable(PinnedAwaitable&&) = delete;
    bool await_ready() const noexcept { return true; }
    void await_suspend(std::coroutine_handle<>) noexcept {}
    int await_resume() const noexcept { return 7; }
};
}  // namespace

int main() { return btsp::sync_wait(PinnedAwaitable{}) == 7 ? 0 : 1; }
