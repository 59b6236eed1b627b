// btsp-perf — shared definitions: wire protocol between client and server, test
// parameters and results, and the two back ends (the btsp library and raw UCP).
#pragma once

#include <btsp/options.hpp>

#include <ucp/api/ucp.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

namespace perf {

// ---- wire protocol -------------------------------------------------------------------
// Every test is driven by the client: it sends a Cmd (tag kTagCmd); the server answers
// kTagReady when it is set up (the client starts its clock after that), runs the test,
// and for streaming tests answers kTagDone when it has received everything.
inline constexpr std::uint64_t kTagCmd = 0xB75B'0000'0000'0001ull;
inline constexpr std::uint64_t kTagReady = 0xB75B'0000'0000'0002ull;
inline constexpr std::uint64_t kTagData = 0xB75B'0000'0000'0003ull;
inline constexpr std::uint64_t kTagDone = 0xB75B'0000'0000'0004ull;
inline constexpr std::uint64_t kTagPong = 0xB75B'0000'0000'0005ull;
// Never sent: a receive of it that times out moves a coroutine onto the progress thread.
inline constexpr std::uint64_t kTagNever = 0xB75B'0000'0000'0006ull;

enum CmdKind : std::uint32_t {
    kCmdHello = 1,     // arg = client implementation; reply (kTagDone) arg = server's
    kCmdLat = 2,       // iters ping-pongs of `size` bytes on kTagData
    kCmdStream = 3,    // iters messages of `size` bytes, `window` receives in flight
    kCmdConnPing = 4,  // reply 8 bytes on kTagPong (connection-setup test)
    kCmdIdle = 5,      // stay idle `arg` ms, reply cpu time used (ns) in Reply
    kCmdQuit = 6,      // reply kTagDone, then exit
    kCmdStat = 7,      // reply StatReply (kTagDone): server RSS, connections, endpoints
};

struct Cmd {
    std::uint32_t kind = 0;
    std::uint32_t window = 0;
    std::uint64_t size = 0;
    std::uint64_t iters = 0;
    std::uint64_t arg = 0;
};

struct Reply {
    std::uint64_t a = 0;  // hello: implementation; idle: server CPU ns
    std::uint64_t b = 0;  // idle: wall ns
};

// Answer to kCmdStat (conns test): the server's state right now.
struct StatReply {
    std::uint64_t rss_kib = 0;         // VmRSS of the server process
    std::uint64_t live = 0;            // live connections (btsp: connection_count())
    std::uint64_t open_endpoints = 0;  // btsp: metrics().open_endpoints; raw: 0 (not tracked)
    std::uint64_t reserved = 0;
};

enum class Impl : std::uint8_t { LIB = 0, RAW = 1 };
inline const char* impl_name(Impl i) { return i == Impl::LIB ? "btsp" : "raw"; }

enum class Test : std::uint8_t { LAT, BW, RATE, CONN, IDLE, CONNS };
const char* test_name(Test t);

// Options that both back ends understand.
struct BackendOptions {
    btsp::ProgressMode mode = btsp::ProgressMode::ADAPTIVE;
    bool mode_given = false;  // false: library default (ManagerOptions::from_env())
    int cpu = -1;             // pin this process (and the progress thread) here
    double connect_retry_s = 10.0;  // client: retry refused connects for this long
    bool raw_sockaddr = false;      // raw: keep data on the sockaddr endpoint (plain-UCP flow)
    long shm_fifo = -1;             // shared-memory FIFO depth for both implementations;
                                    // -1: the library's default, 0: UCX's own (64)
    long recv_poll = -1;            // library: ManagerOptions::recv_poll; -1: its default
    bool raw_coro = false;          // raw server: receive streams in bare coroutines (--raw-coro)
    // --lib-raw-loops: library processes whose stream runs raw UCP loops on the manager's
    // worker (lock_worker) on the sending (client) and/or receiving (server) side.
    bool lib_raw_send = false;
    bool lib_raw_recv = false;
};

// The library's receive polling budget in this run (ManagerOptions::recv_poll; BLOCKING
// mode never polls).
inline std::uint32_t recv_poll_in_use(const BackendOptions& o) {
    const btsp::ManagerOptions env = btsp::ManagerOptions::from_env();
    if ((o.mode_given ? o.mode : env.progress_mode) == btsp::ProgressMode::BLOCKING) return 0;
    return o.recv_poll >= 0 ? static_cast<std::uint32_t>(o.recv_poll) : env.recv_poll;
}

// The shared-memory FIFO depth (UCX MM_FIFO_SIZE) both implementations use: --shm-fifo,
// else the library's default. Raw UCP gets the same setting, so that a ratio measures the
// library and not a difference in UCX configuration. 0 = leave UCX's default.
inline std::uint32_t shm_fifo_depth(const BackendOptions& o) {
    if (o.shm_fifo >= 0) return static_cast<std::uint32_t>(o.shm_fifo);
    return btsp::ManagerOptions::from_env().shm_fifo_size;
}
// The library's rule: a depth set in UCX's environment wins over shm_fifo_size.
inline const char* ucx_env_shm_fifo() {
    for (const char* name : {"UCX_MM_FIFO_SIZE", "UCX_POSIX_FIFO_SIZE", "UCX_SYSV_FIFO_SIZE"})
        if (std::getenv(name) != nullptr) return name;
    return nullptr;
}
// The depth a run really uses: the environment's if it sets one, else shm_fifo_depth().
inline std::uint32_t shm_fifo_in_use(const BackendOptions& o) {
    if (const char* env = ucx_env_shm_fifo()) return static_cast<std::uint32_t>(std::strtoul(std::getenv(env), nullptr, 10));
    return shm_fifo_depth(o);
}

// One step of the conns test: the state once the client holds `n` extra connections.
struct ConnsStep {
    unsigned n = 0;                 // extra connections held (0 = baseline)
    bool after = false;             // the state once the extra connections were closed
    std::vector<double> setup_ns;   // connect() times of the connections opened in this step
    StatReply server;
    std::uint64_t client_rss_kib = 0;
};

// ---- client side -----------------------------------------------------------------------
class ClientBackend {
public:
    virtual ~ClientBackend() = default;
    // Opens the main connection and checks that the server runs the same implementation.
    virtual bool open(const std::string& host, std::uint16_t port, std::string& err) = 0;
    // iters ping-pongs; if samples != nullptr, one half-round-trip sample (ns) per iteration.
    virtual bool lat(std::size_t size, std::uint64_t iters, std::vector<double>* samples_ns,
                     std::string& err) = 0;
    // iters one-way messages with `window` in flight; seconds from first send to the
    // server's final acknowledgement.
    virtual bool stream(std::size_t size, std::uint64_t iters, unsigned window, double& seconds,
                        std::string& err) = 0;
    // Both sides idle for ms; CPU time (ns) used by each process meanwhile.
    virtual bool idle(unsigned ms, double& client_cpu_ns, double& server_cpu_ns, double& wall_ns,
                      std::string& err) = 0;
    // Closes the main connection.
    virtual void close() = 0;
    // One connection-setup sample: new connection, ping/pong, close. ns of connect+exchange.
    virtual bool conn_once(const std::string& host, std::uint16_t port, double& ns,
                           std::string& err) = 0;
    // Connection scaling (conns): opens extra connections to the server until it holds each
    // count in `counts` (ascending), asking the server for its state (StatReply over the
    // main connection) at 0 and after each step; then closes them all. `steps` gets the
    // baseline (n = 0), one entry per count reached, and last (if the main connection still
    // answers) the state once the extra connections are closed (after = true). On failure
    // (false, err) it keeps the steps reached. `how` says how the client held them. Only
    // the library implements it.
    virtual bool conns(const std::string& host, std::uint16_t port, const std::vector<unsigned>& counts,
                       std::vector<ConnsStep>& steps, std::string& how, std::string& err) {
        (void)host, (void)port, (void)counts, (void)steps, (void)how;
        err = "the conns test is implemented for btsp only";
        return false;
    }
    // Tells the server to exit (over the main connection if open, else a new one).
    virtual bool quit(const std::string& host, std::uint16_t port, std::string& err) = 0;
};

std::unique_ptr<ClientBackend> make_lib_client(const BackendOptions& o);
std::unique_ptr<ClientBackend> make_raw_client(const BackendOptions& o);

// ---- server side -----------------------------------------------------------------------
// Serves until a kCmdQuit. port_fd >= 0: write the real port (uint16_t) there once
// listening, then close it. Returns the process exit code.
int run_lib_server(const BackendOptions& o, std::uint16_t port, int port_fd);
int run_raw_server(const BackendOptions& o, std::uint16_t port, int port_fd);

// ---- raw UCP stream loops (raw_ucp.cpp) ----------------------------------------------------
// The raw implementation's stream (bw, rate): iters messages of kTagData with `window`
// operations in flight, completions only counted. The sending side posts on `ep`, the
// receiving side on `worker`. UCS_OK when all completed; bounded by 120 s and by *failed
// (set by an endpoint error handler). Also used by the library's --lib-raw-loops diagnostic.
ucs_status_t raw_send_stream(ucp_worker_h worker, ucp_ep_h ep, const void* buf, std::size_t size,
                             std::uint64_t iters, unsigned window, const bool* failed);
ucs_status_t raw_recv_stream(ucp_worker_h worker, void* buf, std::size_t size, std::uint64_t iters,
                             unsigned window, const bool* failed);

// ---- helpers -----------------------------------------------------------------------------
inline std::uint64_t now_ns() {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::steady_clock::now().time_since_epoch())
                                          .count());
}
// CPU time (user+system) of this process, ns.
std::uint64_t process_cpu_ns();
// Resident set size (VmRSS) of this process, KiB; 0 if unknown.
std::uint64_t process_rss_kib();
// Pins the calling thread (and threads it creates later) to `cpu`; no-op for cpu < 0.
bool pin_to_cpu(int cpu);
// Writes the port to fd and closes it.
void report_port(int fd, std::uint16_t port);

}  // namespace perf
