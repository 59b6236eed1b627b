// 高级协程模式 3. 协程超时处理 with the library's btsp::with_timeout (which suspends and
// cancels; the spec's version spins on done()). The spec's timeout_example, with the port as
// a parameter, runs three times: against a live server (connects), against a peer that never
// answers (TimeoutError after the deadline), and then a receive nobody answers.
#include "pattern_util.hpp"

#include <btsp/btsp.hpp>
#include <btsp/timeout.hpp>

#include <chrono>
#include <iostream>

using namespace std::chrono_literals;

namespace {

// ---- the spec's timeout_example (port as a parameter, 5 s -> the given deadline, outcome
// ---- returned) -----------------------------------------------------------------------------
btsp::RdmaTask<bool> timeout_example(std::uint16_t port, std::chrono::milliseconds deadline) {
    btsp::CoroutineRdmaManager manager;
    manager.initialize(false, 0);

    try {
        // 带超时的连接操作
        auto connect_task = manager.connect("127.0.0.1", port);
        auto r = co_await btsp::with_timeout(std::move(connect_task), deadline);

        std::cout << (r.success() ? "连接成功" : "连接失败") << std::endl;
        co_return r.success();
    } catch (const std::exception& e) {
        std::cerr << "连接超时: " << e.what() << std::endl;
    }
    co_return false;
}

// A receive with a deadline: throws btsp::TimeoutError when nothing arrives in time.
btsp::RdmaTask<bool> recv_with_timeout(btsp::CoroutineRdmaManager& m, std::chrono::milliseconds deadline) {
    int value = 0;
    try {
        auto r = co_await btsp::with_timeout(m.tag_recv(&value, sizeof value, 77), deadline);
        std::cout << "received " << value << " (" << r << ")" << std::endl;
        co_return true;
    } catch (const btsp::TimeoutError& e) {
        std::cerr << "接收超时: " << e.what() << std::endl;
    }
    co_return false;
}

template <typename T>
std::optional<T> run(btsp::RdmaTask<T> t) {
    auto f = btsp::to_future(std::move(t));
    if (f.wait_for(20s) != std::future_status::ready) return std::nullopt;
    return f.get();
}

}  // namespace

int main() {
    patterns::Watchdog watchdog(50s);
    bool ok = true;
    btsp::CoroutineRdmaManager server(patterns::loopback_server());
    if (!server.initialize(true, 0)) return 1;

    std::cout << "1) connect to a live server, deadline 5 s" << std::endl;
    ok = run(timeout_example(server.listening_port(), 5000ms)) == true && ok;

    std::cout << "2) connect to a peer that never answers, deadline 300 ms" << std::endl;
    patterns::SilentListener silent;
    const auto t0 = std::chrono::steady_clock::now();
    ok = run(timeout_example(silent.port(), 300ms)) == false && ok;
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    std::cout << "   gave up after " << ms.count() << " ms" << std::endl;
    ok = ok && ms < 3000ms;

    std::cout << "3) receive nobody answers, deadline 200 ms; then one that arrives" << std::endl;
    btsp::CoroutineRdmaManager client;
    if (!client.initialize(false, 0)) return 1;
    auto c = btsp::to_future(client.connect("127.0.0.1", server.listening_port()));
    if (c.wait_for(10s) != std::future_status::ready || !c.get().success()) return 1;
    ok = run(recv_with_timeout(client, 200ms)) == false && ok;
    auto w = btsp::to_future(server.wait_for_connection());
    if (w.wait_for(10s) != std::future_status::ready || !w.get()) return 1;
    const int v = 5;
    auto s = btsp::to_future(server.tag_send(&v, sizeof v, 77));
    ok = run(recv_with_timeout(client, 5000ms)) == true && ok;
    ok = s.wait_for(10s) == std::future_status::ready && ok;

    std::cout << (ok ? "all outcomes as expected" : "UNEXPECTED OUTCOME") << std::endl;
    return ok ? 0 : 1;
}
