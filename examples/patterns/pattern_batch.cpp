// 性能优化 2. 批量操作 / 性能调优指南 2. 批量操作优化: btsp::batch_send posts all ten sends
// at once (the spec's comment; its loop awaited them one by one). The spec's sequential
// loop runs too, for comparison. An in-process peer receives every batch with
// btsp::batch_recv and checks the contents.
#include "pattern_util.hpp"

#include <btsp/batch.hpp>
#include <btsp/btsp.hpp>

#include <chrono>
#include <cstdint>
#include <iostream>
#include <utility>
#include <vector>

using namespace btsp;

using namespace std::chrono_literals;

namespace {

constexpr std::size_t kCount = 10;
constexpr std::size_t kSize = 256 * 1024;  // rendezvous-sized: sends really wait for the peer

std::vector<std::vector<char>> make_messages(char seed) {
    std::vector<std::vector<char>> m(kCount, std::vector<char>(kSize));
    for (std::size_t i = 0; i < kCount; ++i)
        for (std::size_t k = 0; k < kSize; k += 4096) m[i][k] = static_cast<char>(seed + static_cast<char>(i));
    return m;
}

// The spec's sequential loop (批量操作), with the library's results.
RdmaTask<std::vector<RdmaOpResult>> sequential(CoroutineRdmaManager& manager,
                                               std::vector<std::vector<char>>& data, std::uint64_t tag) {
    // 批量发送多个消息
    std::vector<RdmaOpResult> results;

    for (std::size_t i = 0; i < data.size(); ++i) {
        auto result = co_await manager.tag_send(data[i].data(), data[i].size(), tag + i);
        results.push_back(result);
    }
    co_return results;
}

// The peer: receives one batch of kCount messages on base_tag.. and checks each.
RdmaTask<bool> receive_batch(CoroutineRdmaManager& peer, std::uint64_t base_tag, char seed) {
    std::vector<std::vector<char>> in(kCount, std::vector<char>(kSize, 0));
    std::vector<std::pair<void*, std::size_t>> buffers;
    for (auto& b : in) buffers.emplace_back(b.data(), b.size());
    auto results = co_await batch_recv(peer, buffers, base_tag);
    bool ok = results.size() == kCount;
    for (std::size_t i = 0; ok && i < kCount; ++i)
        ok = results[i].success() && in[i][0] == static_cast<char>(seed + static_cast<char>(i));
    co_return ok;
}

bool check(const std::vector<RdmaOpResult>& results, const char* what) {
    // 检查所有结果
    bool ok = results.size() == kCount;
    for (const auto& result : results) {
        if (!result.success()) {
            std::cerr << "批量操作中有失败" << std::endl;
            ok = false;
        }
    }
    std::cout << what << ": " << results.size() << " results, " << (ok ? "all successful" : "FAILED")
              << std::endl;
    return ok;
}

}  // namespace

int main() {
    patterns::Watchdog watchdog(50s);
    CoroutineRdmaManager peer(patterns::loopback_server());
    CoroutineRdmaManager manager;
    if (!peer.initialize(true, 0) || !manager.initialize(false, 0)) return 1;
    auto c = btsp::to_future(manager.connect("127.0.0.1", peer.listening_port()));
    auto w = btsp::to_future(peer.wait_for_connection());
    if (c.wait_for(10s) != std::future_status::ready || !c.get().success() ||
        w.wait_for(10s) != std::future_status::ready || !w.get())
        return 1;

    bool ok = true;
    {
        auto data = make_messages('a');
        auto peer_ok = btsp::to_future(receive_batch(peer, 1000, 'a'));
        const auto t0 = std::chrono::steady_clock::now();
        auto results = btsp::to_future(sequential(manager, data, 1000));
        if (results.wait_for(20s) != std::future_status::ready) return 1;
        const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
        ok = check(results.get(), "sequential (the spec's loop)") && ok;
        std::cout << "  took " << us.count() << " us" << std::endl;
        ok = peer_ok.wait_for(20s) == std::future_status::ready && peer_ok.get() && ok;
    }
    {
        auto data = make_messages('A');
        std::vector<std::pair<void*, std::size_t>> list;
        for (auto& d : data) list.emplace_back(d.data(), d.size());
        auto peer_ok = btsp::to_future(receive_batch(peer, 2000, 'A'));
        const auto t0 = std::chrono::steady_clock::now();
        auto results = btsp::to_future(batch_send(manager, list, 2000));
        if (results.wait_for(20s) != std::future_status::ready) return 1;
        const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
        ok = check(results.get(), "btsp::batch_send (concurrent)") && ok;
        std::cout << "  took " << us.count() << " us" << std::endl;
        ok = peer_ok.wait_for(20s) == std::future_status::ready && peer_ok.get() && ok;
    }
    std::cout << (ok ? "peer received every message intact" : "FAILED") << std::endl;
    return ok ? 0 : 1;
}
