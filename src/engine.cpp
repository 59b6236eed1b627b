// The progress engine: worker ownership, the progress loop, hand-off, operation posting
// and completion. Connection handling (connect/accept/failure/close) is in connection.cpp.
#include "engine.hpp"

#include "config_parse.hpp"
#include "status.hpp"

#include <btsp/log.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

namespace btsp::detail {
namespace {

// initial-exec: one fs-relative load even when btsp is a shared library (no __tls_get_addr).
[[gnu::tls_model("initial-exec")]] thread_local ThreadCtx* tls_ctx = nullptr;

// Marks the submission stack as closed: nothing is accepted after teardown.
Operation* const kClosed = reinterpret_cast<Operation*>(std::uintptr_t{1});

constexpr const char* kShutDown = "manager shut down";
constexpr int kMaxBlockedThreads = 32;

using Clock = std::chrono::steady_clock;

// Worker ownership uses an asymmetric Dekker handshake: the owner (every operation,
// every resume) writes its mode with a plain store and reads `takeover_` after a mere
// compiler barrier; the watchdog (rarely) writes `takeover_`, then runs
// membarrier(PRIVATE_EXPEDITED), which executes a full barrier on every running thread of
// the process, then reads the owner's mode. Either the watchdog sees the owner's new
// mode or the owner sees the takeover request; never neither. Without membarrier (old
// kernel, seccomp, BTSP_NO_MEMBARRIER=1) both sides use a full fence instead. The fences
// are the ones CancelSlot uses (light_fence / heavy_fence, include/btsp/detail/cancel.hpp).

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

}  // namespace

ThreadCtx* current_thread_ctx() noexcept { return tls_ctx; }

namespace {
// Every live engine, for CancelSlot::cancel (a cancelled task's operations may be pending
// in any of them). Never destroyed: engines may outlive static destruction.
struct EngineList {
    std::mutex mutex;
    std::vector<Engine*> engines;
};
EngineList& engine_list() {
    static auto* list = new EngineList;
    return *list;
}
}  // namespace

void request_cancel_scan_all() noexcept {
    EngineList& l = engine_list();
    std::lock_guard<std::mutex> lock(l.mutex);
    for (Engine* e : l.engines) e->request_cancel_scan();
}

Engine::Engine(const ManagerOptions& options) : opts_(options) {
    set_coarse_now(Clock::now());
    send_param_.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    send_param_.cb.send = &Engine::send_callback;
    // NO_IMM_CMPL: in UCX 1.13 an immediately completed receive does not report its
    // length and tag (field notes); the callback path always does.
    // FIELD_REQUEST: request memory from the engine's pool (take_request).
    recv_param_.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                               UCP_OP_ATTR_FLAG_NO_IMM_CMPL | UCP_OP_ATTR_FIELD_REQUEST;
    recv_param_.cb.recv = &Engine::recv_callback;
    recv_poll_ = opts_.progress_mode == ProgressMode::BLOCKING ? 0 : opts_.recv_poll;
    EngineList& l = engine_list();
    std::lock_guard<std::mutex> lock(l.mutex);
    l.engines.push_back(this);
}

// A hand-off is being decided (the watchdog is inside membarrier, microseconds): wait for
// the outcome. After it the owner is either still us or the watchdog's thread.
bool Engine::owner_wait_decision(ThreadCtx* c) noexcept {
    for (unsigned spins = 0; takeover_.load(std::memory_order_acquire) != 0; ++spins) {
        if (spins < 1024) cpu_relax(); else std::this_thread::yield();
    }
    return owner_.load(std::memory_order_acquire) == c;
}

Engine::~Engine() {
    {
        EngineList& l = engine_list();
        std::lock_guard<std::mutex> lock(l.mutex);
        std::erase(l.engines, this);
    }
    if (epoll_fd_ >= 0) ::close(epoll_fd_);
    if (wake_fd_ >= 0) ::close(wake_fd_);
    // After the worker is gone (teardown): UCX may have held blocks until then.
    for (void* chunk : request_chunks_) ::operator delete(chunk, std::align_val_t{64});
}

// A request block for a receive, or nullptr (then UCX allocates the request itself).
inline void* Engine::take_request() noexcept {
    if (request_free_ == nullptr && (ucx_request_size_ == 0 || !grow_requests())) [[unlikely]] return nullptr;
    void* request = request_free_;
    std::memcpy(&request_free_, static_cast<char*>(request) - ucx_request_size_, sizeof(void*));
    return request;
}

[[gnu::noinline]] bool Engine::grow_requests() noexcept {
    constexpr std::size_t kPerChunk = 64;
    void* chunk = ::operator new(request_stride_ * kPerChunk, std::align_val_t{64}, std::nothrow);
    if (chunk == nullptr) return false;
    try {
        request_chunks_.push_back(chunk);
    } catch (...) {
        ::operator delete(chunk, std::align_val_t{64});
        return false;
    }
    for (std::size_t i = 0; i < kPerChunk; ++i)
        give_request(static_cast<char*>(chunk) + i * request_stride_ + ucx_request_size_);
    return true;
}

std::string Engine::last_error() const {
    std::lock_guard<std::mutex> lock(error_mutex_);
    return last_error_;
}

// ---------------------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------------------

bool Engine::create_worker(bool with_shm_eh, std::string& err) noexcept {
    ucp_config_t* config = nullptr;
    ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
    if (st != UCS_OK) {
        err = std::string("ucp_config_read: ") + ucs_status_string(st);
        return false;
    }
    // Re-listening on a port in TIME_WAIT must work (field notes).
    if (ucp_config_modify(config, "CM_REUSEADDR", "y") != UCS_OK)
        BTSP_LOG_DEBUG("UCX does not know CM_REUSEADDR; listening ports may stay busy after close");
    if (with_shm_eh) {
        st = ucp_config_modify(config, "MM_ERROR_HANDLING", "y");
        if (st != UCS_OK) {
            ucp_config_release(config);
            err = std::string("MM_ERROR_HANDLING: ") + ucs_status_string(st);
            return false;
        }
    }
    // A deeper shared-memory FIFO than UCX's 64 (ManagerOptions::shm_fifo_size), unless the
    // user chose one through UCX's environment variables.
    if (opts_.shm_fifo_size != 0 && !shm_fifo_set_by_env()) {
        const std::string depth = std::to_string(opts_.shm_fifo_size);
        if (ucp_config_modify(config, "MM_FIFO_SIZE", depth.c_str()) != UCS_OK)
            BTSP_LOG_DEBUG("UCX does not know MM_FIFO_SIZE; shared memory keeps its default FIFO");
    }
    if (opts_.keepalive_interval.count() > 0) {
        const std::string ka = std::to_string(opts_.keepalive_interval.count()) + "ms";
        if (ucp_config_modify(config, "KEEPALIVE_INTERVAL", ka.c_str()) != UCS_OK)
            BTSP_LOG_DEBUG("UCX does not know KEEPALIVE_INTERVAL");
    }
    for (const auto& [key, value] : opts_.ucx_config) {
        st = ucp_config_modify(config, key.c_str(), value.c_str());
        if (st != UCS_OK) {
            ucp_config_release(config);
            err = "invalid UCX option " + key + "=" + value + ": " + ucs_status_string(st);
            return false;
        }
    }

    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED | UCP_PARAM_FIELD_NAME;
    params.features = UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP;
    params.mt_workers_shared = 0;
    params.name = "btsp";
    st = ucp_init(&params, config, &context_);
    ucp_config_release(config);
    if (st != UCS_OK) {
        context_ = nullptr;
        err = std::string("ucp_init: ") + ucs_status_string(st);
        return false;
    }

    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE | UCP_WORKER_PARAM_FIELD_FLAGS;
    // One thread at a time touches the worker (the owner; see the hand-off protocol).
    wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;
    wp.flags = UCP_WORKER_FLAG_IGNORE_REQUEST_LEAK;
    st = ucp_worker_create(context_, &wp, &worker_);
    if (st != UCS_OK) {
        worker_ = nullptr;
        ucp_cleanup(context_);
        context_ = nullptr;
        err = std::string("ucp_worker_create: ") + ucs_status_string(st);
        return false;
    }
    ucp_context_attr_t attr{};
    attr.field_mask = UCP_ATTR_FIELD_REQUEST_SIZE;
    if (ucp_context_query(context_, &attr) == UCS_OK && attr.request_size >= sizeof(void*)) {
        ucx_request_size_ = (attr.request_size + 15) & ~std::size_t{15};
        request_stride_ = (ucx_request_size_ + 63) & ~std::size_t{63};
    }
    st = ucp_worker_get_efd(worker_, &worker_fd_);
    if (st != UCS_OK) {
        ucp_worker_destroy(worker_);
        ucp_cleanup(context_);
        worker_ = nullptr;
        context_ = nullptr;
        err = std::string("ucp_worker_get_efd: ") + ucs_status_string(st);
        return false;
    }
    try {
        context_owner_ = std::shared_ptr<ucp_context>(context_, [](ucp_context* c) { ucp_cleanup(c); });
    } catch (...) {
        ucp_worker_destroy(worker_);
        ucp_cleanup(context_);
        worker_ = nullptr;
        context_ = nullptr;
        err = "out of memory";
        return false;
    }
    return true;
}

bool Engine::initialize(bool server_mode, std::uint16_t port) {
    auto fail = [this](std::string why, bool set_error_state) {
        BTSP_LOG_ERROR("initialize failed: %s", why.c_str());
        {
            std::lock_guard<std::mutex> lock(error_mutex_);
            last_error_ = std::move(why);
        }
        if (set_error_state) {
            set_base_state(RdmaState::ERROR);
            submit_head_.store(kClosed, std::memory_order_release);
        }
        return false;
    };
    if (initialized_.exchange(true, std::memory_order_acq_rel)) {
        return fail(base_state_.load() == static_cast<std::uint8_t>(RdmaState::SHUTDOWN)
                        ? "initialize after shutdown"
                        : "already initialized",
                    false);
    }

    std::string err;
    if (!allowed_.parse(opts_.allowed_clients, err)) return fail(err, true);
    if (const std::uint32_t f = opts_.shm_fifo_size; f == 1 || (f & (f - 1)) != 0)
        return fail("ManagerOptions::shm_fifo_size must be 0 or a power of two >= 2, not " + std::to_string(f), true);
    bool want_shm = opts_.shared_memory_with_error_handling;
    if (want_shm) {
        std::string tls;
        if (const char* env = std::getenv("UCX_TLS")) tls = env;
        for (const auto& [k, v] : opts_.ucx_config)
            if (k == "TLS") tls = v;
        if (!tls_list_allows_shm(tls)) want_shm = false;
    }
    if (!create_worker(want_shm, err)) {
        if (!want_shm) return fail(err, true);
        BTSP_LOG_INFO("UCX refused shared memory with error handling (%s); retrying without", err.c_str());
        err.clear();
        if (!create_worker(false, err)) return fail(err, true);
    }

    auto cleanup_ucx = [this] {
        if (listener_) ucp_listener_destroy(listener_);
        listener_ = nullptr;
        if (local_address_ != nullptr) ucp_worker_release_address(worker_, local_address_);
        local_address_ = nullptr;
        ucp_worker_destroy(worker_);
        context_owner_.reset();  // ucp_cleanup
        worker_ = nullptr;
        context_ = nullptr;
    };

    if (opts_.fast_path) {
        if (ucp_worker_get_address(worker_, &local_address_, &local_address_length_) != UCS_OK ||
            local_address_length_ > kMaxWorkerAddress) {
            BTSP_LOG_WARN("no worker address: connections stay on sockaddr endpoints");
            if (local_address_ != nullptr) ucp_worker_release_address(worker_, local_address_);
            local_address_ = nullptr;
            local_address_length_ = 0;
        }
        std::random_device rd;
        token_seed_ = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
    }

    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (wake_fd_ < 0 || epoll_fd_ < 0) {
        cleanup_ucx();
        return fail(std::string("eventfd/epoll: ") + std::strerror(errno), true);
    }
    for (int fd : {worker_fd_, wake_fd_}) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = fd;
        if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
            cleanup_ucx();
            return fail(std::string("epoll_ctl: ") + std::strerror(errno), true);
        }
    }

    if (server_mode && !create_listener(port, err)) {
        cleanup_ucx();
        return fail(err, true);
    }

    set_base_state(server_mode ? RdmaState::LISTENING : RdmaState::IDLE);
    running_.store(true, std::memory_order_release);
    try {
        spawn_thread(&Engine::owner_thread_main, 1);
    } catch (const std::exception& e) {
        running_.store(false);
        cleanup_ucx();
        return fail(std::string("cannot start the progress thread: ") + e.what(), true);
    }
    started_ = true;
    if (opts_.handoff_threshold.count() > 0) {
        try {
            spawn_thread(&Engine::watchdog_thread_main, 0);
        } catch (const std::exception& e) {
            BTSP_LOG_WARN("no hand-off thread (%s): a blocking coroutine will stall progress", e.what());
        }
    }
    BTSP_LOG_DEBUG("initialized (%s, progress mode %s)", server_mode ? "server" : "client",
                   to_string(opts_.progress_mode).data());
    BTSP_LOG_DEBUG("worker ownership: %s", asymmetric_fences() ? "membarrier (no locked instruction per operation)"
                                                        : "full fences (membarrier unavailable)");
    return true;
}

bool Engine::create_listener(std::uint16_t port, std::string& err) noexcept {
    sockaddr_storage ss{};
    socklen_t len = 0;
    const std::string& host = opts_.listen_address;
    if (host.empty() || host == "0.0.0.0" || inet_pton(AF_INET, host.c_str(), &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr) == 1) {
        auto* in = reinterpret_cast<sockaddr_in*>(&ss);
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        if (host.empty() || host == "0.0.0.0") in->sin_addr.s_addr = htonl(INADDR_ANY);
        len = sizeof(sockaddr_in);
    } else {
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
        if (inet_pton(AF_INET6, host.c_str(), &in6->sin6_addr) != 1) {
            err = "invalid listen address '" + host + "'";
            return false;
        }
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        len = sizeof(sockaddr_in6);
    }

    ucp_listener_params_t lp{};
    lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
    lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&ss);
    lp.sockaddr.addrlen = len;
    lp.conn_handler.cb = [](ucp_conn_request_h req, void* arg) {
        static_cast<Engine*>(arg)->on_conn_request(req);
    };
    lp.conn_handler.arg = this;
    ucs_status_t st = ucp_listener_create(worker_, &lp, &listener_);
    if (st != UCS_OK) {
        listener_ = nullptr;
        err = "cannot listen on port " + std::to_string(port) + ": " + ucs_status_string(st);
        return false;
    }
    ucp_listener_attr_t attr{};
    attr.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
    std::uint16_t real_port = port;
    if (ucp_listener_query(listener_, &attr) == UCS_OK) {
        if (attr.sockaddr.ss_family == AF_INET)
            real_port = ntohs(reinterpret_cast<const sockaddr_in*>(&attr.sockaddr)->sin_port);
        else if (attr.sockaddr.ss_family == AF_INET6)
            real_port = ntohs(reinterpret_cast<const sockaddr_in6*>(&attr.sockaddr)->sin6_port);
    }
    listen_port_.store(real_port, std::memory_order_relaxed);
    BTSP_LOG_INFO("listening on %s:%u", host.empty() ? "0.0.0.0" : host.c_str(), real_port);
    return true;
}

void Engine::destroy_listener() noexcept {
    for (ucp_conn_request_h req : pending_requests_) ucp_listener_reject(listener_, req);
    pending_requests_.clear();
    if (listener_) ucp_listener_destroy(listener_);
    listener_ = nullptr;
}

void Engine::shutdown() {
    if (!initialized_.exchange(true, std::memory_order_acq_rel) || !started_) {
        // Never started: nothing runs; refuse everything from now on.
        submit_head_.store(kClosed, std::memory_order_release);
        if (base_state_.load() != static_cast<std::uint8_t>(RdmaState::SHUTDOWN)) {
            set_base_state(RdmaState::SHUTDOWN);
        }
        return;
    }
    ThreadCtx* c = tls_ctx;
    if (c != nullptr && c->engine == this && c->mode.load(std::memory_order_relaxed) == kUser) {
        if (owner_enter(c, kLib)) {
            // Called from one of our own coroutines on the owning thread: tear down here;
            // the loop resumes the completed coroutines and exits when we return to it.
            teardown();
            stop_requested_.store(true, std::memory_order_release);
            c->mode.store(kUser, std::memory_order_release);
            return;
        }
        c->mode.store(kUser, std::memory_order_relaxed);
    }
    stop_requested_.store(true, std::memory_order_seq_cst);
    wake();
    std::unique_lock<std::mutex> lock(threads_mutex_);
    threads_cv_.wait(lock, [this] { return live_threads_ == 0; });
}

void Engine::teardown() noexcept {
    if (tearing_down_) return;
    tearing_down_ = true;
    running_.store(false, std::memory_order_release);
    set_base_state(RdmaState::SHUTDOWN);
    notify_waiters(true);

    // Nothing more is accepted from other threads; what was queued fails.
    Operation* queued = submit_head_.exchange(kClosed, std::memory_order_acq_rel);
    while (queued != nullptr && queued != kClosed) {
        Operation* next = queued->next_submit;
        queued->fail_now(RdmaResult::DISCONNECTED, kShutDown);
        push_ready(queued);
        queued = next;
    }

    destroy_listener();

    // Receives never end by themselves (they are per worker): cancel them. Pending
    // connects end now.
    for (Operation* op = tracked_head_; op != nullptr;) {
        Operation* next = op->reg_next;
        if (op->kind == OpKind::RECV) {
            cancel_op(op, RdmaResult::DISCONNECTED, kShutDown);
        } else if (op->kind == OpKind::CONNECT) {
            Connection* conn = op->conn;
            conn->connect_op = nullptr;
            disarm_timer(&conn->connect_timer);
            untrack(op);
            op->result.result = RdmaResult::DISCONNECTED;
            op->result.detail = kShutDown;
            complete(op);
        }
        op = next;
    }

    // Handshake receives are per worker too.
    for (CtrlRecv* r : {&accept_recv_, &bye_recv_, &ping_recv_})
        if (r->req != nullptr) ucp_request_cancel(worker_, r->req);
    for (Connection* conn = all_head_; conn != nullptr; conn = conn->all_next)
        if (conn->offer_req != nullptr) ucp_request_cancel(worker_, conn->offer_req);

    // Close every endpoint: gracefully when nothing is pending (so the peer sees a clean
    // close, and the BYE queued behind a still-running wire-up gets out), forced when
    // sends are pending (a flush-close with an unmatched rendezvous send aborts UCX 1.13)
    // or the connection is failed / half-made. Stuck graceful closes are abandoned after
    // close_timeout below.
    for (Connection* conn = all_head_; conn != nullptr; conn = conn->all_next) {
        if (conn->phase == ConnPhase::CLOSING || conn->phase == ConnPhase::CLOSED) continue;
        const bool graceful = conn->pending_sends == 0 &&
                              (conn->phase == ConnPhase::OPEN || conn->phase == ConnPhase::HANDSHAKE);
        close_connection(conn, !graceful);
    }
    deferred_head_ = nullptr;

    auto all_closed = [this] {
        for (Connection* conn = all_head_; conn != nullptr; conn = conn->all_next)
            if (conn->closes_pending > 0 || conn->close_deferred) return false;
        return tracked_head_ == nullptr;
    };
    // Forced closes wait for their BYE (see close_connection); timers do not run here.
    auto run_deferred_closes = [this] {
        const auto now = Clock::now();
        for (Connection* conn = all_head_; conn != nullptr; conn = conn->all_next) {
            if (conn->close_deferred && (!conn->bye_pending || now >= conn->close_deadline)) close_endpoints(conn);
            close_flushed(conn);  // graceful closes whose flush completed: force-close now
        }
    };
    const auto graceful_deadline = Clock::now() + opts_.close_timeout;
    while (!all_closed() && Clock::now() < graceful_deadline) {
        ucp_worker_progress(worker_);
        run_deferred_closes();
    }
    if (!all_closed()) {
        // A live peer that does not progress blocks a flush-close: abandon those closes
        // and force-close their endpoints' remaining work.
        for (Connection* conn = all_head_; conn != nullptr; conn = conn->all_next) {
            if (conn->closes_pending > 0 && !conn->close_forced) {
                for (void** req : {&conn->close_req_fast, &conn->close_req_sock}) {
                    if (*req != nullptr) {
                        ucp_request_free(*req);
                        *req = nullptr;
                        --conn->ucx_refs;
                    }
                }
                conn->closes_pending = 0;
                conn->phase = ConnPhase::CLOSED;
                // A graceful close still flushing: force-close that endpoint now.
                conn->events = static_cast<std::uint8_t>(conn->events & ~(kEvFastFlushed | kEvSockFlushed));
                for (bool fast : {true, false}) {
                    ucp_ep_h& e = fast ? conn->flushing_fast : conn->flushing_sock;
                    if (e == nullptr) continue;
                    (fast ? conn->ep_fast : conn->ep_sock) = e;
                    e = nullptr;
                    conn->phase = ConnPhase::CLOSING;
                    begin_close(conn, fast, false);
                }
                if (conn->closes_pending == 0) conn->phase = ConnPhase::CLOSED;
            }
        }
        for (Connection* conn = all_head_; conn != nullptr; conn = conn->all_next)
            if (conn->close_deferred) close_endpoints(conn);
        const auto forced_deadline = Clock::now() + std::chrono::milliseconds(200);
        while (!all_closed() && Clock::now() < forced_deadline) ucp_worker_progress(worker_);
    }

    // Control messages that arrived after their receive was cancelled (a peer's BYE or
    // PING) would make UCX warn "unexpected tag-receive descriptor was not matched" at
    // worker destruction: consume them (bounded).
    for (int i = 0; i < 64; ++i) {
        ucp_tag_recv_info_t info;
        ucp_tag_message_h msg = ucp_tag_probe_nb(worker_, kReservedTagPrefix, kReservedTagMask, 1, &info);
        if (msg == nullptr) break;
        std::uint8_t scratch[kCtrlHeaderSize];
        void* sink = info.length <= sizeof scratch ? scratch : nullptr;
        std::vector<std::uint8_t> big;
        if (sink == nullptr) {
            try {
                big.resize(info.length);
                sink = big.data();
            } catch (...) {
                break;
            }
        }
        ucp_request_param_t p;
        p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK;
        p.cb.recv = [](void*, ucs_status_t, const ucp_tag_recv_info_t*, void*) {};
        ucs_status_ptr_t sp = ucp_tag_msg_recv_nbx(worker_, sink, info.length, msg, &p);
        if (UCS_PTR_IS_PTR(sp)) {
            const auto until = Clock::now() + std::chrono::milliseconds(20);
            while (ucp_request_check_status(sp) == UCS_INPROGRESS && Clock::now() < until) ucp_worker_progress(worker_);
            if (ucp_request_check_status(sp) == UCS_INPROGRESS) ucp_request_cancel(worker_, sp);
            ucp_request_free(sp);
        }
    }

    // Whatever UCX still holds: release the requests (no callback will follow) and
    // report the operations as ended by the shutdown.
    while (Operation* op = tracked_head_) {
        BTSP_LOG_DEBUG("teardown: %s still pending in UCX, ended here",
                       op->kind == OpKind::RECV ? "a receive" : "an operation");
        if (op->request != nullptr) {
            // A block of ours stays with UCX until the worker is destroyed below; the
            // pool outlives the worker (~Engine).
            if ((op->flags & kOpOwnRequest) == 0) ucp_request_free(op->request);
            op->request = nullptr;
        }
        untrack(op);
        op->result = RdmaOpResult{RdmaResult::DISCONNECTED, 0, 0, 0, kShutDown};
        complete(op);
    }
    for (Connection* conn = all_head_; conn != nullptr; conn = conn->all_next) {
        for (void** req : {&conn->close_req_fast, &conn->close_req_sock, &conn->offer_req}) {
            if (*req != nullptr) {
                ucp_request_free(*req);
                *req = nullptr;
            }
        }
    }
    for (CtrlRecv* r : {&accept_recv_, &bye_recv_, &ping_recv_}) {
        if (r->req != nullptr) {
            ucp_request_free(r->req);
            r->req = nullptr;
        }
    }
    if (local_address_ != nullptr) ucp_worker_release_address(worker_, local_address_);
    local_address_ = nullptr;
    ucp_worker_destroy(worker_);
    context_owner_.reset();  // ucp_cleanup, unless memory pools still hold the context
    worker_ = nullptr;
    context_ = nullptr;
    while (Connection* conn = all_head_) {
        all_head_ = conn->all_next;
        delete conn;
    }
    live_head_ = live_tail_ = nullptr;
    timers_head_ = timers_tail_ = nullptr;
    primary_ep_.store(nullptr, std::memory_order_release);
    live_count_.store(0, std::memory_order_relaxed);
    sends_in_flight_.store(0, std::memory_order_relaxed);
    recvs_in_flight_.store(0, std::memory_order_relaxed);
    torn_down_ = true;
    BTSP_LOG_DEBUG("shut down");
}

// ---------------------------------------------------------------------------------------
// Threads, ownership and the progress loop
// ---------------------------------------------------------------------------------------

void Engine::spawn_thread(void (*fn)(std::shared_ptr<Engine>, std::uint64_t), std::uint64_t gen) {
    {
        std::lock_guard<std::mutex> lock(threads_mutex_);
        ++live_threads_;
    }
    try {
        std::thread(fn, shared_from_this(), gen).detach();
    } catch (...) {
        thread_exit();
        throw;
    }
}

void Engine::thread_exit() noexcept {
    std::lock_guard<std::mutex> lock(threads_mutex_);
    --live_threads_;
    threads_cv_.notify_all();
}

void Engine::owner_thread_main(std::shared_ptr<Engine> self, std::uint64_t gen) {
    ThreadCtx ctx{self.get(), gen};
    tls_ctx = &ctx;
    self->owner_.store(&ctx, std::memory_order_release);
    if (self->opts_.progress_cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(self->opts_.progress_cpu, &set);
        if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0)
            BTSP_LOG_WARN("cannot pin the progress thread to CPU %d", self->opts_.progress_cpu);
    }
    const bool taken_over = self->owner_loop(&ctx);
    tls_ctx = nullptr;
    if (taken_over) {
        self->blocked_threads_.fetch_sub(1, std::memory_order_relaxed);
    } else {
        self->thread_exit();
    }
}

void Engine::watchdog_thread_main(std::shared_ptr<Engine> self, std::uint64_t) {
    ThreadCtx ctx{self.get(), 0};
    tls_ctx = &ctx;
    const bool taken_over = self->watchdog_loop(&ctx);
    tls_ctx = nullptr;
    if (taken_over) {
        self->blocked_threads_.fetch_sub(1, std::memory_order_relaxed);
    } else {
        self->thread_exit();
    }
}

// The standby thread. Every handoff_threshold it samples the ownership word; if the
// owner has been inside the same piece of user code since the last sample, it takes the
// worker over (the CAS succeeds only while the owner is in user code, never while it is
// inside UCX) and becomes the progress thread itself.
namespace {
// Kernel scheduling state of a thread of this process ('R' running/runnable, 'S' sleeping,
// 'D' in uninterruptible wait, ...); '?' if unknown.
char thread_state(int tid) noexcept {
    char path[64];
    std::snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
    std::FILE* f = std::fopen(path, "re");
    if (f == nullptr) return '?';
    char buf[512];
    const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = '\0';
    const char* paren = std::strrchr(buf, ')');  // the name may contain spaces
    return paren != nullptr && paren[1] == ' ' ? paren[2] : '?';
}
}  // namespace

bool Engine::watchdog_loop(ThreadCtx* ctx) noexcept {
    ThreadCtx* last_owner = nullptr;
    std::uint8_t last_mode = kLoop;
    std::uint64_t last_resumes = ~std::uint64_t{0};
    int stale_periods = 0;
    std::unique_lock<std::mutex> lock(threads_mutex_);
    while (!watchdog_stop_) {
        watchdog_cv_.wait_for(lock, opts_.handoff_threshold);
        if (watchdog_stop_) break;  // checked under the lock: the owner's context is alive below
        ThreadCtx* const owner = owner_.load(std::memory_order_acquire);
        if (owner == nullptr) continue;
        const std::uint8_t mode = owner->mode.load(std::memory_order_acquire);
        const std::uint64_t resumes = activity_.load(std::memory_order_relaxed);
        const bool stale = mode == kUser && last_mode == kUser && owner == last_owner && resumes == last_resumes;
        stale_periods = stale ? stale_periods + 1 : 0;
        // Blocked (sleeping, waiting on a lock or I/O): take over after one period. Running
        // (CPU-bound user code, or just preempted on a busy machine): only after four.
        const bool blocked = stale && (stale_periods >= 4 || thread_state(owner_tid_.load(std::memory_order_relaxed)) != 'R');
        if (blocked && blocked_threads_.load(std::memory_order_relaxed) < kMaxBlockedThreads) {
            // Announce, make every thread's earlier stores visible, then look again: if the
            // owner is still in the same user code it cannot enter UCX without seeing the
            // announcement (and waiting for this decision).
            takeover_.store(1, std::memory_order_relaxed);
            heavy_fence();
            const bool still = owner->mode.load(std::memory_order_acquire) == kUser &&
                               activity_.load(std::memory_order_relaxed) == resumes;
            if (still) {
                const std::uint64_t gen = owner->gen + 1;
                ctx->gen = gen;
                ctx->mode.store(kLoop, std::memory_order_relaxed);
                owner_.store(ctx, std::memory_order_release);
            }
            takeover_.store(0, std::memory_order_release);
            if (still) {
                // The blocked thread leaves the live count now; it retires on its own
                // once its coroutine suspends.
                blocked_threads_.fetch_add(1, std::memory_order_relaxed);
                bump(handoffs_);  // written by the watchdog thread only
                --live_threads_;
                lock.unlock();
                BTSP_LOG_DEBUG("progress hand-off: a coroutine held the progress thread over %lld ms",
                               static_cast<long long>(opts_.handoff_threshold.count()));
                try {
                    spawn_thread(&Engine::watchdog_thread_main, 0);
                } catch (...) {
                    BTSP_LOG_WARN("cannot start a new hand-off thread");
                }
                return owner_loop(ctx);
            }
        }
        last_owner = owner;
        last_mode = mode;
        last_resumes = resumes;
    }
    return false;
}

// Resumes ready coroutines one at a time. Before each it marks the worker "in user code"
// so the watchdog may take it over; afterwards it claims it back. Returns false when the
// worker was taken over meanwhile (the remaining ready list belongs to the new owner).
bool Engine::run_ready(ThreadCtx* ctx) noexcept {
    while (ReadyNode* n = ready_head_) {
        ready_head_ = n->next_ready;
        if (ready_head_ == nullptr) ready_tail_ = nullptr;
        ctx->mode.store(kUser, std::memory_order_release);  // publishes the engine state
        bump(activity_);
        n->waiter.resume();
        if (!owner_enter(ctx, kLoop)) return false;
    }
    return true;
}

bool Engine::owner_loop(ThreadCtx* ctx) noexcept {
    tls_ctx = ctx;
    owner_tid_.store(static_cast<int>(::syscall(SYS_gettid)), std::memory_order_relaxed);
    for (;;) {
        bool active = false;
        if (!torn_down_) {
            Operation* head = submit_head_.load(std::memory_order_relaxed);
            if (head != nullptr && head != kClosed) active |= drain_submissions();
            if (ucp_worker_progress(worker_) != 0) active = true;
            if (deferred_head_ != nullptr || !pending_requests_.empty() || accept_recv_.done || bye_recv_.done ||
                ping_recv_.done) {
                process_deferred();
                active = true;
            }
            if (cancel_scan_.load(std::memory_order_relaxed) &&
                cancel_scan_.exchange(false, std::memory_order_acq_rel)) {
                process_cancels();
                active = true;
            }
            // Timers are checked every 256 iterations (~10-50 us while busy) and after every
            // wake-up, not per iteration: a clock read costs more than an idle progress call.
            if (timers_head_ != nullptr && ((++timer_check_ & 255) == 0 || woke_up_)) {
                woke_up_ = false;
                active |= run_timers();
            }
            if (stop_requested_.load(std::memory_order_relaxed)) {
                teardown();
                active = true;
            }
        }
        if (ready_head_ != nullptr) {
            active = true;
            if (!run_ready(ctx)) return true;
        }
        if (torn_down_) {
            if (ready_head_ == nullptr) break;
            continue;
        }
        if (active) {
            idle_iterations_ = 0;
            continue;
        }
        idle_wait();
    }
    loop_exited_.store(true, std::memory_order_release);
    {
        std::lock_guard<std::mutex> lock(threads_mutex_);
        watchdog_stop_ = true;
    }
    watchdog_cv_.notify_all();
    return false;
}

void Engine::idle_wait() noexcept {
    switch (opts_.progress_mode) {
        case ProgressMode::POLLING:
            if ((++idle_iterations_ & 4095) == 0) set_coarse_now(Clock::now());
            return;
        case ProgressMode::ADAPTIVE: {
            // No clock read per message: the idle period is timed from its 1024th
            // iteration (~50 us of polling), checked every 1024 iterations after that.
            if ((++idle_iterations_ & 1023) != 0) return;
            const auto now = Clock::now();
            set_coarse_now(now);
            if (idle_iterations_ == 1024) {
                last_activity_ = now;
                return;
            }
            if (now - last_activity_ < opts_.adaptive_spin) return;
            break;
        }
        case ProgressMode::BLOCKING:
            break;
    }
    // Block: announce it (submitters then wake us), re-check, arm the worker, wait.
    sleeping_.store(true, std::memory_order_seq_cst);
    if (submit_head_.load(std::memory_order_seq_cst) != nullptr ||
        stop_requested_.load(std::memory_order_seq_cst) || cancel_scan_.load(std::memory_order_seq_cst)) {
        sleeping_.store(false, std::memory_order_relaxed);
        return;
    }
    const ucs_status_t st = ucp_worker_arm(worker_);
    if (st == UCS_OK) {
        int timeout_ms = -1;
        if (timers_head_ != nullptr) {
            const auto left = timers_head_->deadline - Clock::now();
            timeout_ms = static_cast<int>(
                std::max<long long>(0, std::chrono::ceil<std::chrono::milliseconds>(left).count()));
        }
        // UCX runs endpoint keepalive (how a dead peer on shared memory is noticed) only
        // inside ucp_worker_progress: while connections exist, wake up once per period.
        if (all_head_ != nullptr && opts_.keepalive_interval.count() > 0) {
            const int ka = static_cast<int>(opts_.keepalive_interval.count());
            if (timeout_ms < 0 || ka < timeout_ms) timeout_ms = ka;
        }
        epoll_event events[2];
        const int n = ::epoll_wait(epoll_fd_, events, 2, timeout_ms);
        for (int i = 0; i < n; ++i) {
            if (events[i].data.fd == wake_fd_) {
                std::uint64_t v = 0;
                (void)!::read(wake_fd_, &v, sizeof v);
            }
        }
    } else if (st != UCS_ERR_BUSY) {
        BTSP_LOG_WARN("ucp_worker_arm: %s", ucs_status_string(st));
    }
    sleeping_.store(false, std::memory_order_relaxed);
    idle_iterations_ = 0;
    woke_up_ = true;
    set_coarse_now(Clock::now());
}

void Engine::wake() noexcept {
    const std::uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
}

bool Engine::run_timers() noexcept {
    const auto now = Clock::now();
    set_coarse_now(now);
    bool fired = false;
    while (timers_head_ != nullptr && timers_head_->deadline <= now) {
        TimerNode* t = timers_head_;
        disarm_timer(t);
        t->fire(t);
        fired = true;
    }
    return fired;
}

void Engine::arm_timer(TimerNode* t, Clock::time_point deadline) noexcept {
    if (t->armed) disarm_timer(t);
    t->deadline = deadline;
    t->armed = true;
    // Deadlines mostly arrive in increasing order (same timeout, later start): search
    // from the tail, O(1) in that case.
    TimerNode* prev = timers_tail_;
    while (prev != nullptr && prev->deadline > deadline) prev = prev->prev;
    t->prev = prev;
    t->next = prev ? prev->next : timers_head_;
    if (t->next) t->next->prev = t; else timers_tail_ = t;
    if (prev) prev->next = t; else timers_head_ = t;
}

void Engine::disarm_timer(TimerNode* t) noexcept {
    if (!t->armed) return;
    if (t->prev) t->prev->next = t->next; else timers_head_ = t->next;
    if (t->next) t->next->prev = t->prev; else timers_tail_ = t->prev;
    t->prev = t->next = nullptr;
    t->armed = false;
}

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

void Engine::precheck(Operation* op) const noexcept {
    if (!initialized_.load(std::memory_order_acquire)) {
        op->fail_now(RdmaResult::FAILURE, "manager not initialized");
        return;
    }
    const auto st = static_cast<RdmaState>(base_state_.load(std::memory_order_acquire));
    if (st == RdmaState::SHUTDOWN) {
        op->fail_now(RdmaResult::DISCONNECTED, kShutDown);
        return;
    }
    if (st == RdmaState::ERROR) {
        op->fail_now(RdmaResult::FAILURE, "manager failed to initialize");
        return;
    }
    switch (op->kind) {
        case OpKind::SEND:
            if (live_count_.load(std::memory_order_acquire) == 0) {
                op->fail_now(RdmaResult::DISCONNECTED, "not connected");
                break;
            }
            if (is_reserved_tag(op->tag)) {
                op->fail_now(RdmaResult::FAILURE, "tag reserved by the library (0xB75FC0DExxxxxxxx)");
                break;
            }
            [[fallthrough]];
        case OpKind::RECV:
            // Never connected: nothing can be waiting in UCX for it. (After a connection,
            // the progress thread looks for a message that arrived before it ended.)
            if (op->kind == OpKind::RECV && live_count_.load(std::memory_order_acquire) == 0 &&
                !had_connection_.load(std::memory_order_acquire)) {
                op->fail_now(RdmaResult::DISCONNECTED, "not connected");
                break;
            }
            if (op->buffer == nullptr && op->size > 0)
                op->fail_now(RdmaResult::FAILURE, "null buffer");
            else if (op->size > opts_.max_message_size)
                op->fail_now(RdmaResult::FAILURE, "size exceeds ManagerOptions::max_message_size");
            break;
        case OpKind::CONNECT:
            if (op->host == nullptr || op->host[0] == '\0')
                op->fail_now(RdmaResult::FAILURE, "empty host");
            else if (op->port == 0)
                op->fail_now(RdmaResult::FAILURE, "port 0 is not a valid destination");
            break;
        case OpKind::LISTEN:
        case OpKind::DISCONNECT:
        case OpKind::INSPECT:
            break;
    }
}

[[gnu::noinline]] bool Engine::start_general(Operation* op, CancelSlot* slot) noexcept {
    op->result = RdmaOpResult{};  // the general path writes results field by field
    op->slot = slot;
    ThreadCtx* c = tls_ctx;
    if (c != nullptr && c->engine == this) {
        const std::uint8_t mode = c->mode.load(std::memory_order_relaxed);
        if (mode == kUser) {
            if (owner_enter(c, kLib)) {
                const bool pending = start_owned(op);
                bump(activity_);
                c->mode.store(kUser, std::memory_order_release);
                return pending;
            }
            c->mode.store(kUser, std::memory_order_relaxed);  // handed off: submit below
        } else if (mode == kLib && owner_.load(std::memory_order_relaxed) == c) {
            return start_owned(op);  // inside a WorkerGuard of ours
        }
    }
    return submit(op);
}

// On the owning thread, worker claimed: check, then post.
bool Engine::start_owned(Operation* op) noexcept {
    precheck(op);
    if (op->flags & kOpCompleted) {
        record_early(op);
        return false;
    }
    post(op);
    return (op->flags & kOpCompleted) == 0;
}

// The metrics sample: latency of about 1 operation in 64 (a clock read costs more than the
// rest). It counts on activity_, which every operation bumps here for the watchdog (a
// coroutine that keeps starting operations is busy, not blocked), and every resume too.
[[gnu::always_inline]] inline std::int64_t Engine::sample_start() noexcept {
    const std::uint64_t a = activity_.load(std::memory_order_relaxed) + 1;
    activity_.store(a, std::memory_order_relaxed);
    if ((a & 63) != 0) [[likely]] return 0;
    return sample_clock();
}

[[gnu::noinline]] std::int64_t Engine::sample_clock() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// The request parameters of a send or receive: the engine's prebuilt ones for the kind (one
// store: user_data), or a copy with the memory handle. Every store here is paid per
// message, and a sender's stores queue behind its writes into the peer's shared-memory FIFO.
[[gnu::always_inline]] inline const ucp_request_param_t* Engine::post_params(Operation* op, ucp_request_param_t& base,
                                                                             ucp_request_param_t& local) noexcept {
    if (op->opts & kOptMemh) [[unlikely]] {
        local = base;
        local.user_data = op;
        local.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
        local.memh = static_cast<ucp_mem_h>(op->memh);
        return &local;
    }
    base.user_data = op;
    return &base;
}

// Posts a send (the fast path, and post() for the rest). An eager send completes inside
// the call (the common case for small messages): result and metrics right here, no
// registry, and nothing else written to the operation. Otherwise send_posted(). UCX never
// runs a send's callback inside the posting call (ucp_tag_send_nbx without
// UCP_OP_ATTR_FLAG_NO_IMM_CMPL reports an immediate completion by its return value only),
// so, unlike a receive, a send is not marked kOpInUcxCall: one store less per message.
[[gnu::always_inline]] inline bool Engine::send_owned(Operation* op, Connection* conn, CancelSlot* slot) noexcept {
    const std::int64_t t0 = sample_start();
    ucp_request_param_t local;
    const ucp_request_param_t* p = post_params(op, send_param_, local);
    const ucs_status_ptr_t sp = ucp_tag_send_nbx(conn->data_ep(), op->buffer, op->size, op->tag, p);
    if (sp == nullptr) [[likely]] {  // done at once (eager), no callback follows
        set_success(op->result, op->size, 0);
        op->flags = kOpCompleted;
        record_ok(send_stats_, op->size, t0);
        return false;
    }
    return send_posted(op, conn, sp, slot, t0);
}

[[gnu::noinline]] bool Engine::send_posted(Operation* op, Connection* conn, ucs_status_ptr_t sp,
                                           CancelSlot* slot, std::int64_t t0) noexcept {
    op->flags = static_cast<std::uint8_t>((op->flags & ~kOpSampled) | kOpInUcxCall);  // for after_post
    if (t0 != 0) {
        op->sample_t0 = t0;
        op->flags |= kOpSampled;
    }
    op->conn = conn;
    op->slot = slot;
    op->request = nullptr;
    if (UCS_PTR_IS_ERR(sp)) {
        finish(op, UCS_PTR_STATUS(sp), 0, 0);
    } else if ((op->flags & kOpCompleted) == 0) {
        op->request = sp;
        track(op);
    }
    return after_post(op);
}

// Fast-path receive: posted, and tracked unless the message was already there (then the
// callback ran inside the call). `conn` is null for a message left by a peer that is gone.
template <bool Poll>
[[gnu::always_inline]] inline bool Engine::recv_owned(Operation* op, Connection* conn, CancelSlot* slot) noexcept {
    op->conn = conn;  // recv_param_ has NO_IMM_CMPL: the callback may run inside the call
    // "Inside the UCX call": a completion during it is reported by the poster.
    op->flags = static_cast<std::uint8_t>((op->flags & ~kOpSampled) | kOpInUcxCall);
    if (const std::int64_t t0 = sample_start(); t0 != 0) [[unlikely]] {
        op->sample_t0 = t0;
        op->flags |= kOpSampled;
    }
    ucp_request_param_t local;
    const ucp_request_param_t* p = post_params(op, recv_param_, local);
    void* own = take_request();
    op->request = own;
    if (own != nullptr) [[likely]] {
        op->flags |= kOpOwnRequest;
        (p == &local ? local : recv_param_).request = own;
    } else {
        op->flags &= static_cast<std::uint8_t>(~kOpOwnRequest);
        if (p != &local) local = *p;
        local.op_attr_mask &= ~static_cast<std::uint32_t>(UCP_OP_ATTR_FIELD_REQUEST);
        p = &local;
    }
    const ucs_status_ptr_t sp =
        ucp_tag_recv_nbx(worker_, const_cast<void*>(op->buffer), op->size, op->tag, op->tag_mask, p);
    if ((op->flags & kOpCompleted) == 0 && !UCS_PTR_IS_ERR(sp) && sp != nullptr) [[likely]] {
        op->request = sp;
        // Still marked "inside the UCX call": a completion while polling is reported here.
        // (Not with a deadline: it is armed only once the operation is tracked.)
        if (Poll && recv_poll_ != 0 && ready_head_ == nullptr && (op->opts & kOptTimeout) == 0 && poll_inline(op))
            return false;
        op->slot = slot;
        track_kind<OpKind::RECV>(op);
        op->flags &= static_cast<std::uint8_t>(~kOpInUcxCall);
        if (op->opts & kOptTimeout) [[unlikely]] arm_deadline(op);
        return true;
    }
    return recv_posted(op, sp);
}

// What other threads can ask of the loop at any moment: a submission, a cancel, a stop.
inline bool Engine::other_threads_want_loop() const noexcept {
    const Operation* submitted = submit_head_.load(std::memory_order_relaxed);
    return (submitted != nullptr && submitted != kClosed) || cancel_scan_.load(std::memory_order_relaxed) ||
           stop_requested_.load(std::memory_order_relaxed);
}

// Whether the loop has anything to do besides progress: used to stop polling early.
inline bool Engine::loop_has_work() const noexcept {
    return ready_head_ != nullptr || deferred_head_ != nullptr || !pending_requests_.empty() || accept_recv_.done ||
           bye_recv_.done || ping_recv_.done || other_threads_want_loop();
}

// A receive just posted by a coroutine that nothing is queued behind (the ready list is
// empty) polls the worker a few times before its coroutine suspends. A message that
// arrives meanwhile (a ping-pong's reply, ~0.2-1 us away on shared memory) completes inside
// co_await: no registry entry, suspension, loop iteration, ready-list entry or resume.
// Only on the fast path (Engine::start: a coroutine on the progress thread, worker claimed
// as kLib), never from post(): there the caller may be the loop itself, with submissions
// still to post. Polling stops as soon as the loop has anything else to do (timers: every
// 256 calls, as in the loop), so nothing waits behind it for more than one progress call;
// the worker stays claimed throughout, so no hand-off can start. The operation is not in
// the registry while it polls: nothing that reads the registry (teardown, cancels,
// deferred connection events, the in-flight dump) runs before the poll has stopped and
// the operation has been tracked.
[[gnu::noinline]] bool Engine::poll_inline(Operation* op) noexcept {
    if (loop_has_work()) return false;
    for (std::uint32_t i = recv_poll_; i != 0; --i) {
        const unsigned events = ucp_worker_progress(worker_);
        if (op->flags & kOpCompleted) {
            op->flags &= static_cast<std::uint8_t>(~kOpInUcxCall);
            if (op->result.result == RdmaResult::SUCCESS) [[likely]]
                record_ok(recv_stats_, op->result.bytes_transferred, op->sample());
            else
                record(op);
            bump(recvs_polled_);
            return true;
        }
        // What progress can bring (callbacks) is looked at only when it reported events;
        // what other threads ask for, every time.
        if (events != 0 ? loop_has_work() : other_threads_want_loop()) return false;
        // The loop looks at its timers every 256 iterations; so does polling.
        if (timers_head_ != nullptr && (++timer_check_ & 255) == 0) {
            woke_up_ = true;
            return false;
        }
    }
    return false;
}

[[gnu::noinline]] bool Engine::recv_posted(Operation* op, ucs_status_ptr_t sp) noexcept {
    if (op->flags & kOpCompleted) return after_post(op);  // the callback ran inside the call
    // UCX keeps a block of ours only when it returns it as a pending request.
    if (op->request != nullptr) give_request(op->request);
    op->request = nullptr;
    if (UCS_PTR_IS_ERR(sp)) {
        finish(op, UCS_PTR_STATUS(sp), 0, 0);
    } else if (sp == nullptr) {
        // Not expected with NO_IMM_CMPL; the length is unknown then.
        BTSP_LOG_WARN("ucp_tag_recv_nbx completed at once despite NO_IMM_CMPL; length unknown");
        op->result = RdmaOpResult{RdmaResult::SUCCESS, op->size, 0, 0, nullptr};
        op->flags |= kOpCompleted;
    }
    return after_post(op);
}

// After the UCX call of a posted operation: report an immediate completion to metrics
// (the caller continues without suspending), or arm its deadline.
bool Engine::after_post(Operation* op) noexcept {
    op->flags &= static_cast<std::uint8_t>(~kOpInUcxCall);
    if (op->flags & kOpCompleted) {
        record(op);
        return false;
    }
    if ((op->opts & kOptTimeout) && (op->flags & kOpTracked)) arm_deadline(op);
    return true;
}

// The fast path: a send or receive awaited by one of our coroutines on the owning thread,
// with nothing unusual about it (arguments fine, connected, not shutting down, not
// cancelled, no hand-off being decided). Everything else takes start_general().
[[gnu::always_inline]] inline bool Engine::start(Operation* op, CancelSlot* slot) noexcept {
    ThreadCtx* c = tls_ctx;
    if (c != nullptr && c->engine == this && op->kind <= OpKind::RECV &&
        c->mode.load(std::memory_order_relaxed) == kUser && data_args_ok(op) &&
        (slot == nullptr || slot->cancelled() == 0)) [[likely]] {
        // Claim the worker for the UCX call so a hand-off cannot happen in the middle of it
        // (owner_enter without its slow branch: anything unusual backs out to the general path).
        c->mode.store(kLib, std::memory_order_relaxed);
        light_fence();
        Connection* conn = live_head_;
        if (takeover_.load(std::memory_order_acquire) == 0 && owner_.load(std::memory_order_relaxed) == c &&
            conn != nullptr && !tearing_down_ && op->cancel_request.load(std::memory_order_acquire) == 0) [[likely]] {
            // (sample_start() bumps activity_ for the watchdog.)
            const bool pending =
                op->kind == OpKind::SEND ? send_owned(op, conn, slot) : recv_owned<true>(op, conn, slot);
            c->mode.store(kUser, std::memory_order_release);
            return pending;
        }
        c->mode.store(kUser, std::memory_order_relaxed);  // UCX untouched: back to where we were
    }
    return start_general(op, slot);
}

// The entry point of every co_await of an operation (RdmaAwaitable::await_suspend): the
// fast path is inlined here whole (one call from the coroutine, no nested prologues).
bool start_operation(Operation* op, CancelSlot* slot) noexcept { return op->engine->start(op, slot); }

// Any other thread: check, then hand the op to the owner. Keep the engine alive until we
// are done touching it (the op may complete and its coroutine finish before we return).
[[gnu::noinline]] bool Engine::submit(Operation* op) noexcept {
    precheck(op);
    if (op->flags & kOpCompleted) {
        record_early(op);
        return false;
    }
    std::shared_ptr<Engine> keep = shared_from_this();
    Operation* head = submit_head_.load(std::memory_order_relaxed);
    do {
        if (head == kClosed) {
            op->fail_now(RdmaResult::DISCONNECTED, kShutDown);
            record_early(op);
            return false;
        }
        op->next_submit = head;
    } while (!submit_head_.compare_exchange_weak(head, op, std::memory_order_seq_cst,
                                                 std::memory_order_relaxed));
    if (sleeping_.load(std::memory_order_seq_cst)) wake();
    return true;
}

std::uint64_t Engine::claim_worker() noexcept {
    ThreadCtx* c = tls_ctx;
    if (c == nullptr || c->engine != this || torn_down_ || c->mode.load(std::memory_order_relaxed) != kUser) return 0;
    if (!owner_enter(c, kLib)) {
        c->mode.store(kUser, std::memory_order_relaxed);
        return 0;
    }
    return c->gen;
}

void Engine::release_worker(std::uint64_t gen) noexcept {
    ThreadCtx* c = tls_ctx;
    if (c == nullptr || c->engine != this || c->gen != gen || c->mode.load(std::memory_order_relaxed) != kLib) {
        BTSP_LOG_ERROR("WorkerGuard released out of order (held across a co_await?)");
        return;
    }
    c->mode.store(kUser, std::memory_order_release);
}

bool Engine::drain_submissions() noexcept {
    Operation* list = submit_head_.exchange(nullptr, std::memory_order_acquire);
    if (list == kClosed) {  // closed meanwhile: put the mark back
        submit_head_.store(kClosed, std::memory_order_release);
        return false;
    }
    // The stack is LIFO; post in submission order.
    Operation* fifo = nullptr;
    while (list != nullptr) {
        Operation* next = list->next_submit;
        list->next_submit = fifo;
        fifo = list;
        list = next;
    }
    while (fifo != nullptr) {
        Operation* op = fifo;
        fifo = op->next_submit;
        op->next_submit = nullptr;
        post(op);
        if (op->flags & kOpCompleted) push_ready(op);
    }
    return true;
}

// Refuses an operation that reached the owner after teardown began or was cancelled
// before it started (UCX never sees it).
[[gnu::noinline]] void Engine::post_refused(Operation* op) noexcept {
    if (tearing_down_) {
        op->fail_now(RdmaResult::DISCONNECTED, kShutDown);
    } else {
        const std::uint8_t r = cancel_result(op);
        op->fail_now(static_cast<RdmaResult>(r), r == static_cast<std::uint8_t>(RdmaResult::TIMEOUT)
                                                     ? "timed out before it started"
                                                     : "cancelled before it started");
    }
    record(op);
}

[[gnu::noinline]] void Engine::post_control(Operation* op) noexcept {
    switch (op->kind) {
        case OpKind::CONNECT: start_connect(op); break;
        case OpKind::LISTEN: start_listen(op); break;
        case OpKind::DISCONNECT: start_disconnect(op); break;
        case OpKind::INSPECT: inspect(op); break;
        case OpKind::SEND:
        case OpKind::RECV: break;
    }
}

[[gnu::noinline]] void Engine::arm_deadline(Operation* op) noexcept {
    op->deadline_timer.fire = [](TimerNode* t) noexcept {
        auto* o = static_cast<Operation*>(t->ctx);
        o->engine->cancel_pending(o, RdmaResult::TIMEOUT, "deadline expired");
    };
    op->deadline_timer.ctx = op;
    arm_timer(&op->deadline_timer, Clock::now() + op->timeout);
}

// Owner thread, worker claimed, op checked. Completions during the UCX call are reported
// by the caller (start's return value or drain_submissions), not via the ready list.
inline void Engine::post(Operation* op) noexcept {
    op->conn = nullptr;
    op->request = nullptr;
    op->flags &= static_cast<std::uint8_t>(~kOpSampled);  // record() reads it for the ops that fail below
    if (tearing_down_ || cancel_result(op) != 0) [[unlikely]] {
        post_refused(op);
        return;
    }
    Connection* conn = primary();
    switch (op->kind) {
        case OpKind::SEND:
            if (conn == nullptr) break;
            (void)send_owned(op, conn, op->slot);
            return;
        case OpKind::RECV:
            // No live connection: a message that arrived before its peer went away still
            // waits in UCX's unexpected queue; deliver it rather than lose it.
            if (conn == nullptr) {
                ucp_tag_recv_info_t info;
                if (ucp_tag_probe_nb(worker_, op->tag, op->tag_mask, 0, &info) == nullptr) break;
            }
            (void)recv_owned<false>(op, conn, op->slot);
            return;
        default:
            op->sample_t0 = sample_start();
            op->flags |= op->sample_t0 != 0 ? kOpInUcxCall | kOpSampled : kOpInUcxCall;
            post_control(op);
            (void)after_post(op);
            return;
    }
    op->fail_now(RdmaResult::DISCONNECTED, "not connected");
    record(op);
}

void Operation::request_cancel(Operation* op, std::uint8_t result) noexcept {
    if (op == nullptr) return;
    std::uint8_t expected = 0;
    op->cancel_request.compare_exchange_strong(expected, result, std::memory_order_acq_rel);
    if (op->engine != nullptr) op->engine->request_cancel_scan();
}

void Engine::request_cancel_scan() noexcept {
    cancel_scan_.store(true, std::memory_order_seq_cst);
    if (sleeping_.load(std::memory_order_seq_cst)) wake();
}

void Engine::process_cancels() noexcept {
    for (Operation* op = tracked_head_; op != nullptr;) {
        Operation* next = op->reg_next;
        const std::uint8_t r = cancel_result(op);
        if (r != 0 && (op->flags & kOpCancelling) == 0) cancel_pending(op, static_cast<RdmaResult>(r), "cancelled");
        op = next;
    }
}

// Ends a pending operation early with `r` (CANCELLED or TIMEOUT).
void Engine::cancel_pending(Operation* op, RdmaResult r, const char* why) noexcept {
    if ((op->flags & kOpCompleted) || !(op->flags & kOpTracked)) return;
    switch (op->kind) {
        case OpKind::RECV:
            cancel_op(op, r, why);
            break;
        case OpKind::SEND: {
            // UCX cannot cancel a send (openucx#9584): the only way to end it is to close
            // its endpoint. The send reports `r`; others on the connection DISCONNECTED.
            op->flags |= kOpCancelling;
            op->cancel_result = r;
            op->cancel_detail = why;
            Connection* conn = op->conn;
            BTSP_LOG_WARN("a pending send (%zu bytes, tag 0x%llx) was %s; UCX cannot cancel sends, "
                          "closing the connection to %s",
                          op->size, static_cast<unsigned long long>(op->tag),
                          r == RdmaResult::TIMEOUT ? "timed out" : "cancelled", conn->peer.c_str());
            on_connection_error(conn, UCS_ERR_CANCELED);
            break;
        }
        case OpKind::CONNECT:
            abort_connect(op->conn, r, r == RdmaResult::TIMEOUT ? UCS_ERR_TIMED_OUT : UCS_ERR_CANCELED, why);
            break;
        case OpKind::LISTEN:
        case OpKind::DISCONNECT:
        case OpKind::INSPECT:
            break;
    }
}

// UCX completion of a pending operation (inside ucp_worker_progress, or inside the
// posting call for some failures): sets the result; complete() queues the resume.
inline void Engine::finish(Operation* op, ucs_status_t status, std::size_t length,
                           std::uint64_t sender_tag) noexcept {
    RdmaOpResult r{};  // built whole: a send or receive starts with no result written
    r.status = status;
    if (status == UCS_OK) [[likely]] {
        r.result = RdmaResult::SUCCESS;
        r.bytes_transferred = length;
        r.sender_tag = sender_tag;
    } else if (op->flags & kOpCancelling) {
        r.result = op->cancel_result;
        r.detail = op->cancel_detail;
    } else if (status == UCS_ERR_CANCELED ||
               (op->conn != nullptr && op->conn->phase != ConnPhase::OPEN && is_connection_loss(status))) {
        // A cancel nobody asked for (ours set kOpCancelling): UCX ended the request because
        // an endpoint went away, e.g. a receive matched the rendezvous request of a peer
        // that died before the data moved.
        r.result = RdmaResult::DISCONNECTED;
    } else {
        r.result = map_status(status);
        if (status == UCS_ERR_MESSAGE_TRUNCATED) r.bytes_transferred = length;
    }
    op->result = r;
    if (op->flags & kOpTracked) untrack(op);
    complete(op);
}

// A successful completion from a UCX callback (inside ucp_worker_progress, or inside the
// posting call; then the poster reports it).
template <OpKind K>
inline void Engine::complete_ok(Operation* op, std::size_t bytes, std::uint64_t sender_tag) noexcept {
    set_success(op->result, bytes, sender_tag);
    if (op->flags & kOpTracked) untrack_kind<K>(op);
    op->flags |= kOpCompleted;
    if ((op->flags & kOpInUcxCall) == 0) {
        record_ok(K == OpKind::SEND ? send_stats_ : recv_stats_, bytes, op->sample());
        push_ready(op);
    }
}

void Engine::send_callback(void* request, ucs_status_t status, void* user_data) noexcept {
    auto* op = static_cast<Operation*>(user_data);
    ucp_request_free(request);
    op->request = nullptr;
    Engine* e = op->engine;
    if (status == UCS_OK) [[likely]] e->complete_ok<OpKind::SEND>(op, op->size, 0);
    else e->finish(op, status, op->size, 0);
}

void Engine::recv_callback(void* request, ucs_status_t status, const ucp_tag_recv_info_t* info,
                           void* user_data) noexcept {
    auto* op = static_cast<Operation*>(user_data);
    // `info` lives inside the request: read it before the request goes back to UCX.
    const std::size_t length = info != nullptr ? info->length : 0;
    const std::uint64_t sender_tag = info != nullptr ? info->sender_tag : 0;
    Engine* e = op->engine;
    if (op->flags & kOpOwnRequest) e->give_request(request);  // UCX is done with it
    else ucp_request_free(request);
    // A receive of ours that teardown() had to end without UCX (a rendezvous still in
    // progress after its cancel) can complete while the worker is destroyed; a request
    // UCX allocated had its callback removed by ucp_request_free there, ours keeps it.
    if (op->flags & kOpCompleted) [[unlikely]] {
        BTSP_LOG_DEBUG("receive ended by shutdown completed in UCX afterwards (%s); ignored",
                       ucs_status_string(status));
        return;
    }
    op->request = nullptr;
    if (status == UCS_OK) [[likely]] {
        e->complete_ok<OpKind::RECV>(op, length, sender_tag);
    } else {
        e->finish(op, status, length, sender_tag);
    }
}

void Engine::record_latency(KindCounters* k, std::int64_t t0) noexcept {
    const std::int64_t now =
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
    const auto ns = static_cast<std::uint64_t>(now > t0 ? now - t0 : 0);
    int b = ns == 0 ? 0 : static_cast<int>(std::bit_width(ns));
    if (b >= LatencyHistogram::kBuckets) b = LatencyHistogram::kBuckets - 1;
    bump(k->latency[static_cast<std::size_t>(b)]);
    bump(k->lat_count);
    bump(k->lat_sum, ns);
    if (ns > k->lat_max.load(std::memory_order_relaxed)) k->lat_max.store(ns, std::memory_order_relaxed);
}

void Engine::record_early(const Operation* op) noexcept {
    KindCounters* k = counters_for(op->kind);
    const auto r = static_cast<std::size_t>(op->result.result);
    if (k != nullptr && r < k->early.size()) k->early[r].fetch_add(1, std::memory_order_relaxed);
}

void Engine::inspect(Operation* op) noexcept {
    auto* out = static_cast<std::vector<InFlightOp>*>(const_cast<void*>(op->buffer));
    const std::int64_t now_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch()).count();
    try {
        for (const Operation* o = tracked_head_; o != nullptr; o = o->reg_next) {
            InFlightOp e;
            e.kind = o->kind == OpKind::SEND ? "send" : o->kind == OpKind::RECV ? "recv" : "connect";
            e.tag = o->tag;
            e.size = o->size;
            e.peer = o->conn != nullptr ? o->conn->peer : std::string("-");
            e.age_ms = now_ms - o->posted_at_ms;
            e.cancel_requested = cancel_result(o) != 0;
            out->push_back(std::move(e));
        }
        op->result.result = RdmaResult::SUCCESS;
    } catch (...) {
        op->result.result = RdmaResult::FAILURE;
    }
    op->flags |= kOpCompleted;
}

MetricsSnapshot Engine::metrics() const noexcept {
    MetricsSnapshot s;
    auto fill = [](const KindCounters& k, OpStats& o) {
        o.completed = 0;
        o.bytes = k.bytes.load(std::memory_order_relaxed);
        for (std::size_t i = 0; i < o.by_result.size(); ++i) {
            const std::uint64_t early = k.early[i].load(std::memory_order_relaxed);
            o.by_result[i] = k.by_result[i].load(std::memory_order_relaxed) + early;
            o.completed += o.by_result[i];
        }
        for (std::size_t i = 0; i < o.latency.buckets.size(); ++i)
            o.latency.buckets[i] = k.latency[i].load(std::memory_order_relaxed);
        o.latency.count = k.lat_count.load(std::memory_order_relaxed);
        o.latency.sum_ns = k.lat_sum.load(std::memory_order_relaxed);
        o.latency.max_ns = k.lat_max.load(std::memory_order_relaxed);
    };
    fill(send_stats_, s.send);
    fill(recv_stats_, s.recv);
    fill(connect_stats_, s.connect);
    s.connections_opened = conns_opened_.load(std::memory_order_relaxed);
    s.connections_lost = conns_lost_.load(std::memory_order_relaxed);
    s.connections_rejected = conns_rejected_.load(std::memory_order_relaxed);
    s.in_flight_sends = sends_in_flight_.load(std::memory_order_relaxed);
    s.in_flight_recvs = recvs_in_flight_.load(std::memory_order_relaxed);
    s.live_connections = live_count_.load(std::memory_order_relaxed);
    const std::uint64_t created = eps_created_.load(std::memory_order_relaxed);
    const std::uint64_t closed = eps_closed_.load(std::memory_order_relaxed);
    s.open_endpoints = created > closed ? created - closed : 0;
    s.recvs_polled = recvs_polled_.load(std::memory_order_relaxed);
    s.progress_handoffs = handoffs_.load(std::memory_order_relaxed);
    return s;
}

void Engine::cancel_op(Operation* op, RdmaResult r, const char* why) noexcept {
    if (op->request == nullptr || (op->flags & kOpCompleted)) return;
    op->flags |= kOpCancelling;
    op->cancel_result = r;
    op->cancel_detail = why;
    // May run the callback synchronously (then the op completes right here).
    ucp_request_cancel(worker_, op->request);
}

// ---------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------

RdmaState Engine::state() const noexcept {
    const auto base = static_cast<RdmaState>(base_state_.load(std::memory_order_acquire));
    if (base != RdmaState::CONNECTED) return base;
    if (sends_in_flight_.load(std::memory_order_relaxed) != 0) return RdmaState::SENDING;
    if (recvs_in_flight_.load(std::memory_order_relaxed) != 0) return RdmaState::RECEIVING;
    return RdmaState::CONNECTED;
}

bool Engine::state_matches(RdmaState target) const noexcept {
    const RdmaState s = state();
    if (target == RdmaState::CONNECTED) return is_connected_state(s);
    return s == target;
}

void Engine::set_base_state(RdmaState s) noexcept {
    const auto old = static_cast<RdmaState>(
        base_state_.exchange(static_cast<std::uint8_t>(s), std::memory_order_acq_rel));
    if (old == s) return;
    BTSP_LOG_INFO("State changed from %s to %s", to_string(old).data(), to_string(s).data());
    // Always through the waiters' mutex, never "only if waiter_count_ != 0": a waiter on
    // another thread checks the state and registers under that mutex, and could check just
    // before the exchange above and count itself just after a count read here, then sleep
    // through the change. Under the mutex it is either listed before we walk the list, or
    // it checks after the exchange. Base-state changes are rare (connections come and go).
    notify_waiters(false);
}

bool Engine::add_waiter(StateChangeAwaitable* w) noexcept {
    std::lock_guard<std::mutex> lock(waiters_mutex_);
    if (state_matches(w->target_)) {
        w->reached_ = true;
        return false;
    }
    if (!running_.load(std::memory_order_acquire)) {
        w->reached_ = false;
        return false;
    }
    w->prev_ = nullptr;
    w->next_ = waiters_head_;
    if (waiters_head_) waiters_head_->prev_ = w;
    waiters_head_ = w;
    waiter_count_.fetch_add(1, std::memory_order_release);
    return true;
}

void Engine::notify_waiters(bool shutting_down) noexcept {
    std::lock_guard<std::mutex> lock(waiters_mutex_);
    for (StateChangeAwaitable* w = waiters_head_; w != nullptr;) {
        StateChangeAwaitable* next = w->next_;
        const bool reached = state_matches(w->target_);
        if (reached || shutting_down) {
            if (w->prev_) w->prev_->next_ = w->next_; else waiters_head_ = w->next_;
            if (w->next_) w->next_->prev_ = w->prev_;
            w->prev_ = w->next_ = nullptr;
            w->reached_ = reached;
            waiter_count_.fetch_sub(1, std::memory_order_relaxed);
            push_ready(static_cast<ReadyNode*>(w));
        }
        w = next;
    }
}

}  // namespace btsp::detail
