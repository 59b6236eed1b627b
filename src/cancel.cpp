// Asymmetric fences (membarrier) and the rare side of CancelSlot.
#include <btsp/detail/cancel.hpp>

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <thread>

namespace btsp::detail {

bool register_asymmetric_fences() noexcept {
    // BTSP_NO_MEMBARRIER=1 forces the fence fallback (tests run the hand-off both ways).
    if (const char* off = std::getenv("BTSP_NO_MEMBARRIER"); off != nullptr && off[0] == '1') return false;
    const long cmds = ::syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (cmds < 0 || (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0) return false;
    return ::syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
}

std::uint8_t decide_fence_mode() noexcept {
    static const std::uint8_t mode = register_asymmetric_fences() ? 1 : 2;
    fence_mode.store(mode, std::memory_order_relaxed);
    return mode;
}

void light_fence_slow() noexcept {
    if (!asymmetric_fences()) std::atomic_thread_fence(std::memory_order_seq_cst);
}

void heavy_fence() noexcept {
    if (!asymmetric_fences() || ::syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0)
        std::atomic_thread_fence(std::memory_order_seq_cst);
}

bool CancelSlot::cancel(std::uint8_t result) noexcept {
    std::uint8_t expected = 0;
    const bool first = sticky_.compare_exchange_strong(expected, result, std::memory_order_acq_rel);
    // Operations hold the slot, not the other way round: their engines look at it (after
    // this store, so a scan cannot miss it; an operation starting meanwhile reads it).
    request_cancel_scan_all();
    busy_.fetch_add(1, std::memory_order_acq_rel);
    // Pairs with the light fence in attach()/detach(): either we see the awaiting side's
    // store to current_, or it sees busy_ (detach then waits for us; attach sees sticky_).
    heavy_fence();
    const std::uintptr_t v = current_.load(std::memory_order_acquire);
    if (v != 0) {
        auto* t = reinterpret_cast<CancelTarget*>(v);
        t->cancel(t, result);
    }
    busy_.fetch_sub(1, std::memory_order_release);
    return first;
}

void CancelSlot::wait_idle() const noexcept {
    for (unsigned spins = 0; busy_.load(std::memory_order_acquire) != 0; ++spins) {
        if (spins < 64) continue;
        std::this_thread::yield();
    }
}

}  // namespace btsp::detail
