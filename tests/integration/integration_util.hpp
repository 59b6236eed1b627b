// Helpers of the integration tests: a connected loopback pair of managers, bounded waits.
// Everything waits with a deadline; nothing here can hang a test.
#pragma once

#include <btsp/btsp.hpp>
#include <btsp/future.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <future>
#include <optional>
#include <thread>

namespace btsp_it {

using namespace std::chrono_literals;

/// Waits at most `limit` for `f`; its value, or nullopt on timeout.
template <typename T>
std::optional<T> get_within(std::future<T>& f, std::chrono::milliseconds limit) {
    if (f.wait_for(limit) != std::future_status::ready) return std::nullopt;
    return f.get();
}

/// A server manager listening on an ephemeral loopback port and a client manager.
/// Options of a server that listens on loopback only.
inline btsp::ManagerOptions loopback_server_options() {
    btsp::ManagerOptions o = btsp::ManagerOptions::from_env();
    o.listen_address = "127.0.0.1";
    return o;
}

struct LoopbackPair {
    btsp::CoroutineRdmaManager server{loopback_server_options()};
    btsp::CoroutineRdmaManager client;
    std::uint16_t port = 0;

    /// Initialises both (server on 127.0.0.1, port 0); false on failure.
    bool init() {
        if (!server.initialize(true, 0)) return false;
        port = server.listening_port();
        return port != 0 && client.initialize(false, 0);
    }
    /// init() and a btsp connect, both sides connected within 10 s.
    bool connect() {
        if (!init()) return false;
        auto c = btsp::to_future(client.connect("127.0.0.1", port));
        auto r = get_within(c, 10s);
        if (!r || !r->success()) return false;
        auto w = btsp::to_future(server.wait_for_connection());
        auto ok = get_within(w, 10s);
        return ok && *ok;
    }
};

/// The thread a manager resumes coroutines on (its progress thread): awaits a receive on
/// an unused tag with a 1 ms deadline, which suspends and completes TIMEOUT there. The
/// manager must be connected; otherwise (or on a timeout of this probe) a default id.
inline std::thread::id progress_thread_of(btsp::CoroutineRdmaManager& m) {
    struct Probe {
        static btsp::RdmaTask<std::thread::id> run(btsp::CoroutineRdmaManager& mgr) {
            char byte = 0;
            const btsp::RdmaOpResult r = co_await mgr.tag_recv(&byte, 1, 0xdead'beef'0000ull).timeout(1ms);
            // TIMEOUT means it suspended and was resumed by the manager; anything else
            // (e.g. DISCONNECTED at once, on this thread) tells nothing.
            co_return r.result == btsp::RdmaResult::TIMEOUT ? std::this_thread::get_id() : std::thread::id{};
        }
    };
    auto f = btsp::to_future(Probe::run(m));
    return get_within(f, 10s).value_or(std::thread::id{});
}

/// A TCP port on 127.0.0.1 that nobody listens on (bound to port 0, then closed).
inline std::uint16_t unused_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::uint16_t port = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
        socklen_t len = sizeof a;
        if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) port = ntohs(a.sin_port);
    }
    ::close(fd);
    return port;
}

}  // namespace btsp_it
