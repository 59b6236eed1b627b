// btsp — header-visible internals: how a task's pending work is cancelled from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

namespace btsp::detail {

/// Something that can be asked to end early: an operation, or a task (which forwards to
/// whatever it is awaiting). `result` is the RdmaResult to report (CANCELLED, TIMEOUT).
struct CancelTarget {
    void (*cancel)(CancelTarget* self, std::uint8_t result) noexcept = nullptr;
};

/// What a task is awaiting right now, so that another thread can cancel it. The awaiting
/// side attaches/detaches around each co_await (a store and one CAS); a canceller takes the
/// slot briefly (kBusy) so the target cannot finish and vanish while it is being poked.
/// Cancellation is sticky: everything the task awaits afterwards is cancelled at once.
class CancelSlot {
public:
    void attach(CancelTarget* t) noexcept {
        if (t == nullptr) return;
        current_.store(reinterpret_cast<std::uintptr_t>(t), std::memory_order_release);
        if (const std::uint8_t r = sticky_.load(std::memory_order_acquire)) t->cancel(t, r);
    }
    void detach() noexcept {
        std::uintptr_t v = current_.load(std::memory_order_acquire);
        for (;;) {
            if (v == 0) return;
            if (v == kBusy) {
                std::this_thread::yield();
                v = current_.load(std::memory_order_acquire);
                continue;
            }
            if (current_.compare_exchange_weak(v, 0, std::memory_order_acq_rel, std::memory_order_acquire))
                return;
        }
    }
    /// Cancels the current target (if any) and everything awaited later. Returns false if
    /// nothing was attached at that instant (callers that must not miss may retry).
    bool cancel(std::uint8_t result) noexcept {
        std::uint8_t expected = 0;
        sticky_.compare_exchange_strong(expected, result, std::memory_order_acq_rel);
        std::uintptr_t v;
        while ((v = current_.exchange(kBusy, std::memory_order_acq_rel)) == kBusy) std::this_thread::yield();
        if (v != 0) {
            auto* t = reinterpret_cast<CancelTarget*>(v);
            t->cancel(t, result);
        }
        current_.store(v, std::memory_order_release);
        return v != 0;
    }
    [[nodiscard]] std::uint8_t cancelled() const noexcept { return sticky_.load(std::memory_order_acquire); }

private:
    static constexpr std::uintptr_t kBusy = 1;
    std::atomic<std::uintptr_t> current_{0};
    std::atomic<std::uint8_t> sticky_{0};
};

}  // namespace btsp::detail
