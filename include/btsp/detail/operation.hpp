// btsp — header-visible internals: the per-operation state that lives inside an awaiter.
#pragma once

#include <btsp/detail/cancel.hpp>
#include <btsp/types.hpp>

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>

namespace btsp::detail {

class Engine;
class Connection;

/// Something the engine completes after ucp_worker_progress has returned: an operation
/// or a state waiter. Linked into the engine's ready list without allocation.
struct ReadyNode {
    ReadyNode* next_ready = nullptr;
    /// Called on the progress thread, outside any UCX callback.
    void (*on_ready)(ReadyNode*) noexcept = nullptr;
};

/// A deadline in an engine's timer list (intrusive, sorted by deadline).
struct TimerNode {
    std::chrono::steady_clock::time_point deadline{};
    TimerNode* prev = nullptr;
    TimerNode* next = nullptr;
    bool armed = false;
    void (*fire)(TimerNode*) noexcept = nullptr;
    void* ctx = nullptr;  // what the timer belongs to
};

enum class OpKind : std::uint8_t { SEND, RECV, CONNECT, LISTEN, DISCONNECT, INSPECT };

enum OpFlags : std::uint8_t {
    kOpInUcxCall = 1u << 0,    // the UCX call that posts it has not returned yet
    kOpCompleted = 1u << 1,    // result is final
    kOpTracked = 1u << 2,      // linked in the engine's in-flight registry
    kOpCancelling = 1u << 3,   // ucp_request_cancel issued; result override below applies
};

/// State of one operation. It lives inside its awaiter (so inside the awaiting
/// coroutine's frame): no heap allocation per operation. UCX's user_data points here.
struct Operation : ReadyNode, CancelTarget {
    Operation() noexcept { cancel = &Operation::request_cancel; }
    Operation(const Operation&) = delete;
    Operation& operator=(const Operation&) = delete;
    /// Copies what describes the operation (an operation is moved only before it starts).
    void take(const Operation& o) noexcept {
        engine = o.engine;
        on_ready = o.on_ready;
        buffer = o.buffer;
        size = o.size;
        tag = o.tag;
        tag_mask = o.tag_mask;
        result = o.result;
        kind = o.kind;
        flags = o.flags;
        port = o.port;
        timeout = o.timeout;
        memh = o.memh;
        cancel_request.store(o.cancel_request.load(std::memory_order_relaxed), std::memory_order_relaxed);
    }
    /// CancelTarget: asks the engine (from any thread) to end this operation with `result`.
    static void request_cancel(CancelTarget* self, std::uint8_t result) noexcept;

    Engine* engine = nullptr;
    Connection* conn = nullptr;              // connection it was posted on
    Operation* reg_prev = nullptr;           // engine registry of in-flight operations
    Operation* reg_next = nullptr;
    Operation* next_submit = nullptr;        // cross-thread submission queue
    void* request = nullptr;                 // pending UCX request, if any
    std::coroutine_handle<> waiter{};        // coroutine to resume on completion
    const void* buffer = nullptr;
    std::size_t size = 0;
    std::uint64_t tag = 0;
    std::uint64_t tag_mask = ~std::uint64_t{0};
    RdmaOpResult result{};
    RdmaResult cancel_result = RdmaResult::CANCELLED;  // reported if UCX cancels it
    const char* cancel_detail = nullptr;
    OpKind kind = OpKind::SEND;
    std::uint8_t flags = 0;
    std::uint16_t port = 0;                  // connect / listen
    const char* host = nullptr;              // connect: points into the awaiter's string
    std::chrono::nanoseconds timeout{0};     // per-operation deadline (0 = none)
    TimerNode deadline_timer;
    std::atomic<std::uint8_t> cancel_request{0};  // RdmaResult asked for by another thread
    void* memh = nullptr;                    // ucp_mem_h of pre-registered memory, if any
    std::int64_t sample_t0 = 0;              // metrics: start time (ns) of a sampled op
    std::int64_t posted_at_ms = 0;           // coarse time it became pending (in-flight dump)

    void fail_now(RdmaResult r, const char* why) noexcept {
        result.result = r;
        result.detail = why;
        flags |= kOpCompleted;
    }
};

}  // namespace btsp::detail
