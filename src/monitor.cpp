#include <btsp/log.hpp>
#include <btsp/monitor.hpp>

#include <algorithm>
#include <sstream>

namespace btsp {

using Clock = std::chrono::steady_clock;

void CoroutineMonitor::start_monitoring(const std::string& coroutine_name) {
    std::lock_guard<std::mutex> lock(mutex_);
    starts_.emplace(coroutine_name, Clock::now());
}

void CoroutineMonitor::end_monitoring(const std::string& coroutine_name) {
    std::chrono::nanoseconds d{0};
    {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = starts_.find(coroutine_name);
        if (it == starts_.end()) return;
        d = Clock::now() - it->second;
        starts_.erase(it);
        Stats& s = stats_[coroutine_name];
        ++s.count;
        s.total += d;
        s.max = std::max(s.max, d);
    }
    BTSP_LOG_INFO("协程 %s 执行时间: %lld ms", coroutine_name.c_str(),
                  static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()));
}

std::map<std::string, CoroutineMonitor::Stats> CoroutineMonitor::stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
}

std::vector<CoroutineMonitor::Running> CoroutineMonitor::running() const {
    std::vector<Running> out;
    const auto now = Clock::now();
    {
        std::lock_guard<std::mutex> lock(mutex_);
        for (const auto& [name, t] : starts_)
            out.push_back({name, std::chrono::duration_cast<std::chrono::milliseconds>(now - t)});
    }
    std::sort(out.begin(), out.end(), [](const Running& a, const Running& b) { return a.age > b.age; });
    return out;
}

std::string CoroutineMonitor::dump(CoroutineRdmaManager* manager) const {
    std::ostringstream os;
    const auto r = running();
    os << r.size() << " monitored coroutine(s) running\n";
    for (const Running& x : r) os << "  " << x.name << " for " << x.age.count() << " ms\n";
    if (manager != nullptr) os << manager->dump_in_flight();
    return os.str();
}

}  // namespace btsp
