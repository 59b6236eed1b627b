// 高级用法 3. 状态监控: the spec's state_monitoring_example, unchanged except for the port
// (an ephemeral one instead of 12345). Its monitoring loop sleeps 1 s at a time on the
// manager's progress thread (where the coroutine resumes after wait_for_state); the
// progress hand-off keeps the manager working, so the peer's disconnect is noticed and the
// loop ends. An in-process client connects, stays ~1.5 s and disconnects.
#include "pattern_util.hpp"

#include <btsp/btsp.hpp>

#include <chrono>
#include <iostream>
#include <thread>

using namespace btsp;

using namespace std::chrono_literals;

namespace {

std::uint16_t g_port = 0;                // the spec's 12345 (0 = ephemeral)
CoroutineRdmaManager* g_server = nullptr;  // lets main() learn the ephemeral port

// ---- the spec's state_monitoring_example ------------------------------------------------
RdmaTask<void> state_monitoring_example() {
    CoroutineRdmaManager manager(patterns::loopback_server());  // spec: default options
    manager.initialize(true, g_port);
    g_server = &manager;

    // 等待连接
    std::cout << "当前状态: " << static_cast<int>(manager.get_state()) << std::endl;

    co_await manager.wait_for_state(RdmaState::CONNECTED);
    std::cout << "连接已建立" << std::endl;

    // 监控连接状态
    while (manager.is_connected()) {
        // 执行 RDMA 操作
        std::this_thread::sleep_for(std::chrono::seconds(1));
    }

    std::cout << "连接已断开" << std::endl;
}
// -----------------------------------------------------------------------------------------

}  // namespace

int main() {
    patterns::Watchdog watchdog(50s);
    auto monitor = btsp::to_future(state_monitoring_example());  // runs until wait_for_state
    if (g_server == nullptr || g_server->listening_port() == 0) {
        std::cerr << "server did not start" << std::endl;
        return 1;
    }
    std::cout << "server state: " << g_server->get_state() << ", port " << g_server->listening_port()
              << std::endl;

    CoroutineRdmaManager client;
    if (!client.initialize(false, 0)) return 1;
    auto c = btsp::to_future(client.connect("127.0.0.1", g_server->listening_port()));
    if (c.wait_for(10s) != std::future_status::ready || !c.get().success()) {
        std::cerr << "connect failed" << std::endl;
        return 1;
    }
    std::this_thread::sleep_for(1500ms);  // the demo: stay connected for a while
    std::cout << "client disconnects" << std::endl;
    auto d = btsp::to_future(client.disconnect());
    (void)d.wait_for(10s);

    if (monitor.wait_for(20s) != std::future_status::ready) {
        std::cerr << "the monitor did not notice the disconnect" << std::endl;
        return 1;
    }
    monitor.get();
    return 0;
}
