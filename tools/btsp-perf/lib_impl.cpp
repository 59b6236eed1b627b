// btsp-perf — the tests on the btsp library (CoroutineRdmaManager + RdmaTask).
//
// Every test body is one coroutine started with sync_wait from the main thread. Its
// first operation is handed to the progress thread; from then on the coroutine runs on
// the progress thread and every operation is posted to UCX directly (the fast path that
// users get inside their own coroutines).
#include "common.hpp"

#include <btsp/btsp.hpp>

#include <dirent.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace perf {
namespace {

using btsp::CoroutineRdmaManager;
using btsp::RdmaOpResult;
using btsp::RdmaResult;
using btsp::RdmaTask;
using btsp::sync_wait;

btsp::ManagerOptions make_options(const BackendOptions& o) {
    btsp::ManagerOptions m = btsp::ManagerOptions::from_env();
    if (o.mode_given) m.progress_mode = o.mode;
    if (o.cpu >= 0) m.progress_cpu = o.cpu;
    if (o.shm_fifo >= 0) m.shm_fifo_size = static_cast<std::uint32_t>(o.shm_fifo);
    if (o.recv_poll >= 0) m.recv_poll = static_cast<std::uint32_t>(o.recv_poll);
    return m;
}

std::string describe(const char* what, const RdmaOpResult& r) {
    return std::string(what) + ": " + std::string(btsp::to_string(r.result)) + " (" +
           std::string(r.reason()) + ")";
}

void grow(std::vector<char>& v, std::size_t n) {
    if (v.size() < n) v.assign(n, 'x');
}

// --lib-raw-loops: one side of a stream as raw UCP loops (raw_send_stream /
// raw_recv_stream) on the manager's worker, held with lock_worker() for the whole stream.
// That needs the progress thread: a coroutine not on it (one that never suspended, or
// resumed where its operation completed at once) first awaits a receive that times out,
// which resumes it there.
RdmaTask<RdmaOpResult> raw_loops_on(CoroutineRdmaManager& m, bool send, void* buf, std::size_t size,
                                    std::uint64_t iters, unsigned window) {
    RdmaOpResult r;
    r.result = RdmaResult::FAILURE;
    r.detail = "--lib-raw-loops: cannot lock the manager's worker";
    for (int attempt = 0; attempt < 3; ++attempt) {
        {
            btsp::WorkerGuard g = m.lock_worker();
            ucp_ep_h ep = m.ucx_endpoint();
            if (g.owns() && (!send || ep != nullptr)) {
                const bool failed = false;  // endpoint errors reach the library; the loops' deadline bounds them
                const ucs_status_t st = send ? raw_send_stream(g.worker(), ep, buf, size, iters, window, &failed)
                                             : raw_recv_stream(g.worker(), buf, size, iters, window, &failed);
                r.result = st == UCS_OK ? RdmaResult::SUCCESS : RdmaResult::FAILURE;
                r.status = st;
                r.detail = st == UCS_OK ? nullptr : ucs_status_string(st);
                co_return r;
            }
        }
        char none = 0;
        const RdmaOpResult hop = co_await m.tag_recv(&none, sizeof none, kTagNever).timeout(std::chrono::microseconds(10));
        if (hop.result != RdmaResult::TIMEOUT) co_return hop.success() ? r : hop;
    }
    co_return r;
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------
class LibClient final : public ClientBackend {
public:
    explicit LibClient(const BackendOptions& o) : opts_(o) {}
    ~LibClient() override { close(); }

    bool open(const std::string& host, std::uint16_t port, std::string& err) override {
        if (!connect_manager(m_, host, port, err)) return false;
        Reply rep;
        const bool ok = sync_wait(hello(*m_, rep, err));
        if (!ok) return false;
        if (rep.a != static_cast<std::uint64_t>(Impl::LIB)) {
            err = "the server runs the raw-UCP implementation; start it without --raw (or use --raw here)";
            return false;
        }
        return true;
    }

    bool lat(std::size_t size, std::uint64_t iters, std::vector<double>* samples,
             std::string& err) override {
        grow(sbuf_, size);
        grow(rbuf_, size);
        if (samples) samples->assign(iters, 0.0);
        return sync_wait(lat_task(size, iters, samples, err));
    }

    bool stream(std::size_t size, std::uint64_t iters, unsigned window, double& seconds,
                std::string& err) override {
        grow(sbuf_, size);
        tasks_.clear();
        tasks_.reserve(window);
        return sync_wait(stream_task(size, iters, window, seconds, err));
    }

    bool idle(unsigned ms, double& client_cpu_ns, double& server_cpu_ns, double& wall_ns,
              std::string& err) override {
        Cmd c;
        c.kind = kCmdIdle;
        c.arg = ms;
        char ready[8];
        RdmaOpResult r = sync_wait(m_->tag_send(&c, sizeof c, kTagCmd));
        if (r) r = sync_wait(m_->tag_recv(ready, sizeof ready, kTagReady));
        if (!r) {
            err = describe("idle", r);
            return false;
        }
        const std::uint64_t c0 = process_cpu_ns(), t0 = now_ns();
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
        client_cpu_ns = static_cast<double>(process_cpu_ns() - c0);
        wall_ns = static_cast<double>(now_ns() - t0);
        Reply rep;
        r = sync_wait(m_->tag_recv(&rep, sizeof rep, kTagDone));
        if (!r) {
            err = describe("idle reply", r);
            return false;
        }
        server_cpu_ns = static_cast<double>(rep.a);
        return true;
    }

    void close() override {
        if (m_) m_->shutdown();
        m_.reset();
    }

    bool conn_once(const std::string& host, std::uint16_t port, double& ns, std::string& err) override {
        auto m = std::make_unique<CoroutineRdmaManager>(make_options(opts_));
        if (!m->initialize(false, 0)) {
            err = "initialize: " + m->last_error();
            return false;
        }
        const std::uint64_t t0 = now_ns();
        std::uint64_t t1 = 0;
        const bool ok = sync_wait(conn_task(*m, host, port, t1, err));
        ns = static_cast<double>(t1 - t0);
        m->shutdown();
        return ok;
    }

    bool conns(const std::string& host, std::uint16_t port, const std::vector<unsigned>& counts,
               std::vector<ConnsStep>& steps, std::string& how, std::string& err) override {
        steps.clear();
        if (!m_) {
            err = "conns needs the main connection (it is closed)";
            return false;
        }
        // The extra connections. A btsp client manager holds one connection (a second
        // connect() fails at once, "already connected"); if the first extra manager refuses
        // a second one, every further connection gets a manager of its own, as
        // RdmaConnectionPool does. Whatever happens, they are all shut down before return.
        std::vector<std::unique_ptr<CoroutineRdmaManager>> extra;
        bool shared = true;
        // Their progress hand-off watchdog wakes every handoff_threshold (5 ms) even while
        // idle, ~0.7 % of a core per manager: with hundreds of managers on the client's core
        // that alone starves them (heartbeats missed, connects timing out). These managers
        // run no user code, so the hand-off is off unless BTSP_HANDOFF_MS asks for it.
        btsp::ManagerOptions xopts = make_options(opts_);
        const bool handoff_off = std::getenv("BTSP_HANDOFF_MS") == nullptr;
        if (handoff_off) xopts.handoff_threshold = std::chrono::milliseconds(0);
        struct CloseAll {
            std::vector<std::unique_ptr<CoroutineRdmaManager>>& v;
            ~CloseAll() { shutdown_all(v); }
        } close_all{extra};

        ConnsStep base;
        if (!stat_settled(0, base.server, err)) return false;
        base.client_rss_kib = process_rss_kib();
        steps.push_back(base);
        std::size_t held = 0;
        bool ok = true;
        for (const unsigned target : counts) {
            ConnsStep st;
            st.n = target;
            while (ok && held < target) {
                if (extra.empty() || !shared) {
                    extra.push_back(std::make_unique<CoroutineRdmaManager>(xopts));
                    if (!extra.back()->initialize(false, 0)) {
                        err = "initialize (client manager for connection " + std::to_string(held + 1) +
                              "): " + extra.back()->last_error();
                        ok = false;
                        break;
                    }
                }
                CoroutineRdmaManager& m = *extra.back();
                std::uint64_t ns = 0;
                const RdmaOpResult r = sync_wait(timed_connect(m, host, port, ns));
                if (!r && shared && r.result == RdmaResult::FAILURE && m.connection_count() > 0) {
                    shared = false;  // this manager already holds its one connection
                    continue;
                }
                if (!r) {
                    err = describe(("connect #" + std::to_string(held + 1)).c_str(), r);
                    ok = false;
                    break;
                }
                st.setup_ns.push_back(static_cast<double>(ns));
                ++held;
            }
            if (!ok) break;
            if (!stat_settled(held, st.server, err)) return false;  // the main connection broke
            st.client_rss_kib = process_rss_kib();
            steps.push_back(st);
        }
        how = held <= 1 ? "one extra client manager"
              : shared  ? "one extra client manager holding all of them"
                        : "one client manager per connection: a btsp client manager holds one";
        if (handoff_off) how += "; hand-off watchdog off in them";
        if (!ok) {
            err += " (after " + std::to_string(held) + " extra connections";
            // Each client manager is a UCX context + worker + threads, ~15 file descriptors.
            rlimit rl{};
            if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
                const long fds = open_fds();
                err += fds < 0 ? std::string("; no file descriptor left in this process")
                               : "; this process has " + std::to_string(fds) + " files open";
                err += ", limit " + std::to_string(static_cast<unsigned long long>(rl.rlim_cur)) + " (ulimit -n)";
            }
            err += ")";
        }
        shutdown_all(extra);
        // The server should be back to the main connection alone.
        ConnsStep after;
        after.after = true;
        std::string err2;
        if (!stat_settled(0, after.server, ok ? err : err2)) {
            if (!ok) err += "; then stat: " + err2;
            return false;
        }
        if (after.server.live != 1)
            std::fprintf(stderr, "btsp-perf: conns: the server still holds %llu connections after the extra ones closed\n",
                         static_cast<unsigned long long>(after.server.live));
        after.client_rss_kib = process_rss_kib();
        steps.push_back(after);
        return ok;
    }

    bool quit(const std::string& host, std::uint16_t port, std::string& err) override {
        if (!m_ && !connect_manager(m_, host, port, err)) return false;
        Cmd c;
        c.kind = kCmdQuit;
        Reply rep;
        RdmaOpResult r = sync_wait(m_->tag_send(&c, sizeof c, kTagCmd));
        if (r) r = sync_wait(m_->tag_recv(&rep, sizeof rep, kTagDone));
        close();
        if (!r && r.result != RdmaResult::DISCONNECTED) {
            err = describe("quit", r);
            return false;
        }
        return true;
    }

private:
    // Open file descriptors of this process; -1 if it cannot even open the directory.
    static long open_fds() {
        DIR* d = opendir("/proc/self/fd");
        if (!d) return -1;
        long n = 0;
        while (readdir(d) != nullptr) ++n;
        closedir(d);
        return n > 3 ? n - 3 : 0;  // ".", ".." and the directory's own descriptor
    }

    static void shutdown_all(std::vector<std::unique_ptr<CoroutineRdmaManager>>& v) {
        for (auto& m : v) m->shutdown();
        v.clear();
    }

    static RdmaTask<RdmaOpResult> timed_connect(CoroutineRdmaManager& m, const std::string& host,
                                                std::uint16_t port, std::uint64_t& ns) {
        const std::uint64_t t0 = now_ns();
        const RdmaOpResult r = co_await m.connect(host, port);
        ns = now_ns() - t0;
        co_return r;
    }

    RdmaTask<bool> stat_task(StatReply& out, std::string& err) {
        CoroutineRdmaManager& m = *m_;
        Cmd c;
        c.kind = kCmdStat;
        RdmaOpResult r = co_await m.tag_send(&c, sizeof c, kTagCmd);
        if (r) r = co_await m.tag_recv(&out, sizeof out, kTagDone).timeout(std::chrono::seconds(10));
        if (!r) {
            err = describe("stat", r);
            co_return false;
        }
        if (r.bytes_transferred != sizeof out) {
            err = "stat: the server's answer has " + std::to_string(r.bytes_transferred) + " bytes, not " +
                  std::to_string(sizeof out) + " (another btsp-perf version?)";
            co_return false;
        }
        co_return true;
    }

    // The server's state once it has caught up with `extra` extra connections: the client's
    // connect() can complete before the server has finished its side of the handshake, so
    // ask again (up to 2 s) until it counts extra + 1 connections and no endpoint is still
    // in a handshake.
    bool stat_settled(std::size_t extra, StatReply& out, std::string& err) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
        for (;;) {
            if (!sync_wait(stat_task(out, err))) return false;
            if ((out.live == extra + 1 && out.open_endpoints <= out.live) ||
                std::chrono::steady_clock::now() > deadline)
                return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
    }

    bool connect_manager(std::unique_ptr<CoroutineRdmaManager>& m, const std::string& host,
                         std::uint16_t port, std::string& err) {
        m = std::make_unique<CoroutineRdmaManager>(make_options(opts_));
        if (!m->initialize(false, 0)) {
            err = "initialize: " + m->last_error();
            m.reset();
            return false;
        }
        const auto deadline = std::chrono::steady_clock::now() +
                              std::chrono::milliseconds(static_cast<long>(opts_.connect_retry_s * 1000));
        for (;;) {
            const RdmaOpResult r = sync_wait(m->connect(host, port));
            if (r) return true;
            if (r.result != RdmaResult::DISCONNECTED || std::chrono::steady_clock::now() > deadline) {
                err = describe("connect", r);
                m.reset();
                return false;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));  // server not up yet
        }
    }

    static RdmaTask<bool> hello(CoroutineRdmaManager& m, Reply& rep, std::string& err) {
        Cmd c;
        c.kind = kCmdHello;
        c.arg = static_cast<std::uint64_t>(Impl::LIB);
        RdmaOpResult r = co_await m.tag_send(&c, sizeof c, kTagCmd);
        if (r) r = co_await m.tag_recv(&rep, sizeof rep, kTagDone);
        if (!r) {
            err = describe("hello", r);
            co_return false;
        }
        co_return true;
    }

    // Sends a test command and waits for the server's "ready".
    static RdmaTask<RdmaOpResult> start_command(CoroutineRdmaManager& m, const Cmd& c) {
        char ready[8];
        RdmaOpResult r = co_await m.tag_send(&c, sizeof c, kTagCmd);
        if (r) r = co_await m.tag_recv(ready, sizeof ready, kTagReady);
        co_return r;
    }

    RdmaTask<bool> lat_task(std::size_t size, std::uint64_t iters, std::vector<double>* samples,
                            std::string& err) {
        CoroutineRdmaManager& m = *m_;
        Cmd c;
        c.kind = kCmdLat;
        c.size = size;
        c.iters = iters;
        RdmaOpResult r = co_await start_command(m, c);
        if (!r) {
            err = describe("lat setup", r);
            co_return false;
        }
        char* sb = sbuf_.data();
        char* rb = rbuf_.data();
        const bool check = size >= sizeof(std::uint64_t);
        std::uint64_t prev = now_ns();
        for (std::uint64_t i = 0; i < iters; ++i) {
            if (check) std::memcpy(sb, &i, sizeof i);
            r = co_await m.tag_send(sb, size, kTagData);
            if (!r) break;
            r = co_await m.tag_recv(rb, size, kTagData);
            if (!r) break;
            if (check && (std::memcmp(rb, &i, sizeof i) != 0 || r.bytes_transferred != size)) {
                err = "lat: the reply does not match the request (iteration " + std::to_string(i) + ")";
                co_return false;
            }
            const std::uint64_t t = now_ns();
            if (samples) (*samples)[i] = static_cast<double>(t - prev) / 2.0;
            prev = t;
        }
        if (!r) {
            err = describe("lat", r);
            co_return false;
        }
        co_return true;
    }

    static RdmaTask<void> sender(CoroutineRdmaManager& m, const void* buf, std::size_t size,
                                 std::uint64_t& posted, std::uint64_t total, RdmaOpResult& fail) {
        while (posted < total && fail.success()) {
            ++posted;
            const RdmaOpResult r = co_await m.tag_send(buf, size, kTagData);
            if (!r) fail = r;
        }
    }

    RdmaTask<bool> stream_task(std::size_t size, std::uint64_t iters, unsigned window,
                               double& seconds, std::string& err) {
        CoroutineRdmaManager& m = *m_;
        Cmd c;
        c.kind = kCmdStream;
        c.size = size;
        c.iters = iters;
        c.window = window;
        RdmaOpResult r = co_await start_command(m, c);
        if (!r) {
            err = describe("stream setup", r);
            co_return false;
        }
        RdmaOpResult fail;
        fail.result = RdmaResult::SUCCESS;
        std::uint64_t posted = 0;
        const std::uint64_t t0 = now_ns();
        if (opts_.lib_raw_send) {
            // Diagnostic: raw UCP sends on the manager's worker and endpoint (after the
            // command's reply this coroutine runs on the progress thread).
            fail = co_await raw_loops_on(m, true, sbuf_.data(), size, iters, window);
        } else {
            for (unsigned i = 0; i < window; ++i)
                tasks_.push_back(sender(m, sbuf_.data(), size, posted, iters, fail));
            for (auto& t : tasks_) co_await t;
        }
        Reply done;
        if (fail) r = co_await m.tag_recv(&done, sizeof done, kTagDone);
        seconds = static_cast<double>(now_ns() - t0) * 1e-9;
        tasks_.clear();
        if (!fail || !r) {
            err = describe("stream", fail ? r : fail);
            co_return false;
        }
        co_return true;
    }

    static RdmaTask<bool> conn_task(CoroutineRdmaManager& m, const std::string& host,
                                    std::uint16_t port, std::uint64_t& t1, std::string& err) {
        RdmaOpResult r = co_await m.connect(host, port);
        if (!r) {
            t1 = now_ns();
            err = describe("connect", r);
            co_return false;
        }
        Cmd c;
        c.kind = kCmdConnPing;
        char pong[8];
        r = co_await m.tag_send(&c, sizeof c, kTagCmd);
        if (r) r = co_await m.tag_recv(pong, sizeof pong, kTagPong);
        t1 = now_ns();
        if (!r) {
            err = describe("conn ping", r);
            co_return false;
        }
        co_return true;
    }

    BackendOptions opts_;
    std::unique_ptr<CoroutineRdmaManager> m_;
    std::vector<char> sbuf_, rbuf_;
    std::vector<RdmaTask<void>> tasks_;
};

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------
class LibServer {
public:
    LibServer(CoroutineRdmaManager& m, const BackendOptions& o) : m_(m), opts_(o) {}

    RdmaTask<bool> lat(const Cmd c) {
        grow(sbuf_, c.size);
        grow(rbuf_, c.size);
        char ready[8] = {};
        RdmaOpResult r = co_await m_.tag_send(ready, sizeof ready, kTagReady);
        void* rb = rbuf_.data();
        for (std::uint64_t i = 0; r && i < c.iters; ++i) {
            r = co_await m_.tag_recv(rb, c.size, kTagData);
            if (r) r = co_await m_.tag_send(rb, c.size, kTagData);  // echo what arrived
        }
        if (!r) std::fprintf(stderr, "btsp-perf server: lat: %s\n", describe("op", r).c_str());
        co_return r.success();
    }

    static RdmaTask<void> receiver(CoroutineRdmaManager& m, void* buf, std::size_t size,
                                   std::uint64_t& posted, std::uint64_t total, RdmaOpResult& fail) {
        while (posted < total && fail.success()) {
            ++posted;
            const RdmaOpResult r = co_await m.tag_recv(buf, size, kTagData);
            if (!r) fail = r;
        }
    }

    RdmaTask<bool> stream(const Cmd c) {
        grow(rbuf_, c.size);
        tasks_.clear();
        tasks_.reserve(c.window);
        char ready[8] = {};
        RdmaOpResult r = co_await m_.tag_send(ready, sizeof ready, kTagReady);
        if (!r) co_return false;
        RdmaOpResult fail;
        fail.result = RdmaResult::SUCCESS;
        std::uint64_t posted = 0;
        if (opts_.lib_raw_recv) {
            fail = co_await raw_loops_on(m_, false, rbuf_.data(), c.size, c.iters, c.window);  // diagnostic
        } else {
            for (std::uint32_t i = 0; i < std::max<std::uint32_t>(c.window, 1); ++i)
                tasks_.push_back(receiver(m_, rbuf_.data(), c.size, posted, c.iters, fail));
            for (auto& t : tasks_) co_await t;
        }
        tasks_.clear();
        if (!fail) {
            std::fprintf(stderr, "btsp-perf server: stream: %s\n", describe("recv", fail).c_str());
            co_return false;
        }
        Reply done;
        r = co_await m_.tag_send(&done, sizeof done, kTagDone);
        co_return r.success();
    }

private:
    CoroutineRdmaManager& m_;
    const BackendOptions opts_;
    std::vector<char> sbuf_, rbuf_;
    std::vector<RdmaTask<void>> tasks_;
};

}  // namespace

std::unique_ptr<ClientBackend> make_lib_client(const BackendOptions& o) {
    return std::make_unique<LibClient>(o);
}

int run_lib_server(const BackendOptions& o, std::uint16_t port, int port_fd) {
    pin_to_cpu(o.cpu);
    CoroutineRdmaManager m(make_options(o));
    if (!m.initialize(true, port)) {
        std::fprintf(stderr, "btsp-perf server: initialize failed: %s\n", m.last_error().c_str());
        if (port_fd >= 0) report_port(port_fd, 0);
        return 2;
    }
    if (port_fd >= 0) {
        report_port(port_fd, m.listening_port());
    } else {
        std::fprintf(stderr, "btsp-perf server (btsp, %s mode): listening on port %u\n",
                     btsp::to_string(m.options().progress_mode).data(), m.listening_port());
    }
    LibServer server(m, o);
    for (;;) {
        if (!sync_wait(m.wait_for_connection())) return 3;
        Cmd c;
        const RdmaOpResult r = sync_wait(m.tag_recv(&c, sizeof c, kTagCmd));
        if (!r) {
            // The connection went away (a connection-setup client leaving): wait for the next.
            if (r.result == RdmaResult::DISCONNECTED && m.is_running()) continue;
            std::fprintf(stderr, "btsp-perf server: %s\n", describe("command", r).c_str());
            return 3;
        }
        switch (c.kind) {
            case kCmdHello: {
                Reply rep;
                rep.a = static_cast<std::uint64_t>(Impl::LIB);
                (void)sync_wait(m.tag_send(&rep, sizeof rep, kTagDone));
                break;
            }
            case kCmdLat:
                (void)sync_wait(server.lat(c));
                break;
            case kCmdStream:
                (void)sync_wait(server.stream(c));
                break;
            case kCmdConnPing: {
                // tag_send goes to the oldest live connection: wait until the previous
                // client's connection is gone so the pong reaches the one that pinged.
                const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
                while (m.connection_count() > 1 && std::chrono::steady_clock::now() < deadline)
                    std::this_thread::sleep_for(std::chrono::microseconds(20));
                char pong[8] = {};
                (void)sync_wait(m.tag_send(pong, sizeof pong, kTagPong));
                break;
            }
            case kCmdIdle: {
                char ready[8] = {};
                (void)sync_wait(m.tag_send(ready, sizeof ready, kTagReady));
                const std::uint64_t c0 = process_cpu_ns(), t0 = now_ns();
                std::this_thread::sleep_for(std::chrono::milliseconds(c.arg));
                Reply rep;
                rep.a = process_cpu_ns() - c0;
                rep.b = now_ns() - t0;
                (void)sync_wait(m.tag_send(&rep, sizeof rep, kTagDone));
                break;
            }
            case kCmdStat: {
                // Answered on the oldest connection (tag_send's), the client's main one.
                StatReply rep;
                rep.rss_kib = process_rss_kib();
                rep.live = m.connection_count();
                rep.open_endpoints = m.metrics().open_endpoints;
                (void)sync_wait(m.tag_send(&rep, sizeof rep, kTagDone));
                break;
            }
            case kCmdQuit: {
                Reply rep;
                (void)sync_wait(m.tag_send(&rep, sizeof rep, kTagDone));
                // Let the client receive the reply and close first (a clean close on both sides).
                const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
                while (m.connection_count() > 0 && std::chrono::steady_clock::now() < deadline)
                    std::this_thread::sleep_for(std::chrono::milliseconds(1));
                m.shutdown();
                return 0;
            }
            default:
                std::fprintf(stderr, "btsp-perf server: unknown command %u\n", c.kind);
                return 3;
        }
    }
}

}  // namespace perf
