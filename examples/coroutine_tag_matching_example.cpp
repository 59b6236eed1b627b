// coroutine_tag_matching_example — the spec's tag matching example, runnable as one
// command:
//
//   ./build/bin/coroutine_tag_matching_example
//
// runs the server (the spec's tag_matching_example: receives ints on tag 100, floats on
// tag 200, a string on tag 300, in that order) and starts a copy of itself as the
// client, which sends the three messages in the REVERSE order (300, 200, 100). Each
// receive still gets the message with its tag: messages that arrive before their
// receive is posted wait in UCX's unexpected queue. The server then acknowledges on
// tag 400 so the client knows everything arrived.
//
// Two terminals instead:  ... server --port 12346   and   ... client --port 12346
// (--host H: the address the server listens on / the client connects to; default 127.0.0.1)
// Exit code 0 only if every message arrived intact.
#include "rpc/coroutine_rdma_manager.hpp"

#include "example_util.hpp"

#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace btsp;

namespace {

constexpr std::uint64_t kIntTag = 100;
constexpr std::uint64_t kFloatTag = 200;
constexpr std::uint64_t kStringTag = 300;
constexpr std::uint64_t kAckTag = 400;

const std::vector<int> kInts = {1, 2, 3, 4, 5};
const std::vector<float> kFloats = {1.5f, 2.5f, 3.25f};
const char kText[] = "hello from the client, sent first, received last";

void check(const RdmaOpResult& r, const char* what) {
    if (!r.success()) throw std::runtime_error(std::string(what) + ": " + std::string(r.reason()));
}

// The spec's tag_matching_example (server side), plus verification and an ack.
RdmaTask<void> tag_matching_example(std::string listen_host, std::uint16_t port,
                                    std::function<void(std::uint16_t)> on_listening) {
    ManagerOptions options = ManagerOptions::from_env();
    options.listen_address = listen_host;
    CoroutineRdmaManager manager(options);
    if (!manager.initialize(true, port)) throw std::runtime_error("initialize: " + manager.last_error());
    std::cout << "server: listening on port " << manager.listening_port() << std::endl;
    if (on_listening) on_listening(manager.listening_port());

    if (!co_await manager.wait_for_connection()) throw std::runtime_error("no connection");
    std::cout << "server: client connected" << std::endl;

    // Receive data of different types on different tags, in the order 100, 200, 300.
    std::vector<int> int_data(5, 0);
    std::vector<float> float_data(3, 0.0f);
    char string_data[256] = {0};

    auto int_result = co_await manager.tag_recv(int_data.data(), int_data.size() * sizeof(int), kIntTag);
    auto float_result = co_await manager.tag_recv(float_data.data(), float_data.size() * sizeof(float), kFloatTag);
    auto string_result = co_await manager.tag_recv(string_data, sizeof(string_data), kStringTag);

    check(int_result, "recv tag 100");
    check(float_result, "recv tag 200");
    check(string_result, "recv tag 300");
    std::cout << "server: tag " << int_result.sender_tag << ": int array [";
    for (int v : int_data) std::cout << ' ' << v;
    std::cout << " ] (" << int_result.bytes_transferred << " bytes)" << std::endl;
    std::cout << "server: tag " << float_result.sender_tag << ": float array [";
    for (float v : float_data) std::cout << ' ' << v;
    std::cout << " ] (" << float_result.bytes_transferred << " bytes)" << std::endl;
    std::cout << "server: tag " << string_result.sender_tag << ": string \"" << string_data << "\" ("
              << string_result.bytes_transferred << " bytes)" << std::endl;

    if (int_data != kInts || int_result.bytes_transferred != sizeof(int) * kInts.size())
        throw std::runtime_error("tag 100: int data differs");
    if (float_data != kFloats || float_result.bytes_transferred != sizeof(float) * kFloats.size())
        throw std::runtime_error("tag 200: float data differs");
    if (std::strcmp(string_data, kText) != 0 || string_result.bytes_transferred != sizeof(kText))
        throw std::runtime_error("tag 300: string differs");
    for (const auto& [r, tag] : {std::pair{int_result, kIntTag}, {float_result, kFloatTag}, {string_result, kStringTag}})
        if (r.sender_tag != tag)
            throw std::runtime_error("receive for tag " + std::to_string(tag) + " reports sender_tag " +
                                     std::to_string(r.sender_tag));

    std::uint32_t ack = 3;  // number of messages received
    check(co_await manager.tag_send(&ack, sizeof(ack), kAckTag), "send ack");
    std::cout << "server: all three messages matched their tags" << std::endl;
    manager.shutdown();
}

RdmaTask<void> client(std::string host, std::uint16_t port) {
    CoroutineRdmaManager manager;
    if (!manager.initialize(false, 0)) throw std::runtime_error("initialize: " + manager.last_error());

    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
        RdmaOpResult r = co_await manager.connect(host, port);
        if (r.success()) break;
        if (r.result != RdmaResult::DISCONNECTED || std::chrono::steady_clock::now() > deadline)
            throw std::runtime_error("connect: " + std::string(r.reason()));
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::cout << "client: connected; sending tag 300, then 200, then 100" << std::endl;

    // Reverse order on purpose: tag matching does not depend on arrival order.
    check(co_await manager.tag_send(kText, sizeof(kText), kStringTag), "send tag 300");
    check(co_await manager.tag_send(kFloats.data(), kFloats.size() * sizeof(float), kFloatTag), "send tag 200");
    check(co_await manager.tag_send(kInts.data(), kInts.size() * sizeof(int), kIntTag), "send tag 100");

    std::uint32_t ack = 0;
    RdmaOpResult r = co_await manager.tag_recv(&ack, sizeof(ack), kAckTag);
    check(r, "recv ack");
    if (ack != 3) throw std::runtime_error("unexpected ack");
    std::cout << "client: server acknowledged " << ack << " messages" << std::endl;
    manager.shutdown();
}

int finish(RdmaTask<void>& task, const char* who, std::chrono::seconds timeout) {
    if (!example::wait_done(task, timeout)) {
        std::cerr << who << ": timed out" << std::endl;
        std::_Exit(2);
    }
    try {
        task.get();
        return 0;
    } catch (const std::exception& e) {
        std::cerr << who << ": failed: " << e.what() << std::endl;
        return 1;
    }
}

}  // namespace

int main(int argc, char** argv) {
    const std::string role = (argc > 1 && argv[1][0] != '-') ? argv[1] : "both";
    std::uint64_t port = 0;
    if (!example::parse_uint(example::arg_value(argc, argv, "--port", role == "both" ? "0" : "12346"), 0,
                             65535, port)) {
        std::cerr << "bad --port\n";
        return 2;
    }
    const std::string host = example::arg_value(argc, argv, "--host", "127.0.0.1");

    if (role == "client") {
        auto task = client(host, static_cast<std::uint16_t>(port));
        return finish(task, "client", std::chrono::seconds(30));
    }
    if (role == "server") {
        auto task = tag_matching_example(host, static_cast<std::uint16_t>(port), {});
        return finish(task, "server", std::chrono::seconds(120));
    }
    if (role != "both") {
        std::cerr << "usage: coroutine_tag_matching_example [server|client] [--port N] [--host H]\n";
        return 2;
    }

    // Both roles: this process is the server; the client is a copy of this program.
    pid_t child = -1;
    auto task = tag_matching_example(host, static_cast<std::uint16_t>(port), [&child, &host](std::uint16_t p) {
        child = example::spawn_self({"client", "--port", std::to_string(p), "--host", host});
    });
    // If the client could not be started, nobody will connect: stop early.
    if (child < 0 && !task.done()) {
        std::cerr << "could not start the client process" << std::endl;
        std::_Exit(1);
    }
    int rc = finish(task, "server", std::chrono::seconds(30));
    if (child > 0) {
        const int child_rc = example::wait_child(child, std::chrono::seconds(15));
        if (child_rc != 0) {
            std::cerr << "client process exited with " << child_rc << std::endl;
            if (rc == 0) rc = 1;
        }
    }
    std::cout << (rc == 0 ? "tag matching example: OK" : "tag matching example: FAILED") << std::endl;
    return rc;
}
