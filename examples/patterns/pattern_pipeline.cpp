// 高级协程模式 1. 协程管道 (Pipeline): receive -> process -> send, ten rounds.
// The pipeline coroutine is the spec's (connecting to g_port instead of the fixed 12345);
// an in-process peer feeds it input on tags 100+i and checks the doubled output on 200+i.
#include "pattern_util.hpp"

#include <btsp/btsp.hpp>

#include <cstdint>
#include <iostream>
#include <vector>

using namespace btsp;

using namespace std::chrono_literals;

namespace {

std::uint16_t g_port = 0;  // the peer's ephemeral port (the spec's 12345)
int g_rounds_done = 0;

// ---- the spec's pipeline_example --------------------------------------------------------
RdmaTask<void> pipeline_example() {
    CoroutineRdmaManager manager;
    manager.initialize(false, 0);

    co_await manager.connect("127.0.0.1", g_port);

    // 管道式处理：接收 -> 处理 -> 发送
    for (int i = 0; i < 10; ++i) {
        // 接收原始数据
        std::vector<int> input_data(100, 0);
        auto recv_result = co_await manager.tag_recv(
            input_data.data(),
            input_data.size() * sizeof(int),
            100 + i
        );

        if (!recv_result.success()) continue;

        // 处理数据
        std::vector<int> processed_data;
        for (const auto& val : input_data) {
            processed_data.push_back(val * 2);  // 简单处理
        }

        // 发送处理后的数据
        auto send_result = co_await manager.tag_send(
            processed_data.data(),
            processed_data.size() * sizeof(int),
            200 + i
        );

        if (send_result.success()) {
            std::cout << "管道处理完成: " << i << std::endl;
            ++g_rounds_done;
        }
    }
}
// -----------------------------------------------------------------------------------------

// The peer: sends round i's input, receives its output and checks it (every op bounded).
RdmaTask<int> feeder(CoroutineRdmaManager& peer) {
    if (!co_await peer.wait_for_connection()) co_return -1;
    int good = 0;
    for (int i = 0; i < 10; ++i) {
        std::vector<int> input(100);
        for (int k = 0; k < 100; ++k) input[static_cast<std::size_t>(k)] = i * 1000 + k;
        std::vector<int> output(100, 0);
        auto s = co_await peer.tag_send(input.data(), input.size() * sizeof(int), 100 + static_cast<std::uint64_t>(i))
                     .timeout(10s);
        auto r = co_await peer.tag_recv(output.data(), output.size() * sizeof(int), 200 + static_cast<std::uint64_t>(i))
                     .timeout(10s);
        if (!s.success() || !r.success()) continue;
        bool ok = true;
        for (int k = 0; k < 100; ++k) ok = ok && output[static_cast<std::size_t>(k)] == 2 * (i * 1000 + k);
        if (ok) ++good;
    }
    co_return good;
}

}  // namespace

int main() {
    patterns::Watchdog watchdog(50s);
    CoroutineRdmaManager peer(patterns::loopback_server());
    if (!peer.initialize(true, 0)) {
        std::cerr << "peer: " << peer.last_error() << std::endl;
        return 1;
    }
    g_port = peer.listening_port();

    auto checked = btsp::to_future(feeder(peer));
    const bool pipeline_ok = patterns::finish(pipeline_example(), 40s, "pipeline_example");
    if (checked.wait_for(10s) != std::future_status::ready) {
        std::cerr << "peer did not finish" << std::endl;
        return 1;
    }
    const int good = checked.get();
    std::cout << "peer verified " << good << "/10 rounds" << std::endl;
    return pipeline_ok && good == 10 && g_rounds_done == 10 ? 0 : 1;
}
