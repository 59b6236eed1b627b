// btsp-perf — the same tests written directly on the UCP C API: the baseline.
//
// Same flow and configuration as the library: sockaddr client/server endpoints
// (UCP_EP_PARAMS_FLAGS_CLIENT_SERVER), UCP_ERR_HANDLING_MODE_PEER with an error handler,
// CM_REUSEADDR=y and MM_ERROR_HANDLING=y through ucp_config_modify (shared memory with
// PEER error handling), TAG|WAKEUP features, tag send/recv with NO_IMM_CMPL on receives.
// One thread, busy progress loop (ucp_worker_progress until the request completes).
#include "common.hpp"

#include <coroutine>
#include <ucp/api/ucp.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <thread>

namespace perf {
namespace {

using Clock = std::chrono::steady_clock;

// Worker-address exchange of the raw implementation (its own, like ucx_perftest's): the
// client sends kCmdHello with window = 1 followed by its worker address; the server
// answers with Reply and its own address, both sides create endpoints from the peer's
// worker address (the lanes ucx_perftest -e gets), and the server closes the sockaddr
// endpoint. window = 0 (--raw-sockaddr): data stays on the sockaddr endpoint.
constexpr std::uint64_t kTagAddr = 0xB75B'0000'0000'0006ull;
constexpr std::size_t kMaxAddress = 64 * 1024;

// ---- context / worker ----------------------------------------------------------------------
struct RawWorker {
    ucp_context_h context = nullptr;
    ucp_worker_h worker = nullptr;
    ucp_address_t* address = nullptr;
    std::size_t address_length = 0;

    bool init(std::uint32_t shm_fifo, std::string& err) {
        for (int attempt = 0; attempt < 2; ++attempt) {
            const bool with_shm = attempt == 0;
            ucp_config_t* config = nullptr;
            ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
            if (st != UCS_OK) {
                err = std::string("ucp_config_read: ") + ucs_status_string(st);
                return false;
            }
            (void)ucp_config_modify(config, "CM_REUSEADDR", "y");
            if (with_shm && ucp_config_modify(config, "MM_ERROR_HANDLING", "y") != UCS_OK) {
                ucp_config_release(config);
                continue;
            }
            // The library's FIFO depth (ManagerOptions::shm_fifo_size), under the same rule:
            // UCX's own environment variables win.
            if (shm_fifo != 0 && ucx_env_shm_fifo() == nullptr)
                (void)ucp_config_modify(config, "MM_FIFO_SIZE", std::to_string(shm_fifo).c_str());
            ucp_params_t params{};
            params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
            params.features = UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP;
            params.name = "btsp-perf-raw";
            st = ucp_init(&params, config, &context);
            ucp_config_release(config);
            if (st != UCS_OK) {
                context = nullptr;
                err = std::string("ucp_init: ") + ucs_status_string(st);
                continue;
            }
            ucp_worker_params_t wp{};
            wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE | UCP_WORKER_PARAM_FIELD_FLAGS;
            wp.thread_mode = UCS_THREAD_MODE_SINGLE;
            if (const char* tm = std::getenv("BTSP_PERF_RAW_THREAD_MODE")) {
                if (std::strcmp(tm, "serialized") == 0) wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;
                if (std::strcmp(tm, "multi") == 0) wp.thread_mode = UCS_THREAD_MODE_MULTI;
            }
            wp.flags = UCP_WORKER_FLAG_IGNORE_REQUEST_LEAK;
            st = ucp_worker_create(context, &wp, &worker);
            if (st != UCS_OK) {
                worker = nullptr;
                ucp_cleanup(context);
                context = nullptr;
                err = std::string("ucp_worker_create: ") + ucs_status_string(st);
                continue;
            }
            if (ucp_worker_get_address(worker, &address, &address_length) != UCS_OK) {
                address = nullptr;
                address_length = 0;
            }
            return true;
        }
        return false;
    }
    ~RawWorker() {
        if (address) ucp_worker_release_address(worker, address);
        if (worker) ucp_worker_destroy(worker);
        if (context) ucp_cleanup(context);
    }
};

// ---- endpoints -------------------------------------------------------------------------------
struct RawEp {
    ucp_ep_h ep = nullptr;
    bool failed = false;
    ucs_status_t status = UCS_OK;
};

void ep_error_cb(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
    auto* e = static_cast<RawEp*>(arg);
    e->failed = true;
    e->status = status;
}

bool resolve(const std::string& host, std::uint16_t port, sockaddr_storage& ss, socklen_t& len) {
    std::memset(&ss, 0, sizeof ss);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || res == nullptr) return false;
    const addrinfo* pick = res;
    for (const addrinfo* a = res; a; a = a->ai_next)
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    std::memcpy(&ss, pick->ai_addr, pick->ai_addrlen);
    len = static_cast<socklen_t>(pick->ai_addrlen);
    if (pick->ai_family == AF_INET)
        reinterpret_cast<sockaddr_in*>(&ss)->sin_port = htons(port);
    else
        reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port = htons(port);
    freeaddrinfo(res);
    return true;
}

// ---- requests --------------------------------------------------------------------------------
struct ReqState {
    bool done = false;
    ucs_status_t status = UCS_OK;
    std::size_t length = 0;
};

void send_cb(void* request, ucs_status_t status, void* user_data) {
    auto* s = static_cast<ReqState*>(user_data);
    s->status = status;
    s->done = true;
    ucp_request_free(request);
}

void recv_cb(void* request, ucs_status_t status, const ucp_tag_recv_info_t* info, void* user_data) {
    auto* s = static_cast<ReqState*>(user_data);
    s->status = status;
    s->length = info ? info->length : 0;
    s->done = true;
    ucp_request_free(request);
}

// Windowed streaming: completions only count.
struct Counter {
    std::uint64_t completed = 0;
    unsigned in_flight = 0;
    ucs_status_t error = UCS_OK;
};
void stream_send_cb(void* request, ucs_status_t status, void* user_data) {
    auto* c = static_cast<Counter*>(user_data);
    --c->in_flight;
    ++c->completed;
    if (status != UCS_OK) c->error = status;
    ucp_request_free(request);
}
void stream_recv_cb(void* request, ucs_status_t status, const ucp_tag_recv_info_t*, void* user_data) {
    auto* c = static_cast<Counter*>(user_data);
    --c->in_flight;
    ++c->completed;
    if (status != UCS_OK) c->error = status;
    ucp_request_free(request);
}

}  // namespace

// The raw UCP stream loops (common.hpp): `window` operations in flight, completions only
// count. Bounded: 120 s, or until *failed (the endpoint's error flag) is set.
ucs_status_t raw_send_stream(ucp_worker_h worker, ucp_ep_h ep, const void* buf, std::size_t size,
                             std::uint64_t iters, unsigned window, const bool* failed) {
    Counter cnt;
    ucp_request_param_t p;
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = stream_send_cb;
    p.user_data = &cnt;
    window = std::max(1u, window);
    std::uint64_t posted = 0;
    const std::uint64_t deadline = now_ns() + 120'000'000'000ull;
    std::uint64_t spins = 0;
    while (posted < iters && cnt.error == UCS_OK && !*failed) {
        if (cnt.in_flight < window) {
            const ucs_status_ptr_t sp = ucp_tag_send_nbx(ep, buf, size, kTagData, &p);
            ++posted;
            if (sp == nullptr) continue;
            if (UCS_PTR_IS_ERR(sp)) {
                cnt.error = UCS_PTR_STATUS(sp);
                break;
            }
            ++cnt.in_flight;
        } else {
            ucp_worker_progress(worker);
            if ((++spins & 0xFFFF) == 0 && now_ns() > deadline) break;
        }
    }
    while (cnt.in_flight > 0 && !*failed && now_ns() < deadline) ucp_worker_progress(worker);
    if (cnt.error != UCS_OK) return cnt.error;
    if (*failed) return UCS_ERR_CONNECTION_RESET;
    return cnt.in_flight == 0 && posted == iters ? UCS_OK : UCS_ERR_TIMED_OUT;
}

ucs_status_t raw_recv_stream(ucp_worker_h worker, void* buf, std::size_t size, std::uint64_t iters,
                             unsigned window, const bool* failed) {
    Counter cnt;
    ucp_request_param_t p;
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
    p.cb.recv = stream_recv_cb;
    p.user_data = &cnt;
    window = std::max(1u, window);
    std::uint64_t posted = 0;
    const std::uint64_t deadline = now_ns() + 120'000'000'000ull;
    std::uint64_t spins = 0;
    while (cnt.completed < iters && cnt.error == UCS_OK) {
        while (posted < iters && cnt.in_flight < window) {
            ++posted;
            ++cnt.in_flight;  // the callback may run inside the call
            const ucs_status_ptr_t sp = ucp_tag_recv_nbx(worker, buf, size, kTagData, ~std::uint64_t{0}, &p);
            if (UCS_PTR_IS_ERR(sp)) {
                cnt.error = UCS_PTR_STATUS(sp);
                --cnt.in_flight;
                break;
            }
        }
        ucp_worker_progress(worker);
        if (*failed || ((++spins & 0xFFFF) == 0 && now_ns() > deadline)) break;
    }
    if (cnt.error != UCS_OK) return cnt.error;  // pending receives stay posted
    if (cnt.completed < iters) return *failed ? UCS_ERR_CONNECTION_RESET : UCS_ERR_TIMED_OUT;
    return UCS_OK;
}

namespace {

// ---- --raw-coro: raw UCP plus a bare coroutine per message (receiving side) ------------
// The floor of any coroutine-per-message layer over UCP: each of `window` coroutines
// loops on a receive awaiter that posts ucp_tag_recv_nbx and suspends; the callback
// queues the coroutine, and the loop resumes the queued ones after ucp_worker_progress
// returns (as the library does). Nothing else: no registry, metrics, cancellation,
// argument checks or worker hand-off. docs/performance.md compares the library with it.
struct BareTask {
    struct promise_type {
        BareTask get_return_object() noexcept { return {}; }
        std::suspend_never initial_suspend() noexcept { return {}; }
        std::suspend_never final_suspend() noexcept { return {}; }  // the frame frees itself
        void return_void() noexcept {}
        void unhandled_exception() noexcept { std::terminate(); }
    };
};
struct BareSched {
    std::vector<std::coroutine_handle<>> ready;
    std::uint64_t posted = 0, completed = 0;
    ucs_status_t error = UCS_OK;
};
struct BareRecvOp {
    std::coroutine_handle<> waiter;
    BareSched* sched;
    ucs_status_t status;
    bool done;
};
void bare_recv_cb(void* request, ucs_status_t status, const ucp_tag_recv_info_t*, void* user_data) {
    auto* op = static_cast<BareRecvOp*>(user_data);
    op->status = status;
    op->done = true;
    ucp_request_free(request);
    op->sched->ready.push_back(op->waiter);
}
struct BareRecv {
    ucp_worker_h worker;
    void* buf;
    std::size_t size;
    BareSched* sched;
    BareRecvOp op{};
    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) noexcept {
        op.waiter = h;
        op.sched = sched;
        op.done = false;
        ucp_request_param_t p;
        p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
        p.cb.recv = bare_recv_cb;
        p.user_data = &op;
        const ucs_status_ptr_t sp = ucp_tag_recv_nbx(worker, buf, size, kTagData, ~std::uint64_t{0}, &p);
        if (UCS_PTR_IS_ERR(sp)) {
            op.status = UCS_PTR_STATUS(sp);
            return false;
        }
        if (op.done) {  // completed inside the call: the callback queued us last
            sched->ready.pop_back();
            return false;
        }
        return true;
    }
    ucs_status_t await_resume() const noexcept { return op.status; }
};
BareTask bare_receiver(ucp_worker_h worker, void* buf, std::size_t size, BareSched* sched, std::uint64_t total) {
    while (sched->posted < total && sched->error == UCS_OK) {
        ++sched->posted;
        const ucs_status_t st = co_await BareRecv{worker, buf, size, sched};
        if (st != UCS_OK) sched->error = st;
        else ++sched->completed;
    }
}

// Base with the blocking send/recv helpers used by client and server.
class RawPeer {
protected:
    RawWorker w_;
    std::vector<char> sbuf_, rbuf_;

    // One progress call of a busy wait. After ~4096 calls without the awaited event it
    // also yields the core: UCX's async thread (connection establishment, wire-up) runs on
    // the same core as this loop when the process is pinned, and would otherwise wait for
    // the scheduler's time slice (tens of ms per connection).
    void progress(std::uint64_t spins) {
        ucp_worker_progress(w_.worker);
        if (spins > 4096) sched_yield();
    }

    static void grow(std::vector<char>& v, std::size_t n) {
        if (v.size() < n) v.assign(n, 'x');
    }

    // Progresses until s.done; gives up on a pending recv if `ep` fails (UCX leaves
    // worker-level recvs pending forever when the peer dies) or after `timeout`.
    ucs_status_t wait(ReqState& s, ucs_status_ptr_t sp, const RawEp* ep, bool is_recv,
                      double timeout_s = 30.0) {
        if (s.done) return s.status;  // callback ran inside the call
        if (sp == nullptr) return UCS_OK;
        if (UCS_PTR_IS_ERR(sp)) return UCS_PTR_STATUS(sp);
        std::uint64_t spins = 0;
        const std::uint64_t deadline = now_ns() + static_cast<std::uint64_t>(timeout_s * 1e9);
        while (!s.done) {
            progress(++spins);
            if ((spins & 0xFFFF) == 0 || (ep && ep->failed)) {
                if ((ep && ep->failed) || now_ns() > deadline) {
                    if (is_recv) {
                        ucp_request_cancel(w_.worker, sp);
                        while (!s.done) ucp_worker_progress(w_.worker);
                        return ep && ep->failed ? ep->status : UCS_ERR_TIMED_OUT;
                    }
                    if (now_ns() > deadline) return UCS_ERR_TIMED_OUT;  // request leaks; we exit soon
                }
            }
        }
        return s.status;
    }

    ucs_status_t send(const RawEp& ep, const void* buf, std::size_t size, std::uint64_t tag) {
        ReqState s;
        ucp_request_param_t p;
        p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
        p.cb.send = send_cb;
        p.user_data = &s;
        const ucs_status_ptr_t sp = ucp_tag_send_nbx(ep.ep, buf, size, tag, &p);
        return wait(s, sp, &ep, false);
    }

    ucs_status_t recv(void* buf, std::size_t size, std::uint64_t tag, const RawEp* ep,
                      double timeout_s = 30.0) {
        ReqState s;
        ucp_request_param_t p;
        p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                         UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
        p.cb.recv = recv_cb;
        p.user_data = &s;
        const ucs_status_ptr_t sp = ucp_tag_recv_nbx(w_.worker, buf, size, tag, ~std::uint64_t{0}, &p);
        return wait(s, sp, ep, true, timeout_s);
    }

    ucs_status_t flush(RawEp& e) {
        ReqState fs;
        ucp_request_param_t p;
        p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
        p.cb.send = send_cb;
        p.user_data = &fs;
        const ucs_status_t st = wait(fs, ucp_ep_flush_nbx(e.ep, &p), &e, false, 10.0);
        return e.failed ? e.status : st;
    }

    bool ep_from_address(RawEp& e, const void* address, std::string& err) {
        ucp_ep_params_t ep{};
        ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLER |
                        UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
        ep.address = static_cast<const ucp_address_t*>(address);
        ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
        ep.err_handler.cb = ep_error_cb;
        ep.err_handler.arg = &e;
        const ucs_status_t st = ucp_ep_create(w_.worker, &ep, &e.ep);
        if (st != UCS_OK) {
            e.ep = nullptr;
            err = std::string("ucp_ep_create(worker address): ") + ucs_status_string(st);
            return false;
        }
        return true;
    }

    // Closes an endpoint: flush (graceful) unless forced, bounded in time; FORCE fallback.
    void close_ep(RawEp& e, bool force) {
        if (!e.ep) return;
        if (e.failed) force = true;
        ucp_request_param_t p;
        p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
        p.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
        ucs_status_ptr_t sp = ucp_ep_close_nbx(e.ep, &p);
        if (sp != nullptr && !UCS_PTR_IS_ERR(sp)) {
            const auto deadline = Clock::now() + std::chrono::milliseconds(500);
            std::uint64_t spins = 0;
            while (ucp_request_check_status(sp) == UCS_INPROGRESS && Clock::now() < deadline)
                progress(++spins);
            if (ucp_request_check_status(sp) == UCS_INPROGRESS && !force) {
                ucp_request_free(sp);
                e.ep = nullptr;
                return;
            }
            ucp_request_free(sp);
        }
        e.ep = nullptr;
    }
};

std::string st_text(const char* what, ucs_status_t st) {
    return std::string(what) + ": " + ucs_status_string(st);
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------
class RawClient final : public ClientBackend, private RawPeer {
public:
    explicit RawClient(const BackendOptions& o) : opts_(o) {}
    ~RawClient() override { close(); }

    bool open(const std::string& host, std::uint16_t port, std::string& err) override {
        if (!ensure_worker(err)) return false;
        const auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<long>(opts_.connect_retry_s * 1000));
        for (;;) {
            ucs_status_t st = UCS_OK;
            if (connect_pair(host, port, sock_, main_, st, err)) {
                // The server closes its sockaddr endpoint once the worker-address one is up;
                // close ours when that reset arrives (an open tcp endpoint costs a syscall
                // in every progress call).
                const auto until = Clock::now() + std::chrono::milliseconds(500);
                std::uint64_t spins = 0;
                while (sock_.ep && !sock_.failed && Clock::now() < until) progress(++spins);
                close_ep(sock_, true);
                if (std::getenv("BTSP_PERF_EP_INFO")) ucp_ep_print_info(main_.ep, stderr);
                return true;
            }
            if (!err.empty()) return false;  // not a "server not up yet" failure
            if (Clock::now() > deadline) {
                err = st_text("connect", st);
                return false;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    }

    bool lat(std::size_t size, std::uint64_t iters, std::vector<double>* samples, std::string& err) override {
        grow(sbuf_, size);
        grow(rbuf_, size);
        if (samples) samples->assign(iters, 0.0);
        Cmd c;
        c.kind = kCmdLat;
        c.size = size;
        c.iters = iters;
        char ready[8];
        ucs_status_t st = send(main_, &c, sizeof c, kTagCmd);
        if (st == UCS_OK) st = recv(ready, sizeof ready, kTagReady, &main_);
        if (st != UCS_OK) {
            err = st_text("lat setup", st);
            return false;
        }
        char* sb = sbuf_.data();
        char* rb = rbuf_.data();
        const bool check = size >= sizeof(std::uint64_t);
        std::uint64_t prev = now_ns();
        for (std::uint64_t i = 0; i < iters; ++i) {
            if (check) std::memcpy(sb, &i, sizeof i);
            st = send(main_, sb, size, kTagData);
            if (st != UCS_OK) break;
            st = recv(rb, size, kTagData, &main_);
            if (st != UCS_OK) break;
            if (check && std::memcmp(rb, &i, sizeof i) != 0) {
                err = "lat: the reply does not match the request (iteration " + std::to_string(i) + ")";
                return false;
            }
            const std::uint64_t t = now_ns();
            if (samples) (*samples)[i] = static_cast<double>(t - prev) / 2.0;
            prev = t;
        }
        if (st != UCS_OK) {
            err = st_text("lat", st);
            return false;
        }
        return true;
    }

    bool stream(std::size_t size, std::uint64_t iters, unsigned window, double& seconds,
                std::string& err) override {
        grow(sbuf_, size);
        Cmd c;
        c.kind = kCmdStream;
        c.size = size;
        c.iters = iters;
        c.window = window;
        char ready[8];
        ucs_status_t st = send(main_, &c, sizeof c, kTagCmd);
        if (st == UCS_OK) st = recv(ready, sizeof ready, kTagReady, &main_);
        if (st != UCS_OK) {
            err = st_text("stream setup", st);
            return false;
        }
        const std::uint64_t t0 = now_ns();
        const ucs_status_t stream_st = raw_send_stream(w_.worker, main_.ep, sbuf_.data(), size, iters, window,
                                                       &main_.failed);
        Reply done;
        if (stream_st == UCS_OK) st = recv(&done, sizeof done, kTagDone, &main_, 120.0);
        seconds = static_cast<double>(now_ns() - t0) * 1e-9;
        if (stream_st != UCS_OK || st != UCS_OK) {
            err = st_text("stream", stream_st != UCS_OK ? stream_st : st);
            return false;
        }
        return true;
    }

    bool idle(unsigned ms, double& client_cpu_ns, double& server_cpu_ns, double& wall_ns,
              std::string& err) override {
        Cmd c;
        c.kind = kCmdIdle;
        c.arg = ms;
        char ready[8];
        ucs_status_t st = send(main_, &c, sizeof c, kTagCmd);
        if (st == UCS_OK) st = recv(ready, sizeof ready, kTagReady, &main_);
        if (st != UCS_OK) {
            err = st_text("idle", st);
            return false;
        }
        // A raw UCP program without a wakeup loop polls while it waits: that is its idle cost.
        const std::uint64_t c0 = process_cpu_ns(), t0 = now_ns();
        const std::uint64_t end = t0 + std::uint64_t{ms} * 1'000'000ull;
        while (now_ns() < end)
            for (int i = 0; i < 1000; ++i) ucp_worker_progress(w_.worker);
        client_cpu_ns = static_cast<double>(process_cpu_ns() - c0);
        wall_ns = static_cast<double>(now_ns() - t0);
        Reply rep;
        st = recv(&rep, sizeof rep, kTagDone, &main_, 60.0);
        if (st != UCS_OK) {
            err = st_text("idle reply", st);
            return false;
        }
        server_cpu_ns = static_cast<double>(rep.a);
        return true;
    }

    void close() override {
        close_ep(main_, false);
        close_ep(sock_, true);
    }

    bool conn_once(const std::string& host, std::uint16_t port, double& ns, std::string& err) override {
        if (!ensure_worker(err)) return false;
        RawEp sock, data;
        const std::uint64_t t0 = now_ns();
        ucs_status_t st = UCS_OK;
        if (!connect_pair(host, port, sock, data, st, err)) {
            if (err.empty()) err = st_text("connect", st);
            close_ep(data, true);
            close_ep(sock, true);
            return false;
        }
        Cmd c;
        c.kind = kCmdConnPing;
        char pong[8];
        st = send(data, &c, sizeof c, kTagCmd);
        if (st == UCS_OK) st = recv(pong, sizeof pong, kTagPong, &data, 10.0);
        ns = static_cast<double>(now_ns() - t0);
        close_ep(data, st != UCS_OK);
        close_ep(sock, true);
        if (st != UCS_OK) {
            err = st_text("conn", st);
            return false;
        }
        return true;
    }

    bool quit(const std::string& host, std::uint16_t port, std::string& err) override {
        if (!main_.ep) {
            ucs_status_t cst = UCS_OK;
            if (!ensure_worker(err)) return false;
            if (!connect_pair(host, port, sock_, main_, cst, err)) {
                if (err.empty()) err = st_text("connect", cst);
                return false;
            }
        }
        Cmd c;
        c.kind = kCmdQuit;
        Reply rep;
        ucs_status_t st = send(main_, &c, sizeof c, kTagCmd);
        if (st == UCS_OK) st = recv(&rep, sizeof rep, kTagDone, &main_, 10.0);
        close_ep(main_, st != UCS_OK);
        close_ep(sock_, true);
        if (st != UCS_OK && st != UCS_ERR_CONNECTION_RESET) {
            err = st_text("quit", st);
            return false;
        }
        return true;
    }

private:
    // Sockaddr connection + (unless --raw-sockaddr) worker-address endpoint. On success
    // `data` is the endpoint to use (with --raw-sockaddr the sockaddr endpoint itself;
    // `sock` then stays empty). On failure: err empty = connection refused/reset (a retry
    // may help), status in `st`; err set = fatal.
    bool connect_pair(const std::string& host, std::uint16_t port, RawEp& sock, RawEp& data,
                      ucs_status_t& st, std::string& err) {
        err.clear();
        const bool fast = !opts_.raw_sockaddr && w_.address != nullptr;
        RawEp& se = fast ? sock : data;  // the error handler's arg is the object it was made in
        if (!create_ep(se, host, port, err)) return false;
        st = flush(se);  // nothing is sent before wire-up is complete (UCX 1.13)
        Cmd c;
        c.kind = kCmdHello;
        c.arg = static_cast<std::uint64_t>(Impl::RAW);
        c.window = fast ? 1 : 0;
        c.size = fast ? w_.address_length : 0;
        Reply rep;
        if (st == UCS_OK) st = send(se, &c, sizeof c, kTagCmd);
        if (st == UCS_OK && fast) st = send(se, w_.address, w_.address_length, kTagAddr);
        // (no failure check on these two receives: the server retires the sockaddr endpoint
        // right after sending them, and its reset may be reported before they are matched)
        if (st == UCS_OK) st = recv(&rep, sizeof rep, kTagDone, nullptr, 10.0);
        if (st == UCS_OK && rep.a != static_cast<std::uint64_t>(Impl::RAW)) {
            err = "the server runs the btsp implementation; start it with --raw too";
            close_ep(se, true);
            return false;
        }
        if (st == UCS_OK && fast) {
            grow(abuf_, kMaxAddress);
            ReqState rs;
            ucp_request_param_t p;
            p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                             UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
            p.cb.recv = recv_cb;
            p.user_data = &rs;
            st = wait(rs, ucp_tag_recv_nbx(w_.worker, abuf_.data(), abuf_.size(), kTagAddr, ~std::uint64_t{0}, &p),
                      nullptr, true, 10.0);
            if (st == UCS_OK) {
                data = RawEp{};
                if (!ep_from_address(data, abuf_.data(), err)) {
                    close_ep(se, true);
                    return false;
                }
                st = flush(data);
            }
        }
        if (st != UCS_OK) {
            if (fast) close_ep(data, true);
            close_ep(se, true);
            if (st != UCS_ERR_NOT_CONNECTED && st != UCS_ERR_UNREACHABLE && st != UCS_ERR_CONNECTION_RESET)
                err = st_text("connect", st);
            return false;
        }
        return true;
    }

    bool ensure_worker(std::string& err) {
        if (w_.worker) return true;
        pin_to_cpu(opts_.cpu);
        return w_.init(shm_fifo_depth(opts_), err);
    }

    bool create_ep(RawEp& e, const std::string& host, std::uint16_t port, std::string& err) {
        sockaddr_storage ss;
        socklen_t len = 0;
        if (!resolve(host, port, ss, len)) {
            err = "cannot resolve " + host;
            return false;
        }
        e = RawEp{};
        ucp_ep_params_t ep{};
        ep.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
        ep.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
        ep.sockaddr.addr = reinterpret_cast<const sockaddr*>(&ss);
        ep.sockaddr.addrlen = len;
        ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
        ep.err_handler.cb = ep_error_cb;
        ep.err_handler.arg = &e;
        const ucs_status_t st = ucp_ep_create(w_.worker, &ep, &e.ep);
        if (st != UCS_OK) {
            e.ep = nullptr;
            err = st_text("ucp_ep_create", st);
            return false;
        }
        return true;
    }

    BackendOptions opts_;
    RawEp sock_, main_;
    std::vector<char> abuf_;
};

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------
class RawServer : private RawPeer {
public:
    int run(const BackendOptions& o, std::uint16_t port, int port_fd) {
        pin_to_cpu(o.cpu);
        bare_coroutines_ = o.raw_coro;
        std::string err;
        if (!w_.init(shm_fifo_depth(o), err) || !listen(port, err)) {
            std::fprintf(stderr, "btsp-perf raw server: %s\n", err.c_str());
            if (port_fd >= 0) report_port(port_fd, 0);
            return 2;
        }
        if (port_fd >= 0)
            report_port(port_fd, port_);
        else
            std::fprintf(stderr, "btsp-perf server (raw UCP): listening on port %u\n", port_);
        int rc = serve();
        shutdown();
        return rc;
    }

private:
    static void conn_handler(ucp_conn_request_h req, void* arg) {
        static_cast<RawServer*>(arg)->pending_.push_back(req);
    }

    bool listen(std::uint16_t port, std::string& err) {
        sockaddr_in in{};
        in.sin_family = AF_INET;
        in.sin_port = htons(port);
        in.sin_addr.s_addr = htonl(INADDR_ANY);
        ucp_listener_params_t lp{};
        lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
        lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&in);
        lp.sockaddr.addrlen = sizeof in;
        lp.conn_handler.cb = conn_handler;
        lp.conn_handler.arg = this;
        const ucs_status_t st = ucp_listener_create(w_.worker, &lp, &listener_);
        if (st != UCS_OK) {
            listener_ = nullptr;
            err = st_text("ucp_listener_create", st);
            return false;
        }
        ucp_listener_attr_t attr{};
        attr.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
        port_ = port;
        if (ucp_listener_query(listener_, &attr) == UCS_OK && attr.sockaddr.ss_family == AF_INET)
            port_ = ntohs(reinterpret_cast<const sockaddr_in*>(&attr.sockaddr)->sin_port);
        return true;
    }

    // One client: its sockaddr endpoint and, after the address exchange, its worker-address
    // endpoint (which then carries all data).
    struct RawConn {
        RawEp sock, fast;
        RawEp& data() { return fast.ep ? fast : sock; }
        bool failed() const { return fast.ep ? fast.failed : sock.failed; }
    };

    // Accepts pending requests and closes failed endpoints (outside the hot loops).
    void service() {
        if (!closing_.empty()) reap_closing(false);
        while (!pending_.empty()) {
            ucp_conn_request_h req = pending_.front();
            pending_.erase(pending_.begin());
            auto conn = std::make_unique<RawConn>();
            ucp_ep_params_t ep{};
            ep.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLER |
                            UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
            ep.conn_request = req;
            ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
            ep.err_handler.cb = ep_error_cb;
            ep.err_handler.arg = &conn->sock;
            if (ucp_ep_create(w_.worker, &ep, &conn->sock.ep) == UCS_OK) {
                conns_.push_back(std::move(conn));
            } else {
                ucp_listener_reject(listener_, req);
            }
        }
        for (auto it = conns_.begin(); it != conns_.end();) {
            RawConn& c = **it;
            if (c.fast.ep && c.sock.ep && c.sock.failed) close_ep(c.sock, true);
            if (c.failed()) {
                close_ep(c.fast, true);
                close_ep(c.sock, true);
                it = conns_.erase(it);
            } else {
                ++it;
            }
        }
    }

    // The newest client: commands come from it (a connection-setup client pings only after
    // the previous one has closed).
    RawConn* current() { return conns_.empty() ? nullptr : conns_.back().get(); }

    // Waits for a command from any client, accepting connections meanwhile.
    bool next_command(Cmd& c) {
        ReqState s;
        ucp_request_param_t p;
        p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                         UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
        p.cb.recv = recv_cb;
        p.user_data = &s;
        const ucs_status_ptr_t sp = ucp_tag_recv_nbx(w_.worker, &c, sizeof c, kTagCmd, ~std::uint64_t{0}, &p);
        if (!s.done && UCS_PTR_IS_ERR(sp)) return false;
        std::uint64_t spins = 0;
        while (!s.done) {
            progress(++spins);
            if (!pending_.empty() || !closing_.empty() || any_failed()) service();
            if (spins > 200000) {
                // Waiting for a command is not measured: sleep on the worker's event fd so
                // that an idle raw server does not steal the core from a measurement of the
                // other implementation (btsp-perf --compare keeps both servers up).
                idle_block();
                spins = 100000;
            }
        }
        service();
        return s.status == UCS_OK;
    }

    void idle_block() {
        int fd = -1;
        if (ucp_worker_get_efd(w_.worker, &fd) != UCS_OK) return;
        if (ucp_worker_arm(w_.worker) != UCS_OK) return;  // BUSY: events pending
        pollfd p{fd, POLLIN, 0};
        (void)::poll(&p, 1, 100);
    }

    bool any_failed() const {
        for (const auto& c : conns_)
            if (c->failed() || (c->fast.ep && c->sock.ep && c->sock.failed)) return true;
        return false;
    }

    // Hello: with window = 1 the client's worker address follows; answer with ours, move
    // to worker-address endpoints and close the sockaddr one.
    void hello(RawConn& conn, const Cmd& c) {
        Reply rep;
        rep.a = static_cast<std::uint64_t>(Impl::RAW);
        if (c.window == 0 || w_.address == nullptr || conn.fast.ep) {
            (void)send(conn.sock, &rep, sizeof rep, kTagDone);
            return;
        }
        grow(rbuf_, kMaxAddress);
        ucs_status_t st = recv(rbuf_.data(), kMaxAddress, kTagAddr, &conn.sock, 10.0);
        std::string err;
        if (st == UCS_OK && !ep_from_address(conn.fast, rbuf_.data(), err)) {
            std::fprintf(stderr, "btsp-perf raw server: %s\n", err.c_str());
            st = UCS_ERR_INVALID_ADDR;
        }
        if (st == UCS_OK) st = send(conn.sock, &rep, sizeof rep, kTagDone);
        if (st == UCS_OK) st = send(conn.sock, w_.address, w_.address_length, kTagAddr);
        if (st == UCS_OK) st = flush(conn.fast);
        if (st != UCS_OK) {
            std::fprintf(stderr, "btsp-perf raw server: address exchange: %s\n", ucs_status_string(st));
            close_ep(conn.fast, true);
            return;
        }
        retire(conn.sock);  // the client sees a reset and closes its side
    }

    // Graceful close without waiting for it (service() releases the request later).
    void retire(RawEp& e) {
        ucp_request_param_t p;
        p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
        p.flags = 0;
        const ucs_status_ptr_t sp = ucp_ep_close_nbx(e.ep, &p);
        e.ep = nullptr;
        if (sp != nullptr && !UCS_PTR_IS_ERR(sp)) closing_.push_back(sp);
    }

    void reap_closing(bool wait_all) {
        const auto deadline = Clock::now() + std::chrono::milliseconds(wait_all ? 500 : 0);
        std::uint64_t spins = 0;
        do {
            for (auto it = closing_.begin(); it != closing_.end();) {
                if (ucp_request_check_status(*it) != UCS_INPROGRESS) {
                    ucp_request_free(*it);
                    it = closing_.erase(it);
                } else {
                    ++it;
                }
            }
            if (closing_.empty() || !wait_all) break;
            progress(++spins);
        } while (Clock::now() < deadline);
        if (wait_all) {
            for (void* r : closing_) ucp_request_free(r);
            closing_.clear();
        }
    }

    int serve() {
        for (;;) {
            Cmd c;
            if (!next_command(c)) {
                std::fprintf(stderr, "btsp-perf raw server: command receive failed\n");
                return 3;
            }
            RawConn* conn = current();
            if (!conn) continue;
            if (c.kind == kCmdHello) {
                hello(*conn, c);
                continue;
            }
            RawEp* ep = &conn->data();
            switch (c.kind) {
                case kCmdLat: serve_lat(*ep, c); break;
                case kCmdStream: serve_stream(*ep, c); break;
                case kCmdConnPing: {
                    char pong[8] = {};
                    (void)send(*ep, pong, sizeof pong, kTagPong);
                    break;
                }
                case kCmdIdle: {
                    char ready[8] = {};
                    (void)send(*ep, ready, sizeof ready, kTagReady);
                    const std::uint64_t c0 = process_cpu_ns(), t0 = now_ns();
                    const std::uint64_t end = t0 + c.arg * 1'000'000ull;
                    while (now_ns() < end)
                        for (int i = 0; i < 1000; ++i) ucp_worker_progress(w_.worker);
                    Reply rep;
                    rep.a = process_cpu_ns() - c0;
                    rep.b = now_ns() - t0;
                    (void)send(*ep, &rep, sizeof rep, kTagDone);
                    break;
                }
                case kCmdStat: {
                    // The raw client does not run conns; answered anyway so that the
                    // command never stops the server (no endpoint count kept here).
                    StatReply rep;
                    rep.rss_kib = process_rss_kib();
                    rep.live = conns_.size();
                    (void)send(*ep, &rep, sizeof rep, kTagDone);
                    break;
                }
                case kCmdQuit: {
                    Reply rep;
                    (void)send(*ep, &rep, sizeof rep, kTagDone);
                    // Give the client time to receive it and close first.
                    const auto deadline = Clock::now() + std::chrono::seconds(1);
                    while (!ep->failed && Clock::now() < deadline) ucp_worker_progress(w_.worker);
                    return 0;
                }
                default:
                    std::fprintf(stderr, "btsp-perf raw server: unknown command %u\n", c.kind);
                    return 3;
            }
        }
    }

    void serve_lat(RawEp& ep, const Cmd& c) {
        grow(sbuf_, c.size);
        grow(rbuf_, c.size);
        char ready[8] = {};
        ucs_status_t st = send(ep, ready, sizeof ready, kTagReady);
        void* rb = rbuf_.data();
        for (std::uint64_t i = 0; st == UCS_OK && i < c.iters; ++i) {
            st = recv(rb, c.size, kTagData, &ep);
            if (st == UCS_OK) st = send(ep, rb, c.size, kTagData);  // echo what arrived
        }
        if (st != UCS_OK) std::fprintf(stderr, "btsp-perf raw server: lat: %s\n", ucs_status_string(st));
    }

    // Not inlined: bench/instructions_per_message.sh counts instructions inside it only.
    [[gnu::noinline]] void serve_stream(RawEp& ep, const Cmd& c) {
        grow(rbuf_, c.size);
        char ready[8] = {};
        if (send(ep, ready, sizeof ready, kTagReady) != UCS_OK) return;
        if (bare_coroutines_) {
            serve_stream_bare(ep, c);
            return;
        }
        const ucs_status_t st = raw_recv_stream(w_.worker, rbuf_.data(), c.size, c.iters, c.window, &ep.failed);
        if (st != UCS_OK) {
            std::fprintf(stderr, "btsp-perf raw server: stream: %s\n", ucs_status_string(st));
            return;  // pending receives stay; the process exits soon
        }
        Reply done;
        (void)send(ep, &done, sizeof done, kTagDone);
    }

    // serve_stream with --raw-coro: the receives are awaited by `window` bare coroutines.
    [[gnu::noinline]] void serve_stream_bare(RawEp& ep, const Cmd& c) {
        // On failure, receives stay posted and coroutines suspended until the process
        // exits: the scheduler they point at is then deliberately not freed.
        auto sched = std::make_unique<BareSched>();
        sched->ready.reserve(std::max(1u, c.window));
        std::vector<std::coroutine_handle<>> batch;
        batch.reserve(sched->ready.capacity());
        for (unsigned i = 0; i < std::max(1u, c.window); ++i)
            bare_receiver(w_.worker, rbuf_.data(), c.size, sched.get(), c.iters);
        const std::uint64_t deadline = now_ns() + 120'000'000'000ull;
        std::uint64_t spins = 0;
        while (sched->completed < c.iters && sched->error == UCS_OK) {
            ucp_worker_progress(w_.worker);
            if (!sched->ready.empty()) {
                batch.swap(sched->ready);
                for (std::coroutine_handle<> h : batch) h.resume();
                batch.clear();
            }
            if (ep.failed || ((++spins & 0xFFFF) == 0 && now_ns() > deadline)) break;
        }
        if (sched->completed < c.iters || sched->error != UCS_OK) {
            std::fprintf(stderr, "btsp-perf raw server: stream (bare coroutines): %s\n",
                         ucs_status_string(sched->error != UCS_OK ? sched->error : UCS_ERR_TIMED_OUT));
            (void)sched.release();
            return;
        }
        Reply done;
        (void)send(ep, &done, sizeof done, kTagDone);
    }

    void shutdown() {
        for (ucp_conn_request_h req : pending_) ucp_listener_reject(listener_, req);
        pending_.clear();
        if (listener_) ucp_listener_destroy(listener_);
        listener_ = nullptr;
        for (auto& c : conns_) {
            close_ep(c->fast, c->fast.failed);
            close_ep(c->sock, c->sock.failed);
        }
        conns_.clear();
        reap_closing(true);
    }

    ucp_listener_h listener_ = nullptr;
    bool bare_coroutines_ = false;  // --raw-coro
    std::uint16_t port_ = 0;
    std::vector<ucp_conn_request_h> pending_;
    std::vector<std::unique_ptr<RawConn>> conns_;
    std::vector<void*> closing_;
};

}  // namespace

std::unique_ptr<ClientBackend> make_raw_client(const BackendOptions& o) {
    return std::make_unique<RawClient>(o);
}

int run_raw_server(const BackendOptions& o, std::uint16_t port, int port_fd) {
    RawServer s;
    return s.run(o, port, port_fd);
}

}  // namespace perf
