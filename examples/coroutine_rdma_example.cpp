// coroutine_rdma_example — a tour of the whole btsp API in one program.
//
//   ./build/bin/coroutine_rdma_example
//
// Two managers in one process (a server on an ephemeral port and a client) walk through:
// logging, ManagerOptions, lifecycle and states, connect / wait_for_connection /
// wait_for_state, tag_send / tag_recv (bytes_transferred, sender_tag), masked receives,
// many operations in flight, error handling (bad arguments, refused connect, busy port,
// truncation, peer loss, shutdown), deadlines and cancellation (timeout, stop_token,
// with_timeout, request_cancel), admission control, RdmaOpResult::reason() and
// operator<<, the three progress modes, RdmaTask / sync_wait, and shutdown. Each step checks what it shows;
// the exit code is the number of failed checks (0 = all good). Bounded: ~2 s typical,
// a watchdog ends it after 60 s.
#include "rpc/coroutine_rdma_manager.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <ucs/type/status.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <mutex>
#include <string>
#include <stop_token>
#include <string_view>
#include <thread>
#include <vector>

using namespace btsp;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

std::atomic<int> g_failures{0};

void section(std::string_view title) { std::cout << "\n== " << title << " ==" << std::endl; }

void expect(bool ok, std::string_view what) {
    std::cout << (ok ? "  [ok]   " : "  [FAIL] ") << what << std::endl;
    if (!ok) g_failures.fetch_add(1);
}

double ms_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// A port on 127.0.0.1 that nobody listens on (bound, then released).
std::uint16_t unused_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 1;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof(a);
    std::uint16_t port = 1;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
        port = ntohs(a.sin_port);
    ::close(fd);
    return port;
}

// Starts an operation now (RdmaTask runs eagerly up to its first suspension) and lets
// the caller await its result later: the way to have several operations in flight.
RdmaTask<RdmaOpResult> start(RdmaAwaitable op) { co_return co_await std::move(op); }

// Waits for a state in a task of its own (so it can run while we do something else).
RdmaTask<bool> start_wait(StateChangeAwaitable w) { co_return co_await std::move(w); }

// Echo service: receives `iters` messages of `size` bytes and sends each one back.
RdmaTask<int> echo(CoroutineRdmaManager& m, std::size_t size, int iters) {
    std::vector<char> buf(size);
    for (int i = 0; i < iters; ++i) {
        auto r = co_await m.tag_recv(buf.data(), buf.size(), 1);
        if (!r) co_return i;
        if (!co_await m.tag_send(buf.data(), r.bytes_transferred, 2)) co_return i;
    }
    co_return iters;
}

// Ping-pong of `iters` round trips; returns the mean half round trip in µs (or -1).
RdmaTask<double> ping_pong(CoroutineRdmaManager& client, std::size_t size, int iters) {
    std::vector<char> out(size, 'x');
    std::vector<char> in(size);
    const auto t0 = Clock::now();
    for (int i = 0; i < iters; ++i) {
        if (!co_await client.tag_send(out.data(), out.size(), 1)) co_return -1.0;
        if (!co_await client.tag_recv(in.data(), in.size(), 2)) co_return -1.0;
    }
    co_return std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / iters / 2.0;
}

// Receives one byte on tag 15, then blocks its thread for 150 ms (what the spec's
// examples do with sleep_for inside coroutines).
RdmaTask<void> sleeper(CoroutineRdmaManager& m, char* out) {
    co_await m.tag_recv(out, 1, 15);
    std::this_thread::sleep_for(150ms);
}

// Log sink that keeps the library's messages so the tour can show them.
struct CapturedLog {
    std::mutex mu;
    std::vector<std::string> lines;
};
CapturedLog g_log;

RdmaTask<void> tour() {
    // ---------------------------------------------------------------------------------
    section("1. logging: level and sink");
    set_log_level(LogLevel::INFO);  // default WARN (or $BTSP_LOG_LEVEL)
    set_log_sink([](LogLevel level, std::string_view msg) {
        std::lock_guard<std::mutex> lock(g_log.mu);
        g_log.lines.push_back(std::string(to_string(level)) + " " + std::string(msg));
    });
    LogLevel parsed{};
    expect(parse_log_level("debug", parsed) && parsed == LogLevel::DEBUG, "parse_log_level(\"debug\")");
    expect(log_level() == LogLevel::INFO, "log_level() == INFO after set_log_level");

    // ---------------------------------------------------------------------------------
    section("2. ManagerOptions and progress modes");
    ManagerOptions opts = ManagerOptions::from_env();  // defaults + BTSP_* variables
    opts.connect_timeout = 2000ms;
    opts.close_timeout = 200ms;
    opts.listen_address = "127.0.0.1";  // default: all IPv4 interfaces
    ProgressMode mode{};
    expect(parse_progress_mode("polling", mode) && mode == ProgressMode::POLLING,
           "parse_progress_mode(\"polling\")");
    std::cout << "  progress mode " << opts.progress_mode << ", adaptive spin "
              << opts.adaptive_spin.count() << " us, connect timeout " << opts.connect_timeout.count()
              << " ms, hand-off after " << opts.handoff_threshold.count() << " ms" << std::endl;

    // ---------------------------------------------------------------------------------
    section("3. before initialize");
    CoroutineRdmaManager server(opts);
    CoroutineRdmaManager client(opts);
    char scratch[64] = {};
    {
        RdmaOpResult r = co_await client.tag_send(scratch, sizeof(scratch), 1);
        std::cout << "  tag_send before initialize: " << r << std::endl;
        expect(r.result == RdmaResult::FAILURE, "operation before initialize fails at once (FAILURE)");
        expect(client.get_state() == RdmaState::IDLE && !client.is_running(), "state IDLE, not running");
    }

    // ---------------------------------------------------------------------------------
    section("4. initialize: server on an ephemeral port, client");
    expect(server.initialize(true, 0), "server.initialize(true, 0)");
    const std::uint16_t port = server.listening_port();
    std::cout << "  server listening on port " << port << ", state " << server.get_state() << std::endl;
    expect(port != 0 && server.get_state() == RdmaState::LISTENING, "listening_port() != 0, state LISTENING");
    expect(server.is_running() && !server.is_connected(), "is_running() && !is_connected()");
    expect(!server.initialize(true, 0), "a second initialize() returns false");
    expect(client.initialize(false, 0), "client.initialize(false, 0)");
    expect(client.get_state() == RdmaState::IDLE, "client state IDLE");
    expect(server.ucx_context() != nullptr && server.ucx_worker() != nullptr, "raw UCX context/worker available");
    {
        std::cout << "  (UCX prints an ERROR line for the busy port below; that is expected)" << std::endl;
        CoroutineRdmaManager busy(opts);
        expect(!busy.initialize(true, port), "initialize on a busy port returns false");
        std::cout << "  busy: state " << busy.get_state() << ", last_error(): " << busy.last_error() << std::endl;
        expect(busy.get_state() == RdmaState::ERROR && !busy.last_error().empty(), "state ERROR with a reason");
    }

    // ---------------------------------------------------------------------------------
    section("5. connect: errors");
    {
        RdmaOpResult r = co_await client.connect("", port);
        std::cout << "  connect(\"\", port): " << r << std::endl;
        expect(r.result == RdmaResult::FAILURE, "empty host: FAILURE at once");
        r = co_await client.connect("127.0.0.1", 0);
        expect(r.result == RdmaResult::FAILURE, "port 0: FAILURE at once");
        const std::uint16_t dead = unused_port();
        const auto t0 = Clock::now();
        r = co_await client.connect("127.0.0.1", dead);
        std::cout << "  connect to refused port " << dead << ": " << r << " after " << std::fixed
                  << std::setprecision(1) << ms_since(t0) << " ms" << std::endl;
        expect(r.result == RdmaResult::DISCONNECTED, "nobody listening: DISCONNECTED");
        expect(client.get_state() == RdmaState::IDLE, "client back to IDLE after a failed connect");
    }

    // ---------------------------------------------------------------------------------
    section("6. connect, wait_for_connection, wait_for_state");
    {
        auto accepted = start_wait(server.wait_for_connection());
        const auto t0 = Clock::now();
        RdmaOpResult r = co_await client.connect("127.0.0.1", port);
        std::cout << "  connect: " << r << " in " << std::fixed << std::setprecision(2) << ms_since(t0)
                  << " ms, client state " << client.get_state() << std::endl;
        expect(r.success(), "connect() SUCCESS");
        expect(co_await accepted, "server: wait_for_connection() -> true");
        expect(co_await server.wait_for_state(RdmaState::CONNECTED), "server: wait_for_state(CONNECTED) -> true");
        expect(client.is_connected() && server.is_connected(), "is_connected() on both sides");
        expect(client.connection_count() == 1 && server.connection_count() == 1, "connection_count() == 1");
        expect(client.ucx_endpoint() != nullptr, "ucx_endpoint() available");
        r = co_await client.connect("127.0.0.1", port);
        expect(r.result == RdmaResult::FAILURE, "connect() while connected: FAILURE");
    }

    // ---------------------------------------------------------------------------------
    section("7. tag_send / tag_recv: real length and sender tag");
    {
        char buf[64] = {};
        auto recv = start(server.tag_recv(buf, sizeof(buf), 7));
        const char msg[] = "hello, btsp!";
        RdmaOpResult s = co_await client.tag_send(msg, sizeof(msg), 7);
        RdmaOpResult r = co_await recv;
        std::cout << "  send: " << s << "; recv: " << r << ", sender_tag " << r.sender_tag << ", text \""
                  << buf << "\"" << std::endl;
        expect(s.success() && s.bytes_transferred == sizeof(msg), "send bytes_transferred == message size");
        expect(r.success() && r.bytes_transferred == sizeof(msg), "recv bytes_transferred == real length (13), not 64");
        expect(r.sender_tag == 7 && std::strcmp(buf, msg) == 0, "sender_tag and content");

        // And back: the server can send too (to its oldest live connection).
        std::uint64_t v = 0;
        auto back = start(client.tag_recv(&v, sizeof(v), 8));
        const std::uint64_t answer = 42;
        expect((co_await server.tag_send(&answer, sizeof(answer), 8)).success(), "server -> client send");
        expect((co_await back).success() && v == 42, "client received 42");
    }

    // ---------------------------------------------------------------------------------
    section("8. masked receive: (msg_tag & mask) == (tag & mask)");
    {
        std::uint32_t v = 0;
        auto recv = start(server.tag_recv(&v, sizeof(v), 0xAB00, 0xFF00));
        const std::uint32_t payload = 0x1234;
        co_await client.tag_send(&payload, sizeof(payload), 0xAB42);
        RdmaOpResult r = co_await recv;
        std::cout << "  recv(tag 0xAB00, mask 0xFF00) got sender_tag 0x" << std::hex << r.sender_tag << std::dec
                  << std::endl;
        expect(r.success() && r.sender_tag == 0xAB42 && v == payload, "matched tag 0xAB42, sender_tag reported");
    }

    // ---------------------------------------------------------------------------------
    section("9. many operations in flight, messages sent in reverse order");
    {
        constexpr int kN = 8;
        std::vector<std::uint32_t> slots(kN, 0);
        std::vector<RdmaTask<RdmaOpResult>> recvs;
        for (int i = 0; i < kN; ++i)
            recvs.push_back(start(server.tag_recv(&slots[static_cast<std::size_t>(i)], sizeof(std::uint32_t),
                                                  1000 + static_cast<std::uint64_t>(i))));
        std::vector<std::uint32_t> values(kN);
        std::vector<RdmaTask<RdmaOpResult>> sends;
        for (int i = kN - 1; i >= 0; --i) {
            values[static_cast<std::size_t>(i)] = 100u + static_cast<std::uint32_t>(i);
            sends.push_back(start(client.tag_send(&values[static_cast<std::size_t>(i)], sizeof(std::uint32_t),
                                                  1000 + static_cast<std::uint64_t>(i))));
        }
        bool all = true;
        for (auto& t : sends) all = (co_await t).success() && all;
        for (int i = 0; i < kN; ++i) {
            RdmaOpResult r = co_await recvs[static_cast<std::size_t>(i)];
            all = all && r.success() && slots[static_cast<std::size_t>(i)] == 100u + static_cast<std::uint32_t>(i);
        }
        expect(all, "8 receives and 8 sends in flight; each receive got the message with its tag");
    }

    // ---------------------------------------------------------------------------------
    section("10. truncation: the message is longer than the buffer");
    {
        char small[8] = {};
        auto recv = start(server.tag_recv(small, sizeof(small), 11));
        std::vector<char> big(100, 'b');
        co_await client.tag_send(big.data(), big.size(), 11);
        RdmaOpResult r = co_await recv;
        std::cout << "  recv: " << r << " (status " << r.status << " = " << ucs_status_string(static_cast<ucs_status_t>(r.status))
                  << ")" << std::endl;
        expect(r.result == RdmaResult::FAILURE && r.status == UCS_ERR_MESSAGE_TRUNCATED,
               "FAILURE, status UCS_ERR_MESSAGE_TRUNCATED");
        char buf[16] = {};
        auto again = start(server.tag_recv(buf, sizeof(buf), 12));
        co_await client.tag_send("ok", 3, 12);
        expect((co_await again).success() && std::strcmp(buf, "ok") == 0, "the connection stays usable");
    }

    // ---------------------------------------------------------------------------------
    section("11. RdmaTask and sync_wait");
    {
        // A task is awaitable; its value comes out of co_await (or get() once done()).
        auto t = start(client.tag_send("x", 1, 13));
        char c = 0;
        auto r2 = start(server.tag_recv(&c, 1, 13));
        RdmaOpResult a = co_await t;
        RdmaOpResult b = co_await r2;
        expect(t.done() && a.success() && b.success() && c == 'x', "tasks awaited; done() and results");
        expect(t.get().success(), "get() on a finished task returns its value");
        // sync_wait blocks a thread (not a coroutine) until an awaitable completes; shown
        // from a plain thread here because we are inside a coroutine.
        bool ok = false;
        std::thread th([&] {
            char d = 0;
            auto rr = start(server.tag_recv(&d, 1, 14));
            ok = sync_wait(client.tag_send("y", 1, 14)).success() && sync_wait(rr).success() && d == 'y';
        });
        th.join();
        expect(ok, "sync_wait(tag_send) and sync_wait(task) from a plain thread");

        // Progress hand-off: a coroutine that blocks its thread (here: sleeps 150 ms on
        // the server's progress thread) does not stall the manager's other operations.
        char first = 0, second = 0;
        auto blocker = sleeper(server, &first);
        auto other = start(server.tag_recv(&second, 1, 16));
        co_await client.tag_send("a", 1, 15);  // wakes the sleeper, which then blocks
        std::this_thread::sleep_for(2ms);
        const auto t0 = Clock::now();
        co_await client.tag_send("b", 1, 16);
        RdmaOpResult ro = co_await other;
        const double waited = ms_since(t0);
        std::cout << "  while a coroutine blocked the progress thread for 150 ms, another receive completed in "
                  << std::fixed << std::setprecision(1) << waited << " ms" << std::endl;
        expect(ro.success() && second == 'b' && waited < 120.0, "progress hand-off keeps operations completing");
        co_await blocker;
    }

    // ---------------------------------------------------------------------------------
    section("12. deadlines and cancellation");
    {
        char buf[16] = {};
        // A deadline on one operation: nobody sends tag 500, so it ends TIMEOUT.
        auto t0 = Clock::now();
        RdmaOpResult r = co_await server.tag_recv(buf, sizeof(buf), 500).timeout(50ms);
        std::cout << "  tag_recv(...).timeout(50ms): " << r << " after " << std::fixed << std::setprecision(1)
                  << ms_since(t0) << " ms" << std::endl;
        expect(r.result == RdmaResult::TIMEOUT, "operation deadline: TIMEOUT");

        // Cancellation with a std::stop_token.
        std::stop_source stop;
        auto pending = start(server.tag_recv(buf, sizeof(buf), 501).cancel_with(stop.get_token()));
        stop.request_stop();
        r = co_await pending;
        std::cout << "  cancel_with(token) then request_stop(): " << r << std::endl;
        expect(r.result == RdmaResult::CANCELLED, "stop_token: CANCELLED");

        // with_timeout(operation, d) throws TimeoutError, like the spec's with_timeout.
        bool threw = false;
        try {
            co_await with_timeout(server.tag_recv(buf, sizeof(buf), 502), 30ms);
        } catch (const TimeoutError& e) {
            threw = true;
            std::cout << "  with_timeout(op, 30ms) threw: " << e.what() << std::endl;
        }
        expect(threw, "with_timeout(operation) throws TimeoutError");

        // with_timeout(task, d): cancels whatever the task is awaiting, however deep.
        threw = false;
        try {
            co_await with_timeout(start(server.tag_recv(buf, sizeof(buf), 503)), 30ms);
        } catch (const TimeoutError&) {
            threw = true;
        }
        expect(threw, "with_timeout(task) throws TimeoutError");

        // RdmaTask::request_cancel() from outside the task.
        auto task = start(server.tag_recv(buf, sizeof(buf), 504));
        task.request_cancel();
        r = co_await task;
        expect(r.result == RdmaResult::CANCELLED, "RdmaTask::request_cancel(): CANCELLED");

        // None of this disturbed the connection: the buffers were never written later.
        auto ok = start(server.tag_recv(buf, sizeof(buf), 505));
        co_await client.tag_send("still ok", 9, 505);
        r = co_await ok;
        expect(r.success() && std::strcmp(buf, "still ok") == 0, "the connection is still usable");

        // Sizes beyond ManagerOptions::max_message_size fail at once.
        r = co_await client.tag_send(buf, opts.max_message_size + 1, 506);
        std::cout << "  tag_send(size > max_message_size): " << r << std::endl;
        expect(r.result == RdmaResult::FAILURE, "oversized message: FAILURE at once");
    }

    // ---------------------------------------------------------------------------------
    section("13. admission control: max_connections, allowed_clients");
    {
        ManagerOptions o = opts;
        o.max_connections = 1;
        o.allowed_clients = {"127.0.0.1", "::1"};
        CoroutineRdmaManager guarded(o);
        CoroutineRdmaManager first(opts);
        CoroutineRdmaManager second(opts);
        if (guarded.initialize(true, 0) && first.initialize(false, 0) && second.initialize(false, 0)) {
            const std::uint16_t p = guarded.listening_port();
            RdmaOpResult a = co_await first.connect("127.0.0.1", p);
            RdmaOpResult b = co_await second.connect("127.0.0.1", p);
            std::cout << "  first client: " << a << "; second client: " << b << std::endl;
            expect(a.success(), "first client accepted");
            expect(b.result == RdmaResult::DISCONNECTED, "second client rejected (max_connections = 1)");
        } else {
            expect(false, "initialize");
        }
    }

    // ---------------------------------------------------------------------------------
    section("14. the peer goes away; shutdown with operations in flight");
    {
        std::uint64_t v = 0;
        auto pending_client = start(client.tag_recv(&v, sizeof(v), 99));  // never sent
        auto pending_server = start(server.tag_recv(&v, sizeof(v), 98));  // never sent
        auto idle = start_wait(client.wait_for_state(RdmaState::IDLE));
        server.shutdown();  // callable from any thread, including its own coroutines
        RdmaOpResult rs = co_await pending_server;
        RdmaOpResult rc = co_await pending_client;
        std::cout << "  server's own pending recv: " << rs << std::endl;
        std::cout << "  client's pending recv:     " << rc << std::endl;
        expect(rs.result == RdmaResult::DISCONNECTED, "server op in flight at shutdown: DISCONNECTED");
        expect(rc.result == RdmaResult::DISCONNECTED, "client op when the peer went away: DISCONNECTED");
        expect(co_await idle, "client returns to IDLE (and may connect again)");
        expect(server.get_state() == RdmaState::SHUTDOWN && !server.is_running(), "server state SHUTDOWN");
        RdmaOpResult late = co_await server.tag_send(&v, sizeof(v), 1);
        std::cout << "  tag_send after shutdown: " << late << std::endl;
        expect(late.result == RdmaResult::DISCONNECTED, "operation after shutdown: DISCONNECTED at once");
        RdmaOpResult nc = co_await client.tag_send(&v, sizeof(v), 1);
        expect(nc.result == RdmaResult::DISCONNECTED, "tag_send without a connection: DISCONNECTED");
        expect(!server.initialize(true, 0), "initialize() after shutdown returns false");
        server.shutdown();  // idempotent
        client.shutdown();
        expect(!(co_await client.wait_for_connection()), "wait_for_connection() after shutdown -> false");
    }

    // ---------------------------------------------------------------------------------
    section("15. progress modes (2000 round trips of 8 bytes each, same process)");
    for (ProgressMode m : {ProgressMode::POLLING, ProgressMode::BLOCKING, ProgressMode::ADAPTIVE}) {
        ManagerOptions o = opts;
        o.progress_mode = m;
        CoroutineRdmaManager s(o);
        CoroutineRdmaManager c(o);
        if (!s.initialize(true, 0) || !c.initialize(false, 0)) {
            expect(false, "initialize");
            continue;
        }
        auto accepted = start_wait(s.wait_for_connection());
        if (!(co_await c.connect("127.0.0.1", s.listening_port())) || !(co_await accepted)) {
            expect(false, "connect");
            continue;
        }
        constexpr int kIters = 2000;
        auto server_side = echo(s, 8, kIters);
        const double half_rtt = co_await ping_pong(c, 8, kIters);
        const int echoed = co_await server_side;
        std::cout << "  " << std::left << std::setw(9) << to_string(m) << std::right
                  << " mean half round trip " << std::fixed << std::setprecision(2) << half_rtt << " us"
                  << std::endl;
        expect(half_rtt > 0 && echoed == kIters, std::string(to_string(m)) + ": all round trips completed");
        c.shutdown();
        s.shutdown();
    }

    // ---------------------------------------------------------------------------------
    section("16. what the library logged (INFO)");
    {
        std::lock_guard<std::mutex> lock(g_log.mu);
        std::size_t state_lines = 0;
        for (const auto& l : g_log.lines)
            if (l.find("State changed") != std::string::npos) ++state_lines;
        std::cout << "  " << g_log.lines.size() << " messages, " << state_lines
                  << " of them state changes; the first few:" << std::endl;
        for (std::size_t i = 0; i < std::min<std::size_t>(6, g_log.lines.size()); ++i)
            std::cout << "    " << g_log.lines[i] << std::endl;
        expect(state_lines > 0, "state changes are logged at INFO");
    }
    // The managers of this coroutine are destroyed here (the destructor calls shutdown()).
}

}  // namespace

int main() {
    std::atomic<bool> finished{false};
    std::thread watchdog([&finished] {
        const auto deadline = Clock::now() + 60s;
        while (!finished.load() && Clock::now() < deadline) std::this_thread::sleep_for(10ms);
        if (!finished.load()) {
            std::cerr << "coroutine_rdma_example: watchdog: no progress for 60 s" << std::endl;
            std::_Exit(3);
        }
    });
    int rc = 0;
    try {
        sync_wait(tour());
    } catch (const std::exception& e) {
        std::cerr << "exception: " << e.what() << std::endl;
        rc = 1;
    }
    finished.store(true);
    watchdog.join();
    set_log_sink({});  // back to the default stderr sink
    const int failures = g_failures.load();
    std::cout << "\n" << (failures == 0 ? "all checks passed" : std::to_string(failures) + " check(s) FAILED")
              << std::endl;
    return rc != 0 ? rc : std::min(failures, 100);
}
