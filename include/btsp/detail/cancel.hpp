// btsp — header-visible internals: how a task's pending work is cancelled from any thread.
#pragma once

#include <atomic>
#include <cstdint>

namespace btsp::detail {

/// Something that can be asked to end early: an operation, or a task (which forwards to
/// whatever it is awaiting). `result` is the RdmaResult to report (CANCELLED, TIMEOUT).
struct CancelTarget {
    void (*cancel)(CancelTarget* self, std::uint8_t result) noexcept = nullptr;
};

/// Whether the process can use membarrier(PRIVATE_EXPEDITED) (registered once, on first
/// use): then the frequent side of a handshake needs only a compiler barrier
/// (light_fence) and the rare side pays a syscall (heavy_fence).
/// fence_mode: 0 = not decided yet, 1 = membarrier registered, 2 = full fences.
inline std::atomic<std::uint8_t> fence_mode{0};
bool register_asymmetric_fences() noexcept;
std::uint8_t decide_fence_mode() noexcept;  // registers (once) and sets fence_mode
[[gnu::always_inline]] inline bool asymmetric_fences() noexcept {
    std::uint8_t m = fence_mode.load(std::memory_order_relaxed);
    if (m == 0) [[unlikely]] m = decide_fence_mode();
    return m == 1;
}
/// The light fence when membarrier is not (yet) known to work: decides the mode on first
/// use, then a full fence unless membarrier was registered.
void light_fence_slow() noexcept;
/// Runs on every operation and resume (several times each): one compare and one branch
/// once the mode is decided.
[[gnu::always_inline]] inline void light_fence() noexcept {
    if (fence_mode.load(std::memory_order_relaxed) != 1) [[unlikely]] light_fence_slow();
    std::atomic_signal_fence(std::memory_order_seq_cst);
}
void heavy_fence() noexcept;
/// Asks every live engine to look for pending operations whose task was cancelled
/// (engine.cpp; CancelSlot::cancel calls it).
void request_cancel_scan_all() noexcept;

/// Whether a task was cancelled, and which awaited sub-task to pass that on to. Cancellation
/// is sticky: everything the task awaits afterwards is cancelled at once.
/// - Manager operations are not attached: each gets the slot when it starts (the fast path
///   reads `sticky_` once), a pending one keeps a pointer to it, and cancel() asks every
///   engine to scan its pending operations for cancelled slots. The canceller never touches
///   an operation, so nothing is written per operation for it.
/// - Other cancellable awaitables (awaited tasks) are attached around their co_await with
///   plain stores and a light fence; a canceller announces itself in busy_, runs the heavy
///   fence and then pokes the target, so the awaiting side either sees the canceller (and
///   waits for it before its target can vanish) or the canceller sees the target gone.
class CancelSlot {
public:
    [[gnu::always_inline]] void attach(CancelTarget* t) noexcept {
        if (t == nullptr) return;
        current_.store(reinterpret_cast<std::uintptr_t>(t), std::memory_order_release);
        light_fence();
        if (const std::uint8_t r = sticky_.load(std::memory_order_acquire)) [[unlikely]] t->cancel(t, r);
    }
    [[gnu::always_inline]] void detach() noexcept {
        if (current_.load(std::memory_order_relaxed) == 0) return;
        current_.store(0, std::memory_order_relaxed);
        light_fence();
        if (busy_.load(std::memory_order_acquire) != 0) [[unlikely]] wait_idle();
    }
    /// Cancels what the task awaits now (the attached target, the pending operations that
    /// hold this slot) and everything awaited later. Returns true if this call cancelled
    /// it, false if it had been cancelled before.
    bool cancel(std::uint8_t result) noexcept;
    [[nodiscard]] std::uint8_t cancelled() const noexcept { return sticky_.load(std::memory_order_acquire); }

private:
    void wait_idle() const noexcept;
    std::atomic<std::uintptr_t> current_{0};
    std::atomic<std::uint8_t> sticky_{0};
    std::atomic<std::uint32_t> busy_{0};  // cancellers poking the current target
};

}  // namespace btsp::detail
