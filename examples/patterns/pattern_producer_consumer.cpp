// 高级协程模式 2. 协程生产者-消费者模式, with the spec's blocking consumer loop.
//
// The class keeps the spec's producer_coroutine / consumer_coroutine bodies unchanged. What
// is added (the spec leaves it out): init(), connect(), stop(), and a first co_await in the consumer (wait_for_connection) so that
// it moves onto the manager's progress thread. From then on the consumer's loop sleeps
// 10 ms at a time *on the progress thread* whenever the queue is empty — the library's
// progress hand-off (ManagerOptions::handoff_threshold) lets a standby thread take the UCX
// worker over, so the producer's receives keep completing.
//
// An in-process peer sends kMessages vectors on tag 1000 and expects each back, tripled,
// on tag 2000.
#include "pattern_util.hpp"

#include <btsp/btsp.hpp>

#include <atomic>
#include <chrono>
#include <iostream>
#include <mutex>
#include <queue>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

constexpr int kMessages = 8;

class CoroutineProducerConsumer {
private:
    btsp::CoroutineRdmaManager manager;
    std::queue<std::vector<int>> data_queue;
    std::mutex queue_mutex;
    std::atomic<bool> running{true};

public:
    // ---- added: setup and teardown ----
    CoroutineProducerConsumer() = default;
    bool init() { return manager.initialize(false, 0); }
    bool connect(std::uint16_t port) {
        auto f = btsp::to_future(manager.connect("127.0.0.1", port));
        return f.wait_for(10s) == std::future_status::ready && f.get().success();
    }
    void stop() {
        running = false;
        manager.shutdown();  // ends the producer's pending receive (DISCONNECTED)
    }
    // Start it before connect(): it then really suspends in wait_for_connection and is
    // resumed on the progress thread.
    btsp::RdmaTask<void> consumer_on_progress_thread() {
        co_await manager.wait_for_connection();  // resumes on the progress thread
        co_await consumer_coroutine();
    }

    // ---- the spec's coroutines ----
    btsp::RdmaTask<void> producer_coroutine() {
        while (running) {
            // 接收数据
            std::vector<int> buffer(50, 0);
            auto result = co_await manager.tag_recv(
                buffer.data(),
                buffer.size() * sizeof(int),
                1000
            );

            if (result.success()) {
                // 添加到队列
                std::lock_guard<std::mutex> lock(queue_mutex);
                data_queue.push(std::move(buffer));
                std::cout << "生产者: 接收到数据，队列大小: " << data_queue.size() << std::endl;
            }
        }
    }

    btsp::RdmaTask<void> consumer_coroutine() {
        while (running) {
            std::vector<int> data;

            // 从队列获取数据
            {
                std::lock_guard<std::mutex> lock(queue_mutex);
                if (!data_queue.empty()) {
                    data = std::move(data_queue.front());
                    data_queue.pop();
                }
            }

            if (!data.empty()) {
                // 处理并发送数据
                for (auto& val : data) {
                    val *= 3;  // 处理数据
                }

                auto result = co_await manager.tag_send(
                    data.data(),
                    data.size() * sizeof(int),
                    2000
                );

                if (result.success()) {
                    std::cout << "消费者: 发送处理后的数据" << std::endl;
                }
            } else {
                // 队列为空，短暂等待
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
        }
    }
};

// The peer: kMessages sends on tag 1000, then the same number of receives on tag 2000,
// spaced out so the consumer really finds the queue empty in between.
btsp::RdmaTask<int> peer_side(btsp::CoroutineRdmaManager& peer) {
    if (!co_await peer.wait_for_connection()) co_return -1;
    for (int i = 0; i < kMessages; ++i) {
        std::vector<int> v(50);
        for (int k = 0; k < 50; ++k) v[static_cast<std::size_t>(k)] = i * 100 + k;
        auto s = co_await peer.tag_send(v.data(), v.size() * sizeof(int), 1000).timeout(10s);
        if (!s.success()) co_return -2;
        std::this_thread::sleep_for(20ms);  // pacing of the demo, on the peer's own thread
    }
    int good = 0;
    for (int i = 0; i < kMessages; ++i) {
        std::vector<int> back(50, 0);
        auto r = co_await peer.tag_recv(back.data(), back.size() * sizeof(int), 2000).timeout(10s);
        if (!r.success()) break;
        const int base = back[0] / 3 - (back[0] / 3) % 100;  // messages may be processed in order only
        bool ok = true;
        for (int k = 0; k < 50; ++k) ok = ok && back[static_cast<std::size_t>(k)] == 3 * (base + k);
        if (ok) ++good;
    }
    co_return good;
}

}  // namespace

int main() {
    patterns::Watchdog watchdog(50s);
    btsp::CoroutineRdmaManager peer(patterns::loopback_server());
    if (!peer.initialize(true, 0)) {
        std::cerr << "peer: " << peer.last_error() << std::endl;
        return 1;
    }
    auto verified = btsp::to_future(peer_side(peer));

    CoroutineProducerConsumer pc;
    if (!pc.init()) return 1;
    auto consumer = btsp::to_future(pc.consumer_on_progress_thread());
    if (!pc.connect(peer.listening_port())) {
        std::cerr << "cannot connect" << std::endl;
        pc.stop();
        return 1;
    }
    auto producer = btsp::to_future(pc.producer_coroutine());

    const bool peer_done = verified.wait_for(30s) == std::future_status::ready;
    const int good = peer_done ? verified.get() : -3;
    pc.stop();
    const bool ended = consumer.wait_for(10s) == std::future_status::ready &&
                       producer.wait_for(10s) == std::future_status::ready;
    std::cout << "peer got " << good << "/" << kMessages << " processed messages back" << std::endl;
    if (!ended) std::cerr << "producer/consumer did not stop" << std::endl;
    return good == kMessages && ended ? 0 : 1;
}
