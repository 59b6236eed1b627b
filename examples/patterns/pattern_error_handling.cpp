// 高级用法 2. 错误处理 and 最佳实践 2. 异常安全, run against loopback:
//  - the spec's error_handling_example connecting where nobody listens (DISCONNECTED,
//    "连接被拒绝") and to a peer that never answers (TIMEOUT, "连接超时");
//  - the spec's safe_operation: a failed send becomes an exception, the manager is shut
//    down in the catch block and the exception is rethrown to the caller.
// Adaptations: the address is a parameter (the spec's 192.168.1.100:12345 leaves loopback),
// the manager's connect timeout is shortened to 500 ms, and the outcome is returned.
#include "pattern_util.hpp"

#include <btsp/btsp.hpp>

#include <iostream>
#include <stdexcept>
#include <string>

using namespace btsp;

using namespace std::chrono_literals;

namespace {

ManagerOptions short_connect_timeout() {
    ManagerOptions o = ManagerOptions::from_env();
    o.connect_timeout = std::chrono::milliseconds(500);
    return o;
}

// ---- the spec's error_handling_example (address as parameters, outcome returned) --------
RdmaTask<RdmaResult> error_handling_example(std::string host, std::uint16_t port) {
    CoroutineRdmaManager manager(short_connect_timeout());

    try {
        if (!manager.initialize(false, 0)) {
            throw std::runtime_error("初始化失败");
        }

        // 尝试连接
        RdmaOpResult result = co_await manager.connect(host, port);

        if (!result.success()) {
            if (result.result == RdmaResult::TIMEOUT) {
                std::cerr << "连接超时" << std::endl;
            } else if (result.result == RdmaResult::DISCONNECTED) {
                std::cerr << "连接被拒绝" << std::endl;
            } else {
                std::cerr << "连接失败" << std::endl;
            }
            co_return result.result;
        }

        // 继续处理...

    } catch (const std::exception& e) {
        std::cerr << "协程异常: " << e.what() << std::endl;
    }

    manager.shutdown();
    co_return RdmaResult::SUCCESS;
}

// ---- the spec's safe_operation (异常安全) ------------------------------------------------
CoroutineRdmaManager manager;  // the spec's snippet uses a manager from the enclosing scope
int payload = 42;

RdmaTask<void> safe_operation() {
    try {
        auto result = co_await manager.tag_send(&payload, sizeof payload, 7);
        if (!result.success()) {
            throw std::runtime_error("发送失败");
        }
    } catch (...) {
        // 清理资源
        manager.shutdown();
        throw;
    }
}

template <typename T>
std::optional<T> run(RdmaTask<T> t) {
    auto f = btsp::to_future(std::move(t));
    if (f.wait_for(20s) != std::future_status::ready) return std::nullopt;
    return f.get();
}

}  // namespace

int main() {
    patterns::Watchdog watchdog(50s);
    bool ok = true;

    std::cout << "1) connect where nobody listens" << std::endl;
    auto refused = run(error_handling_example("127.0.0.1", patterns::unused_port()));
    std::cout << "   -> " << (refused ? to_string(*refused) : "no result") << std::endl;
    ok = ok && refused == RdmaResult::DISCONNECTED;

    std::cout << "2) connect to a peer that never answers" << std::endl;
    patterns::SilentListener silent;
    auto timed_out = run(error_handling_example("127.0.0.1", silent.port()));
    std::cout << "   -> " << (timed_out ? to_string(*timed_out) : "no result") << std::endl;
    ok = ok && timed_out == RdmaResult::TIMEOUT;

    std::cout << "3) connect to a live peer" << std::endl;
    CoroutineRdmaManager server(patterns::loopback_server());
    ok = ok && server.initialize(true, 0);
    auto connected = run(error_handling_example("127.0.0.1", server.listening_port()));
    std::cout << "   -> " << (connected ? to_string(*connected) : "no result") << std::endl;
    ok = ok && connected == RdmaResult::SUCCESS;

    std::cout << "4) safe_operation without a connection" << std::endl;
    ok = ok && manager.initialize(false, 0);
    auto f = btsp::to_future(safe_operation());
    if (f.wait_for(20s) != std::future_status::ready) {
        ok = false;
    } else {
        try {
            f.get();
            std::cout << "   -> no exception (unexpected)" << std::endl;
            ok = false;
        } catch (const std::runtime_error& e) {
            std::cout << "   -> rethrown: " << e.what() << ", manager state " << manager.get_state()
                      << std::endl;
            ok = ok && manager.get_state() == RdmaState::SHUTDOWN;
        }
    }
    std::cout << (ok ? "all outcomes as expected" : "UNEXPECTED OUTCOME") << std::endl;
    return ok ? 0 : 1;
}
