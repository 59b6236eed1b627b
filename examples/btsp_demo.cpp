// btsp_demo — a loopback demo that shows btsp working and how fast it is.
//
//   ./build/bin/btsp_demo [--iters N] [--mode polling|blocking|adaptive]
//
// Starts a copy of itself as the peer process (it listens on an ephemeral port on
// 127.0.0.1 and reports the port through a pipe), connects to it, then:
//   1. one verified transfer: 1 MiB of random bytes, checksummed by the peer and echoed
//      back intact;
//   2. ping-pong latency (half a round trip, p50 / p99) for 8 B, 4 KiB, 64 KiB, 1 MiB;
//   3. streaming bandwidth with a window of 16 sends in flight, for 64 KiB and 1 MiB.
// Each measurement is capped by a time budget, so the run stays well under 20 s; a
// watchdog ends it (exit code 3) if anything hangs. Exit code 0 only if every transfer
// succeeded and verified.
#include "rpc/coroutine_rdma_manager.hpp"

#include "example_util.hpp"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace btsp;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// ---- protocol between the demo and its peer ------------------------------------------
constexpr std::uint64_t kCtrlTag = 0xC0;       // demo -> peer: Command
constexpr std::uint64_t kReplyTag = 0xC1;      // peer -> demo: Reply
constexpr std::uint64_t kVerifyTag = 0x10;     // verified transfer (both directions)
constexpr std::uint64_t kPingTag = 0x20;       // demo -> peer
constexpr std::uint64_t kPongTag = 0x21;       // peer -> demo
constexpr std::uint64_t kStreamTag = 0x30;     // demo -> peer, bandwidth
constexpr std::size_t kMaxSize = 1u << 20;     // largest message: 1 MiB
constexpr unsigned kWindow = 16;               // sends in flight while streaming

enum class Op : std::uint32_t { VERIFY = 1, PING_PONG = 2, STREAM = 3, QUIT = 4 };

struct Command {
    Op op;
    std::uint32_t lanes;
    std::uint64_t size;
    std::uint64_t count;
};

struct Reply {
    std::uint64_t bytes;
    std::uint64_t checksum;
    std::uint64_t count;
};

std::uint64_t fnv1a(const void* data, std::size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (std::size_t i = 0; i < n; ++i) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

class DemoError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

void check(const RdmaOpResult& r, const char* what) {
    if (!r.success()) {
        std::ostringstream os;
        os << what << ": " << r;
        throw DemoError(os.str());
    }
}

ManagerOptions make_options(ProgressMode mode) {
    ManagerOptions o = ManagerOptions::from_env();
    o.progress_mode = mode;
    o.listen_address = "127.0.0.1";  // loopback only
    return o;
}

// ========================================================================================
// The peer process
// ========================================================================================

RdmaTask<std::uint64_t> recv_lane(CoroutineRdmaManager& m, std::size_t size, std::uint64_t n) {
    std::vector<char> buf(size);
    std::uint64_t bytes = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
        RdmaOpResult r = co_await m.tag_recv(buf.data(), buf.size(), kStreamTag);
        check(r, "peer: stream recv");
        bytes += r.bytes_transferred;
    }
    co_return bytes;
}

RdmaTask<void> peer_service(CoroutineRdmaManager& m) {
    if (!co_await m.wait_for_connection()) throw DemoError("peer: no connection");
    std::vector<char> buf(kMaxSize);
    for (;;) {
        Command cmd{};
        RdmaOpResult r = co_await m.tag_recv(&cmd, sizeof(cmd), kCtrlTag);
        check(r, "peer: control recv");
        if (cmd.size > kMaxSize || cmd.lanes > 64) throw DemoError("peer: bad command");
        Reply reply{};
        switch (cmd.op) {
            case Op::VERIFY: {
                RdmaOpResult d = co_await m.tag_recv(buf.data(), cmd.size, kVerifyTag);
                check(d, "peer: verify recv");
                reply = {d.bytes_transferred, fnv1a(buf.data(), d.bytes_transferred), 1};
                check(co_await m.tag_send(&reply, sizeof(reply), kReplyTag), "peer: reply");
                check(co_await m.tag_send(buf.data(), d.bytes_transferred, kVerifyTag), "peer: echo");
                break;
            }
            case Op::PING_PONG:
                for (std::uint64_t i = 0; i < cmd.count; ++i) {
                    RdmaOpResult d = co_await m.tag_recv(buf.data(), cmd.size, kPingTag);
                    check(d, "peer: ping recv");
                    check(co_await m.tag_send(buf.data(), d.bytes_transferred, kPongTag), "peer: pong send");
                }
                break;
            case Op::STREAM: {
                if (cmd.lanes == 0) throw DemoError("peer: bad command");
                std::vector<RdmaTask<std::uint64_t>> lanes;
                for (std::uint32_t l = 0; l < cmd.lanes; ++l)
                    lanes.push_back(recv_lane(m, cmd.size, cmd.count / cmd.lanes + (l < cmd.count % cmd.lanes)));
                for (auto& lane : lanes) reply.bytes += co_await lane;
                reply.count = cmd.count;
                check(co_await m.tag_send(&reply, sizeof(reply), kReplyTag), "peer: stream reply");
                break;
            }
            case Op::QUIT:
                check(co_await m.tag_send(&reply, sizeof(reply), kReplyTag), "peer: quit reply");
                m.shutdown();
                co_return;
            default:
                throw DemoError("peer: unknown command");
        }
    }
}

int run_peer(int fd, ProgressMode mode) {
    CoroutineRdmaManager m(make_options(mode));
    if (!m.initialize(true, 0)) {
        std::cerr << "btsp_demo peer: initialize failed: " << m.last_error() << std::endl;
        return 1;
    }
    const std::string port = std::to_string(m.listening_port()) + "\n";
    if (::write(fd, port.data(), port.size()) != static_cast<ssize_t>(port.size())) return 1;
    ::close(fd);
    auto task = peer_service(m);
    if (!example::wait_done(task, 60s)) {
        std::cerr << "btsp_demo peer: timed out" << std::endl;
        std::_Exit(3);
    }
    try {
        task.get();
        return 0;
    } catch (const std::exception& e) {
        std::cerr << "btsp_demo " << e.what() << std::endl;
        return 1;
    }
}

// ========================================================================================
// The demo (client) process
// ========================================================================================

struct Config {
    std::uint64_t iters = 10000;
    ProgressMode mode = ProgressMode::ADAPTIVE;
    Clock::duration budget = 1500ms;  // per measurement
};

struct LatencyRow {
    std::size_t size;
    std::uint64_t iters;
    double p50_us;
    double p99_us;
};

struct BandwidthRow {
    std::size_t size;
    std::uint64_t msgs;
    double mib_per_s;
};

std::string size_name(std::size_t n) {
    if (n >= (1u << 20) && n % (1u << 20) == 0) return std::to_string(n >> 20) + " MiB";
    if (n >= 1024 && n % 1024 == 0) return std::to_string(n >> 10) + " KiB";
    return std::to_string(n) + " B";
}

RdmaTask<void> send_command(CoroutineRdmaManager& m, Command cmd) {
    check(co_await m.tag_send(&cmd, sizeof(cmd), kCtrlTag), "control send");
}

RdmaTask<Reply> recv_reply(CoroutineRdmaManager& m) {
    Reply reply{};
    check(co_await m.tag_recv(&reply, sizeof(reply), kReplyTag), "reply recv");
    co_return reply;
}

// Verified transfer: 1 MiB of random data, checksummed by the peer and echoed back.
RdmaTask<void> verified_transfer(CoroutineRdmaManager& m) {
    std::vector<char> out(kMaxSize);
    std::vector<char> back(kMaxSize, 0);
    std::mt19937_64 rng(std::random_device{}());
    for (std::size_t i = 0; i < out.size(); i += 8) {
        const std::uint64_t v = rng();
        std::memcpy(out.data() + i, &v, 8);
    }
    const std::uint64_t local = fnv1a(out.data(), out.size());
    const auto t0 = Clock::now();
    co_await send_command(m, {Op::VERIFY, 1, out.size(), 1});
    check(co_await m.tag_send(out.data(), out.size(), kVerifyTag), "verify send");
    const Reply reply = co_await recv_reply(m);
    RdmaOpResult r = co_await m.tag_recv(back.data(), back.size(), kVerifyTag);
    check(r, "verify echo recv");
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    const bool ok = reply.bytes == out.size() && reply.checksum == local && r.bytes_transferred == out.size() &&
                    std::memcmp(out.data(), back.data(), out.size()) == 0;
    std::cout << "verified transfer: " << size_name(out.size()) << " of random bytes, fnv1a64 0x" << std::hex
              << local << std::dec << "\n  peer received " << reply.bytes << " B, checksum 0x" << std::hex
              << reply.checksum << std::dec << (reply.checksum == local ? " (match)" : " (MISMATCH)")
              << "; echoed back " << r.bytes_transferred << " B, "
              << (ok ? "identical" : "DIFFERENT") << " (" << std::fixed << std::setprecision(2) << ms
              << " ms round trip)  " << (ok ? "OK" : "FAILED") << std::endl;
    if (!ok) throw DemoError("verified transfer failed");
}

// `count` round trips of `size` bytes; returns the half round trip of each, in ns.
RdmaTask<std::vector<double>> ping_pong(CoroutineRdmaManager& m, std::size_t size, std::uint64_t count) {
    std::vector<char> out(size, 'p');
    std::vector<char> in(size);
    std::vector<double> half_rtt_ns;
    half_rtt_ns.reserve(count);
    co_await send_command(m, {Op::PING_PONG, 1, size, count});
    for (std::uint64_t i = 0; i < count; ++i) {
        const auto t0 = Clock::now();
        check(co_await m.tag_send(out.data(), out.size(), kPingTag), "ping send");
        RdmaOpResult r = co_await m.tag_recv(in.data(), in.size(), kPongTag);
        const auto t1 = Clock::now();
        check(r, "pong recv");
        if (r.bytes_transferred != size) throw DemoError("pong has the wrong size");
        half_rtt_ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / 2.0);
    }
    co_return half_rtt_ns;
}

double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0.0;
    const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
    return v[k];
}

RdmaTask<LatencyRow> measure_latency(CoroutineRdmaManager& m, std::size_t size, std::uint64_t max_iters,
                                     Clock::duration budget) {
    // Warm-up, which also tells how many round trips fit in the time budget.
    const std::uint64_t warm = std::min<std::uint64_t>(std::max<std::uint64_t>(max_iters / 10, 10), 200);
    const auto t0 = Clock::now();
    (void)co_await ping_pong(m, size, warm);
    const auto per_iter = (Clock::now() - t0) / warm + 1ns;
    const std::uint64_t fit = static_cast<std::uint64_t>(budget / per_iter);
    const std::uint64_t n = std::clamp<std::uint64_t>(fit, 20, max_iters);
    std::vector<double> samples = co_await ping_pong(m, size, n);
    co_return LatencyRow{size, n, percentile(samples, 0.50) / 1000.0, percentile(samples, 0.99) / 1000.0};
}

RdmaTask<std::uint64_t> send_lane(CoroutineRdmaManager& m, const char* data, std::size_t size, std::uint64_t n) {
    for (std::uint64_t i = 0; i < n; ++i) check(co_await m.tag_send(data, size, kStreamTag), "stream send");
    co_return n * size;
}

// Streams `count` messages of `size` bytes with kWindow sends in flight; returns seconds
// from the first send to the peer's confirmation that every byte arrived.
RdmaTask<double> stream(CoroutineRdmaManager& m, const std::vector<char>& data, std::size_t size,
                        std::uint64_t count) {
    const std::uint32_t lanes = static_cast<std::uint32_t>(std::min<std::uint64_t>(kWindow, count));
    co_await send_command(m, {Op::STREAM, lanes, size, count});
    const auto t0 = Clock::now();
    std::vector<RdmaTask<std::uint64_t>> tasks;
    for (std::uint32_t l = 0; l < lanes; ++l)
        tasks.push_back(send_lane(m, data.data(), size, count / lanes + (l < count % lanes)));
    std::uint64_t sent = 0;
    for (auto& t : tasks) sent += co_await t;
    const Reply reply = co_await recv_reply(m);
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    if (reply.bytes != sent || reply.bytes != count * size) throw DemoError("stream: peer received a different byte count");
    co_return secs;
}

RdmaTask<BandwidthRow> measure_bandwidth(CoroutineRdmaManager& m, std::size_t size, std::uint64_t max_msgs,
                                         Clock::duration budget) {
    std::vector<char> data(size, 's');
    const std::uint64_t warm = std::min<std::uint64_t>(std::max<std::uint64_t>(max_msgs / 10, kWindow), 256);
    const double warm_s = co_await stream(m, data, size, warm);
    const double per_msg = warm_s / static_cast<double>(warm);
    const auto fit = static_cast<std::uint64_t>(std::chrono::duration<double>(budget).count() / per_msg);
    const std::uint64_t n = std::clamp<std::uint64_t>(fit, kWindow, max_msgs);
    const double secs = co_await stream(m, data, size, n);
    co_return BandwidthRow{size, n, static_cast<double>(n * size) / (1024.0 * 1024.0) / secs};
}

RdmaTask<void> run_demo(CoroutineRdmaManager& m, Config cfg) {
    co_await verified_transfer(m);

    std::vector<LatencyRow> lat;
    const std::uint64_t n = cfg.iters;
    const std::pair<std::size_t, std::uint64_t> latency_sizes[] = {
        {8, n}, {4096, n}, {64u << 10, std::max<std::uint64_t>(n / 2, 20)}, {1u << 20, std::max<std::uint64_t>(n / 10, 20)}};
    for (const auto& [size, iters] : latency_sizes)
        lat.push_back(co_await measure_latency(m, size, iters, cfg.budget));

    std::vector<BandwidthRow> bw;
    const std::pair<std::size_t, std::uint64_t> stream_sizes[] = {
        {64u << 10, std::max<std::uint64_t>(n, kWindow)}, {1u << 20, std::max<std::uint64_t>(n / 10, kWindow)}};
    for (const auto& [size, msgs] : stream_sizes)
        bw.push_back(co_await measure_bandwidth(m, size, msgs, cfg.budget));

    co_await send_command(m, {Op::QUIT, 0, 0, 0});
    (void)co_await recv_reply(m);

    std::cout << "\nping-pong latency (half round trip)\n"
              << "  size       iters      p50 (us)   p99 (us)\n";
    for (const auto& r : lat)
        std::cout << "  " << std::left << std::setw(9) << size_name(r.size) << std::right << std::setw(7) << r.iters
                  << std::fixed << std::setprecision(2) << std::setw(13) << r.p50_us << std::setw(11) << r.p99_us
                  << "\n";
    std::cout << "\nstreaming bandwidth (" << kWindow << " sends in flight)\n"
              << "  size       messages   MiB/s\n";
    for (const auto& r : bw)
        std::cout << "  " << std::left << std::setw(9) << size_name(r.size) << std::right << std::setw(7) << r.msgs
                  << std::fixed << std::setprecision(0) << std::setw(12) << r.mib_per_s << "\n";
    std::cout << std::flush;
}

// Reads the peer's port from the pipe, waiting at most `timeout`.
int read_port(int fd, std::chrono::milliseconds timeout) {
    std::string text;
    const auto deadline = Clock::now() + timeout;
    while (text.find('\n') == std::string::npos) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) return -1;
        pollfd p{fd, POLLIN, 0};
        const int rc = ::poll(&p, 1, static_cast<int>(left.count()));
        if (rc < 0 && errno == EINTR) continue;
        if (rc <= 0) return -1;
        char buf[32];
        const ssize_t got = ::read(fd, buf, sizeof(buf));
        if (got <= 0) return -1;  // peer exited without reporting a port
        text.append(buf, static_cast<std::size_t>(got));
    }
    std::uint64_t port = 0;
    if (!example::parse_uint(text.substr(0, text.find('\n')), 1, 65535, port)) return -1;
    return static_cast<int>(port);
}

// The library logs how each connection was set up ("connected to ... (worker-address
// endpoint)") at INFO; the demo shows that line and passes warnings on to stderr.
std::mutex g_log_mutex;
std::string g_connection_line;

void capture_connection_log() {
    set_log_level(LogLevel::INFO);
    set_log_sink([](LogLevel level, std::string_view msg) {
        if (level >= LogLevel::WARN) {
            std::cerr << "btsp " << to_string(level) << " " << msg << std::endl;
        } else if (msg.find("connected to") != std::string_view::npos) {
            std::lock_guard<std::mutex> lock(g_log_mutex);
            g_connection_line = std::string(msg);
        }
    });
}

int run_demo_process(const Config& cfg) {
    const auto t_start = Clock::now();
    capture_connection_log();

    int fds[2];
    if (::pipe(fds) != 0) {
        std::perror("pipe");
        return 1;
    }
    ::fcntl(fds[0], F_SETFD, FD_CLOEXEC);  // the read end stays here; the write end is inherited
    const pid_t peer = example::spawn_self({"--btsp-demo-peer", "--fd", std::to_string(fds[1]), "--mode",
                                            std::string(to_string(cfg.mode))});
    ::close(fds[1]);
    if (peer < 0) return 1;

    // Watchdog: whatever happens, the demo ends (and takes its peer with it).
    std::atomic<bool> finished{false};
    std::thread watchdog([&finished, peer] {
        const auto deadline = Clock::now() + 60s;
        while (!finished.load() && Clock::now() < deadline) std::this_thread::sleep_for(10ms);
        if (!finished.load()) {
            std::cerr << "btsp_demo: watchdog: not finished after 60 s, giving up" << std::endl;
            ::kill(peer, SIGKILL);
            std::_Exit(3);
        }
    });
    auto stop_watchdog = [&] {
        finished.store(true);
        watchdog.join();
    };

    const int port = read_port(fds[0], 10s);
    ::close(fds[0]);
    if (port < 0) {
        std::cerr << "btsp_demo: the peer did not report a port" << std::endl;
        stop_watchdog();
        ::kill(peer, SIGKILL);
        example::wait_child(peer, 1s);
        return 1;
    }

    std::cout << "btsp demo: two processes on loopback, progress mode " << cfg.mode << "\n"
              << "peer pid " << peer << " listening on 127.0.0.1:" << port;
    if (const char* tls = std::getenv("UCX_TLS")) std::cout << ", UCX_TLS=" << tls;
    std::cout << std::endl;

    int rc = 0;
    {
        CoroutineRdmaManager m(make_options(cfg.mode));
        if (!m.initialize(false, 0)) {
            std::cerr << "btsp_demo: initialize failed: " << m.last_error() << std::endl;
            rc = 1;
        } else {
            const auto t0 = Clock::now();
            RdmaOpResult c = sync_wait(m.connect("127.0.0.1", static_cast<std::uint16_t>(port)));
            if (!c) {
                std::cerr << "btsp_demo: connect failed: " << c << std::endl;
                rc = 1;
            } else {
                std::cout << "connected in " << std::fixed << std::setprecision(2)
                          << std::chrono::duration<double, std::milli>(Clock::now() - t0).count() << " ms (state "
                          << m.get_state() << ")" << std::endl;
                {
                    std::lock_guard<std::mutex> lock(g_log_mutex);
                    if (!g_connection_line.empty()) std::cout << "btsp: " << g_connection_line << std::endl;
                }
                std::cout << std::endl;
                try {
                    sync_wait(run_demo(m, cfg));
                } catch (const std::exception& e) {
                    std::cerr << "btsp_demo: " << e.what() << std::endl;
                    rc = 1;
                }
            }
        }
        m.shutdown();
    }
    const int peer_rc = example::wait_child(peer, 10s);
    stop_watchdog();
    if (peer_rc != 0) {
        std::cerr << "btsp_demo: peer exited with " << peer_rc << std::endl;
        if (rc == 0) rc = 1;
    }
    std::cout << "\n"
              << (rc == 0 ? "demo OK" : "demo FAILED") << " in " << std::fixed << std::setprecision(1)
              << std::chrono::duration<double>(Clock::now() - t_start).count() << " s" << std::endl;
    return rc;
}

void usage() {
    std::cerr << "usage: btsp_demo [--iters N] [--mode polling|blocking|adaptive]\n"
                 "  --iters N   round trips per latency size (default 10000; fewer for large sizes\n"
                 "              and whatever fits in a 1.5 s budget per measurement)\n"
                 "  --mode M    progress mode of both processes (default adaptive)\n";
}

}  // namespace

int main(int argc, char** argv) {
    if (example::has_arg(argc, argv, "--help") || example::has_arg(argc, argv, "-h")) {
        usage();
        return 0;
    }
    Config cfg;
    ProgressMode mode = cfg.mode;
    const std::string mode_text = example::arg_value(argc, argv, "--mode", "adaptive");
    if (!parse_progress_mode(mode_text, mode)) {
        std::cerr << "btsp_demo: bad --mode '" << mode_text << "'\n";
        usage();
        return 2;
    }
    cfg.mode = mode;

    if (example::has_arg(argc, argv, "--btsp-demo-peer")) {
        std::uint64_t fd = 0;
        if (!example::parse_uint(example::arg_value(argc, argv, "--fd", ""), 0, 1 << 20, fd)) return 2;
        return run_peer(static_cast<int>(fd), mode);
    }
    if (!example::parse_uint(example::arg_value(argc, argv, "--iters", "10000"), 20, 100000000, cfg.iters)) {
        std::cerr << "btsp_demo: bad --iters\n";
        usage();
        return 2;
    }
    return run_demo_process(cfg);
}
