// btsp-perf — shared definitions: wire protocol between client and server, test
// parameters and results, and the two back ends (the btsp library and raw UCP).
#pragma once

#include <btsp/options.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
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

enum CmdKind : std::uint32_t {
    kCmdHello = 1,     // arg = client implementation; reply (kTagDone) arg = server's
    kCmdLat = 2,       // iters ping-pongs of `size` bytes on kTagData
    kCmdStream = 3,    // iters messages of `size` bytes, `window` receives in flight
    kCmdConnPing = 4,  // reply 8 bytes on kTagPong (connection-setup test)
    kCmdIdle = 5,      // stay idle `arg` ms, reply cpu time used (ns) in Reply
    kCmdQuit = 6,      // reply kTagDone, then exit
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

enum class Impl : std::uint8_t { LIB = 0, RAW = 1 };
inline const char* impl_name(Impl i) { return i == Impl::LIB ? "btsp" : "raw"; }

enum class Test : std::uint8_t { LAT, BW, RATE, CONN, IDLE };
const char* test_name(Test t);

// Options that both back ends understand.
struct BackendOptions {
    btsp::ProgressMode mode = btsp::ProgressMode::ADAPTIVE;
    bool mode_given = false;  // false: library default (ManagerOptions::from_env())
    int cpu = -1;             // pin this process (and the progress thread) here
    double connect_retry_s = 10.0;  // client: retry refused connects for this long
    bool raw_sockaddr = false;      // raw: keep data on the sockaddr endpoint (plain-UCP flow)
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

// ---- helpers -----------------------------------------------------------------------------
inline std::uint64_t now_ns() {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::steady_clock::now().time_since_epoch())
                                          .count());
}
// CPU time (user+system) of this process, ns.
std::uint64_t process_cpu_ns();
// Pins the calling thread (and threads it creates later) to `cpu`; no-op for cpu < 0.
bool pin_to_cpu(int cpu);
// Writes the port to fd and closes it.
void report_port(int fd, std::uint16_t port);

}  // namespace perf
