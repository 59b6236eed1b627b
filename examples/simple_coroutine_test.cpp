// simple_coroutine_test — the spec's quick start, as two processes.
//
//   ./build/bin/simple_coroutine_test receiver            # terminal 1 (listens on 12345)
//   ./build/bin/simple_coroutine_test sender              # terminal 2
//
// Options: --port N (default 12345),
//          --host H (the receiver listens on H, the sender connects to H; default
//                    127.0.0.1 — use --host 0.0.0.0 on the receiver to accept remote peers),
//          --timeout S (seconds to wait for the peer; receiver 60, sender 15).
// The receiver is the spec's server_coroutine: it waits for a connection and receives
// four ints on tag 42. The sender is the spec's client_coroutine: it connects (retrying
// while nobody listens yet) and sends {10, 20, 30, 40}. Exit code 0 only on success.
#include "rpc/coroutine_rdma_manager.hpp"

#include "example_util.hpp"

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace btsp;

namespace {

constexpr std::uint64_t kTag = 42;

// The spec's server_coroutine. Failures are thrown; run_coroutine reports them.
RdmaTask<void> server_coroutine(std::string listen_host, std::uint16_t port) {
    ManagerOptions options = ManagerOptions::from_env();
    options.listen_address = listen_host;  // the spec listens on all interfaces; we default to loopback
    CoroutineRdmaManager manager(options);
    if (!manager.initialize(true, port)) {
        throw std::runtime_error("initialize failed: " + manager.last_error());
    }
    std::cout << "receiver: listening on port " << manager.listening_port() << std::endl;

    // Wait for the client.
    std::cout << "receiver: waiting for a connection..." << std::endl;
    if (!co_await manager.wait_for_connection()) {
        throw std::runtime_error("manager shut down before a client connected");
    }
    std::cout << "receiver: client connected (state " << manager.get_state() << ")" << std::endl;

    // Receive four ints on tag 42.
    std::vector<int> buffer(4, 0);
    RdmaOpResult result = co_await manager.tag_recv(buffer.data(), buffer.size() * sizeof(int), kTag);
    if (!result.success()) {
        throw std::runtime_error("tag_recv failed: " + std::string(result.reason()));
    }
    std::cout << "receiver: received " << result.bytes_transferred << " bytes on tag "
              << result.sender_tag << ": ";
    for (const auto& val : buffer) std::cout << val << " ";
    std::cout << std::endl;

    const std::vector<int> expected = {10, 20, 30, 40};
    if (result.bytes_transferred != expected.size() * sizeof(int) || buffer != expected) {
        throw std::runtime_error("received data differs from {10, 20, 30, 40}");
    }
    manager.shutdown();
}

// The spec's client_coroutine, retrying connect while the receiver is not up yet.
RdmaTask<void> client_coroutine(std::string host, std::uint16_t port, std::chrono::seconds retry_for) {
    CoroutineRdmaManager manager;
    if (!manager.initialize(false, 0)) {
        throw std::runtime_error("initialize failed: " + manager.last_error());
    }

    std::cout << "sender: connecting to " << host << ":" << port << "..." << std::endl;
    const auto deadline = std::chrono::steady_clock::now() + retry_for;
    RdmaOpResult connect_result;
    for (int attempt = 1;; ++attempt) {
        connect_result = co_await manager.connect(host, port);
        if (connect_result.success()) break;
        // DISCONNECTED = refused (nobody listens yet): retry until the deadline.
        // FAILURE (bad address) and TIMEOUT (no answer) are not retried.
        if (connect_result.result != RdmaResult::DISCONNECTED ||
            std::chrono::steady_clock::now() >= deadline) {
            throw std::runtime_error("connect failed after " + std::to_string(attempt) +
                                     " attempt(s): " + std::string(connect_result.reason()));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::cout << "sender: connected (state " << manager.get_state() << ")" << std::endl;

    // Send the data.
    std::vector<int> data = {10, 20, 30, 40};
    RdmaOpResult send_result = co_await manager.tag_send(data.data(), data.size() * sizeof(int), kTag);
    if (!send_result.success()) {
        throw std::runtime_error("tag_send failed: " + std::string(send_result.reason()));
    }
    std::cout << "sender: sent " << send_result.bytes_transferred << " bytes on tag " << kTag
              << std::endl;
    // shutdown() closes the connection gracefully: the message is delivered first.
    manager.shutdown();
}

// The spec's run_coroutine, bounded: polls done(), then get() rethrows a failure.
int run_coroutine(RdmaTask<void> task, std::chrono::seconds timeout) {
    if (!example::wait_done(task, timeout)) {
        std::cerr << "timed out after " << timeout.count() << " s" << std::endl;
        std::_Exit(2);  // the coroutine still owns the manager; end the process
    }
    try {
        task.get();
        std::cout << "coroutine completed successfully" << std::endl;
        return 0;
    } catch (const std::exception& e) {
        std::cerr << "coroutine failed: " << e.what() << std::endl;
        return 1;
    }
}

void usage() {
    std::cerr << "usage: simple_coroutine_test receiver|sender [--port N] [--host H] [--timeout S]\n";
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        usage();
        return 2;
    }
    const std::string role = argv[1];
    std::uint64_t port = 0;
    std::uint64_t timeout_s = 0;
    if (!example::parse_uint(example::arg_value(argc, argv, "--port", "12345"), 1, 65535, port)) {
        std::cerr << "bad --port\n";
        return 2;
    }
    const std::string host = example::arg_value(argc, argv, "--host", "127.0.0.1");

    if (role == "receiver" || role == "server") {
        if (!example::parse_uint(example::arg_value(argc, argv, "--timeout", "60"), 1, 3600, timeout_s)) {
            std::cerr << "bad --timeout\n";
            return 2;
        }
        return run_coroutine(server_coroutine(host, static_cast<std::uint16_t>(port)),
                             std::chrono::seconds(timeout_s));
    }
    if (role == "sender" || role == "client") {
        if (!example::parse_uint(example::arg_value(argc, argv, "--timeout", "15"), 1, 3600, timeout_s)) {
            std::cerr << "bad --timeout\n";
            return 2;
        }
        // connect() itself may take up to connect_timeout (5 s) per attempt.
        return run_coroutine(client_coroutine(host, static_cast<std::uint16_t>(port),
                                              std::chrono::seconds(timeout_s)),
                             std::chrono::seconds(timeout_s + 10));
    }
    usage();
    return 2;
}
