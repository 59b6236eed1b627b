// 性能优化 3. 连接复用, the simple form: two sessions (independent conversations, running at
// the same time) share one connected manager instead of each opening a connection. Each
// session uses its own tag range, so their messages never mix. The peer (in this process)
// echoes every request back with tag + 1; the server sees a single connection throughout.
// (A pool of connected managers, RdmaConnectionPool, is a separate component.)
#include "pattern_util.hpp"

#include <btsp/btsp.hpp>

#include <cstdint>
#include <iostream>
#include <string>

using namespace btsp;

using namespace std::chrono_literals;

namespace {

constexpr int kRequests = 20;

// One session: kRequests request/reply rounds on tags base + 2*i (request) and
// base + 2*i + 1 (reply), all over the one shared manager.
RdmaTask<int> session(CoroutineRdmaManager& shared, std::uint64_t base) {
    int good = 0;
    for (int i = 0; i < kRequests; ++i) {
        const std::uint64_t tag = base + 2 * static_cast<std::uint64_t>(i);
        const std::uint64_t request = tag * 7;
        std::uint64_t reply = 0;
        auto s = co_await shared.tag_send(&request, sizeof request, tag).timeout(10s);
        auto r = co_await shared.tag_recv(&reply, sizeof reply, tag + 1).timeout(10s);
        if (s.success() && r.success() && reply == request + 1) ++good;
    }
    co_return good;
}

// The peer: answers 2 * kRequests requests, whatever their tag (mask 0 matches any), with
// value + 1 on tag + 1.
RdmaTask<int> echo(CoroutineRdmaManager& peer) {
    int answered = 0;
    for (int n = 0; n < 2 * kRequests; ++n) {
        std::uint64_t value = 0;
        auto r = co_await peer.tag_recv(&value, sizeof value, 0, 0).timeout(10s);
        if (!r.success()) break;
        const std::uint64_t reply = value + 1;
        auto s = co_await peer.tag_send(&reply, sizeof reply, r.sender_tag + 1).timeout(10s);
        if (s.success()) ++answered;
    }
    co_return answered;
}

}  // namespace

int main() {
    patterns::Watchdog watchdog(50s);
    CoroutineRdmaManager peer(patterns::loopback_server());
    CoroutineRdmaManager shared;  // the reused connection
    if (!peer.initialize(true, 0) || !shared.initialize(false, 0)) return 1;
    auto c = btsp::to_future(shared.connect("127.0.0.1", peer.listening_port()));
    auto w = btsp::to_future(peer.wait_for_connection());
    if (c.wait_for(10s) != std::future_status::ready || !c.get().success() ||
        w.wait_for(10s) != std::future_status::ready || !w.get())
        return 1;

    auto echoed = btsp::to_future(echo(peer));
    auto a = btsp::to_future(session(shared, 0x1000));  // both run at the same time
    auto b = btsp::to_future(session(shared, 0x2000));
    if (a.wait_for(30s) != std::future_status::ready || b.wait_for(30s) != std::future_status::ready ||
        echoed.wait_for(30s) != std::future_status::ready) {
        std::cerr << "sessions did not finish" << std::endl;
        return 1;
    }
    const int good_a = a.get();
    const int good_b = b.get();
    const int answered = echoed.get();
    std::cout << "session A: " << good_a << "/" << kRequests << " replies, session B: " << good_b << "/"
              << kRequests << ", peer answered " << answered << ", connections at the peer: "
              << peer.connection_count() << std::endl;
    return good_a == kRequests && good_b == kRequests && peer.connection_count() == 1 ? 0 : 1;
}
