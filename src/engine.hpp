// The progress engine: owns one UCX worker, runs the progress loop on its thread,
// posts operations, completes them, and hands the worker over when user code blocks.
#pragma once

#include "address_filter.hpp"
#include "connection.hpp"
#include "handshake.hpp"

#include <btsp/detail/operation.hpp>
#include <btsp/manager.hpp>
#include <btsp/metrics.hpp>
#include <btsp/options.hpp>
#include <btsp/types.hpp>

#include <ucp/api/ucp.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <array>
#include <cstddef>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace btsp::detail {

/// A worker-level receive of one kind of control message, reposted after each message.
struct CtrlRecv {
    explicit CtrlRecv(std::uint64_t t) noexcept : tag(t) {}
    std::uint64_t tag;
    std::vector<std::uint8_t> buf;
    void* req = nullptr;
    bool done = false;  // completed; waiting for process_deferred()
    ucs_status_t status = UCS_OK;
    std::size_t length = 0;
};

/// Counters of one operation kind. Written by the owning progress thread only (plain
/// relaxed load+store: no locked instruction on the hot path); read by anyone. The number
/// completed is the sum of by_result (one store less per operation).
struct KindCounters {
    std::atomic<std::uint64_t> bytes{0};
    std::array<std::atomic<std::uint64_t>, 5> by_result{};
    std::array<std::atomic<std::uint64_t>, LatencyHistogram::kBuckets> latency{};
    std::atomic<std::uint64_t> lat_count{0};
    std::atomic<std::uint64_t> lat_sum{0};
    std::atomic<std::uint64_t> lat_max{0};
    std::array<std::atomic<std::uint64_t>, 5> early{};  // failed before reaching the engine (any thread)
};

inline void bump(std::atomic<std::uint64_t>& a, std::uint64_t d = 1) noexcept {
    a.store(a.load(std::memory_order_relaxed) + d, std::memory_order_relaxed);
}

/// Per-thread identity of an engine thread: which engine, which ownership generation,
/// and (while it owns the worker) what it is doing: in the loop, in user code, or in a
/// library call from user code. `mode` is written by its thread only (plain stores; see
/// "progress hand-off" in docs/architecture.md) and read by the hand-off watchdog.
struct ThreadCtx {
    Engine* engine = nullptr;
    std::uint64_t gen = 0;
    std::atomic<std::uint8_t> mode{0};
};

class Engine : public std::enable_shared_from_this<Engine> {
public:
    explicit Engine(const ManagerOptions& options);
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    // ---- lifecycle (manager API) -----------------------------------------------
    bool initialize(bool server_mode, std::uint16_t port);
    void shutdown();
    std::string last_error() const;

    // ---- operations ----------------------------------------------------------------
    /// Starts `op` (its waiter is set). Returns true if the caller must suspend (the op
    /// completes later on the progress thread), false if it already completed. Defined
    /// inline in engine.cpp, where start_operation() is its only caller.
    bool start(Operation* op, CancelSlot* slot) noexcept;
    /// Pre-start check: fails `op` at once if the manager cannot run it at all.
    void precheck(Operation* op) const noexcept;
    /// The cheap part of precheck() for a send or receive on the owning thread: true if
    /// nothing in its arguments needs precheck() (the engine state is checked by post()).
    bool data_args_ok(const Operation* op) const noexcept {
        return op->size <= opts_.max_message_size && (op->buffer != nullptr || op->size == 0) &&
               (op->kind == OpKind::RECV || !is_reserved_tag(op->tag));
    }

    // ---- metrics ---------------------------------------------------------------------
    MetricsSnapshot metrics() const noexcept;
    /// Records an operation that failed before reaching the engine (any thread).
    void record_early(const Operation* op) noexcept;
    /// Lists the operations in flight (progress thread only; see CoroutineRdmaManager).
    void inspect(Operation* op) noexcept;

    // ---- raw worker access (WorkerGuard) -------------------------------------------
    /// Claims the worker for user code on its owning thread; returns the generation or 0.
    std::uint64_t claim_worker() noexcept;
    void release_worker(std::uint64_t gen) noexcept;

    // ---- cancellation (any thread) ---------------------------------------------------
    /// Asks the progress thread to look for operations with a cancel request.
    void request_cancel_scan() noexcept;

    // ---- state -------------------------------------------------------------------
    RdmaState state() const noexcept;
    bool is_running() const noexcept { return running_.load(std::memory_order_acquire); }
    bool state_matches(RdmaState target) const noexcept;
    /// Registers a state waiter. Returns false (with w->reached_ set) if it need not wait.
    bool add_waiter(StateChangeAwaitable* w) noexcept;
    std::uint16_t listening_port() const noexcept { return listen_port_.load(std::memory_order_relaxed); }
    std::size_t connection_count() const noexcept { return live_count_.load(std::memory_order_relaxed); }
    ucp_context_h context() const noexcept { return context_; }
    std::shared_ptr<ucp_context> shared_context() const { return context_owner_; }
    ucp_worker_h worker() const noexcept { return worker_; }
    ucp_ep_h primary_endpoint() const noexcept { return primary_ep_.load(std::memory_order_acquire); }
    const ManagerOptions& options() const noexcept { return opts_; }

    // ---- used by connection.cpp and the UCX callbacks (progress thread only) ---------
    void complete(Operation* op) noexcept;
    void record(const Operation* op) noexcept;
    KindCounters* counters_for(OpKind k) noexcept;
    void push_ready(ReadyNode* node) noexcept;
    void track(Operation* op) noexcept;
    void untrack(Operation* op) noexcept;
    template <OpKind K> void track_kind(Operation* op) noexcept;
    template <OpKind K> void untrack_kind(Operation* op) noexcept;
    void arm_timer(TimerNode* t, std::chrono::steady_clock::time_point deadline) noexcept;
    void disarm_timer(TimerNode* t) noexcept;
    void set_base_state(RdmaState s) noexcept;
    RdmaState idle_state() const noexcept { return listener_ ? RdmaState::LISTENING : RdmaState::IDLE; }

    // connection.cpp
    void start_connect(Operation* op) noexcept;
    void start_listen(Operation* op) noexcept;
    void start_disconnect(Operation* op) noexcept;
    void on_conn_request(ucp_conn_request_h req) noexcept;
    void on_connection_error(Connection* c, ucs_status_t status) noexcept;
    void on_endpoint_error(Connection* c, ucp_ep_h ep, ucs_status_t status) noexcept;
    void retire_sock(Connection* c) noexcept;
    void on_sock_flushed(Connection* c, ucs_status_t status) noexcept;
    void on_fast_flushed(Connection* c, ucs_status_t status) noexcept;
    void on_offer_received(Connection* c) noexcept;
    void on_connect_timeout(Connection* c) noexcept;
    void abort_connect(Connection* c, RdmaResult r, ucs_status_t status, const char* why) noexcept;
    void on_grace_expired(Connection* c) noexcept;
    void on_close_done(Connection* c) noexcept;
    void on_close_flushed(Connection* c, bool fast) noexcept;
    void close_flushed(Connection* c) noexcept;
    void begin_close(Connection* c, bool fast, bool graceful) noexcept;
    void process_deferred() noexcept;
    void handle_offer(Connection* c) noexcept;
    void handle_accept_msg() noexcept;
    void handle_bye_msg() noexcept;
    void handle_ping_msg() noexcept;
    void heartbeat_tick() noexcept;
    bool send_ctrl_on(Connection* c, ucp_ep_h ep, CtrlType type, std::vector<std::uint8_t>& buf,
                      bool* pending_flag) noexcept;
    void post_ctrl_recv(struct CtrlRecv& r) noexcept;
    void send_bye(Connection* c) noexcept;
    bool send_ctrl(Connection* c, CtrlType type) noexcept;
    void become_open(Connection* c) noexcept;
    void flush_fast(Connection* c) noexcept;
    void flush_endpoint(Connection* c, ucp_ep_h ep, ucp_send_nbx_callback_t cb,
                        void (Engine::*done)(Connection*, ucs_status_t) noexcept) noexcept;
    void link_connection(Connection* c) noexcept;
    void defer(Connection* c) noexcept;
    void defer_connection(Connection* c) noexcept;  // for UCX callbacks
    void arm_conn_timer(TimerNode* t, Connection* c, void (*fire)(TimerNode*) noexcept,
                        std::chrono::milliseconds after) noexcept;
    void finish(Operation* op, ucs_status_t status, std::size_t length, std::uint64_t sender_tag) noexcept;
    void close_connection(Connection* c, bool force) noexcept;
    void close_endpoints(Connection* c) noexcept;
    void maybe_free(Connection* c) noexcept;
    void accept(ucp_conn_request_h req) noexcept;
    void add_live(Connection* c) noexcept;
    void remove_live(Connection* c) noexcept;
    void endpoint_created() noexcept { bump(eps_created_); }
    void endpoint_closed() noexcept { bump(eps_closed_); }
    /// Refreshes the loop's cached clock (no clock read per operation).
    void set_coarse_now(std::chrono::steady_clock::time_point now) noexcept {
        coarse_ms_ = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
    }

private:
    friend class ::btsp::CoroutineRdmaManager;

    enum : std::uint8_t { kLoop = 0, kUser = 1, kLib = 2 };
    // The owner switching mode: true while it still owns the worker (a plain store, a
    // compiler barrier and two loads when no hand-off is being decided).
    bool owner_enter(ThreadCtx* c, std::uint8_t mode) noexcept;
    bool owner_wait_decision(ThreadCtx* c) noexcept;

    // UCX setup / teardown
    bool create_worker(bool with_shm_eh, std::string& err) noexcept;
    bool create_listener(std::uint16_t port, std::string& err) noexcept;
    void destroy_listener() noexcept;
    void teardown() noexcept;

    // threads
    void spawn_thread(void (*fn)(std::shared_ptr<Engine>, std::uint64_t), std::uint64_t gen);
    static void owner_thread_main(std::shared_ptr<Engine> self, std::uint64_t gen);
    static void watchdog_thread_main(std::shared_ptr<Engine> self, std::uint64_t gen);
    bool owner_loop(ThreadCtx* ctx) noexcept;  // true if the worker was taken over
    bool watchdog_loop(ThreadCtx* ctx) noexcept;
    void thread_exit() noexcept;
    bool run_ready(ThreadCtx* ctx) noexcept;
    void idle_wait() noexcept;
    void wake() noexcept;
    bool run_timers() noexcept;

    // operations (the hot ones are inline in engine.cpp)
    bool start_general(Operation* op, CancelSlot* slot) noexcept;
    bool start_owned(Operation* op) noexcept;
    bool submit(Operation* op) noexcept;
    std::int64_t sample_start() noexcept;
    static std::int64_t sample_clock() noexcept;
    const ucp_request_param_t* post_params(Operation* op, ucp_request_param_t& base,
                                           ucp_request_param_t& local) noexcept;
    bool send_owned(Operation* op, Connection* conn, CancelSlot* slot) noexcept;
    bool send_posted(Operation* op, Connection* conn, ucs_status_ptr_t sp, CancelSlot* slot,
                     std::int64_t t0) noexcept;
    template <bool Poll>  // Poll: poll_inline
    bool recv_owned(Operation* op, Connection* conn, CancelSlot* slot) noexcept;
    bool recv_posted(Operation* op, ucs_status_ptr_t sp) noexcept;
    bool poll_inline(Operation* op) noexcept;
    bool loop_has_work() const noexcept;
    bool other_threads_want_loop() const noexcept;
    bool after_post(Operation* op) noexcept;
    void record_ok(KindCounters& k, std::size_t bytes, std::int64_t sample_t0) noexcept;
    template <OpKind K> void complete_ok(Operation* op, std::size_t bytes, std::uint64_t sender_tag) noexcept;
    void post(Operation* op) noexcept;
    void post_control(Operation* op) noexcept;
    void post_refused(Operation* op) noexcept;
    void arm_deadline(Operation* op) noexcept;
    void record_latency(KindCounters* k, std::int64_t t0) noexcept;
    bool drain_submissions() noexcept;
    void cancel_op(Operation* op, RdmaResult r, const char* why) noexcept;
    void cancel_pending(Operation* op, RdmaResult r, const char* why) noexcept;
    void process_cancels() noexcept;
    Connection* primary() const noexcept { return live_head_; }
    void notify_waiters(bool shutting_down) noexcept;

    static void send_callback(void* request, ucs_status_t status, void* user_data) noexcept;
    static void recv_callback(void* request, ucs_status_t status, const ucp_tag_recv_info_t* info,
                              void* user_data) noexcept;

    ManagerOptions opts_;
    AddressFilter allowed_;

    // UCX resources (progress thread after initialize)
    ucp_context_h context_ = nullptr;
    std::shared_ptr<ucp_context> context_owner_;  // ucp_cleanup when the last holder lets go
    ucp_worker_h worker_ = nullptr;
    ucp_listener_h listener_ = nullptr;
    int worker_fd_ = -1;
    int epoll_fd_ = -1;
    int wake_fd_ = -1;  // eventfd: cross-thread wake-ups

    // state visible to every thread
    std::atomic<bool> initialized_{false};
    std::atomic<bool> running_{false};
    std::atomic<bool> started_{false};
    std::atomic<std::uint8_t> base_state_{static_cast<std::uint8_t>(RdmaState::IDLE)};
    std::atomic<std::uint32_t> sends_in_flight_{0};  // written by the owner only
    std::atomic<std::uint32_t> recvs_in_flight_{0};  // written by the owner only
    std::atomic<std::size_t> live_count_{0};
    std::atomic<bool> had_connection_{false};

    // metrics (see KindCounters)
    KindCounters send_stats_;
    KindCounters recv_stats_;
    KindCounters connect_stats_;
    std::atomic<std::uint64_t> conns_opened_{0};
    std::atomic<std::uint64_t> conns_lost_{0};
    std::atomic<std::uint64_t> conns_rejected_{0};
    std::atomic<std::uint64_t> eps_created_{0};  // ucp_ep_create successes (owner only)
    std::atomic<std::uint64_t> eps_closed_{0};   // ucp_ep_close_nbx calls (owner only)
    std::atomic<std::uint64_t> recvs_polled_{0};  // completed in poll_inline (owner only)
    std::atomic<std::uint64_t> handoffs_{0};      // progress hand-offs (watchdog only)
    // Parameters of every send / receive, built once; post_params() sets user_data.
    ucp_request_param_t send_param_{};
    ucp_request_param_t recv_param_{};
    // Request memory for receives (UCP_OP_ATTR_FIELD_REQUEST): blocks of ucx_request_size_
    // bytes handed to UCX, each block's pointer just past it, recycled through a free
    // list. A receive then skips UCX's request pool and ucp_request_free(). Chunks grow
    // with the receives in flight and are freed after the worker (~Engine).
    std::size_t ucx_request_size_ = 0;  // 0 = not available: UCX allocates
    std::size_t request_stride_ = 0;
    void* request_free_ = nullptr;
    std::vector<void*> request_chunks_;
    void* take_request() noexcept;
    void give_request(void* request) noexcept {
        std::memcpy(static_cast<char*>(request) - ucx_request_size_, &request_free_, sizeof(void*));
        request_free_ = request;
    }
    bool grow_requests() noexcept;
    std::atomic<std::uint16_t> listen_port_{0};
    std::atomic<ucp_ep_h> primary_ep_{nullptr};

    // ownership of the worker (see docs/architecture.md, "progress hand-off")
    std::atomic<ThreadCtx*> owner_{nullptr};    // written by the owner at start, then the watchdog
    std::atomic<std::uint8_t> takeover_{0};     // 1 while the watchdog decides a hand-off
    // Resumes plus operations started from user code (owner only): a coroutine that keeps
    // doing either is busy, not blocked, and is not handed off.
    std::atomic<std::uint64_t> activity_{0};
    std::atomic<int> owner_tid_{0};  // kernel tid of the owning thread (for the watchdog)

    // cross-thread submission (Treiber stack, drained whole) and wake-up
    std::atomic<Operation*> submit_head_{nullptr};
    std::atomic<bool> sleeping_{false};
    std::atomic<bool> stop_requested_{false};
    std::atomic<bool> cancel_scan_{false};
    std::atomic<int> submitters_{0};

    // progress-thread-only data
    ReadyNode* ready_head_ = nullptr;
    ReadyNode* ready_tail_ = nullptr;
    Operation* tracked_head_ = nullptr;
    TimerNode* timers_head_ = nullptr;
    TimerNode* timers_tail_ = nullptr;
    Connection* all_head_ = nullptr;
    Connection* live_head_ = nullptr;
    Connection* live_tail_ = nullptr;
    Connection* deferred_head_ = nullptr;
    // handshake (see handshake.hpp)
    ucp_address_t* local_address_ = nullptr;
    std::size_t local_address_length_ = 0;
    std::uint64_t token_seed_ = 0;
    CtrlRecv accept_recv_{kTagAccept};  // server: clients' ACCEPTs
    CtrlRecv bye_recv_{kTagBye};        // peers' BYEs
    CtrlRecv ping_recv_{kTagPing};      // peers' heartbeats
    TimerNode heartbeat_timer_;
    std::vector<ucp_conn_request_h> pending_requests_;  // answered after progress returns
    std::uint64_t next_conn_id_ = 1;
    bool tearing_down_ = false;
    std::atomic<int> blocked_threads_{0};
    bool torn_down_ = false;
    std::chrono::steady_clock::time_point last_activity_{};
    std::int64_t coarse_ms_ = 0;  // steady clock in ms, refreshed by the loop (set_coarse_now)
    std::uint32_t idle_iterations_ = 0;
    std::uint32_t timer_check_ = 0;
    bool woke_up_ = false;  // run the timers on the loop's next iteration
    // Progress calls a just-posted receive may make itself before its coroutine suspends
    // (ManagerOptions::recv_poll; 0 in BLOCKING mode).
    std::uint32_t recv_poll_ = 0;

    // state waiters
    std::mutex waiters_mutex_;
    StateChangeAwaitable* waiters_head_ = nullptr;
    std::atomic<int> waiter_count_{0};

    // threads
    std::mutex threads_mutex_;
    std::condition_variable threads_cv_;
    int live_threads_ = 0;
    int total_threads_ = 0;
    bool watchdog_stop_ = false;
    std::condition_variable watchdog_cv_;
    std::atomic<bool> loop_exited_{false};

    mutable std::mutex error_mutex_;
    std::string last_error_;

};

/// The engine thread context of the calling thread, or nullptr.
ThreadCtx* current_thread_ctx() noexcept;

/// The result a pending or starting operation was cancelled with (0 = not cancelled): by a
/// stop_token (its own cancel_request) or through its task's slot.
inline std::uint8_t cancel_result(const Operation* op) noexcept {
    const std::uint8_t r = op->cancel_request.load(std::memory_order_acquire);
    if (r != 0 || op->slot == nullptr) return r;
    return op->slot->cancelled();
}

// ---- hot-path helpers, inline (every operation goes through them) ----------------------

/// Writes a successful result with two 16-byte stores and one 8-byte store, the widths the
/// awaiting coroutine copies an RdmaOpResult with. After an immediate completion that copy
/// follows within a few dozen instructions; narrow field stores just before a wide load
/// defeat store-to-load forwarding, and the load then waits for the stores to reach the
/// cache (perf showed it as the hottest instruction of a send loop).
inline void set_success(RdmaOpResult& r, std::size_t bytes, std::uint64_t sender_tag) noexcept {
#if defined(__SSE2__)
    static_assert(offsetof(RdmaOpResult, result) == 0 && offsetof(RdmaOpResult, bytes_transferred) == 8 &&
                  offsetof(RdmaOpResult, status) == 16 && offsetof(RdmaOpResult, sender_tag) == 24 &&
                  offsetof(RdmaOpResult, detail) == 32 && sizeof(RdmaOpResult) == 40);
    auto* v = reinterpret_cast<__m128i*>(&r);
    _mm_storeu_si128(v, _mm_set_epi64x(static_cast<long long>(bytes),
                                       static_cast<long long>(RdmaResult::SUCCESS)));
    _mm_storeu_si128(v + 1, _mm_set_epi64x(static_cast<long long>(sender_tag), 0));  // status UCS_OK
    r.detail = nullptr;
#else
    r = RdmaOpResult{RdmaResult::SUCCESS, bytes, 0, sender_tag, nullptr};
#endif
}

inline bool Engine::owner_enter(ThreadCtx* c, std::uint8_t mode) noexcept {
    c->mode.store(mode, std::memory_order_relaxed);
    light_fence();
    if (takeover_.load(std::memory_order_acquire) == 0 && owner_.load(std::memory_order_relaxed) == c) [[likely]]
        return true;
    return owner_wait_decision(c);
}

inline KindCounters* Engine::counters_for(OpKind k) noexcept {
    switch (k) {
        case OpKind::SEND: return &send_stats_;
        case OpKind::RECV: return &recv_stats_;
        case OpKind::CONNECT: return &connect_stats_;
        default: return nullptr;
    }
}

inline void Engine::record(const Operation* op) noexcept {
    KindCounters* k = counters_for(op->kind);
    if (k == nullptr) return;
    const auto r = static_cast<std::size_t>(op->result.result);
    if (r < k->by_result.size()) [[likely]] bump(k->by_result[r]);
    if (op->result.result == RdmaResult::SUCCESS) [[likely]] bump(k->bytes, op->result.bytes_transferred);
    if (op->flags & kOpSampled) [[unlikely]] record_latency(k, op->sample_t0);
}

inline void Engine::record_ok(KindCounters& k, std::size_t bytes, std::int64_t sample_t0) noexcept {
    bump(k.by_result[static_cast<std::size_t>(RdmaResult::SUCCESS)]);
    bump(k.bytes, bytes);
    if (sample_t0 != 0) [[unlikely]] record_latency(&k, sample_t0);
}

inline void Engine::push_ready(ReadyNode* node) noexcept {
    node->next_ready = nullptr;
    if (ready_tail_) ready_tail_->next_ready = node; else ready_head_ = node;
    ready_tail_ = node;
}

inline void Engine::complete(Operation* op) noexcept {
    op->flags |= kOpCompleted;
    if ((op->flags & kOpInUcxCall) == 0) {
        record(op);
        push_ready(op);
    }
}

// Registry of what is pending in UCX (in-flight dump, cancellation, teardown), and the
// counts behind SENDING / RECEIVING. K is the operation's kind where the caller knows it.
template <OpKind K>
inline void Engine::track_kind(Operation* op) noexcept {
    op->flags |= kOpTracked;
    op->posted_at_ms = coarse_ms_;
    op->reg_prev = nullptr;
    op->reg_next = tracked_head_;
    if (tracked_head_) tracked_head_->reg_prev = op;
    tracked_head_ = op;
    Connection* conn = op->conn;
    if constexpr (K == OpKind::SEND || K == OpKind::RECV) {
        std::atomic<std::uint32_t>& in_flight = K == OpKind::SEND ? sends_in_flight_ : recvs_in_flight_;
        if constexpr (K == OpKind::SEND) {
            ++conn->tracked_ops;  // a send always has its connection
            ++conn->pending_sends;
        } else if (conn) {
            ++conn->tracked_ops;  // a receive may have none (a message left by a gone peer)
        }
        const auto n = in_flight.load(std::memory_order_relaxed);
        in_flight.store(n + 1, std::memory_order_relaxed);
        // SENDING / RECEIVING begins: tell the state waiters.
        if (n == 0 && waiter_count_.load(std::memory_order_relaxed) != 0) [[unlikely]] notify_waiters(false);
    } else {
        if (conn) ++conn->tracked_ops;
    }
}

template <OpKind K>
inline void Engine::untrack_kind(Operation* op) noexcept {
    op->flags &= static_cast<std::uint8_t>(~kOpTracked);
    if ((op->opts & kOptTimeout) && op->deadline_timer.armed) [[unlikely]] disarm_timer(&op->deadline_timer);
    if (op->reg_prev) op->reg_prev->reg_next = op->reg_next; else tracked_head_ = op->reg_next;
    if (op->reg_next) op->reg_next->reg_prev = op->reg_prev;
    Connection* conn = op->conn;
    if (conn) {
        if constexpr (K == OpKind::SEND) --conn->pending_sends;
        --conn->tracked_ops;
        if (conn->phase == ConnPhase::CLOSED) [[unlikely]] maybe_free(conn);
    }
    if constexpr (K == OpKind::SEND || K == OpKind::RECV) {
        std::atomic<std::uint32_t>& in_flight = K == OpKind::SEND ? sends_in_flight_ : recvs_in_flight_;
        const auto n = in_flight.load(std::memory_order_relaxed);
        in_flight.store(n - 1, std::memory_order_relaxed);
        if (n == 1 && waiter_count_.load(std::memory_order_relaxed) != 0) [[unlikely]] notify_waiters(false);
    }
}

inline void Engine::track(Operation* op) noexcept {
    switch (op->kind) {
        case OpKind::SEND: track_kind<OpKind::SEND>(op); break;
        case OpKind::RECV: track_kind<OpKind::RECV>(op); break;
        default: track_kind<OpKind::CONNECT>(op); break;
    }
}

inline void Engine::untrack(Operation* op) noexcept {
    switch (op->kind) {
        case OpKind::SEND: untrack_kind<OpKind::SEND>(op); break;
        case OpKind::RECV: untrack_kind<OpKind::RECV>(op); break;
        default: untrack_kind<OpKind::CONNECT>(op); break;
    }
}

}  // namespace btsp::detail
