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
/// or a state waiter. Linked into the engine's ready list without allocation; the
/// progress thread resumes `waiter` outside any UCX callback.
struct ReadyNode {
    ReadyNode* next_ready = nullptr;
    std::coroutine_handle<> waiter{};  // coroutine to resume on completion
};

/// A deadline in an engine's timer list (intrusive, sorted by deadline). Only `armed`
/// needs a value before arm_timer() sets the rest (an Operation builds one per use).
struct TimerNode {
    std::chrono::steady_clock::time_point deadline;
    TimerNode* prev;
    TimerNode* next;
    void (*fire)(TimerNode*) noexcept = nullptr;
    void* ctx = nullptr;  // what the timer belongs to
    bool armed = false;
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
/// Building one is on every operation's path, so only what is read before the engine
/// writes it has a default; the rest is set where the operation goes (see each field).
struct Operation : ReadyNode, CancelTarget {
    Operation() noexcept { cancel = &Operation::request_cancel; }
    Operation(Engine* e, OpKind k, const void* data, std::size_t n, std::uint64_t t,
              std::uint64_t mask) noexcept
        : engine(e), buffer(data), size(n), tag(t), tag_mask(mask), kind(k) {
        cancel = &Operation::request_cancel;
    }
    Operation(const Operation&) = delete;
    Operation& operator=(const Operation&) = delete;
    /// Copies what describes the operation (an operation is moved only before it starts).
    void take(const Operation& o) noexcept {
        engine = o.engine;
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

    // What it is (set when the awaiter is built).
    Engine* engine = nullptr;
    const void* buffer = nullptr;
    std::size_t size = 0;
    std::uint64_t tag = 0;
    std::uint64_t tag_mask = ~std::uint64_t{0};
    std::chrono::nanoseconds timeout{0};     // per-operation deadline (0 = none)
    void* memh = nullptr;                    // ucp_mem_h of pre-registered memory, if any
    const char* host = nullptr;              // connect: the host name the awaiter holds
    std::uint16_t port = 0;                  // connect / listen
    OpKind kind = OpKind::SEND;
    std::uint8_t flags = 0;
    std::atomic<std::uint8_t> cancel_request{0};  // RdmaResult asked for by another thread
    RdmaResult cancel_result;                // set with kOpCancelling: reported if UCX cancels it
    RdmaOpResult result{};

    // Where it is (set by the engine when it posts or queues it).
    Connection* conn;                        // connection it was posted on (post)
    void* request;                           // pending UCX request (set before kOpTracked)
    Operation* reg_prev;                     // engine registry of in-flight operations (track)
    Operation* reg_next;
    Operation* next_submit;                  // cross-thread submission queue (submit)
    const char* cancel_detail;               // set with kOpCancelling
    std::int64_t sample_t0;                  // metrics: start time (ns) of a sampled op, else 0 (begin_post)
    std::int64_t posted_at_ms;               // coarse time it became pending (track)
    TimerNode deadline_timer;

    void fail_now(RdmaResult r, const char* why) noexcept {
        result.result = r;
        result.detail = why;
        flags |= kOpCompleted;
    }
};

/// Starts `op` (its waiter is set) on its engine, from any thread. Returns true if the
/// caller must suspend (the operation completes later on the progress thread), false if
/// it already completed (failed checks included).
bool start_operation(Operation* op) noexcept;

}  // namespace btsp::detail
