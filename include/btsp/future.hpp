// btsp — std::future integration: to_future(task), to_future(awaitable).
//
// The spec's std::async wrapper (AsyncRdmaWrapper, 与 std::async 集成) works as written:
// RdmaTask starts eagerly and done() is thread-safe. to_future() is the direct way: it
// fulfils a std::promise from a continuation that runs when the task ends — no thread is
// parked polling done().
#pragma once

#include <btsp/task.hpp>

#include <coroutine>
#include <exception>
#include <future>
#include <type_traits>
#include <utility>

namespace btsp {

namespace detail {

// Fire-and-forget coroutine that starts at once and frees its frame when it ends.
// Only used with bodies that catch everything they can throw.
struct FutureBridge {
    struct promise_type {
        FutureBridge get_return_object() noexcept { return {}; }
        std::suspend_never initial_suspend() noexcept { return {}; }
        std::suspend_never final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        void unhandled_exception() noexcept { std::terminate(); }  // unreachable: bodies catch
    };
};

// Awaits `a` and stores its outcome (value or exception) in `promise`. It runs on the
// calling thread until `a` suspends, and completes the promise on the thread that resumes it
// (for manager operations: the manager's progress thread), or at once if `a` is ready.
template <typename A, typename R>
FutureBridge fulfil_promise(A a, std::promise<R> promise) {
    std::exception_ptr error;
    try {
        if constexpr (std::is_void_v<R>) {
            co_await std::move(a);
            promise.set_value();
        } else {
            promise.set_value(co_await std::move(a));
        }
    } catch (...) {
        error = std::current_exception();
    }
    if (error) promise.set_exception(error);
}

}  // namespace detail

/// Returns a std::future that becomes ready when `task` finishes: it yields the task's
/// value, or rethrows its exception from get(). The task keeps running even if the future
/// is discarded. No thread polls: the promise is fulfilled by a continuation of the task,
/// on the thread the task finishes on (typically a manager's progress thread). Waiting on
/// the future from that same progress thread would block it; the manager's progress
/// hand-off keeps other operations going, but prefer co_await inside coroutines.
///     std::future<int> f = btsp::to_future(compute(manager));
///     int v = f.get();
template <typename T>
std::future<T> to_future(RdmaTask<T> task) {
    std::promise<T> promise;
    std::future<T> future = promise.get_future();
    detail::fulfil_promise<RdmaTask<T>, T>(std::move(task), std::move(promise));
    return future;
}

/// Starts `awaitable` (an RdmaAwaitable such as manager.tag_send(...), a TimeoutAwaitable,
/// a StateChangeAwaitable, any movable awaitable) now and returns a std::future of its
/// result. For a manager operation: std::future<RdmaOpResult>, fulfilled on the progress
/// thread when the operation completes (or at once if it completes at once). The buffers
/// of the operation must stay valid until the future is ready.
///     auto f = btsp::to_future(manager.tag_recv(buf, sizeof buf, 42));
///     btsp::RdmaOpResult r = f.get();
template <typename A>
    requires(!std::is_reference_v<A> && std::is_move_constructible_v<A>)
std::future<std::remove_cvref_t<detail::await_result_t<A>>> to_future(A awaitable) {
    using R = std::remove_cvref_t<detail::await_result_t<A>>;
    std::promise<R> promise;
    std::future<R> future = promise.get_future();
    detail::fulfil_promise<A, R>(std::move(awaitable), std::move(promise));
    return future;
}

}  // namespace btsp
