// btsp_test_peer — the other process of tests/process_test.cpp.
//
//   btsp_test_peer server              listen on an ephemeral port, print "PORT <n>", then
//                                      accept clients one after another and echo every
//                                      message of tag 1 back on tag 2 (capacity 8 MiB)
//   btsp_test_peer hold-server         listen, print "PORT <n>", print "CONNECTED" when a
//                                      client is connected, then never receive (sleeps)
//   btsp_test_peer client HOST PORT N SIZE
//                                      connect, N times: send SIZE bytes on tag 1, expect
//                                      the same bytes back on tag 2; exit 0 if all matched
//   btsp_test_peer hold HOST PORT      connect, print "CONNECTED", then sleep until killed
//
// Every mode exits by itself after 120 s (alarm), so a leaked peer cannot linger.
#include <btsp/btsp.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using btsp::CoroutineRdmaManager;
using btsp::RdmaOpResult;
using btsp::RdmaTask;

constexpr std::size_t kCapacity = 8u << 20;
constexpr std::uint64_t kTagIn = 1;
constexpr std::uint64_t kTagOut = 2;

void say(const char* word, unsigned value) {
    std::printf("%s %u\n", word, value);
    std::fflush(stdout);
}

std::vector<std::uint8_t> pattern(std::size_t size, std::uint32_t seed) {
    std::vector<std::uint8_t> v(size);
    std::uint32_t x = seed * 2654435761u + 12345u;
    for (auto& b : v) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        b = static_cast<std::uint8_t>(x);
    }
    return v;
}

RdmaTask<void> echo_clients(CoroutineRdmaManager& m) {
    std::vector<std::uint8_t> buf(kCapacity);
    for (;;) {
        // (not `if (!co_await ...)`: g++ 12 miscompiles co_await inside a condition)
        const bool connected = co_await m.wait_for_connection();
        if (!connected) co_return;  // shut down
        for (;;) {
            const RdmaOpResult r = co_await m.tag_recv(buf.data(), buf.size(), kTagIn);
            if (!r) break;  // client gone: wait for the next one
            const RdmaOpResult s = co_await m.tag_send(buf.data(), r.bytes_transferred, kTagOut);
            if (!s) break;
        }
    }
}

int run_server(bool hold) {
    CoroutineRdmaManager m;
    if (!m.initialize(true, 0)) {
        std::fprintf(stderr, "peer: initialize failed: %s\n", m.last_error().c_str());
        return 2;
    }
    say("PORT", m.listening_port());
    if (hold) {
        if (!btsp::sync_wait(m.wait_for_connection())) return 3;
        say("CONNECTED", 1);
        for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    btsp::sync_wait(echo_clients(m));
    return 0;
}

RdmaTask<int> client_exchange(CoroutineRdmaManager& m, const char* host, std::uint16_t port,
                              int count, std::size_t size) {
    const RdmaOpResult c = co_await m.connect(host, port);
    if (!c) {
        std::fprintf(stderr, "peer: connect failed: %s\n", std::string(c.reason()).c_str());
        co_return 4;
    }
    std::vector<std::uint8_t> in(size);
    for (int i = 0; i < count; ++i) {
        const auto out = pattern(size, static_cast<std::uint32_t>(i) + 100);
        const RdmaOpResult s = co_await m.tag_send(out.data(), out.size(), kTagIn);
        if (!s) co_return 5;
        const RdmaOpResult r = co_await m.tag_recv(in.data(), in.size(), kTagOut);
        if (!r || r.bytes_transferred != size || in != out) {
            std::fprintf(stderr, "peer: echo %d wrong: %s\n", i, std::string(r.reason()).c_str());
            co_return 6;
        }
    }
    co_return 0;
}

int run_client(const char* host, std::uint16_t port, int count, std::size_t size) {
    CoroutineRdmaManager m;
    if (!m.initialize(false, 0)) return 2;
    const int rc = btsp::sync_wait(client_exchange(m, host, port, count, size));
    m.shutdown();
    return rc;
}

int run_hold(const char* host, std::uint16_t port) {
    CoroutineRdmaManager m;
    if (!m.initialize(false, 0)) return 2;
    const RdmaOpResult c = btsp::sync_wait(m.connect(host, port));
    if (!c) return 4;
    say("CONNECTED", 1);
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

int usage() {
    std::fprintf(stderr,
                 "usage: btsp_test_peer server | hold-server | client HOST PORT N SIZE | "
                 "hold HOST PORT\n");
    return 64;
}

}  // namespace

int main(int argc, char** argv) {
    ::alarm(120);
    if (argc < 2) return usage();
    const std::string mode = argv[1];
    if (mode == "server" && argc == 2) return run_server(false);
    if (mode == "hold-server" && argc == 2) return run_server(true);
    if (mode == "client" && argc == 6)
        return run_client(argv[2], static_cast<std::uint16_t>(std::atoi(argv[3])), std::atoi(argv[4]),
                          static_cast<std::size_t>(std::atoll(argv[5])));
    if (mode == "hold" && argc == 4)
        return run_hold(argv[2], static_cast<std::uint16_t>(std::atoi(argv[3])));
    return usage();
}
