// A consumer written only from the spec's quick start: the server coroutine and the
// client coroutine exchange four ints on tag 42, here with two managers in one process.
// Usage: btsp_install_consumer [port]   (default 12345). Exit code 0 on success.
#include "rpc/coroutine_rdma_manager.hpp"

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace btsp;

static std::uint16_t g_port = 12345;
static bool g_received_ok = false;

RdmaTask<void> server_coroutine() {
    CoroutineRdmaManager manager;
    if (!manager.initialize(true, g_port)) {
        throw std::runtime_error("server initialize failed");
    }

    std::cout << "waiting for a connection..." << std::endl;
    co_await manager.wait_for_connection();
    std::cout << "client connected" << std::endl;

    std::vector<int> buffer(4, 0);
    RdmaOpResult result = co_await manager.tag_recv(buffer.data(), buffer.size() * sizeof(int), 42);

    if (result.success()) {
        std::cout << "received: ";
        for (const auto& val : buffer) std::cout << val << " ";
        std::cout << std::endl;
        g_received_ok = result.bytes_transferred == 4 * sizeof(int) && buffer == std::vector<int>{10, 20, 30, 40};
    }

    manager.shutdown();
}

RdmaTask<void> client_coroutine() {
    CoroutineRdmaManager manager;
    manager.initialize(false, 0);

    std::cout << "connecting..." << std::endl;
    RdmaOpResult connect_result = co_await manager.connect("127.0.0.1", g_port);
    if (!connect_result.success()) {
        throw std::runtime_error("connect failed");
    }
    std::cout << "connected" << std::endl;

    std::vector<int> data = {10, 20, 30, 40};
    RdmaOpResult send_result = co_await manager.tag_send(data.data(), data.size() * sizeof(int), 42);
    if (!send_result.success()) {
        throw std::runtime_error("send failed");
    }
    std::cout << "sent" << std::endl;

    manager.shutdown();
}

// The spec's run_coroutine, with a time limit.
static bool run_coroutine(RdmaTask<void>& task, const char* name) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!task.done()) {
        if (std::chrono::steady_clock::now() > deadline) {
            std::cerr << name << ": timed out" << std::endl;
            std::_Exit(2);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    try {
        task.get();
        std::cout << name << ": completed" << std::endl;
        return true;
    } catch (const std::exception& e) {
        std::cerr << name << ": exception: " << e.what() << std::endl;
        return false;
    }
}

int main(int argc, char** argv) {
    if (argc > 1) g_port = static_cast<std::uint16_t>(std::atoi(argv[1]));
    auto server = server_coroutine();  // starts at once: listening before the client runs
    auto client = client_coroutine();
    const bool client_ok = run_coroutine(client, "client");
    const bool server_ok = run_coroutine(server, "server");
    const bool ok = client_ok && server_ok && g_received_ok;
    std::cout << (ok ? "btsp consumer: OK" : "btsp consumer: FAILED") << std::endl;
    return ok ? 0 : 1;
}
