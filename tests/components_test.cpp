// The spec's toolkit as real components (issue 5): each test checks observable behaviour.
#include "test_util.hpp"

#include <btsp/btsp.hpp>

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <sstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace btsp;
using namespace btsp_test;

namespace {

struct Pair {
    std::unique_ptr<CoroutineRdmaManager> server = std::make_unique<CoroutineRdmaManager>(test_options());
    std::unique_ptr<CoroutineRdmaManager> client = std::make_unique<CoroutineRdmaManager>(test_options());
    bool connect() {
        if (!server->initialize(true, 0) || !client->initialize(false, 0)) return false;
        auto c = await_within(client->connect("127.0.0.1", server->listening_port()), 10s);
        auto s = await_within(server->wait_for_connection(), 10s);
        return c && c->success() && s && *s;
    }
};

RdmaTask<RdmaOpResult> recv_with_memh(CoroutineRdmaManager* m, char* b, std::size_t n, std::uint64_t tag, ucp_mem_h h) {
    const RdmaOpResult r = co_await m->tag_recv(b, n, tag).memory(h);
    co_return r;
}

std::string http_get(std::uint16_t port, const char* path) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::string out;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
        const std::string req = std::string("GET ") + path + " HTTP/1.0\r\n\r\n";
        (void)!::send(fd, req.data(), req.size(), 0);
        char buf[4096];
        for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) out.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    return out;
}

}  // namespace

TEST(BatchSend, AllSendsAreInFlightTogether) {
    Pair p;
    ASSERT_TRUE(p.connect());
    constexpr int kN = 8;
    constexpr std::size_t kSize = 1 << 20;  // rendezvous: each send stays pending until received
    std::vector<std::vector<char>> out(kN, std::vector<char>(kSize)), in(kN, std::vector<char>(kSize));
    std::vector<std::pair<void*, std::size_t>> sl, rl;
    for (int i = 0; i < kN; ++i) {
        std::fill(out[i].begin(), out[i].end(), static_cast<char>('a' + i));
        sl.emplace_back(out[i].data(), kSize);
        rl.emplace_back(in[i].data(), kSize);
    }
    auto sends = start(batch_send(*p.client, sl, 100));
    // Concurrency is observable: all 8 are pending at the same time before any receive.
    EXPECT_TRUE(wait_until([&] { return p.client->metrics().in_flight_sends == kN; }, 3s))
        << "in flight: " << p.client->metrics().in_flight_sends;
    EXPECT_EQ(p.client->get_state(), RdmaState::SENDING);
    auto recvs = await_within(batch_recv(*p.server, rl, 100), 10s);
    auto sent = sends->wait_for(10s);
    ASSERT_TRUE(recvs && sent);
    for (int i = 0; i < kN; ++i) {
        EXPECT_TRUE((*sent)[static_cast<std::size_t>(i)].success());
        EXPECT_TRUE((*recvs)[static_cast<std::size_t>(i)].success());
        EXPECT_EQ(in[static_cast<std::size_t>(i)], out[static_cast<std::size_t>(i)]);
    }
}

TEST(WhenAll, VariadicYieldsEachResult) {
    Pair p;
    ASSERT_TRUE(p.connect());
    char a[16] = "0123456789", b[64] = {};
    auto r = await_within(when_all(p.client->tag_send(a, 10, 5), p.server->tag_recv(b, sizeof b, 5)), 10s);
    ASSERT_TRUE(r.has_value());
    EXPECT_TRUE(std::get<0>(*r).success());
    EXPECT_EQ(std::get<1>(*r).bytes_transferred, 10u);
    EXPECT_STREQ(b, "0123456789");
}

TEST(MemoryPool, BlocksAreReusedAndRegisteredOncePerSlab) {
    Pair p;
    ASSERT_TRUE(p.connect());
    RdmaMemoryPool spool(*p.client), rpool(*p.server);
    constexpr std::size_t kSize = 256 * 1024;
    for (int i = 0; i < 20; ++i) {
        char* s = spool.allocate(kSize);
        char* r = rpool.allocate(kSize);
        ASSERT_NE(s, nullptr);
        ASSERT_NE(r, nullptr);
        ASSERT_NE(spool.memh(s), nullptr) << "pool memory is registered with UCX";
        std::memset(s, i, kSize);
        auto rt = recv_with_memh(p.server.get(), r, kSize, 9, rpool.memh(r));
        auto sr = await_within(p.client->tag_send(s, kSize, 9).memory(spool.memh(s)), 10s);
        auto rr = await_within(std::move(rt), 10s);
        ASSERT_TRUE(sr && sr->success() && rr && rr->success());
        EXPECT_EQ(r[kSize - 1], static_cast<char>(i));
        spool.deallocate(s);
        rpool.deallocate(r);
    }
    const auto st = spool.stats();
    EXPECT_EQ(st.allocations, 20u);
    EXPECT_EQ(st.reuses, 19u) << "the same block comes back";
    EXPECT_EQ(st.registrations, 1u) << "one ucp_mem_map for the slab, none per operation";
    EXPECT_EQ(st.in_use_bytes, 0u);
}

TEST(MemoryPool, SizeClassesBoundsAndForeignPointers) {
    MemoryPoolOptions o;
    o.max_block = 1 << 20;
    o.max_total_bytes = 8 << 20;
    RdmaMemoryPool pool(o);  // unregistered mode (no manager)
    char* a = pool.allocate(5000);
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(pool.block_size(a), 8192u);
    EXPECT_EQ(pool.allocate(0), nullptr);
    EXPECT_EQ(pool.allocate((1 << 20) + 1), nullptr) << "larger than max_block";
    std::vector<char*> held;
    for (char* b; (b = pool.allocate(1 << 20)) != nullptr;) held.push_back(b);
    EXPECT_LE(pool.stats().reserved_bytes, o.max_total_bytes) << "growth is bounded";
    char local = 0;
    pool.deallocate(&local);  // ignored (logged), not a crash
    pool.deallocate(a);
    for (char* b : held) pool.deallocate(b);
    EXPECT_EQ(pool.stats().in_use_bytes, 0u);
    RdmaBufferPool bp;
    char* buf = bp.get_buffer(100);
    ASSERT_NE(buf, nullptr);
    bp.release_buffer(buf);
}

TEST(MemoryPool, OutlivesItsManager) {
    auto pool = std::make_unique<RdmaMemoryPool>();
    {
        CoroutineRdmaManager m(test_options());
        ASSERT_TRUE(m.initialize(false, 0));
        pool = std::make_unique<RdmaMemoryPool>(m);
        char* b = pool->allocate(4096);
        ASSERT_NE(b, nullptr);
        pool->deallocate(b);
        m.shutdown();
    }
    char* b = pool->allocate(4096);  // the UCX context stays alive for the pool
    EXPECT_NE(b, nullptr);
    pool->deallocate(b);
    pool.reset();
}

TEST(ConnectionPool, WaitsWhenFullReusesAndReplacesDead) {
    CoroutineRdmaManager server(test_options());
    ASSERT_TRUE(server.initialize(true, 0));
    const std::uint16_t port = server.listening_port();
    RdmaConnectionPool pool(2);
    CoroutineRdmaManager* a = pool.acquire_connection("127.0.0.1", port);
    CoroutineRdmaManager* b = pool.acquire_connection("127.0.0.1", port);
    ASSERT_TRUE(a && b && a != b);
    ASSERT_TRUE(a->is_connected() && b->is_connected()) << "the pool hands out connected managers";
    auto third = start(pool.acquire("127.0.0.1", port));
    std::this_thread::sleep_for(100ms);
    EXPECT_FALSE(third->ready()) << "full: the third caller waits instead of getting nullptr";
    pool.release_connection(a);
    auto got = third->wait_for(5s);
    ASSERT_TRUE(got.has_value());
    ASSERT_EQ(*got, a) << "the released connection is reused";
    pool.release_connection(b);
    pool.release_connection(a);
    ASSERT_TRUE(await_within(server.disconnect(), 5s)->success());  // every pooled connection dies
    ASSERT_TRUE(wait_until([&] { return !a->is_connected() && !b->is_connected(); }, 5s));
    CoroutineRdmaManager* c = pool.acquire_connection("127.0.0.1", port);
    ASSERT_NE(c, nullptr);
    EXPECT_TRUE(c->is_connected()) << "a dead connection is replaced";
    const auto st = pool.stats();
    EXPECT_EQ(st.waits, 1u);
    EXPECT_GE(st.replaced, 1u);
    EXPECT_EQ(pool.acquire_connection("127.0.0.1", free_tcp_port()), nullptr);
    pool.release_connection(c);
}

TEST(Metrics, CountsMatchKnownTraffic) {
    Pair p;
    ASSERT_TRUE(p.connect());
    char buf[128] = {};
    for (int i = 0; i < 100; ++i) {
        ASSERT_TRUE(await_within(p.client->tag_send(buf, 10, 1), 5s)->success());
        ASSERT_TRUE(await_within(p.server->tag_recv(buf, sizeof buf, 1), 5s)->success());
    }
    ASSERT_TRUE(await_within(p.client->tag_send(buf, 100, 2), 5s)->success());
    auto trunc = await_within(p.server->tag_recv(buf, 50, 2), 5s);  // truncated
    ASSERT_TRUE(trunc.has_value());
    const MetricsSnapshot c = p.client->metrics();
    const MetricsSnapshot s = p.server->metrics();
    EXPECT_EQ(c.send.completed, 101u);
    EXPECT_EQ(c.send.bytes, 100u * 10 + 100);
    EXPECT_EQ(c.connect.by_result[0], 1u);
    EXPECT_EQ(s.recv.completed, 101u);
    EXPECT_EQ(s.recv.by_result[static_cast<int>(RdmaResult::SUCCESS)], 100u);
    EXPECT_EQ(s.recv.by_result[static_cast<int>(RdmaResult::FAILURE)], 1u) << "the truncation";
    EXPECT_EQ(s.recv.bytes, 1000u);
    EXPECT_EQ(s.connections_opened, 1u);
    const std::string text = s.prometheus("btsp", "manager=\"s\"");
    EXPECT_NE(text.find("btsp_ops_total{kind=\"recv\",result=\"SUCCESS\",manager=\"s\"} 100"), std::string::npos);
    EXPECT_NE(text.find("# TYPE btsp_op_latency_seconds histogram"), std::string::npos);
    EXPECT_NE(text.find("btsp_progress_handoffs_total{manager=\"s\"} 0"), std::string::npos);
}

TEST(Metrics, HttpEndpointServesPrometheusText) {
    Pair p;
    ASSERT_TRUE(p.connect());
    RdmaMetrics app;
    app.record_send(100, true);
    app.record_receive(7, false);
    MetricsHttpServer http(0);
    http.add(*p.server, "srv");
    http.add(app, "app");
    const std::string resp = http_get(http.port(), "/metrics");
    EXPECT_EQ(resp.rfind("HTTP/1.0 200 OK", 0), 0u) << resp.substr(0, 100);
    EXPECT_NE(resp.find("btsp_bytes_total{kind=\"send\",manager=\"app\"} 100"), std::string::npos);
    EXPECT_NE(resp.find("btsp_live_connections{manager=\"srv\"} 1"), std::string::npos);
    EXPECT_EQ(http_get(http.port(), "/nope").rfind("HTTP/1.0 404", 0), 0u);
    std::ostringstream os;
    app.print_stats(os);
    EXPECT_NE(os.str().find("失败操作数: 1"), std::string::npos) << os.str();
}

TEST(Monitor, TimesScopesAndDumpsWhatIsInFlight) {
    Pair p;
    ASSERT_TRUE(p.connect());
    char buf[8];
    auto stuck = start(p.client->tag_recv(buf, sizeof buf, 0x1234));
    CoroutineMonitor mon;
    {
        MONITOR_COROUTINE(mon, "outer");
        MONITOR_COROUTINE(mon, "inner");
        const std::string d = mon.dump(p.client.get());
        EXPECT_NE(d.find("outer"), std::string::npos) << d;
        EXPECT_NE(d.find("recv    tag=0x1234"), std::string::npos) << d;
    }
    EXPECT_EQ(mon.stats()["outer"].count, 1u);
    EXPECT_TRUE(mon.running().empty());
    const auto ops = p.client->in_flight();
    ASSERT_EQ(ops.size(), 1u);
    EXPECT_EQ(ops[0].tag, 0x1234u);
    EXPECT_EQ(ops[0].kind, "recv");
}
