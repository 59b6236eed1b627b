// btsp — RdmaTask<T>: an eagerly started, awaitable coroutine task, and sync_wait.
#pragma once

#include <btsp/detail/cancel.hpp>
#include <btsp/types.hpp>

#include <atomic>
#include <concepts>
#include <condition_variable>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <variant>

namespace btsp {

template <typename T = void>
class RdmaTask;

namespace detail {

// Life of a task's coroutine frame, shared by the task object and the frame.
enum TaskState : std::uint8_t {
    kTaskRunning = 0,   // not finished, nobody awaits it
    kTaskAwaited = 1,   // not finished, continuation_ is set
    kTaskDone = 2,      // finished; the task object owns the frame
    kTaskDetached = 3,  // the task object is gone; the frame frees itself when it ends
};

// Awaitables that can be cancelled expose `detail::CancelTarget* cancel_target()` (tasks:
// the canceller pokes what they await through the slot's current target).
template <typename A>
concept Cancellable = requires(A& a) {
    { a.cancel_target() } -> std::convertible_to<CancelTarget*>;
};
// Awaitables that take the awaiting task's slot when they start (manager operations): the
// engine that runs them checks the slot itself, so nothing is attached per co_await.
template <typename A>
concept SlotAware = requires(std::remove_reference_t<A>& a, std::coroutine_handle<> h, CancelSlot* s) {
    { a.await_suspend(h, s) } -> std::same_as<bool>;
};

template <typename A>
decltype(auto) get_awaiter(A&& a);

// What an RdmaTask (or sync_wait) actually co_awaits: a small wrapper holding a reference
// to the operand and its awaiter. It keeps the operand in place (GCC 12 copies an awaiter
// that await_transform returns by reference; the operand may be neither copyable nor
// movable, and RdmaAwaitable's state lives inside it), and for cancellable operands it
// points the task's CancelSlot at them while they are pending.
template <typename A>
class AwaitRef {
    using Awaiter = decltype(get_awaiter(std::declval<A>()));
    // The operand is its own awaiter (RdmaAwaitable, tasks): no second reference to keep.
    static constexpr bool kSelf = std::is_reference_v<Awaiter> &&
                                  std::is_same_v<std::remove_cvref_t<Awaiter>, std::remove_cvref_t<A>>;
    struct None {};

public:
    // Forced inline: in a large coroutine GCC otherwise keeps these as calls, which costs
    // a call frame on every co_await of every operation.
    [[gnu::always_inline]] AwaitRef(A&& a, CancelSlot* slot) noexcept : a_(std::forward<A>(a)), slot_(slot) {
        if constexpr (!kSelf) ::new (static_cast<void*>(&awaiter_)) Holder{get_awaiter(std::forward<A>(a_))};
    }
    AwaitRef(const AwaitRef&) = delete;
    AwaitRef& operator=(const AwaitRef&) = delete;
    [[gnu::always_inline]] ~AwaitRef() {
        if constexpr (!kSelf) awaiter_.~Holder();
    }
    [[gnu::always_inline]] bool await_ready() { return awaiter().await_ready(); }
    template <typename H>
    [[gnu::always_inline]] decltype(auto) await_suspend(H h) {
        if constexpr (Cancellable<std::remove_reference_t<A>>) {
            if (slot_ != nullptr) slot_->attach(a_.cancel_target());
        }
        return awaiter().await_suspend(h);
    }
    [[gnu::always_inline]] decltype(auto) await_resume() {
        if constexpr (Cancellable<std::remove_reference_t<A>>) {
            if (slot_ != nullptr) slot_->detach();
        }
        return awaiter().await_resume();
    }

private:
    struct Holder {
        Awaiter value;
    };
    [[gnu::always_inline]] decltype(auto) awaiter() noexcept {
        if constexpr (kSelf) return static_cast<std::remove_reference_t<A>&>(a_);
        else return static_cast<std::remove_reference_t<Awaiter>&>(awaiter_.value);
    }
    A&& a_;
    CancelSlot* slot_;
    union {
        std::conditional_t<kSelf, None, Holder> awaiter_;
    };
};

// What an RdmaTask co_awaits for a SlotAware operand: a reference to it, and its task's
// slot handed over when it starts (taken from the handle, so nothing else is stored).
template <typename A>
class OpAwait {
public:
    [[gnu::always_inline]] explicit OpAwait(A&& a) noexcept : a_(std::forward<A>(a)) {}
    OpAwait(const OpAwait&) = delete;
    OpAwait& operator=(const OpAwait&) = delete;
    [[gnu::always_inline]] bool await_ready() { return a_.await_ready(); }
    template <typename P>
    [[gnu::always_inline]] bool await_suspend(std::coroutine_handle<P> h) {
        return a_.await_suspend(h, &h.promise().cancel_slot());
    }
    [[gnu::always_inline]] decltype(auto) await_resume() { return a_.await_resume(); }

private:
    A&& a_;
};

class TaskPromiseBase : public CancelTarget {
public:
    TaskPromiseBase() noexcept {
        cancel = [](CancelTarget* self, std::uint8_t r) noexcept {
            static_cast<TaskPromiseBase*>(self)->slot_.cancel(r);
        };
    }
    std::suspend_never initial_suspend() noexcept { return {}; }  // eager, as the spec expects

    // The task can be cancelled from outside (RdmaTask::request_cancel, with_timeout):
    // manager operations get the slot when they start; awaited tasks are attached to it.
    template <typename A>
    auto await_transform(A&& a) noexcept {
        if constexpr (SlotAware<A>) return OpAwait<A>(std::forward<A>(a));
        else return AwaitRef<A>(std::forward<A>(a), &slot_);
    }

    CancelSlot& cancel_slot() noexcept { return slot_; }

    struct FinalAwaiter {
        bool await_ready() const noexcept { return false; }
        template <typename Promise>
        std::coroutine_handle<> await_suspend(std::coroutine_handle<Promise> h) noexcept {
            TaskPromiseBase& p = h.promise();
            const std::uint8_t prev = p.state_.exchange(kTaskDone, std::memory_order_acq_rel);
            // The continuation was published by the CAS in set_continuation; read it only
            // after this exchange has synchronised with it.
            if (prev == kTaskAwaited) return p.continuation_;  // symmetric transfer: no stack growth
            if (prev == kTaskDetached) h.destroy();
            return std::noop_coroutine();
        }
        void await_resume() const noexcept {}
    };
    FinalAwaiter final_suspend() noexcept { return {}; }

    bool is_done() const noexcept { return state_.load(std::memory_order_acquire) == kTaskDone; }

    // Returns false if the task already finished (then the caller continues at once).
    bool set_continuation(std::coroutine_handle<> c) noexcept {
        continuation_ = c;
        std::uint8_t expected = kTaskRunning;
        return state_.compare_exchange_strong(expected, kTaskAwaited, std::memory_order_acq_rel,
                                              std::memory_order_acquire);
    }

    // Returns true if the caller must destroy the frame (it already finished).
    bool detach() noexcept {
        return state_.exchange(kTaskDetached, std::memory_order_acq_rel) == kTaskDone;
    }

private:
    std::atomic<std::uint8_t> state_{kTaskRunning};
    std::coroutine_handle<> continuation_{};
    CancelSlot slot_;
};

template <typename T, bool Rvalue>
struct TaskAwaitResult {
    using type = std::conditional_t<Rvalue, T, T&>;
};
template <bool Rvalue>
struct TaskAwaitResult<void, Rvalue> {
    using type = void;
};

template <typename T>
class TaskPromise final : public TaskPromiseBase {
public:
    RdmaTask<T> get_return_object() noexcept;
    void unhandled_exception() noexcept { result_.template emplace<2>(std::current_exception()); }
    template <typename U = T>
        requires std::is_convertible_v<U&&, T>
    void return_value(U&& v) noexcept(std::is_nothrow_constructible_v<T, U&&>) {
        result_.template emplace<1>(std::forward<U>(v));
    }
    T& value() & {
        if (result_.index() == 2) std::rethrow_exception(std::get<2>(result_));
        return std::get<1>(result_);
    }

private:
    std::variant<std::monostate, T, std::exception_ptr> result_;
};

template <>
class TaskPromise<void> final : public TaskPromiseBase {
public:
    RdmaTask<void> get_return_object() noexcept;
    void unhandled_exception() noexcept { exception_ = std::current_exception(); }
    void return_void() noexcept {}
    void value() const {
        if (exception_) std::rethrow_exception(exception_);
    }

private:
    std::exception_ptr exception_;
};

}  // namespace detail

/// A coroutine task. It starts running as soon as it is called (the spec polls
/// `done()` without ever resuming it), can be polled with `done()`, read with `get()`
/// (which rethrows the coroutine's exception), and `co_await`ed (symmetric transfer).
/// Destroying an unfinished task detaches it: the coroutine runs to its end and then
/// frees itself. Move-only.
template <typename T>
class [[nodiscard]] RdmaTask {
public:
    using promise_type = detail::TaskPromise<T>;
    using value_type = T;

    RdmaTask() noexcept = default;
    explicit RdmaTask(std::coroutine_handle<promise_type> h) noexcept : handle_(h) {}
    RdmaTask(RdmaTask&& o) noexcept : handle_(std::exchange(o.handle_, {})) {}
    RdmaTask& operator=(RdmaTask&& o) noexcept {
        if (this != &o) {
            reset();
            handle_ = std::exchange(o.handle_, {});
        }
        return *this;
    }
    RdmaTask(const RdmaTask&) = delete;
    RdmaTask& operator=(const RdmaTask&) = delete;
    ~RdmaTask() { reset(); }

    /// True when the task holds a coroutine.
    [[nodiscard]] bool valid() const noexcept { return static_cast<bool>(handle_); }

    /// True once the coroutine has finished (returned or thrown). Thread-safe.
    [[nodiscard]] bool done() const noexcept { return !handle_ || handle_.promise().is_done(); }

    /// The coroutine's result; rethrows its exception. Throws std::logic_error if the task
    /// has not finished yet (use sync_wait() or co_await to wait for it).
    decltype(auto) get() & {
        check_done();
        return handle_.promise().value();
    }
    decltype(auto) get() && {
        check_done();
        if constexpr (std::is_void_v<T>) {
            handle_.promise().value();
        } else {
            return T(std::move(handle_.promise().value()));
        }
    }

    /// co_await on an rvalue task yields its value (moved out); on an lvalue, a reference
    /// to the value stored in the task.
    template <bool Rvalue>
    struct Awaiter {
        std::coroutine_handle<promise_type> h;
        bool await_ready() const noexcept { return !h || h.promise().is_done(); }
        bool await_suspend(std::coroutine_handle<> awaiting) noexcept {
            return h.promise().set_continuation(awaiting);
        }
        auto await_resume() -> typename detail::TaskAwaitResult<T, Rvalue>::type {
            if (!h) throw std::logic_error("btsp::RdmaTask: co_await on an empty task");
            if constexpr (std::is_void_v<T>) {
                h.promise().value();
            } else if constexpr (Rvalue) {
                return T(std::move(h.promise().value()));
            } else {
                return h.promise().value();
            }
        }
    };
    Awaiter<false> operator co_await() & noexcept { return Awaiter<false>{handle_}; }
    Awaiter<true> operator co_await() && noexcept { return Awaiter<true>{handle_}; }

    /// Asks the task to stop: the operation it is awaiting now (however deep, through
    /// awaited sub-tasks) completes with `result` (CANCELLED or TIMEOUT), and so does every
    /// operation it awaits afterwards. Thread-safe; returns false if the task was empty or
    /// had finished, or an earlier request had already cancelled it.
    bool request_cancel(RdmaResult result = RdmaResult::CANCELLED) noexcept {
        if (!handle_ || done()) return false;
        return handle_.promise().cancel_slot().cancel(static_cast<std::uint8_t>(result));
    }
    /// Used when this task is awaited inside another RdmaTask (cancellation forwards to it).
    detail::CancelTarget* cancel_target() noexcept { return handle_ ? &handle_.promise() : nullptr; }

    /// The underlying coroutine handle (ownership stays with the task).
    [[nodiscard]] std::coroutine_handle<promise_type> handle() const noexcept { return handle_; }

private:
    void check_done() const {
        if (!handle_) throw std::logic_error("btsp::RdmaTask::get() on an empty task");
        if (!handle_.promise().is_done())
            throw std::logic_error("btsp::RdmaTask::get() before the task finished");
    }
    void reset() noexcept {
        if (handle_ && handle_.promise().detach()) handle_.destroy();
        handle_ = {};
    }

    std::coroutine_handle<promise_type> handle_{};
};

namespace detail {
template <typename T>
RdmaTask<T> TaskPromise<T>::get_return_object() noexcept {
    return RdmaTask<T>(std::coroutine_handle<TaskPromise<T>>::from_promise(*this));
}
inline RdmaTask<void> TaskPromise<void>::get_return_object() noexcept {
    return RdmaTask<void>(std::coroutine_handle<TaskPromise<void>>::from_promise(*this));
}

// ---- awaitable traits ------------------------------------------------------------
template <typename A>
decltype(auto) get_awaiter(A&& a) {
    if constexpr (requires { std::forward<A>(a).operator co_await(); }) {
        return std::forward<A>(a).operator co_await();
    } else if constexpr (requires { operator co_await(std::forward<A>(a)); }) {
        return operator co_await(std::forward<A>(a));
    } else {
        return std::forward<A>(a);
    }
}
template <typename A>
using awaiter_t = decltype(get_awaiter(std::declval<A>()));
template <typename A>
using await_result_t = decltype(std::declval<awaiter_t<A>&>().await_resume());

// ---- sync_wait machinery -----------------------------------------------------------
class SyncEvent {
public:
    void set() noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        set_ = true;
        cv_.notify_all();  // under the lock: the waiter cannot return and free us first
    }
    void wait() noexcept {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [this] { return set_; });
    }

private:
    std::mutex mutex_;
    std::condition_variable cv_;
    bool set_ = false;
};

template <typename R>
class SyncWaitTask {
public:
    struct promise_type {
        SyncEvent* event = nullptr;
        std::variant<std::monostate, std::conditional_t<std::is_void_v<R>, std::monostate, R>,
                     std::exception_ptr>
            result;

        SyncWaitTask get_return_object() noexcept {
            return SyncWaitTask(std::coroutine_handle<promise_type>::from_promise(*this));
        }
        std::suspend_always initial_suspend() noexcept { return {}; }
        struct Final {
            bool await_ready() const noexcept { return false; }
            void await_suspend(std::coroutine_handle<promise_type> h) noexcept {
                h.promise().event->set();
            }
            void await_resume() const noexcept {}
        };
        Final final_suspend() noexcept { return {}; }
        template <typename A>
        AwaitRef<A> await_transform(A&& a) noexcept {
            return AwaitRef<A>(std::forward<A>(a), nullptr);
        }
        void unhandled_exception() noexcept { result.template emplace<2>(std::current_exception()); }
        template <typename U>
        void return_value(U&& v) {
            result.template emplace<1>(std::forward<U>(v));
        }
    };
    explicit SyncWaitTask(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
    SyncWaitTask(SyncWaitTask&& o) noexcept : h_(std::exchange(o.h_, {})) {}
    ~SyncWaitTask() {
        if (h_) h_.destroy();
    }
    R run() {
        SyncEvent event;
        h_.promise().event = &event;
        h_.resume();
        event.wait();
        auto& res = h_.promise().result;
        if (res.index() == 2) std::rethrow_exception(std::get<2>(res));
        if constexpr (!std::is_void_v<R>) return std::move(std::get<1>(res));
    }

private:
    std::coroutine_handle<promise_type> h_;
};

template <typename A>
SyncWaitTask<std::remove_cvref_t<await_result_t<A>>> make_sync_wait_task(A&& a)
    requires std::is_void_v<await_result_t<A>>
{
    co_await std::forward<A>(a);
    co_return std::monostate{};
}
template <typename A>
SyncWaitTask<std::remove_cvref_t<await_result_t<A>>> make_sync_wait_task(A&& a)
    requires(!std::is_void_v<await_result_t<A>>)
{
    co_return co_await std::forward<A>(a);
}

}  // namespace detail

/// Blocks the calling thread until `awaitable` (an RdmaTask, an RdmaAwaitable, any
/// awaitable) completes, and returns its result (rethrowing its exception). Waits on a
/// condition variable: no polling, no sleeping. Do not call it on a manager's progress
/// thread for work that needs that thread (the hand-off keeps it from deadlocking, at the
/// cost of a thread switch).
template <typename A>
auto sync_wait(A&& awaitable) -> std::remove_cvref_t<detail::await_result_t<A>> {
    using R = std::remove_cvref_t<detail::await_result_t<A>>;
    auto t = detail::make_sync_wait_task(std::forward<A>(awaitable));
    if constexpr (std::is_void_v<R>) {
        t.run();
    } else {
        return t.run();
    }
}

}  // namespace btsp
