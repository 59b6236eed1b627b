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
/// Neither field is written when one is built (that is on every operation's path):
/// push_ready() sets next_ready, and the awaiter sets waiter before the operation starts.
/// (A union member, because coroutine_handle's constructor writes null.)
struct ReadyNode {
    ReadyNode() noexcept {}
    ReadyNode* next_ready;
    union {
        std::coroutine_handle<> waiter;  // coroutine to resume on completion
    };
};

/// A deadline in an engine's timer list (intrusive, sorted by deadline). Only `armed`
/// needs a value before arm_timer() sets the rest. An Operation builds its own with
/// NoInit (it sets `armed` when it gets a timeout), so that building an operation does
/// not write a cache line that only timeouts use.
struct TimerNode {
    struct NoInit {};
    TimerNode() noexcept : deadline(), fire(nullptr), ctx(nullptr), armed(false) {}
    explicit TimerNode(NoInit) noexcept {}
    union {  // a union member is not built by NoInit (time_point's constructor writes zero)
        std::chrono::steady_clock::time_point deadline;
    };
    TimerNode* prev;
    TimerNode* next;
    void (*fire)(TimerNode*) noexcept;
    void* ctx;  // what the timer belongs to
    bool armed;
};

enum class OpKind : std::uint8_t { SEND, RECV, CONNECT, LISTEN, DISCONNECT, INSPECT };

enum OpFlags : std::uint8_t {
    kOpInUcxCall = 1u << 0,    // the UCX call that posts it has not returned yet
    kOpCompleted = 1u << 1,    // result is final
    kOpTracked = 1u << 2,      // linked in the engine's in-flight registry
    kOpCancelling = 1u << 3,   // ucp_request_cancel issued; result override below applies
    kOpSampled = 1u << 4,      // sample_t0 holds the start time of a metrics sample
    kOpOwnRequest = 1u << 5,   // `request` is a block of the engine's request pool, not UCX's
};

/// What the awaiter asked for beyond the plain operation (set before it starts, never
/// changed by the engine): the hot path tests one byte instead of reading cold fields.
enum OpOptions : std::uint8_t {
    kOptTimeout = 1u << 0,  // timeout > 0
    kOptMemh = 1u << 1,     // memh set
    kOptExtras = 1u << 2,   // the awaiter holds a host name or a stop token (RdmaAwaitable)
};

/// State of one operation. It lives inside its awaiter (so inside the awaiting
/// coroutine's frame): no heap allocation per operation. UCX's user_data points here.
/// Building one is on every operation's path, so only what is read before the engine
/// writes it has a default; the rest is set where the operation goes (see each field).
///
/// Layout: with many operations in flight, every one of them is a few cache lines the
/// core touches per message, and beyond ~64 in flight they no longer all fit in L1. The
/// fields a send or receive touches come first (152 bytes, three cache lines); what only
/// timeouts, cancellation, connects and cross-thread submission use comes after them and
/// is never loaded on the common path.
struct Operation : ReadyNode {
    Operation() noexcept {}
    /// A send, connect, listen, ...: no tag mask (only receives read it).
    Operation(Engine* e, OpKind k, const void* data, std::size_t n, std::uint64_t t) noexcept
        : engine(e), kind(k), buffer(data), size(n), tag(t) {}
    /// A receive.
    Operation(Engine* e, const void* data, std::size_t n, std::uint64_t t, std::uint64_t mask) noexcept
        : engine(e), kind(OpKind::RECV), buffer(data), size(n), tag(t), tag_mask(mask) {}
    Operation(const Operation&) = delete;
    Operation& operator=(const Operation&) = delete;
    /// Copies what describes the operation (an operation is moved only before it starts,
    /// so there is no result to copy yet).
    void take(const Operation& o) noexcept {
        engine = o.engine;
        buffer = o.buffer;
        size = o.size;
        tag = o.tag;
        kind = o.kind;
        flags = o.flags;
        opts = o.opts;
        if (kind == OpKind::RECV) tag_mask = o.tag_mask;
        if (kind == OpKind::CONNECT || kind == OpKind::LISTEN) port = o.port;
        if (opts & kOptTimeout) set_timeout(o.timeout);
        if (opts & kOptMemh) memh = o.memh;
        cancel_request.store(o.cancel_request.load(std::memory_order_relaxed), std::memory_order_relaxed);
    }
    /// Asks the engine (from any thread) to end this operation with `result` (a stop_token's
    /// callback). A task's cancellation does not come through here: the engine finds the
    /// operations of a cancelled task through `slot` (CancelSlot::cancel).
    static void request_cancel(Operation* op, std::uint8_t result) noexcept;

    // ---- hot: every send and receive ----
    // Line 0 (with the ReadyNode base): everything a completion callback reads.
    Engine* engine = nullptr;                // set when the awaiter is built
    Operation* reg_prev;                     // engine registry of in-flight operations (track)
    Operation* reg_next;
    Connection* conn;                        // connection it was posted on (post)
    // The awaiting task's cancellation slot (nullptr outside an RdmaTask): set once the
    // operation is pending (or takes the general path), read by the engine's cancel scan.
    CancelSlot* slot;
    OpKind kind = OpKind::SEND;
    std::uint8_t flags = 0;                  // OpFlags
    std::uint8_t opts = 0;                   // OpOptions
    std::atomic<std::uint8_t> cancel_request{0};  // RdmaResult asked for by another thread
    // Lines 1-2: what the completion writes and the awaiter reads, and the arguments.
    void* request;                           // pending UCX request (set before kOpTracked)
    // Written whole when the operation ends (set_success, finish, or the general path's
    // reset in start_general), never at construction: a union member is not built.
    union {
        RdmaOpResult result;
    };
    std::int64_t posted_at_ms;               // coarse time it became pending (track)
    const void* buffer = nullptr;
    std::size_t size = 0;
    std::uint64_t tag = 0;
    std::uint64_t tag_mask;                  // receives only (set when built)

    // ---- cold: read only when a flag above says so, or off the data path ----
    std::int64_t sample_t0;                  // metrics: start time (ns), valid with kOpSampled
    std::chrono::nanoseconds timeout;        // per-operation deadline, with kOptTimeout
    void* memh;                              // ucp_mem_h of pre-registered memory, with kOptMemh
    const char* host;                        // connect: the host name (set by connect())
    std::uint16_t port;                      // connect / listen (set by connect(), listen())
    RdmaResult cancel_result;                // set with kOpCancelling: reported if UCX cancels it
    const char* cancel_detail;               // set with kOpCancelling
    Operation* next_submit;                  // cross-thread submission queue (submit)
    TimerNode deadline_timer{TimerNode::NoInit{}};  // valid with kOptTimeout

    void set_timeout(std::chrono::nanoseconds d) noexcept {
        if (d.count() > 0) {
            timeout = d;
            opts |= kOptTimeout;
            deadline_timer.armed = false;
        } else {
            opts &= static_cast<std::uint8_t>(~kOptTimeout);
        }
    }
    void set_memh(void* m) noexcept {
        memh = m;
        if (m != nullptr) opts |= kOptMemh;
        else opts &= static_cast<std::uint8_t>(~kOptMemh);
    }

    /// Ends it before it reached UCX (result reset by start_general, status may be set).
    void fail_now(RdmaResult r, const char* why) noexcept {
        result.result = r;
        result.detail = why;
        flags |= kOpCompleted;
    }
    /// The metrics sample's start time, or 0 if this operation is not sampled.
    std::int64_t sample() const noexcept { return (flags & kOpSampled) ? sample_t0 : 0; }
};

/// Starts `op` (its waiter is set) on its engine, from any thread. Returns true if the
/// caller must suspend (the operation completes later on the progress thread), false if
/// it already completed (failed checks included).
/// `slot` is the awaiting RdmaTask's cancellation slot, or nullptr: an operation of a task
/// that is (or gets) cancelled ends with the slot's result.
bool start_operation(Operation* op, CancelSlot* slot) noexcept;

}  // namespace btsp::detail
