#include <btsp/connection_pool.hpp>
#include <btsp/log.hpp>

#include <algorithm>

namespace btsp {

using Clock = std::chrono::steady_clock;

RdmaConnectionPool::RdmaConnectionPool(std::size_t max_conn) {
    opts_.max_connections = max_conn == 0 ? 1 : max_conn;
}

RdmaConnectionPool::RdmaConnectionPool(ConnectionPoolOptions options) : opts_(std::move(options)) {
    if (opts_.max_connections == 0) opts_.max_connections = 1;
}

RdmaConnectionPool::~RdmaConnectionPool() {
    std::vector<Entry> all;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        all.swap(entries_);
        if (waiters_head_ != nullptr) BTSP_LOG_ERROR("RdmaConnectionPool destroyed while coroutines wait in acquire()");
    }
    for (Entry& e : all) e.manager->shutdown();
}

bool RdmaConnectionPool::Waiter::await_suspend(std::coroutine_handle<> h) noexcept {
    std::lock_guard<std::mutex> lock(pool->mutex_);
    if (pool->generation_ != seen_generation) return false;  // something changed: look again
    handle = h;
    next = nullptr;
    if (pool->waiters_tail_) pool->waiters_tail_->next = this; else pool->waiters_head_ = this;
    pool->waiters_tail_ = this;
    return true;
}

void RdmaConnectionPool::wake_one_locked(std::vector<std::coroutine_handle<>>& to_resume) {
    ++generation_;
    if (Waiter* w = waiters_head_) {
        waiters_head_ = w->next;
        if (waiters_head_ == nullptr) waiters_tail_ = nullptr;
        to_resume.push_back(w->handle);
    }
}

std::vector<std::unique_ptr<CoroutineRdmaManager>> RdmaConnectionPool::take_dead_and_expired_locked(bool expired_only) {
    std::vector<std::unique_ptr<CoroutineRdmaManager>> out;
    const auto now = Clock::now();
    for (auto it = entries_.begin(); it != entries_.end();) {
        const bool dead = !it->in_use && !it->manager->is_connected();
        const bool expired = !it->in_use && now - it->last_used > opts_.idle_timeout;
        if ((!expired_only && dead) || expired) {
            if (dead) ++stats_.replaced; else ++stats_.evicted;
            out.push_back(std::move(it->manager));
            it = entries_.erase(it);
        } else {
            ++it;
        }
    }
    return out;
}

RdmaTask<CoroutineRdmaManager*> RdmaConnectionPool::acquire(std::string host, std::uint16_t port) {
    for (;;) {
        std::vector<std::unique_ptr<CoroutineRdmaManager>> to_close;
        std::uint64_t seen = 0;
        CoroutineRdmaManager* fresh = nullptr;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            to_close = take_dead_and_expired_locked(false);
            for (Entry& e : entries_) {
                if (!e.in_use && e.port == port && e.host == host) {
                    e.in_use = true;
                    e.last_used = Clock::now();
                    ++stats_.reused;
                    co_return e.manager.get();  // (to_close is destroyed on the way out)
                }
            }
            if (entries_.size() >= opts_.max_connections) {
                // Full: make room by closing the least recently used idle connection.
                auto lru = entries_.end();
                for (auto it = entries_.begin(); it != entries_.end(); ++it)
                    if (!it->in_use && (lru == entries_.end() || it->last_used < lru->last_used)) lru = it;
                if (lru != entries_.end()) {
                    ++stats_.evicted;
                    to_close.push_back(std::move(lru->manager));
                    entries_.erase(lru);
                }
            }
            if (entries_.size() < opts_.max_connections) {
                Entry e;
                e.manager = std::make_unique<CoroutineRdmaManager>(opts_.manager_options);
                e.host = host;
                e.port = port;
                e.in_use = true;
                e.last_used = Clock::now();
                fresh = e.manager.get();
                entries_.push_back(std::move(e));
            } else {
                ++stats_.waits;
                seen = generation_;
            }
        }
        for (auto& m : to_close) m->shutdown();
        to_close.clear();
        if (fresh != nullptr) {
            RdmaOpResult r;
            if (fresh->initialize(false, 0)) r = co_await fresh->connect(host, port);
            if (r.success()) {
                std::lock_guard<std::mutex> lock(mutex_);
                ++stats_.created;
                co_return fresh;
            }
            BTSP_LOG_WARN("connection pool: connect to %s:%u failed: %s", host.c_str(), port,
                          std::string(r.reason()).c_str());
            std::unique_ptr<CoroutineRdmaManager> failed;
            std::vector<std::coroutine_handle<>> resume;
            {
                std::lock_guard<std::mutex> lock(mutex_);
                ++stats_.failed;
                for (auto it = entries_.begin(); it != entries_.end(); ++it) {
                    if (it->manager.get() == fresh) {
                        failed = std::move(it->manager);
                        entries_.erase(it);
                        break;
                    }
                }
                wake_one_locked(resume);
            }
            if (failed) failed->shutdown();
            for (auto h : resume) h.resume();
            co_return nullptr;
        }
        co_await Waiter{this, seen};  // until a release (or a failed connect) frees a slot
    }
}

CoroutineRdmaManager* RdmaConnectionPool::acquire_connection(const std::string& host, std::uint16_t port) {
    return sync_wait(acquire(host, port));
}

void RdmaConnectionPool::release_connection(CoroutineRdmaManager* manager) {
    std::vector<std::coroutine_handle<>> resume;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        bool found = false;
        for (Entry& e : entries_) {
            if (e.manager.get() == manager && e.in_use) {
                e.in_use = false;
                e.last_used = Clock::now();
                found = true;
                break;
            }
        }
        if (!found) {
            BTSP_LOG_WARN("RdmaConnectionPool::release_connection: manager %p is not acquired from this pool",
                          static_cast<void*>(manager));
            return;
        }
        wake_one_locked(resume);
    }
    for (auto h : resume) h.resume();  // the waiter continues on this thread
}

std::size_t RdmaConnectionPool::evict_idle() {
    std::vector<std::unique_ptr<CoroutineRdmaManager>> to_close;
    std::vector<std::coroutine_handle<>> resume;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        to_close = take_dead_and_expired_locked(true);
        if (!to_close.empty()) wake_one_locked(resume);
    }
    for (auto& m : to_close) m->shutdown();
    for (auto h : resume) h.resume();
    return to_close.size();
}

ConnectionPoolStats RdmaConnectionPool::stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    ConnectionPoolStats s = stats_;
    s.in_use = static_cast<std::size_t>(std::count_if(entries_.begin(), entries_.end(), [](const Entry& e) { return e.in_use; }));
    s.idle = entries_.size() - s.in_use;
    return s;
}

}  // namespace btsp
