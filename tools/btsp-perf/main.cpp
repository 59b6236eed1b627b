// btsp-perf — benchmark of the btsp coroutine layer against raw UCP, in the spirit of
// ucx_perftest / ib_write_bw. See docs/performance.md and `btsp-perf --help`.
#include "common.hpp"

#include <btsp/log.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/prctl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace perf {

const char* test_name(Test t) {
    switch (t) {
        case Test::LAT: return "lat";
        case Test::BW: return "bw";
        case Test::RATE: return "rate";
        case Test::CONN: return "conn";
        case Test::IDLE: return "idle";
        case Test::CONNS: return "conns";
    }
    return "?";
}

std::uint64_t process_cpu_ns() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

std::uint64_t process_rss_kib() {
    std::FILE* f = std::fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    std::uint64_t kib = 0;
    while (std::fgets(line, sizeof line, f)) {
        if (std::strncmp(line, "VmRSS:", 6) == 0) {
            kib = std::strtoull(line + 6, nullptr, 10);
            break;
        }
    }
    std::fclose(f);
    return kib;
}

bool pin_to_cpu(int cpu) {
    if (cpu < 0) return true;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
        std::fprintf(stderr, "btsp-perf: cannot pin to CPU %d: %s\n", cpu, std::strerror(errno));
        return false;
    }
    return true;
}

void report_port(int fd, std::uint16_t port) {
    ssize_t n;
    do {
        n = ::write(fd, &port, sizeof port);
    } while (n < 0 && errno == EINTR);
    ::close(fd);
}

namespace {

// ---------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------
struct Options {
    std::string host;              // client: server address
    std::uint16_t port = 13337;
    bool port_given = false;
    bool loopback = false;
    std::vector<Test> tests;
    std::vector<std::size_t> sizes;  // empty: per-test default
    std::optional<std::uint64_t> iters, warmup;
    std::vector<unsigned> windows;   // empty: per-test default
    bool raw = false, compare = false;
    bool sequential = false;  // --sequential: no interleaving of implementations
    BackendOptions backend;
    std::vector<int> cpus;
    bool cpus_given = false;
    int repeat = 1;
    bool csv = false, json = false;
    int progress = -1;  // -1: when stderr is a terminal
    unsigned idle_ms = 10000;
    std::uint64_t conn_iters = 50;
    std::vector<unsigned> conn_counts = {1, 2, 4, 8, 16, 32, 64, 128, 256};
    unsigned timeout_s = 600;
    // internal (server child of --loopback)
    bool serve = false;
    int port_fd = -1;
    Impl impl = Impl::LIB;
};

[[noreturn]] void usage(int rc) {
    std::FILE* f = rc == 0 ? stdout : stderr;
    std::fprintf(f,
R"(Usage:
  btsp-perf [options] -p PORT               server (waits for a client, exits after its run)
  btsp-perf [options] HOST -p PORT          client
  btsp-perf [options] --loopback            both sides on this host (forks the server)

Tests and sizes:
  -t, --test LIST      lat,bw,rate,conn,idle,conns (default lat,bw,rate)
                         lat   tag ping-pong; half round trip p50/p99/avg/min (us)
                         bw    streaming bandwidth, window of concurrent sends (MiB/s)
                         rate  message rate (default 8 B, window 64) (M msg/s)
                         conn  connection setup: connect + first ping-pong (us)
                         idle  CPU use of a connected, silent pair (%% of a core)
                         conns connection scaling (btsp only): extra connections to the
                               server, opened one at a time up to each count of
                               --conn-counts; connect() time (us), server RSS and its growth
                               per connection, server connections and UCX endpoints, client
                               RSS. Runs before conn (which closes the main connection)
  -s, --sizes LIST     message sizes, e.g. 8,4096,1M (K/M/G = KiB/MiB/GiB)
      --sweep A:B      powers of two from A to B, e.g. 8:16M
  -n, --iters N        iterations per size (default: by test and size; not for conn)
      --conn-n N       connections for the conn test (default 50, plus 10%% warm-up)
      --conn-counts LIST  connection counts of the conns test, ascending
                       (default 1,2,4,8,16,32,64,128,256)
      --warmup N       warm-up iterations before each measurement (default n/10)
  -w, --window W       operations in flight for bw/rate (default 16 for bw, 64 for rate)
      --windows LIST   several windows, e.g. 1,4,16,64,256,1024
      --idle-ms MS     idle test duration (default 10000)

Implementations:
      --raw            raw UCP C API (same flow and config as the library) on both sides
      --compare        library and raw in one run; prints ratio columns (library / raw)
      --raw-sockaddr   raw: keep data on the sockaddr endpoint (the plain-UCP flow) instead of
                       moving it to worker-address endpoints as the library does
      --raw-coro       raw: the server's stream receives (bw, rate) are awaited by bare
                       coroutines, one resume per message and nothing else: the floor of
                       any coroutine-per-message layer (give it to the server, or use
                       --loopback)
      --lib-raw-loops S  btsp, diagnostic: the stream's (bw, rate) sending side (S = send),
                       receiving side (recv) or both run raw UCP loops on the manager's
                       worker instead of co_await: the library's processes, connection and
                       UCX set-up without its per-operation path (give it to the server
                       too, or use --loopback)
      --repeat R       run everything R times, report medians. With --loopback both servers
                       stay up and the implementations alternate item by item (fair on a
                       noisy machine; not with --mode polling, whose idle side would spin)
      --sequential     --loopback: one implementation after the other instead
      --mode M         library progress mode: polling, blocking, adaptive (default: library's)
      --shm-fifo N     shared-memory receive FIFO depth (UCX MM_FIFO_SIZE) for both
                       implementations (default: the library's, 256; 0 = UCX's own, 64)
      --recv-poll N    library: progress calls a receive makes before it suspends
                       (ManagerOptions::recv_poll; default the library's, 64; 0 = none)

Placement and output:
  -p, --port PORT      port (default 13337; 0 with --loopback is automatic)
      --loopback       start the server here (fork+exec), connect over 127.0.0.1
      --cpus S,C       --loopback: pin server to S and client to C (default 0,1);
                       otherwise: pin this process to the first value
      --no-pin         --loopback without pinning
      --csv | --json   machine-readable output on stdout instead of the table
      --progress | --no-progress   progress line on stderr (default: if a terminal)
      --timeout S      abort any process of the run after S seconds (default 600, 0 = never)
  -h, --help
)");
    std::exit(rc);
}

bool parse_size(const std::string& s, std::size_t& out) {
    if (s.empty()) return false;
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
    if (errno != 0 || end == s.c_str()) return false;
    std::size_t mult = 1;
    const std::string suf(end);
    if (suf.empty() || suf == "B" || suf == "b") mult = 1;
    else if (suf == "K" || suf == "k" || suf == "KiB" || suf == "KB") mult = 1024;
    else if (suf == "M" || suf == "m" || suf == "MiB" || suf == "MB") mult = 1024 * 1024;
    else if (suf == "G" || suf == "g" || suf == "GiB" || suf == "GB") mult = 1024ull * 1024 * 1024;
    else return false;
    out = static_cast<std::size_t>(v) * mult;
    return true;
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    std::string cur;
    std::istringstream in(s);
    while (std::getline(in, cur, sep))
        if (!cur.empty()) out.push_back(cur);
    return out;
}

[[noreturn]] void bad(const std::string& what) {
    std::fprintf(stderr, "btsp-perf: %s (see --help)\n", what.c_str());
    std::exit(2);
}

std::uint64_t parse_u64(const std::string& s, const char* what) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
    if (errno != 0 || end == s.c_str() || *end != '\0') bad(std::string("bad ") + what + " '" + s + "'");
    return v;
}

// Operations in flight: one coroutine (and one frame) each, so bounded.
unsigned parse_window(const std::string& s) {
    const std::uint64_t v = parse_u64(s, "window");
    if (v == 0 || v > 65536) bad("bad window '" + s + "' (1..65536)");
    return static_cast<unsigned>(v);
}

Options parse(int argc, char** argv) {
    Options o;
    auto need = [&](int& i) -> std::string {
        if (i + 1 >= argc) bad(std::string("missing value for ") + argv[i]);
        return argv[++i];
    };
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "-h" || a == "--help") usage(0);
        else if (a == "-p" || a == "--port") {
            const std::uint64_t p = parse_u64(need(i), "port");
            if (p > 65535) bad("bad port");
            o.port = static_cast<std::uint16_t>(p);
            o.port_given = true;
        } else if (a == "--loopback") o.loopback = true;
        else if (a == "-t" || a == "--test") {
            for (const auto& t : split(need(i), ',')) {
                if (t == "lat") o.tests.push_back(Test::LAT);
                else if (t == "bw") o.tests.push_back(Test::BW);
                else if (t == "rate") o.tests.push_back(Test::RATE);
                else if (t == "conn") o.tests.push_back(Test::CONN);
                else if (t == "idle") o.tests.push_back(Test::IDLE);
                else if (t == "conns") o.tests.push_back(Test::CONNS);
                else bad("unknown test '" + t + "'");
            }
        } else if (a == "-s" || a == "--sizes") {
            for (const auto& s : split(need(i), ',')) {
                std::size_t v;
                if (!parse_size(s, v)) bad("bad size '" + s + "'");
                o.sizes.push_back(v);
            }
        } else if (a == "--sweep") {
            const auto parts = split(need(i), ':');
            std::size_t lo, hi;
            if (parts.size() != 2 || !parse_size(parts[0], lo) || !parse_size(parts[1], hi) || lo == 0 || lo > hi)
                bad("bad --sweep (want A:B, e.g. 8:16M)");
            for (std::size_t s = lo; s <= hi; s *= 2) o.sizes.push_back(s);
        } else if (a == "-n" || a == "--iters") o.iters = parse_u64(need(i), "iteration count");
        else if (a == "--warmup") o.warmup = parse_u64(need(i), "warm-up count");
        else if (a == "-w" || a == "--window") o.windows = {parse_window(need(i))};
        else if (a == "--windows") {
            o.windows.clear();
            for (const auto& w : split(need(i), ',')) o.windows.push_back(parse_window(w));
            if (o.windows.empty()) bad("empty --windows");
        } else if (a == "--conn-n") o.conn_iters = std::max<std::uint64_t>(1, parse_u64(need(i), "connection count"));
        else if (a == "--conn-counts") {
            o.conn_counts.clear();
            for (const auto& c : split(need(i), ',')) {
                const std::uint64_t v = parse_u64(c, "connection count");
                if (v == 0 || v > 100000) bad("bad connection count '" + c + "' (1..100000)");
                o.conn_counts.push_back(static_cast<unsigned>(v));
            }
            std::sort(o.conn_counts.begin(), o.conn_counts.end());
            o.conn_counts.erase(std::unique(o.conn_counts.begin(), o.conn_counts.end()), o.conn_counts.end());
            if (o.conn_counts.empty()) bad("empty --conn-counts");
        } else if (a == "--idle-ms") o.idle_ms = static_cast<unsigned>(parse_u64(need(i), "idle time"));
        else if (a == "--raw") o.raw = true;
        else if (a == "--raw-sockaddr") o.backend.raw_sockaddr = true;
        else if (a == "--raw-coro") o.backend.raw_coro = true;
        else if (a == "--lib-raw-loops") {
            const std::string v = need(i);
            o.backend.lib_raw_send = v == "send" || v == "both";
            o.backend.lib_raw_recv = v == "recv" || v == "both";
            if (!o.backend.lib_raw_send && !o.backend.lib_raw_recv) bad("--lib-raw-loops wants send, recv or both");
        }
        else if (a == "--shm-fifo") {
            const std::uint64_t v = parse_u64(need(i), "FIFO depth");
            if (v == 1 || v > (1u << 20) || (v & (v - 1)) != 0) bad("--shm-fifo wants 0 or a power of two >= 2");
            o.backend.shm_fifo = static_cast<long>(v);
        }
        else if (a == "--recv-poll") {
            const std::uint64_t v = parse_u64(need(i), "polling budget");
            if (v > (1u << 20)) bad("--recv-poll wants 0 .. 1048576");
            o.backend.recv_poll = static_cast<long>(v);
        }
        else if (a == "--compare") o.compare = true;
        else if (a == "--sequential") o.sequential = true;
        else if (a == "--repeat") o.repeat = static_cast<int>(std::max<std::uint64_t>(1, parse_u64(need(i), "repeat count")));
        else if (a == "--mode") {
            const std::string m = need(i);
            if (!btsp::parse_progress_mode(m, o.backend.mode)) bad("bad --mode '" + m + "'");
            o.backend.mode_given = true;
        } else if (a == "--cpus") {
            o.cpus.clear();
            for (const auto& c : split(need(i), ',')) o.cpus.push_back(static_cast<int>(parse_u64(c, "cpu")));
            o.cpus_given = true;
        } else if (a == "--no-pin") {
            o.cpus.clear();
            o.cpus_given = true;
        } else if (a == "--csv") o.csv = true;
        else if (a == "--json") o.json = true;
        else if (a == "--progress") o.progress = 1;
        else if (a == "--no-progress") o.progress = 0;
        else if (a == "--timeout") o.timeout_s = static_cast<unsigned>(parse_u64(need(i), "timeout"));
        // internal: server child of --loopback
        else if (a == "--serve") o.serve = true;
        else if (a == "--port-fd") o.port_fd = static_cast<int>(parse_u64(need(i), "fd"));
        else if (a == "--cpu") o.backend.cpu = static_cast<int>(parse_u64(need(i), "cpu"));
        else if (a == "--impl") {
            const std::string v = need(i);
            if (v == "lib" || v == "btsp") o.impl = Impl::LIB;
            else if (v == "raw") o.impl = Impl::RAW;
            else bad("bad --impl");
        } else if (!a.empty() && a[0] == '-') bad("unknown option " + a);
        else if (o.host.empty()) o.host = a;
        else bad("unexpected argument " + a);
    }
    if (o.tests.empty()) o.tests = {Test::LAT, Test::BW, Test::RATE};
    if (o.loopback && !o.host.empty()) bad("--loopback takes no HOST");
    if (o.loopback && !o.cpus_given) o.cpus = {0, 1};
    if (o.raw && o.compare) bad("--raw and --compare exclude each other");
    if (o.csv && o.json) bad("--csv and --json exclude each other");
    if (o.progress < 0) o.progress = isatty(2) ? 1 : 0;
    return o;
}

// ---------------------------------------------------------------------------------------
// Work items and results
// ---------------------------------------------------------------------------------------
struct Item {
    Test test;
    std::size_t size = 0;
    unsigned window = 0;
    std::uint64_t iters = 0, warmup = 0;
};

struct Row {
    Impl impl = Impl::LIB;
    Item item;
    bool ok = false;
    std::string error;
    // lat / conn (us)
    double p50 = NAN, p99 = NAN, avg = NAN, min = NAN;
    // bw / rate
    double mibps = NAN, mmsgps = NAN;
    // idle (% of one core)
    double client_cpu = NAN, server_cpu = NAN;
    // conns (item.size = extra connections N; p50 = connect() p50, us)
    double max = NAN;                           // connect() max, us
    double srv_rss_mib = NAN, srv_kib_per_conn = NAN, srv_live = NAN, srv_eps = NAN;
    double cli_rss_mib = NAN;
    // conns, baseline row (N = 0) only: the server once the extra connections closed
    double after_live = NAN, after_eps = NAN, after_rss_mib = NAN;
};

std::uint64_t default_iters(Test t, std::size_t size) {
    switch (t) {
        case Test::LAT: {
            // ~20000 round trips for small sizes, fewer for big ones (<= ~1 GiB moved).
            const std::uint64_t cap = (1ull << 30) / std::max<std::size_t>(size, 1);
            return std::clamp<std::uint64_t>(cap, 200, 20000);
        }
        case Test::BW: {
            // ~1 GiB moved per size (at least 64 messages, at most 200000).
            const std::uint64_t cap = (1ull << 30) / std::max<std::size_t>(size, 1);
            return std::clamp<std::uint64_t>(cap, 64, 200000);
        }
        case Test::RATE: return 1'000'000;
        case Test::CONN: return 50;
        case Test::IDLE: return 1;
        case Test::CONNS: return 0;
    }
    return 1000;
}

std::vector<Item> make_items(const Options& o) {
    std::vector<Item> items;
    auto sizes_for = [&](Test t) -> std::vector<std::size_t> {
        if (!o.sizes.empty()) return o.sizes;
        if (t == Test::BW) return {1024 * 1024};
        return {8};
    };
    std::vector<Test> order;
    for (Test t : o.tests)
        if (t != Test::CONN && std::find(order.begin(), order.end(), t) == order.end()) order.push_back(t);
    // conn closes the main connection: run it last
    if (std::find(o.tests.begin(), o.tests.end(), Test::CONN) != o.tests.end()) order.push_back(Test::CONN);
    for (Test t : order) {
        if (t == Test::CONNS) {
            // One contiguous group, measured in one go: the baseline (N = 0), then one item per
            // count; iters = connections opened in that step.
            items.push_back(Item{t, 0, 0, 0, 0});
            unsigned prev = 0;
            for (unsigned n : o.conn_counts) {
                items.push_back(Item{t, n, 0, n - prev, 0});
                prev = n;
            }
            continue;
        }
        if (t == Test::CONN || t == Test::IDLE) {
            Item it{t, 8, 1, 0, 0};
            it.iters = t == Test::IDLE ? 1 : o.conn_iters;
            it.warmup = t == Test::IDLE ? 0 : std::max<std::uint64_t>(2, it.iters / 10);
            items.push_back(it);
            continue;
        }
        std::vector<unsigned> windows = o.windows;
        if (t == Test::LAT) windows = {1};
        else if (windows.empty()) windows = {t == Test::BW ? 16u : 64u};
        for (std::size_t s : sizes_for(t)) {
            for (unsigned w : windows) {
                Item it{t, s, std::max(1u, w), 0, 0};
                it.iters = o.iters ? *o.iters : default_iters(t, s);
                it.warmup = o.warmup ? *o.warmup : std::max<std::uint64_t>(10, it.iters / 10);
                items.push_back(it);
            }
        }
    }
    return items;
}

// ---------------------------------------------------------------------------------------
// Progress line
// ---------------------------------------------------------------------------------------
struct ProgressLine {
    bool on = false;
    int done = 0, total = 0;
    void show(Impl impl, const Item& it, int rep, int reps) {
        if (!on) return;
        char size[32];
        std::snprintf(size, sizeof size, "%zu B", it.size);
        std::fprintf(stderr, "\r\033[K[%3d/%d] %s %-4s %s", done + 1, total, impl_name(impl),
                     test_name(it.test), it.test == Test::CONN || it.test == Test::IDLE || it.test == Test::CONNS ? "" : size);
        if (it.test == Test::BW || it.test == Test::RATE) std::fprintf(stderr, " w=%u", it.window);
        if (reps > 1) std::fprintf(stderr, " (run %d/%d)", rep + 1, reps);
        std::fflush(stderr);
    }
    void step() { ++done; }
    void finish() {
        if (on) std::fprintf(stderr, "\r\033[K");
    }
};

// ---------------------------------------------------------------------------------------
// Server child (--loopback)
// ---------------------------------------------------------------------------------------
struct Child {
    pid_t pid = -1;
    ~Child() { reap(2.0); }
    void reap(double wait_s) {
        if (pid <= 0) return;
        const auto deadline = std::chrono::steady_clock::now() +
                              std::chrono::milliseconds(static_cast<long>(wait_s * 1000));
        int status = 0;
        for (;;) {
            const pid_t r = waitpid(pid, &status, WNOHANG);
            if (r == pid || (r < 0 && errno != EINTR)) break;
            if (std::chrono::steady_clock::now() > deadline) {
                std::fprintf(stderr, "btsp-perf: server child %d did not exit; killing it\n", static_cast<int>(pid));
                kill(pid, SIGKILL);
                while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
                }
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        pid = -1;
    }
};

// fork+exec of ourselves as the server; returns the port it listens on (0 on failure).
std::uint16_t spawn_server(const Options& o, Impl impl, Child& child) {
    int fds[2];
    if (pipe(fds) != 0) return 0;
    fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    std::vector<std::string> args = {"/proc/self/exe", "--serve", "--impl", impl == Impl::LIB ? "lib" : "raw",
                                     "-p", "0", "--port-fd", std::to_string(fds[1]),
                                     "--timeout", std::to_string(o.timeout_s)};
    if (!o.cpus.empty()) {
        args.push_back("--cpu");
        args.push_back(std::to_string(o.cpus[0]));
    }
    if (o.backend.raw_sockaddr) args.push_back("--raw-sockaddr");
    if (o.backend.raw_coro) args.push_back("--raw-coro");
    if (o.backend.lib_raw_send || o.backend.lib_raw_recv) {
        args.push_back("--lib-raw-loops");
        args.push_back(o.backend.lib_raw_send && o.backend.lib_raw_recv ? "both" : o.backend.lib_raw_send ? "send" : "recv");
    }
    if (o.backend.shm_fifo >= 0) {
        args.push_back("--shm-fifo");
        args.push_back(std::to_string(o.backend.shm_fifo));
    }
    if (o.backend.recv_poll >= 0) {
        args.push_back("--recv-poll");
        args.push_back(std::to_string(o.backend.recv_poll));
    }
    if (o.backend.mode_given) {
        args.push_back("--mode");
        args.push_back(std::string(btsp::to_string(o.backend.mode)));
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) {
        ::close(fds[0]);
        ::close(fds[1]);
        return 0;
    }
    if (pid == 0) {
        ::close(fds[0]);
        prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the client
        if (getppid() != parent) _exit(127);
        execv("/proc/self/exe", argv.data());
        _exit(127);
    }
    child.pid = pid;
    ::close(fds[1]);
    std::uint16_t port = 0;
    pollfd p{fds[0], POLLIN, 0};
    if (poll(&p, 1, 15000) == 1) {
        if (::read(fds[0], &port, sizeof port) != static_cast<ssize_t>(sizeof port)) port = 0;
    }
    ::close(fds[0]);
    if (port == 0) {
        kill(pid, SIGKILL);
        child.reap(1.0);
    }
    return port;
}

// ---------------------------------------------------------------------------------------
// Client session: every item on one implementation
// ---------------------------------------------------------------------------------------
void lat_stats(std::vector<double>& s, Row& r) {
    if (s.empty()) return;
    double sum = 0;
    for (double v : s) sum += v;
    r.avg = sum / static_cast<double>(s.size()) / 1000.0;
    r.min = *std::min_element(s.begin(), s.end()) / 1000.0;
    auto pct = [&](double q) {
        const std::size_t k = std::min(s.size() - 1, static_cast<std::size_t>(q * static_cast<double>(s.size())));
        std::nth_element(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(k), s.end());
        return s[k] / 1000.0;
    };
    r.p50 = pct(0.50);
    r.p99 = pct(0.99);
}

// One measurement of one item on an open client. CONN closes the main connection first.
Row run_item(const Options& o, ClientBackend& client, Impl impl, const std::string& host, std::uint16_t port,
             const Item& it, bool& main_open, ProgressLine& pl, int rep) {
    pl.show(impl, it, rep, o.repeat);
    Row r;
    r.impl = impl;
    r.item = it;
    std::string err;
    std::vector<double> samples;
    switch (it.test) {
        case Test::LAT:
            r.ok = client.lat(it.size, it.warmup, nullptr, err) && client.lat(it.size, it.iters, &samples, err);
            if (r.ok) lat_stats(samples, r);
            break;
        case Test::BW:
        case Test::RATE: {
            double secs = 0;
            r.ok = (it.warmup == 0 || client.stream(it.size, it.warmup, it.window, secs, err)) &&
                   client.stream(it.size, it.iters, it.window, secs, err);
            if (r.ok && secs > 0) {
                r.mmsgps = static_cast<double>(it.iters) / secs / 1e6;
                r.mibps = static_cast<double>(it.iters) * static_cast<double>(it.size) / secs / (1024.0 * 1024.0);
            }
            break;
        }
        case Test::IDLE: {
            double ccpu = 0, scpu = 0, wall = 0;
            r.ok = client.idle(o.idle_ms, ccpu, scpu, wall, err);
            if (r.ok && wall > 0) {
                r.client_cpu = 100.0 * ccpu / wall;
                r.server_cpu = 100.0 * scpu / wall;
            }
            break;
        }
        case Test::CONN: {
            if (main_open) {
                client.close();
                main_open = false;
            }
            r.ok = true;
            for (std::uint64_t i = 0; r.ok && i < it.warmup + it.iters; ++i) {
                double ns = 0;
                r.ok = client.conn_once(host, port, ns, err);
                if (i >= it.warmup) samples.push_back(ns);
            }
            if (r.ok) lat_stats(samples, r);
            break;
        }
        case Test::CONNS:  // a group of items: run_conns()
            err = "internal: conns item outside its group";
            break;
    }
    if (!r.ok) {
        r.error = err;
        std::fprintf(stderr, "%sbtsp-perf: %s %s %zu B: %s\n", pl.on ? "\r\033[K" : "", impl_name(impl),
                     test_name(it.test), it.size, err.c_str());
    }
    pl.step();
    return r;
}

double median(std::vector<double> v);
std::string g_conns_how;  // how the client held the extra connections (table header)

// The conns items, make_items() keeps them together: [first, end).
bool conns_group_start(const std::vector<Item>& items, std::size_t n) {
    return items[n].test == Test::CONNS && (n == 0 || items[n - 1].test != Test::CONNS);
}
std::vector<Item> conns_group(const std::vector<Item>& items, std::size_t n) {
    std::vector<Item> g;
    for (; n < items.size() && items[n].test == Test::CONNS; ++n) g.push_back(items[n]);
    return g;
}

// The whole conns sweep on one open client: one Row per item of the group (the counts it
// did not reach fail). Library only; for raw it returns no rows (run_client prints a note).
std::vector<Row> run_conns(const Options& o, ClientBackend& client, Impl impl, const std::string& host,
                           std::uint16_t port, const std::vector<Item>& group, ProgressLine& pl, int rep) {
    std::vector<Row> rows;
    if (impl != Impl::LIB || group.empty()) return rows;
    pl.show(impl, group.front(), rep, o.repeat);
    std::vector<unsigned> counts;
    for (const Item& it : group)
        if (it.size > 0) counts.push_back(static_cast<unsigned>(it.size));
    std::vector<ConnsStep> steps;
    std::string how, err;
    const bool ok = client.conns(host, port, counts, steps, how, err);
    if (!how.empty()) g_conns_how = how;
    const ConnsStep* base = nullptr;
    const ConnsStep* after = nullptr;
    for (const ConnsStep& s : steps) {
        if (s.after) after = &s;
        else if (s.n == 0 && !base) base = &s;
    }
    for (const Item& it : group) {
        Row r;
        r.impl = impl;
        r.item = it;
        const ConnsStep* s = nullptr;
        for (const ConnsStep& x : steps)
            if (!x.after && x.n == it.size) s = &x;
        r.ok = s != nullptr;
        if (!s) {
            r.error = err.empty() ? "not reached" : err;
        } else {
            if (!s->setup_ns.empty()) {
                std::vector<double> us;
                for (double ns : s->setup_ns) us.push_back(ns / 1000.0);
                r.p50 = median(us);
                r.max = *std::max_element(us.begin(), us.end());
            }
            r.srv_rss_mib = static_cast<double>(s->server.rss_kib) / 1024.0;
            if (s->n > 0 && base)
                r.srv_kib_per_conn =
                    (static_cast<double>(s->server.rss_kib) - static_cast<double>(base->server.rss_kib)) /
                    static_cast<double>(s->n);
            r.srv_live = static_cast<double>(s->server.live);
            r.srv_eps = static_cast<double>(s->server.open_endpoints);
            r.cli_rss_mib = static_cast<double>(s->client_rss_kib) / 1024.0;
            if (s->n == 0 && after) {
                r.after_live = static_cast<double>(after->server.live);
                r.after_eps = static_cast<double>(after->server.open_endpoints);
                r.after_rss_mib = static_cast<double>(after->server.rss_kib) / 1024.0;
            }
        }
        rows.push_back(r);
        pl.step();
    }
    if (!ok)
        std::fprintf(stderr, "%sbtsp-perf: %s conns: %s\n", pl.on ? "\r\033[K" : "", impl_name(impl), err.c_str());
    return rows;
}

// Runs items[n] (or, at the start of the conns group, the whole group); false on failure.
bool run_one(const Options& o, ClientBackend& client, Impl impl, const std::string& host, std::uint16_t port,
             const std::vector<Item>& items, std::size_t n, bool& main_open, std::vector<Row>& rows, ProgressLine& pl,
             int rep) {
    if (items[n].test == Test::CONNS) {
        if (!conns_group_start(items, n)) return true;
        const std::vector<Row> rs = run_conns(o, client, impl, host, port, conns_group(items, n), pl, rep);
        rows.insert(rows.end(), rs.begin(), rs.end());
        return std::all_of(rs.begin(), rs.end(), [](const Row& r) { return r.ok; });
    }
    rows.push_back(run_item(o, client, impl, host, port, items[n], main_open, pl, rep));
    return rows.back().ok;
}

std::unique_ptr<ClientBackend> make_client(const Options& o, Impl impl) {
    BackendOptions bo = o.backend;
    bo.cpu = o.loopback ? (o.cpus.size() > 1 ? o.cpus[1] : -1) : (o.cpus.empty() ? -1 : o.cpus[0]);
    if (impl == Impl::LIB) pin_to_cpu(bo.cpu);  // the raw client pins itself
    return impl == Impl::LIB ? make_lib_client(bo) : make_raw_client(bo);
}

bool run_session(const Options& o, Impl impl, const std::string& host, std::uint16_t port,
                 const std::vector<Item>& items, std::vector<Row>& rows, ProgressLine& pl, int rep) {
    auto client = make_client(o, impl);
    std::string err;
    const bool need_main = std::any_of(items.begin(), items.end(), [](const Item& i) { return i.test != Test::CONN; });
    if (need_main && !client->open(host, port, err)) {
        std::fprintf(stderr, "btsp-perf: %s: cannot connect to %s:%u: %s\n", impl_name(impl), host.c_str(), port, err.c_str());
        return false;
    }
    bool main_open = need_main;
    bool all_ok = true;
    for (std::size_t n = 0; n < items.size(); ++n) {
        if (!run_one(o, *client, impl, host, port, items, n, main_open, rows, pl, rep)) {
            all_ok = false;
            break;  // the connection is probably unusable
        }
    }
    if (!client->quit(host, port, err)) {
        std::fprintf(stderr, "btsp-perf: %s: quit: %s\n", impl_name(impl), err.c_str());
        all_ok = false;
    }
    return all_ok;
}

// Loopback --compare / --repeat: both servers stay up and the client alternates
// implementations item by item (lib, raw, raw, lib, ...), so that load changes on a shared
// machine hit both alike. The idle side sleeps meanwhile (library: adaptive/blocking
// progress; raw server: arms the worker when it waits for a command). conn runs last,
// per implementation.
bool run_interleaved(const Options& o, const std::vector<Impl>& impls, const std::vector<Item>& items,
                     std::vector<Row>& rows, ProgressLine& pl) {
    const std::string host = "127.0.0.1";
    std::vector<Child> children(impls.size());
    std::vector<std::uint16_t> ports(impls.size());
    std::vector<std::unique_ptr<ClientBackend>> clients(impls.size());
    std::vector<bool> main_open(impls.size(), false);
    const bool need_main = std::any_of(items.begin(), items.end(), [](const Item& i) { return i.test != Test::CONN; });
    for (std::size_t k = 0; k < impls.size(); ++k) {
        ports[k] = spawn_server(o, impls[k], children[k]);
        if (ports[k] == 0) {
            std::fprintf(stderr, "btsp-perf: the %s server did not start\n", impl_name(impls[k]));
            return false;
        }
        clients[k] = make_client(o, impls[k]);
        std::string err;
        if (need_main) {
            if (!clients[k]->open(host, ports[k], err)) {
                std::fprintf(stderr, "btsp-perf: %s: cannot connect: %s\n", impl_name(impls[k]), err.c_str());
                return false;
            }
            main_open[k] = true;
        }
    }
    bool ok = true;
    std::vector<bool> broken(impls.size(), false);
    for (int rep = 0; rep < o.repeat; ++rep) {
        for (std::size_t n = 0; n < items.size(); ++n) {
            if (items[n].test == Test::CONN) continue;
            for (std::size_t j = 0; j < impls.size(); ++j) {
                const std::size_t k = ((rep + n) % 2 == 0) ? j : impls.size() - 1 - j;
                if (broken[k]) continue;
                bool mo = main_open[k];
                const bool good = run_one(o, *clients[k], impls[k], host, ports[k], items, n, mo, rows, pl, rep);
                main_open[k] = mo;
                if (!good) broken[k] = true, ok = false;
            }
        }
    }
    for (std::size_t k = 0; k < impls.size(); ++k) {
        for (int rep = 0; rep < o.repeat && !broken[k]; ++rep) {
            for (const Item& it : items) {
                if (it.test != Test::CONN) continue;
                bool mo = main_open[k];
                rows.push_back(run_item(o, *clients[k], impls[k], host, ports[k], it, mo, pl, rep));
                main_open[k] = mo;
                if (!rows.back().ok) broken[k] = true, ok = false;
            }
        }
        std::string err;
        if (!clients[k]->quit(host, ports[k], err)) {
            std::fprintf(stderr, "btsp-perf: %s: quit: %s\n", impl_name(impls[k]), err.c_str());
            ok = false;
        }
        clients[k].reset();
        children[k].reap(5.0);
    }
    return ok;
}

// ---------------------------------------------------------------------------------------
// Aggregation (median over repetitions) and output
// ---------------------------------------------------------------------------------------
double median(std::vector<double> v) {
    v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return std::isnan(x); }), v.end());
    if (v.empty()) return NAN;
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Agg {
    Row row;
    int reps = 0;
};

std::vector<Agg> aggregate(const std::vector<Row>& rows, const std::vector<Item>& items, const std::vector<Impl>& impls) {
    std::vector<Agg> out;
    for (const Item& it : items) {
        for (Impl impl : impls) {
            if (it.test == Test::CONNS && impl != Impl::LIB) continue;  // btsp only
            std::vector<const Row*> rs;
            for (const Row& r : rows)
                if (r.impl == impl && r.item.test == it.test && r.item.size == it.size && r.item.window == it.window && r.ok)
                    rs.push_back(&r);
            Agg a;
            a.row.impl = impl;
            a.row.item = it;
            a.reps = static_cast<int>(rs.size());
            a.row.ok = !rs.empty();
            auto med = [&](double Row::*m) {
                std::vector<double> v;
                for (const Row* r : rs) v.push_back(r->*m);
                return median(v);
            };
            a.row.p50 = med(&Row::p50);
            a.row.p99 = med(&Row::p99);
            a.row.avg = med(&Row::avg);
            a.row.min = med(&Row::min);
            a.row.mibps = med(&Row::mibps);
            a.row.mmsgps = med(&Row::mmsgps);
            a.row.client_cpu = med(&Row::client_cpu);
            a.row.server_cpu = med(&Row::server_cpu);
            a.row.max = med(&Row::max);
            a.row.srv_rss_mib = med(&Row::srv_rss_mib);
            a.row.srv_kib_per_conn = med(&Row::srv_kib_per_conn);
            a.row.srv_live = med(&Row::srv_live);
            a.row.srv_eps = med(&Row::srv_eps);
            a.row.cli_rss_mib = med(&Row::cli_rss_mib);
            a.row.after_live = med(&Row::after_live);
            a.row.after_eps = med(&Row::after_eps);
            a.row.after_rss_mib = med(&Row::after_rss_mib);
            out.push_back(a);
        }
    }
    return out;
}

const Agg* find(const std::vector<Agg>& v, Impl impl, const Item& it) {
    for (const Agg& a : v)
        if (a.row.impl == impl && a.row.item.test == it.test && a.row.item.size == it.size && a.row.item.window == it.window)
            return &a;
    return nullptr;
}

// The headline metric of a row, and whether lower is better.
double headline(const Row& r) {
    switch (r.item.test) {
        case Test::LAT: case Test::CONN: return r.p50;
        case Test::BW: return r.mibps;
        case Test::RATE: return r.mmsgps;
        case Test::IDLE: return r.client_cpu;
        case Test::CONNS: return NAN;  // btsp only: no ratio
    }
    return NAN;
}

std::string fmt_size(std::size_t s) {
    char b[32];
    if (s >= (1u << 20) && s % (1u << 20) == 0) std::snprintf(b, sizeof b, "%zuM", s >> 20);
    else if (s >= 1024 && s % 1024 == 0) std::snprintf(b, sizeof b, "%zuK", s >> 10);
    else std::snprintf(b, sizeof b, "%zu", s);
    return b;
}

std::string num(double v, int prec = 3) {
    if (std::isnan(v)) return "-";
    char b[64];
    std::snprintf(b, sizeof b, "%.*f", prec, v);
    return b;
}

void print_table(const Options& o, const std::vector<Agg>& agg, const std::vector<Item>& items,
                 const std::vector<Impl>& impls) {
    const bool cmp = impls.size() == 2;
    const bool has_lib = std::find(impls.begin(), impls.end(), Impl::LIB) != impls.end();
    Test last = static_cast<Test>(255);
    for (std::size_t n = 0; n < items.size(); ++n) {
        const Item& it = items[n];
        if (it.test != last) {
            last = it.test;
            std::printf("\n");
            switch (it.test) {
                case Test::LAT:
                    std::printf("# lat: tag ping-pong, half round trip in us%s\n", cmp ? "; ratio = btsp / raw (p50)" : "");
                    if (cmp)
                        std::printf("%8s %8s | %9s %9s %7s | %9s %9s | %9s %9s | %9s %9s\n", "size", "iters", "btsp p50",
                                    "raw p50", "ratio", "btsp p99", "raw p99", "btsp avg", "raw avg", "btsp min", "raw min");
                    else
                        std::printf("%8s %8s %6s | %9s %9s %9s %9s\n", "size", "iters", "impl", "p50", "p99", "avg", "min");
                    break;
                case Test::BW:
                case Test::RATE:
                    std::printf("# %s: one-way stream, window = ops in flight%s\n", test_name(it.test),
                                cmp ? "; ratio = btsp / raw" : "");
                    if (cmp)
                        std::printf("%8s %6s %8s | %11s %11s %7s | %9s %9s %7s\n", "size", "window", "iters", "btsp MiB/s",
                                    "raw MiB/s", "ratio", "btsp Mm/s", "raw Mm/s", "ratio");
                    else
                        std::printf("%8s %6s %8s %6s | %11s %10s\n", "size", "window", "iters", "impl", "MiB/s", "Mmsg/s");
                    break;
                case Test::CONN:
                    std::printf("# conn: connect + first ping-pong, us%s\n", cmp ? "; ratio = btsp / raw (p50)" : "");
                    if (cmp)
                        std::printf("%8s | %9s %9s %7s | %9s %9s | %9s %9s\n", "iters", "btsp p50", "raw p50", "ratio",
                                    "btsp p99", "raw p99", "btsp avg", "raw avg");
                    else
                        std::printf("%8s %6s | %9s %9s %9s %9s\n", "iters", "impl", "p50", "p99", "avg", "min");
                    break;
                case Test::IDLE:
                    std::printf("# idle: CPU of a connected, silent pair over %.1f s, %% of one core\n", o.idle_ms / 1000.0);
                    std::printf("%6s | %10s %10s\n", "impl", "client %", "server %");
                    break;
                case Test::CONNS:
                    if (!has_lib) {
                        std::printf("# conns: measured for btsp only; skipped for raw\n");
                        break;
                    }
                    std::printf("# conns%s: N extra connections to the server, opened one at a time%s%s%s; setup = connect() "
                                "call to completion (us) of the connects made in that step\n",
                                cmp ? " (btsp only)" : "", g_conns_how.empty() ? "" : " (", g_conns_how.c_str(),
                                g_conns_how.empty() ? "" : ")");
                    std::printf("#   srv = server process: RSS MiB, RSS growth vs N=0 per connection (KiB/conn), live "
                                "connections (N+1 with the main one), open UCX endpoints; cli = client RSS MiB\n");
                    std::printf("%6s | %9s %9s | %8s %9s %8s %8s | %8s\n", "N", "setup p50", "setup max", "srv MiB",
                                "KiB/conn", "srv live", "srv eps", "cli MiB");
                    break;
            }
        }
        if (it.test == Test::CONNS) {
            const Agg* c = find(agg, Impl::LIB, it);
            if (!c) continue;
            std::printf("%6zu | %9s %9s | %8s %9s %8s %8s | %8s\n", it.size, num(c->row.p50, 1).c_str(),
                        num(c->row.max, 1).c_str(), num(c->row.srv_rss_mib, 1).c_str(),
                        num(c->row.srv_kib_per_conn, 1).c_str(), num(c->row.srv_live, 0).c_str(),
                        num(c->row.srv_eps, 0).c_str(), num(c->row.cli_rss_mib, 1).c_str());
            const bool group_end = n + 1 == items.size() || items[n + 1].test != Test::CONNS;
            const Agg* b = group_end ? find(agg, Impl::LIB, Item{Test::CONNS, 0, 0, 0, 0}) : nullptr;
            if (b && b->row.ok)
                std::printf("# conns: after shutdown() of the extra connections: server live %s, open endpoints %s, "
                            "RSS %s MiB\n",
                            num(b->row.after_live, 0).c_str(), num(b->row.after_eps, 0).c_str(),
                            num(b->row.after_rss_mib, 1).c_str());
            continue;
        }
        const Agg* a = find(agg, impls[0], it);
        const Agg* b = cmp ? find(agg, impls[1], it) : nullptr;
        auto ratio = [](double x, double y) { return (std::isnan(x) || std::isnan(y) || y == 0) ? NAN : x / y; };
        switch (it.test) {
            case Test::LAT:
                if (cmp)
                    std::printf("%8s %8" PRIu64 " | %9s %9s %7s | %9s %9s | %9s %9s | %9s %9s\n", fmt_size(it.size).c_str(),
                                it.iters, num(a->row.p50).c_str(), num(b->row.p50).c_str(),
                                num(ratio(a->row.p50, b->row.p50), 2).c_str(), num(a->row.p99).c_str(),
                                num(b->row.p99).c_str(), num(a->row.avg).c_str(), num(b->row.avg).c_str(),
                                num(a->row.min).c_str(), num(b->row.min).c_str());
                else
                    std::printf("%8s %8" PRIu64 " %6s | %9s %9s %9s %9s\n", fmt_size(it.size).c_str(), it.iters,
                                impl_name(impls[0]), num(a->row.p50).c_str(), num(a->row.p99).c_str(),
                                num(a->row.avg).c_str(), num(a->row.min).c_str());
                break;
            case Test::BW:
            case Test::RATE:
                if (cmp)
                    std::printf("%8s %6u %8" PRIu64 " | %11s %11s %7s | %9s %9s %7s\n", fmt_size(it.size).c_str(), it.window,
                                it.iters, num(a->row.mibps, 1).c_str(), num(b->row.mibps, 1).c_str(),
                                num(ratio(a->row.mibps, b->row.mibps), 2).c_str(), num(a->row.mmsgps).c_str(),
                                num(b->row.mmsgps).c_str(), num(ratio(a->row.mmsgps, b->row.mmsgps), 2).c_str());
                else
                    std::printf("%8s %6u %8" PRIu64 " %6s | %11s %10s\n", fmt_size(it.size).c_str(), it.window, it.iters,
                                impl_name(impls[0]), num(a->row.mibps, 1).c_str(), num(a->row.mmsgps).c_str());
                break;
            case Test::CONN:
                if (cmp)
                    std::printf("%8" PRIu64 " | %9s %9s %7s | %9s %9s | %9s %9s\n", it.iters, num(a->row.p50, 1).c_str(),
                                num(b->row.p50, 1).c_str(), num(ratio(a->row.p50, b->row.p50), 2).c_str(),
                                num(a->row.p99, 1).c_str(), num(b->row.p99, 1).c_str(), num(a->row.avg, 1).c_str(),
                                num(b->row.avg, 1).c_str());
                else
                    std::printf("%8" PRIu64 " %6s | %9s %9s %9s %9s\n", it.iters, impl_name(impls[0]),
                                num(a->row.p50, 1).c_str(), num(a->row.p99, 1).c_str(), num(a->row.avg, 1).c_str(),
                                num(a->row.min, 1).c_str());
                break;
            case Test::IDLE:
                for (const Agg* x : {a, b})
                    if (x)
                        std::printf("%6s | %10s %10s%s\n", impl_name(x->row.impl), num(x->row.client_cpu, 2).c_str(),
                                    num(x->row.server_cpu, 2).c_str(),
                                    x->row.impl == Impl::RAW ? "   (busy-polling loop)" : "");
                break;
            case Test::CONNS:  // printed above
                break;
        }
    }
}

double ratio_vs_raw(const std::vector<Agg>& agg, const Agg& a) {
    if (a.row.impl != Impl::LIB) return NAN;
    const Agg* r = find(agg, Impl::RAW, a.row.item);
    if (!r) return NAN;
    const double x = headline(a.row), y = headline(r->row);
    return (std::isnan(x) || std::isnan(y) || y == 0) ? NAN : x / y;
}

std::string mode_name(const Options& o) {
    return o.backend.mode_given ? std::string(btsp::to_string(o.backend.mode)) : "default";
}

void print_csv(const Options& o, const std::vector<Agg>& agg) {
    // conns rows: size = extra connections N, iters = connects in that step, p50_us = their
    // connect() p50; the columns from max_us on are theirs.
    std::printf("impl,test,size,window,iters,reps,mode,p50_us,p99_us,avg_us,min_us,MiBps,Mmsgps,client_cpu_pct,server_cpu_pct,"
                "ratio_vs_raw,max_us,server_rss_MiB,server_KiB_per_conn,server_live,server_open_eps,client_rss_MiB\n");
    for (const Agg& a : agg) {
        const Row& r = a.row;
        std::printf("%s,%s,%zu,%u,%" PRIu64 ",%d,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n", impl_name(r.impl),
                    test_name(r.item.test), r.item.size, r.item.window, r.item.iters, a.reps,
                    r.impl == Impl::RAW ? "busy" : mode_name(o).c_str(), num(r.p50, 4).c_str(), num(r.p99, 4).c_str(),
                    num(r.avg, 4).c_str(), num(r.min, 4).c_str(), num(r.mibps, 2).c_str(), num(r.mmsgps, 4).c_str(),
                    num(r.client_cpu, 3).c_str(), num(r.server_cpu, 3).c_str(), num(ratio_vs_raw(agg, a), 4).c_str(),
                    num(r.max, 4).c_str(), num(r.srv_rss_mib, 3).c_str(), num(r.srv_kib_per_conn, 2).c_str(),
                    num(r.srv_live, 0).c_str(), num(r.srv_eps, 0).c_str(), num(r.cli_rss_mib, 3).c_str());
    }
}

std::string jnum(double v, int prec) {
    if (std::isnan(v)) return "null";
    return num(v, prec);
}

// conns rows: size = extra connections N, iters = connects in that step, p50_us = their
// connect() p50; these fields are theirs (on the N = 0 row also the state after the close).
std::string conns_json(const Row& r) {
    std::string s = ", \"max_us\": " + jnum(r.max, 4) + ", \"server_rss_MiB\": " + jnum(r.srv_rss_mib, 3) +
                    ", \"server_KiB_per_conn\": " + jnum(r.srv_kib_per_conn, 2) + ", \"server_live\": " +
                    jnum(r.srv_live, 0) + ", \"server_open_eps\": " + jnum(r.srv_eps, 0) + ", \"client_rss_MiB\": " +
                    jnum(r.cli_rss_mib, 3);
    if (r.item.size == 0)
        s += ", \"after_close\": {\"server_live\": " + jnum(r.after_live, 0) + ", \"server_open_eps\": " +
             jnum(r.after_eps, 0) + ", \"server_rss_MiB\": " + jnum(r.after_rss_mib, 3) + "}";
    return s;
}

void print_json(const Options& o, const std::vector<Agg>& agg) {
    std::printf("{\n  \"tool\": \"btsp-perf\",\n  \"mode\": \"%s\",\n  \"loopback\": %s,\n  \"repeat\": %d,\n"
                "  \"shm_fifo\": %u,\n  \"recv_poll\": %u,\n  \"raw_coro\": %s,\n"
                "  \"lib_raw_send\": %s,\n  \"lib_raw_recv\": %s,\n  \"results\": [\n",
                mode_name(o).c_str(), o.loopback ? "true" : "false", o.repeat, shm_fifo_in_use(o.backend),
                recv_poll_in_use(o.backend), o.backend.raw_coro ? "true" : "false",
                o.backend.lib_raw_send ? "true" : "false", o.backend.lib_raw_recv ? "true" : "false");
    for (std::size_t i = 0; i < agg.size(); ++i) {
        const Row& r = agg[i].row;
        std::printf("    {\"impl\": \"%s\", \"test\": \"%s\", \"size\": %zu, \"window\": %u, \"iters\": %" PRIu64
                    ", \"reps\": %d, \"p50_us\": %s, \"p99_us\": %s, \"avg_us\": %s, \"min_us\": %s, \"MiBps\": %s, "
                    "\"Mmsgps\": %s, \"client_cpu_pct\": %s, \"server_cpu_pct\": %s, \"ratio_vs_raw\": %s%s}%s\n",
                    impl_name(r.impl), test_name(r.item.test), r.item.size, r.item.window, r.item.iters, agg[i].reps,
                    jnum(r.p50, 4).c_str(), jnum(r.p99, 4).c_str(), jnum(r.avg, 4).c_str(), jnum(r.min, 4).c_str(),
                    jnum(r.mibps, 2).c_str(), jnum(r.mmsgps, 4).c_str(), jnum(r.client_cpu, 3).c_str(),
                    jnum(r.server_cpu, 3).c_str(), jnum(ratio_vs_raw(agg, agg[i]), 4).c_str(),
                    r.item.test == Test::CONNS ? conns_json(r).c_str() : "", i + 1 < agg.size() ? "," : "");
    }
    std::printf("  ]\n}\n");
}

// ---------------------------------------------------------------------------------------
int run_client(const Options& o) {
    const std::vector<Impl> impls = o.compare ? std::vector<Impl>{Impl::LIB, Impl::RAW}
                                              : std::vector<Impl>{o.raw ? Impl::RAW : Impl::LIB};
    const std::vector<Item> items = make_items(o);
    ProgressLine pl;
    pl.on = o.progress == 1;
    const int n_conns = static_cast<int>(std::count_if(items.begin(), items.end(), [](const Item& i) { return i.test == Test::CONNS; }));
    const bool conns_raw = n_conns > 0 && std::find(impls.begin(), impls.end(), Impl::RAW) != impls.end();
    if (conns_raw) std::fprintf(stderr, "btsp-perf: note: conns is measured for btsp only; skipped for raw\n");
    pl.total = (static_cast<int>(items.size() * impls.size()) - (conns_raw ? n_conns : 0)) * o.repeat;
    std::vector<Row> rows;
    bool ok = true;
    const bool interleave = o.loopback && (impls.size() > 1 || o.repeat > 1) && !o.sequential &&
                            !(o.backend.mode_given && o.backend.mode == btsp::ProgressMode::POLLING);
    if (interleave) ok = run_interleaved(o, impls, items, rows, pl);
    for (int rep = 0; rep < (interleave ? 0 : o.repeat); ++rep) {
        for (Impl impl : impls) {
            Child child;
            std::uint16_t port = o.port;
            std::string host = o.host;
            if (o.loopback) {
                host = "127.0.0.1";
                port = spawn_server(o, impl, child);
                if (port == 0) {
                    std::fprintf(stderr, "btsp-perf: the %s server did not start\n", impl_name(impl));
                    return 1;
                }
            }
            ok &= run_session(o, impl, host, port, items, rows, pl, rep);
            child.reap(5.0);
        }
    }
    pl.finish();
    const std::vector<Agg> agg = aggregate(rows, items, impls);
    if (o.csv) print_csv(o, agg);
    else if (o.json) print_json(o, agg);
    else {
        std::printf("btsp-perf: %s, mode %s, %s%s", o.compare ? "btsp vs raw UCP" : impl_name(impls[0]),
                    mode_name(o).c_str(), o.loopback ? "loopback" : (o.host + ":" + std::to_string(o.port)).c_str(),
                    o.repeat > 1 ? (", median of " + std::to_string(o.repeat) + " runs").c_str() : "");
        if (!o.cpus.empty()) {
            std::printf(", cpus");
            for (int c : o.cpus) std::printf(" %d", c);
        }
        const std::uint32_t fifo = shm_fifo_depth(o.backend);
        if (const char* env = ucx_env_shm_fifo()) std::printf(", shm FIFO %s=%s", env, std::getenv(env));
        else if (fifo != 0) std::printf(", shm FIFO %u", fifo);
        else std::printf(", shm FIFO UCX default");
        if (o.compare || !o.raw) std::printf(", recv poll %u", recv_poll_in_use(o.backend));
        if ((o.compare || o.raw) && o.backend.raw_coro) std::printf(", raw server receives in bare coroutines");
        if ((o.compare || !o.raw) && (o.backend.lib_raw_send || o.backend.lib_raw_recv))
            std::printf(", btsp stream %s in raw UCP loops (diagnostic)",
                        o.backend.lib_raw_send && o.backend.lib_raw_recv ? "sends and receives"
                        : o.backend.lib_raw_send                           ? "sends"
                                                                           : "receives");
        std::printf("\n");
        print_table(o, agg, items, impls);
    }
    return ok ? 0 : 1;
}

int run_server(const Options& o) {
    BackendOptions bo = o.backend;
    if (bo.cpu < 0 && !o.cpus.empty()) bo.cpu = o.cpus[0];
    if (o.serve) return o.impl == Impl::LIB ? run_lib_server(bo, o.port, o.port_fd) : run_raw_server(bo, o.port, o.port_fd);
    // Network server: one run (or, with --compare, library then raw, --repeat times).
    const std::vector<Impl> impls = o.compare ? std::vector<Impl>{Impl::LIB, Impl::RAW}
                                              : std::vector<Impl>{o.raw ? Impl::RAW : Impl::LIB};
    for (int rep = 0; rep < o.repeat; ++rep)
        for (Impl impl : impls) {
            const int rc = impl == Impl::LIB ? run_lib_server(bo, o.port, -1) : run_raw_server(bo, o.port, -1);
            if (rc != 0) return rc;
        }
    return 0;
}

}  // namespace
}  // namespace perf

int main(int argc, char** argv) {
    perf::Options o = perf::parse(argc, argv);
    if (o.timeout_s > 0) alarm(o.timeout_s);  // every process of a run is bounded in time
    signal(SIGPIPE, SIG_IGN);
    if (o.loopback || !o.host.empty()) {
        if (!o.loopback && !o.port_given) std::fprintf(stderr, "btsp-perf: using the default port %u\n", o.port);
        return perf::run_client(o);
    }
    return perf::run_server(o);
}
