// btsp — CoroutineRdmaManager: the spec's coroutine API over UCX.
#pragma once

#include <btsp/detail/operation.hpp>
#include <btsp/metrics.hpp>
#include <btsp/options.hpp>
#include <btsp/task.hpp>
#include <btsp/types.hpp>

#include <ucp/api/ucp_def.h>

#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <chrono>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

namespace btsp {

class CoroutineRdmaManager;

/// Awaitable of one operation (tag_send, tag_recv, connect, listen). The operation
/// starts when it is `co_await`ed (not when the manager method is called) and its state
/// lives inside this object: no allocation. `co_await` yields an RdmaOpResult.
/// It may be moved until it is awaited; once awaited it must stay where it is, which
/// `co_await` guarantees. Where it resumes: on the manager's progress thread, unless it
/// completed at once (then on the awaiting thread, without suspending).
class [[nodiscard]] RdmaAwaitable {
public:
    RdmaAwaitable(RdmaAwaitable&& other) noexcept;
    RdmaAwaitable& operator=(RdmaAwaitable&&) = delete;
    RdmaAwaitable(const RdmaAwaitable&) = delete;
    RdmaAwaitable& operator=(const RdmaAwaitable&) = delete;
    [[gnu::always_inline]] ~RdmaAwaitable() {
        if (op_.opts & detail::kOptExtras) [[unlikely]] destroy_extras();
    }

    /// Deadline: if the operation has not completed `d` after it starts, it completes with
    /// RdmaResult::TIMEOUT. What that does underneath: a receive is cancelled in UCX (its
    /// buffer is never written afterwards; one already matched by a large message finishes
    /// first); a connect is abandoned; a pending send cannot be cancelled by UCX, so its
    /// connection is closed and the other operations on it end DISCONNECTED. An eager send
    /// completes at once and never times out.
    RdmaAwaitable&& timeout(std::chrono::nanoseconds d) && noexcept;
    RdmaAwaitable& timeout(std::chrono::nanoseconds d) & noexcept;
    /// Cancellation: when `token` is stopped, the operation completes with
    /// RdmaResult::CANCELLED, with the same effects as timeout(). A stop requested before
    /// the operation starts completes it at once.
    RdmaAwaitable&& cancel_with(std::stop_token token) && noexcept;
    RdmaAwaitable& cancel_with(std::stop_token token) & noexcept;

    /// Tells UCX the buffer is already registered (e.g. RdmaMemoryPool::memh(ptr)), so it
    /// does not look the registration up or make one. nullptr = let UCX decide.
    RdmaAwaitable&& memory(ucp_mem_h memh) && noexcept {
        op_.set_memh(memh);
        return std::move(*this);
    }

    [[gnu::always_inline]] bool await_ready() const noexcept { return (op_.flags & detail::kOpCompleted) != 0; }
    /// Starts the operation; false (do not suspend) if it completed at once.
    [[gnu::always_inline]] bool await_suspend(std::coroutine_handle<> awaiting) noexcept {
        return await_suspend(awaiting, nullptr);
    }
    /// As above, inside an RdmaTask (which passes its cancellation slot: cancelling the task
    /// ends the operation, see RdmaTask::request_cancel).
    [[gnu::always_inline]] bool await_suspend(std::coroutine_handle<> awaiting, detail::CancelSlot* slot) noexcept {
        op_.waiter = awaiting;
        // Registered before the operation starts (a stop already requested runs it at once).
        if (op_.opts & detail::kOptExtras) [[unlikely]] arm_stop_callback();
        return detail::start_operation(&op_, slot);
    }
    [[gnu::always_inline]] RdmaOpResult await_resume() noexcept {
        if (op_.opts & detail::kOptExtras) [[unlikely]] disarm_stop_callback();
        return op_.result;
    }

private:
    friend class CoroutineRdmaManager;
    struct OnStop {
        detail::Operation* op;
        void operator()() const noexcept {
            detail::Operation::request_cancel(op, static_cast<std::uint8_t>(RdmaResult::CANCELLED));
        }
    };
    RdmaAwaitable(detail::Engine* engine, detail::OpKind kind, const void* data, std::size_t size,
                  std::uint64_t tag) noexcept
        : op_(engine, kind, data, size, tag) {}
    RdmaAwaitable(detail::Engine* engine, const void* data, std::size_t size, std::uint64_t tag,
                  std::uint64_t mask) noexcept
        : op_(engine, data, size, tag, mask) {}
    // What few operations need, built on demand (kOptExtras in op_.opts) in storage after
    // op_: a plain send or receive never reads or writes these bytes (see Operation).
    struct Extras {
        std::unique_ptr<char[]> host;  // connect(): the host name op_.host points to
        std::stop_token stop_token;    // cancel_with()
        std::optional<std::stop_callback<OnStop>> stop_callback;
    };
    Extras& extras() noexcept;  // builds them on first use
    void arm_stop_callback() noexcept;
    void disarm_stop_callback() noexcept;
    void destroy_extras() noexcept;
    detail::Operation op_;
    alignas(Extras) unsigned char extras_[sizeof(Extras)];
};

/// Awaitable of a state condition (wait_for_state, wait_for_connection). Completes when
/// the manager reaches the target state (CONNECTED is also reached by SENDING and
/// RECEIVING), or when the manager shuts down. `co_await` yields true if the target was
/// reached, false if the manager shut down (or was never initialised) first.
class [[nodiscard]] StateChangeAwaitable : private detail::ReadyNode {
public:
    StateChangeAwaitable(StateChangeAwaitable&& other) noexcept;
    StateChangeAwaitable& operator=(StateChangeAwaitable&&) = delete;
    StateChangeAwaitable(const StateChangeAwaitable&) = delete;
    StateChangeAwaitable& operator=(const StateChangeAwaitable&) = delete;
    ~StateChangeAwaitable() = default;

    bool await_ready() noexcept;
    bool await_suspend(std::coroutine_handle<> awaiting) noexcept;
    bool await_resume() const noexcept { return reached_; }

private:
    friend class CoroutineRdmaManager;
    friend class detail::Engine;
    StateChangeAwaitable(detail::Engine* engine, RdmaState target) noexcept;
    detail::Engine* engine_ = nullptr;
    StateChangeAwaitable* prev_ = nullptr;  // engine's waiter list
    StateChangeAwaitable* next_ = nullptr;
    RdmaState target_ = RdmaState::CONNECTED;
    bool reached_ = false;
};

/// Scope in which a coroutine of the manager may call UCX directly on its worker.
/// The progress hand-off moves the worker to another thread when a coroutine runs too long;
/// while a WorkerGuard that owns() the worker lives, it cannot. Obtain it with
/// CoroutineRdmaManager::lock_worker() inside one of the manager's coroutines (on its
/// progress thread); elsewhere owns() is false and UCX must not be called. Do not
/// co_await while holding it: release it first (it is a plain scope object).
class [[nodiscard]] WorkerGuard {
public:
    WorkerGuard(WorkerGuard&& other) noexcept;
    WorkerGuard& operator=(WorkerGuard&&) = delete;
    WorkerGuard(const WorkerGuard&) = delete;
    WorkerGuard& operator=(const WorkerGuard&) = delete;
    ~WorkerGuard();

    /// True if the caller may use worker() until the guard is destroyed.
    [[nodiscard]] bool owns() const noexcept { return owns_; }
    explicit operator bool() const noexcept { return owns_; }
    /// The worker, or nullptr when !owns().
    [[nodiscard]] ucp_worker_h worker() const noexcept;

private:
    friend class CoroutineRdmaManager;
    explicit WorkerGuard(detail::Engine* engine) noexcept;
    detail::Engine* engine_ = nullptr;
    std::uint64_t gen_ = 0;
    bool owns_ = false;
};

/// The spec's manager: one UCX worker driven by its own progress thread, one listener
/// (server mode) and its connections. Every method is thread-safe. Operations may be
/// awaited from any thread and any number may be in flight; coroutines are resumed on
/// the progress thread. See docs/semantics.md for states and failure results.
class CoroutineRdmaManager {
public:
    /// Options from ManagerOptions::from_env().
    CoroutineRdmaManager();
    explicit CoroutineRdmaManager(ManagerOptions options);
    /// Calls shutdown(). May run inside one of the manager's own coroutines.
    ~CoroutineRdmaManager();
    CoroutineRdmaManager(const CoroutineRdmaManager&) = delete;
    CoroutineRdmaManager& operator=(const CoroutineRdmaManager&) = delete;

    /// Creates the UCX context and worker and starts the progress thread. Server mode
    /// listens on `port` on all interfaces (0 = an ephemeral port, see listening_port()).
    /// Returns false (never throws) with the reason in the log and in last_error() when
    /// UCX cannot start, the port is busy, or the manager was already initialised.
    bool initialize(bool server_mode = false, std::uint16_t port = 0);
    /// Completes every pending operation (DISCONNECTED), wakes every state waiter, closes
    /// connections and stops the progress thread. Idempotent; may be called from any
    /// thread, including the manager's own coroutines. Later operations fail at once.
    void shutdown();

    /// Sends `size` bytes at `data` as one tagged message to the connected peer. Completes
    /// when the buffer may be reused (not when the peer has received it).
    RdmaAwaitable tag_send(const void* data, std::size_t size, std::uint64_t tag);
    /// Receives one message whose tag equals `tag` into `data` (capacity `size`).
    /// bytes_transferred is the message's real length; a longer message completes with
    /// FAILURE (reason: message truncated).
    RdmaAwaitable tag_recv(void* data, std::size_t size, std::uint64_t tag);
    /// As tag_recv, matching messages whose `(msg_tag & tag_mask) == (tag & tag_mask)`;
    /// the result's sender_tag is the message's full tag.
    RdmaAwaitable tag_recv(void* data, std::size_t size, std::uint64_t tag, std::uint64_t tag_mask);
    /// Connects to a listening peer (IPv4/IPv6 literal or host name). SUCCESS once the
    /// connection is wired up; DISCONNECTED if refused or rejected; TIMEOUT after
    /// options().connect_timeout without an answer; FAILURE for a bad address/state.
    RdmaAwaitable connect(const std::string& remote_addr, std::uint16_t remote_port);
    /// Starts listening on `port` (0 = ephemeral) if not already listening. SUCCESS once the
    /// listener is up (bytes_transferred = 0); use wait_for_connection() to accept.
    RdmaAwaitable listen(std::uint16_t port);

    /// Closes this manager's connections (a client's one; all of a server's clients, the
    /// listener stays). Their pending operations complete DISCONNECTED, the peers see the
    /// connection end, and the state returns to IDLE / LISTENING, so connect() may be
    /// called again. SUCCESS (also when there was nothing to close).
    RdmaAwaitable disconnect();

    /// Waits until the state is `target_state` (see StateChangeAwaitable).
    StateChangeAwaitable wait_for_state(RdmaState target_state);
    /// Same as wait_for_state(RdmaState::CONNECTED).
    StateChangeAwaitable wait_for_connection();

    [[nodiscard]] RdmaState get_state() const noexcept;
    /// True in CONNECTED, SENDING and RECEIVING.
    [[nodiscard]] bool is_connected() const noexcept;
    /// True between a successful initialize() and shutdown().
    [[nodiscard]] bool is_running() const noexcept;

    // ---- additions to the spec ---------------------------------------------------
    /// Port the listener is bound to (the real one when 0 was asked); 0 if not listening.
    [[nodiscard]] std::uint16_t listening_port() const noexcept;
    /// Number of live connections (a server may have several; tag_send uses the oldest).
    [[nodiscard]] std::size_t connection_count() const noexcept;
    /// Everything this manager has recorded by itself: operations by kind and result,
    /// bytes, sampled latency histograms, connections, what is in flight now.
    [[nodiscard]] MetricsSnapshot metrics() const noexcept;
    /// What is in flight right now (kind, tag, size, peer, age), for when something looks
    /// stuck. Blocks the caller until the progress thread has listed it (microseconds).
    [[nodiscard]] std::vector<InFlightOp> in_flight();
    /// in_flight(), formatted one operation per line.
    [[nodiscard]] std::string dump_in_flight();
    /// Why initialize() last failed (empty if it did not).
    [[nodiscard]] std::string last_error() const;
    [[nodiscard]] const ManagerOptions& options() const noexcept { return options_; }

    /// Raw UCX handles for advanced use. The worker belongs to the progress thread: call
    /// UCX on it only inside this manager's coroutines while holding lock_worker().
    [[nodiscard]] ucp_context_h ucx_context() const noexcept;
    [[nodiscard]] ucp_worker_h ucx_worker() const noexcept;
    /// The UCX context with shared ownership: it stays valid (for ucp_mem_map/unmap) while
    /// held, even after shutdown(). nullptr before initialize().
    [[nodiscard]] std::shared_ptr<ucp_context> ucx_context_shared() const;
    /// Pins the worker to the calling coroutine's thread (see WorkerGuard).
    [[nodiscard]] WorkerGuard lock_worker() noexcept;
    /// Endpoint of the connection tag_send uses, or nullptr.
    [[nodiscard]] ucp_ep_h ucx_endpoint() const noexcept;

private:
    RdmaAwaitable make_op(detail::OpKind kind, const void* data, std::size_t size, std::uint64_t tag) const noexcept {
        return RdmaAwaitable(engine_.get(), kind, data, size, tag);
    }
    RdmaAwaitable make_recv(void* data, std::size_t size, std::uint64_t tag, std::uint64_t mask) const noexcept {
        return RdmaAwaitable(engine_.get(), data, size, tag, mask);
    }

    ManagerOptions options_;
    std::shared_ptr<detail::Engine> engine_;
};

// The data operations are built inline (they run once per message); the checks happen
// when the operation starts (Engine::start), on whichever thread awaits it.
inline RdmaAwaitable CoroutineRdmaManager::tag_send(const void* data, std::size_t size, std::uint64_t tag) {
    return make_op(detail::OpKind::SEND, data, size, tag);
}
inline RdmaAwaitable CoroutineRdmaManager::tag_recv(void* data, std::size_t size, std::uint64_t tag) {
    return make_recv(data, size, tag, ~std::uint64_t{0});
}
inline RdmaAwaitable CoroutineRdmaManager::tag_recv(void* data, std::size_t size, std::uint64_t tag,
                                                    std::uint64_t tag_mask) {
    return make_recv(data, size, tag, tag_mask);
}

}  // namespace btsp
