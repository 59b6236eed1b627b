// btsp — the spec's RdmaConnectionPool (连接池管理), made real.
#pragma once

#include <btsp/manager.hpp>
#include <btsp/options.hpp>
#include <btsp/task.hpp>

#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace btsp {

struct ConnectionPoolOptions {
    std::size_t max_connections = 10;
    /// Idle connections older than this are closed by evict_idle() and by acquire().
    std::chrono::milliseconds idle_timeout{60000};
    /// Options of every manager the pool creates.
    ManagerOptions manager_options = ManagerOptions::from_env();
};

struct ConnectionPoolStats {
    std::uint64_t created = 0;    ///< connections made
    std::uint64_t reused = 0;     ///< acquisitions served by an idle healthy connection
    std::uint64_t replaced = 0;   ///< dead idle connections dropped
    std::uint64_t evicted = 0;    ///< idle connections closed (timeout, or room for another host)
    std::uint64_t waits = 0;      ///< acquisitions that had to wait for a release
    std::uint64_t failed = 0;     ///< connects that failed
    std::size_t in_use = 0;
    std::size_t idle = 0;
};

/// A pool of *connected* managers, one connection each (the spec's design). acquire()
/// returns a healthy idle connection to host:port if there is one, else makes one; when
/// the pool is full it closes the least recently used idle connection to another peer, and
/// if all are in use the caller's coroutine waits (suspends) until one is released. Dead
/// connections are replaced. Thread-safe.
class RdmaConnectionPool {
public:
    explicit RdmaConnectionPool(std::size_t max_conn = 10);
    explicit RdmaConnectionPool(ConnectionPoolOptions options);
    /// Shuts every connection down (also ones still acquired: release them first).
    ~RdmaConnectionPool();
    RdmaConnectionPool(const RdmaConnectionPool&) = delete;
    RdmaConnectionPool& operator=(const RdmaConnectionPool&) = delete;

    /// A connected manager for host:port, or nullptr if connecting failed. Suspends while
    /// the pool is full and everything is in use. Give it back with release_connection().
    RdmaTask<CoroutineRdmaManager*> acquire(std::string host, std::uint16_t port);
    /// The spec's signature: acquire() waited for on the calling thread.
    CoroutineRdmaManager* acquire_connection(const std::string& host, std::uint16_t port);
    /// Returns a manager from acquire(); it stays connected for the next user.
    void release_connection(CoroutineRdmaManager* manager);
    /// Closes idle connections unused for longer than idle_timeout; returns how many.
    std::size_t evict_idle();
    [[nodiscard]] ConnectionPoolStats stats() const;

private:
    struct Entry {
        std::unique_ptr<CoroutineRdmaManager> manager;
        std::string host;
        std::uint16_t port = 0;
        bool in_use = false;
        std::chrono::steady_clock::time_point last_used;
    };
    struct Waiter {
        RdmaConnectionPool* pool;
        std::uint64_t seen_generation;
        std::coroutine_handle<> handle{};
        Waiter* next = nullptr;
        bool await_ready() const noexcept { return false; }
        bool await_suspend(std::coroutine_handle<> h) noexcept;
        void await_resume() const noexcept {}
    };
    std::vector<std::unique_ptr<CoroutineRdmaManager>> take_dead_and_expired_locked(bool expired_only);
    void wake_one_locked(std::vector<std::coroutine_handle<>>& to_resume);

    ConnectionPoolOptions opts_;
    mutable std::mutex mutex_;
    std::vector<Entry> entries_;
    Waiter* waiters_head_ = nullptr;
    Waiter* waiters_tail_ = nullptr;
    std::uint64_t generation_ = 0;  // bumped whenever a slot may have become usable
    ConnectionPoolStats stats_;
};

}  // namespace btsp
