// btsp — the spec's CoroutineMonitor / ScopedCoroutineMonitor / MONITOR_COROUTINE (协程状态监控).
#pragma once

#include <btsp/manager.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace btsp {

/// Times named pieces of coroutine code. Thread-safe. Besides the spec's start/end pair
/// (which logs the duration at INFO level, "协程 <name> 执行时间: <n> ms"), it keeps
/// per-name statistics and can list what is running right now, with the in-flight
/// operations of a manager, when something looks stuck.
class CoroutineMonitor {
public:
    struct Stats {
        std::uint64_t count = 0;
        std::chrono::nanoseconds total{0};
        std::chrono::nanoseconds max{0};
    };
    struct Running {
        std::string name;
        std::chrono::milliseconds age{0};
    };

    /// Starts timing `name` (several instances of one name may run at once).
    void start_monitoring(const std::string& coroutine_name);
    /// Ends the oldest running instance of `name`, logs and records its duration.
    void end_monitoring(const std::string& coroutine_name);

    [[nodiscard]] std::map<std::string, Stats> stats() const;
    [[nodiscard]] std::vector<Running> running() const;
    /// Monitored code running now, oldest first, plus manager.in_flight() if given.
    [[nodiscard]] std::string dump(CoroutineRdmaManager* manager = nullptr) const;

private:
    mutable std::mutex mutex_;
    std::multimap<std::string, std::chrono::steady_clock::time_point> starts_;
    std::map<std::string, Stats> stats_;
};

/// RAII: start_monitoring in the constructor, end_monitoring in the destructor.
class ScopedCoroutineMonitor {
public:
    ScopedCoroutineMonitor(CoroutineMonitor& m, const std::string& n) : monitor_(m), name_(n) {
        monitor_.start_monitoring(name_);
    }
    ~ScopedCoroutineMonitor() { monitor_.end_monitoring(name_); }
    ScopedCoroutineMonitor(const ScopedCoroutineMonitor&) = delete;
    ScopedCoroutineMonitor& operator=(const ScopedCoroutineMonitor&) = delete;

private:
    CoroutineMonitor& monitor_;
    std::string name_;
};

}  // namespace btsp

#define BTSP_MONITOR_CONCAT2(a, b) a##b
#define BTSP_MONITOR_CONCAT(a, b) BTSP_MONITOR_CONCAT2(a, b)
/// The spec's macro: times the rest of the enclosing scope under `name`.
#define MONITOR_COROUTINE(monitor, name) \
    ::btsp::ScopedCoroutineMonitor BTSP_MONITOR_CONCAT(_btsp_monitor_, __COUNTER__)(monitor, name)
