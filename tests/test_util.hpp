// Helpers shared by the network tests: bounded waiting on coroutines, loopback sockets,
// payload patterns. Everything waits with a deadline; nothing here can hang a test.
#pragma once

#include <btsp/btsp.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace btsp_test {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

/// Options for test managers: the environment's (so CI can select a progress mode),
/// with connect timeouts short enough for tests.
inline btsp::ManagerOptions test_options() {
    btsp::ManagerOptions o = btsp::ManagerOptions::from_env();
    return o;
}

/// Sets an environment variable for the lifetime of the object, then restores it.
class EnvVar {
public:
    EnvVar(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name)) {
            old_ = old;
            had_ = true;
        }
        ::setenv(name, value, 1);
    }
    ~EnvVar() {
        if (had_)
            ::setenv(name_, old_.c_str(), 1);
        else
            ::unsetenv(name_);
    }
    EnvVar(const EnvVar&) = delete;
    EnvVar& operator=(const EnvVar&) = delete;

private:
    const char* name_;
    std::string old_;
    bool had_ = false;
};

/// Result of awaiting something that yields void.
struct Unit {
    bool operator==(const Unit&) const = default;
};

/// Runs an awaitable (RdmaAwaitable, StateChangeAwaitable, RdmaTask<T>) in a detached
/// coroutine started on the calling thread, and lets the test wait for its result with a
/// deadline. If the test gives up, the coroutine stays detached and still completes later
/// (e.g. when the manager shuts down): its result goes to shared state, never to the stack.
template <typename R>
class Pending {
public:
    template <typename A>
    explicit Pending(A&& awaitable) : state_(std::make_shared<State>()) {
        run(std::forward<A>(awaitable), state_);
        completed_at_once_ = ready();
    }

    /// The result, or nullopt if it did not complete within `limit`.
    std::optional<R> wait_for(std::chrono::milliseconds limit) const {
        std::unique_lock<std::mutex> lock(state_->mutex);
        state_->cv.wait_for(lock, limit, [this] { return state_->value.has_value(); });
        return state_->value;
    }
    /// True if it has completed (without waiting).
    bool ready() const {
        std::lock_guard<std::mutex> lock(state_->mutex);
        return state_->value.has_value();
    }
    /// True if it completed before the constructor returned (no suspension happened).
    bool completed_at_once() const noexcept { return completed_at_once_; }
    /// Thread the coroutine ran on after the co_await.
    std::thread::id resumed_on() const {
        std::lock_guard<std::mutex> lock(state_->mutex);
        return state_->resumed_on;
    }
    /// Time from construction to completion (meaningful once ready()).
    Clock::duration elapsed() const {
        std::lock_guard<std::mutex> lock(state_->mutex);
        return state_->done_at - started_;
    }

private:
    struct State {
        mutable std::mutex mutex;
        std::condition_variable cv;
        std::optional<R> value;
        std::thread::id resumed_on;
        Clock::time_point done_at;
    };

    // The harness's own fire-and-forget coroutine type (not RdmaTask: the harness must not
    // depend on the type under test). It starts eagerly and frees itself at its end.
    struct Detached {
        struct promise_type {
            Detached get_return_object() noexcept { return {}; }
            std::suspend_never initial_suspend() noexcept { return {}; }
            std::suspend_never final_suspend() noexcept { return {}; }
            void return_void() noexcept {}
            void unhandled_exception() noexcept { std::terminate(); }
        };
    };

    template <typename A>
    static Detached run(A awaitable, std::shared_ptr<State> s) {
        R r{};
        if constexpr (std::is_same_v<R, Unit>) {
            co_await awaitable;  // lvalue: no copy of the awaitable
        } else {
            r = co_await awaitable;
        }
        {
            std::lock_guard<std::mutex> lock(s->mutex);
            s->value = std::move(r);
            s->resumed_on = std::this_thread::get_id();
            s->done_at = Clock::now();
        }
        s->cv.notify_all();
    }

    Clock::time_point started_ = Clock::now();
    std::shared_ptr<State> state_;
    bool completed_at_once_ = false;
};

using PendingOp = Pending<btsp::RdmaOpResult>;
using PendingState = Pending<bool>;

/// Starts `awaitable` now (on this thread) and records whether it completed at once.
template <typename A>
auto start(A&& awaitable) {
    using Raw = std::remove_cvref_t<btsp::detail::await_result_t<A>>;
    using R = std::conditional_t<std::is_void_v<Raw>, Unit, Raw>;
    return std::make_unique<Pending<R>>(std::forward<A>(awaitable));
}

/// Awaits with a deadline; nullopt on timeout.
template <typename A>
auto await_within(A&& awaitable, std::chrono::milliseconds limit) {
    auto p = start(std::forward<A>(awaitable));
    return p->wait_for(limit);
}

/// Polls `pred` every millisecond until it is true or `limit` passes.
template <typename Pred>
bool wait_until(Pred pred, std::chrono::milliseconds limit) {
    const auto deadline = Clock::now() + limit;
    while (!pred()) {
        if (Clock::now() >= deadline) return pred();
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

inline double ms_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// ---- sockets ---------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that nobody listens on (bound to port 0, then closed).
inline std::uint16_t free_tcp_port() {
    // Below the kernel's ephemeral range (32768-60999 here): a port taken from that range
    // and released can be handed by the kernel to any other socket (another test's
    // listener on port 0, an outgoing connection) before the test binds it again, which
    // made tests that listen on a chosen port flaky under parallel ctest. Ports below it
    // are only ever taken explicitly; pick one at random and check that it is free.
    static std::atomic<std::uint32_t> counter{0};
    std::uint32_t x = static_cast<std::uint32_t>(::getpid()) * 2654435761u ^
                      static_cast<std::uint32_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
                      (counter.fetch_add(1) * 40503u);
    for (int attempt = 0; attempt < 200; ++attempt) {
        x = x * 1664525u + 1013904223u;
        const auto port = static_cast<std::uint16_t>(20000 + (x >> 8) % 12000);  // 20000..31999
        const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) return 0;
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_ANY);  // UCX listens on all interfaces
        a.sin_port = htons(port);
        const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
        ::close(fd);
        if (ok) return port;
    }
    return 0;
}

/// A TCP socket that listens on 127.0.0.1 but never accepts (a peer that never answers).
class SilentListener {
public:
    SilentListener() {
        fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        if (fd_ < 0) return;
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 8) != 0)
            return;
        socklen_t len = sizeof a;
        if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0) port_ = ntohs(a.sin_port);
    }
    ~SilentListener() {
        if (fd_ >= 0) ::close(fd_);
    }
    SilentListener(const SilentListener&) = delete;
    SilentListener& operator=(const SilentListener&) = delete;
    std::uint16_t port() const noexcept { return port_; }

private:
    int fd_ = -1;
    std::uint16_t port_ = 0;
};

/// True if an IPv6 loopback socket can be bound here.
inline bool ipv6_loopback_available() {
    const int fd = ::socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0) return false;
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_loopback;
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    return ok;
}

// ---- payloads ----------------------------------------------------------------------------

/// Deterministic pseudo-random bytes for (seed, size).
inline std::vector<std::uint8_t> pattern(std::size_t size, std::uint32_t seed) {
    std::vector<std::uint8_t> v(size);
    std::uint32_t x = seed * 2654435761u + 12345u;
    for (auto& b : v) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        b = static_cast<std::uint8_t>(x);
    }
    return v;
}

/// FNV-1a 64 of `n` bytes.
inline std::uint64_t checksum(const void* data, std::size_t n) {
    const auto* p = static_cast<const std::uint8_t*>(data);
    std::uint64_t h = 1469598103934665603ull;
    for (std::size_t i = 0; i < n; ++i) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

}  // namespace btsp_test
