// btsp — header-visible internals: a process-wide timer thread for with_timeout(task).
#pragma once

#include <chrono>
#include <cstdint>

namespace btsp::detail {

/// Calls fn(arg) on the timer thread `first` from now, then every `repeat` (if non-zero)
/// until cancelled. Returns an id (never 0).
std::uint64_t timer_schedule(std::chrono::nanoseconds first, std::chrono::nanoseconds repeat,
                             void (*fn)(void*) noexcept, void* arg);
/// Cancels a timer. When it returns, fn is not running and will not run again.
/// Returns true if fn never ran.
bool timer_cancel(std::uint64_t id) noexcept;

}  // namespace btsp::detail
