// Helpers shared by the pattern examples (not part of the library): a watchdog that bounds
// the program's run time, bounded waiting on tasks, loopback options, a silent listener.
#pragma once

#include <btsp/btsp.hpp>
#include <btsp/future.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <iostream>
#include <mutex>
#include <optional>
#include <thread>

namespace patterns {

using namespace std::chrono_literals;

/// Ends the process with exit code 3 if it is still alive after `limit` (examples must be
/// bounded in time even if something goes wrong).
class Watchdog {
public:
    explicit Watchdog(std::chrono::seconds limit)
        : thread_([this, limit] {
              std::unique_lock<std::mutex> lock(mutex_);
              if (!cv_.wait_for(lock, limit, [this] { return done_; })) {
                  std::fprintf(stderr, "watchdog: still running after %lld s, giving up\n",
                               static_cast<long long>(limit.count()));
                  std::_Exit(3);
              }
          }) {}
    ~Watchdog() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            done_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }
    Watchdog(const Watchdog&) = delete;
    Watchdog& operator=(const Watchdog&) = delete;

private:
    std::mutex mutex_;
    std::condition_variable cv_;
    bool done_ = false;
    std::thread thread_;
};

/// Runs `task` to its end, waiting at most `limit`; true if it finished without throwing
/// (an exception is printed). No polling: waits on the task's future.
template <typename T>
bool finish(btsp::RdmaTask<T> task, std::chrono::milliseconds limit, const char* what) {
    auto f = btsp::to_future(std::move(task));
    if (f.wait_for(limit) != std::future_status::ready) {
        std::cerr << what << ": did not finish within " << limit.count() << " ms" << std::endl;
        return false;
    }
    try {
        f.get();
        return true;
    } catch (const std::exception& e) {
        std::cerr << what << ": " << e.what() << std::endl;
        return false;
    }
}

/// Options of a server that listens on loopback only.
inline btsp::ManagerOptions loopback_server() {
    btsp::ManagerOptions o = btsp::ManagerOptions::from_env();
    o.listen_address = "127.0.0.1";
    return o;
}

/// A TCP port on 127.0.0.1 that nobody listens on.
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

/// A TCP socket listening on 127.0.0.1 that never accepts: a connect to it gets no answer.
class SilentListener {
public:
    SilentListener() {
        fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        if (fd_ < 0) return;
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 1) != 0) return;
        socklen_t len = sizeof a;
        if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0) port_ = ntohs(a.sin_port);
    }
    ~SilentListener() {
        if (fd_ >= 0) ::close(fd_);
    }
    SilentListener(const SilentListener&) = delete;
    SilentListener& operator=(const SilentListener&) = delete;
    /// Its port (0 if it could not be set up).
    std::uint16_t port() const noexcept { return port_; }

private:
    int fd_ = -1;
    std::uint16_t port_ = 0;
};

}  // namespace patterns
