// btsp — with_timeout: the spec's "协程超时处理", done for real (suspends, cancels).
#pragma once

#include <btsp/detail/timer_service.hpp>
#include <btsp/manager.hpp>
#include <btsp/task.hpp>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace btsp {

/// Thrown by with_timeout() when the deadline passed (derived from std::runtime_error, as
/// the spec's with_timeout throws).
class TimeoutError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// Awaitable returned by with_timeout(RdmaAwaitable, d).
class [[nodiscard]] TimeoutAwaitable {
public:
    explicit TimeoutAwaitable(RdmaAwaitable&& op) noexcept : op_(std::move(op)) {}
    bool await_ready() const noexcept { return op_.await_ready(); }
    bool await_suspend(std::coroutine_handle<> h) noexcept { return op_.await_suspend(h); }
    bool await_suspend(std::coroutine_handle<> h, detail::CancelSlot* slot) noexcept {
        return op_.await_suspend(h, slot);
    }
    RdmaOpResult await_resume() {
        RdmaOpResult r = op_.await_resume();
        if (r.result == RdmaResult::TIMEOUT)
            throw TimeoutError("btsp::with_timeout: operation timed out (" + std::string(r.reason()) + ")");
        return r;
    }

private:
    RdmaAwaitable op_;
};

/// Runs one manager operation (tag_send, tag_recv, connect, ...) with a deadline. The
/// coroutine suspends (nothing spins); when `timeout` passes first, the operation is
/// cancelled in UCX (see RdmaAwaitable::timeout for what that means per operation) and
/// `co_await` throws TimeoutError. Otherwise it yields the RdmaOpResult.
///     co_await with_timeout(manager.connect("127.0.0.1", 12345), std::chrono::seconds(5));
template <typename Rep, typename Period>
TimeoutAwaitable with_timeout(RdmaAwaitable&& op, std::chrono::duration<Rep, Period> timeout) {
    return TimeoutAwaitable(std::move(op).timeout(std::chrono::duration_cast<std::chrono::nanoseconds>(timeout)));
}

/// Runs a task with a deadline. When `timeout` passes first, every operation the task is
/// awaiting (through any depth of awaited sub-tasks) is cancelled with RdmaResult::TIMEOUT,
/// and so is every operation it starts afterwards; once the task has finished, this throws
/// TimeoutError. Otherwise it returns the task's result (or rethrows its exception).
template <typename T, typename Rep, typename Period>
RdmaTask<T> with_timeout(RdmaTask<T> task, std::chrono::duration<Rep, Period> timeout) {
    struct Deadline {
        RdmaTask<T>* task;
        std::atomic<bool> fired{false};
        std::uint64_t id = 0;
        static void fire(void* p) noexcept {
            auto* d = static_cast<Deadline*>(p);
            d->fired.store(true, std::memory_order_release);
            // Repeats every millisecond until the task ends, so an operation that was
            // being started at the first expiry is not missed.
            d->task->request_cancel(RdmaResult::TIMEOUT);
        }
        ~Deadline() {
            if (id != 0) detail::timer_cancel(id);
        }
    };
    Deadline deadline{&task};
    if (!task.done()) {
        deadline.id = detail::timer_schedule(std::chrono::duration_cast<std::chrono::nanoseconds>(timeout),
                                             std::chrono::milliseconds(1), &Deadline::fire, &deadline);
    }
    auto stop_timer = [&deadline] {
        if (deadline.id != 0) detail::timer_cancel(deadline.id);
        deadline.id = 0;
        return deadline.fired.load(std::memory_order_acquire);
    };
    if constexpr (std::is_void_v<T>) {
        try {
            co_await std::move(task);
        } catch (...) {
            if (stop_timer()) throw TimeoutError("btsp::with_timeout: task timed out");
            throw;
        }
        if (stop_timer()) throw TimeoutError("btsp::with_timeout: task timed out");
    } else {
        std::optional<T> value;
        try {
            value.emplace(co_await std::move(task));
        } catch (...) {
            if (stop_timer()) throw TimeoutError("btsp::with_timeout: task timed out");
            throw;
        }
        if (stop_timer()) throw TimeoutError("btsp::with_timeout: task timed out");
        co_return std::move(*value);
    }
}

}  // namespace btsp
