// A process-wide timer thread: deadlines for with_timeout(RdmaTask), which has no
// manager (and so no progress thread) of its own to ask.
#include <btsp/detail/timer_service.hpp>
#include <btsp/log.hpp>

#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

namespace btsp::detail {
namespace {

using Clock = std::chrono::steady_clock;

class TimerService {
public:
    ~TimerService() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        cv_.notify_all();
        if (thread_.joinable()) thread_.join();
    }

    std::uint64_t schedule(std::chrono::nanoseconds first, std::chrono::nanoseconds repeat,
                           void (*fn)(void*) noexcept, void* arg) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
        const std::uint64_t id = ++next_id_;
        const auto when = Clock::now() + first;
        by_time_.emplace(when, id);
        entries_.emplace(id, Entry{when, repeat, fn, arg, false});
        cv_.notify_all();
        return id;
    }

    bool cancel(std::uint64_t id) noexcept {
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            auto it = entries_.find(id);
            if (it == entries_.end()) return false;
            if (running_id_ == id) {  // wait for the callback to return
                done_cv_.wait(lock);
                continue;
            }
            const bool never_ran = !it->second.ran;
            erase_time(it->second.when, id);
            entries_.erase(it);
            return never_ran;
        }
    }

private:
    struct Entry {
        Clock::time_point when;
        std::chrono::nanoseconds repeat;
        void (*fn)(void*) noexcept;
        void* arg;
        bool ran;
    };

    void erase_time(Clock::time_point when, std::uint64_t id) {
        auto range = by_time_.equal_range(when);
        for (auto it = range.first; it != range.second; ++it) {
            if (it->second == id) {
                by_time_.erase(it);
                return;
            }
        }
    }

    void run() {
        std::unique_lock<std::mutex> lock(mutex_);
        while (!stop_) {
            if (by_time_.empty()) {
                cv_.wait(lock);
                continue;
            }
            const auto next = by_time_.begin();
            const Clock::time_point when = next->first;  // the node may go while we wait
            if (when > Clock::now()) {
                cv_.wait_until(lock, when);
                continue;
            }
            const std::uint64_t id = next->second;
            by_time_.erase(next);
            Entry& e = entries_.at(id);
            e.ran = true;
            running_id_ = id;
            auto fn = e.fn;
            auto arg = e.arg;
            lock.unlock();
            fn(arg);
            lock.lock();
            running_id_ = 0;
            auto it = entries_.find(id);
            if (it != entries_.end()) {
                if (it->second.repeat.count() > 0) {
                    it->second.when = Clock::now() + it->second.repeat;
                    by_time_.emplace(it->second.when, id);
                } else {
                    entries_.erase(it);
                }
            }
            done_cv_.notify_all();
        }
    }

    std::mutex mutex_;
    std::condition_variable cv_;
    std::condition_variable done_cv_;
    std::multimap<Clock::time_point, std::uint64_t> by_time_;
    std::map<std::uint64_t, Entry> entries_;
    std::uint64_t next_id_ = 0;
    std::uint64_t running_id_ = 0;
    bool stop_ = false;
    std::thread thread_;
};

TimerService& service() {
    static TimerService s;
    return s;
}

}  // namespace

std::uint64_t timer_schedule(std::chrono::nanoseconds first, std::chrono::nanoseconds repeat,
                             void (*fn)(void*) noexcept, void* arg) {
    return service().schedule(first, repeat, fn, arg);
}

bool timer_cancel(std::uint64_t id) noexcept { return service().cancel(id); }

}  // namespace btsp::detail
