// Fault 1: shutdown() with 1000 operations in flight (500 receives nobody sends to, 500
// rendezvous sends of 64 KiB nobody receives) on a connected pair: shutdown returns within
// 1 s, every operation completes DISCONNECTED, nothing crashes (UCX asserts if an endpoint
// with unmatched rendezvous sends is flush-closed carelessly).
#include "faults_util.hpp"
#include "pair.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <deque>
#include <stop_token>
#include <thread>
#include <memory>
#include <vector>

namespace {

using namespace btsp_test;
using namespace btsp_fault;
using btsp::RdmaResult;
using btsp::RdmaState;

void shutdown_with_ops_in_flight(bool shut_client, int n_ops) {
    Pair p;
    p.open();
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    btsp::CoroutineRdmaManager& m = shut_client ? *p.client : *p.server;

    btsp::CoroutineRdmaManager& peer = shut_client ? *p.server : *p.client;
    std::vector<std::uint8_t> peer_buf(64);
    auto peer_recv = start(peer.tag_recv(peer_buf.data(), peer_buf.size(), 77));
    const int kRecvs = n_ops / 2, kSends = n_ops - n_ops / 2;
    constexpr std::size_t kSize = 64u << 10;
    std::vector<std::uint8_t> out(kSize, 0x42);  // one buffer for all sends: never written
    std::deque<std::vector<std::uint8_t>> in;
    std::vector<std::unique_ptr<PendingOp>> ops;
    for (int i = 0; i < kRecvs; ++i) {
        in.emplace_back(256);
        ops.push_back(start(m.tag_recv(in.back().data(), in.back().size(), 1000 + static_cast<std::uint64_t>(i))));
    }
    for (int i = 0; i < kSends; ++i)
        ops.push_back(start(m.tag_send(out.data(), out.size(), 5000 + static_cast<std::uint64_t>(i))));

    // Let them reach UCX, then check they are really pending.
    const std::size_t want = static_cast<std::size_t>(n_ops) * 9 / 10;
    ASSERT_TRUE(wait_until([&] { return m.metrics().in_flight_sends + m.metrics().in_flight_recvs >= want; }, 5s))
        << "in flight: " << m.metrics().in_flight_sends << " sends, " << m.metrics().in_flight_recvs << " recvs";
    std::size_t pending = 0;
    for (auto& op : ops) pending += op->ready() ? 0 : 1;
    std::printf("[ shutdown ] %zu of %zu operations pending before shutdown\n", pending, ops.size());
    EXPECT_GE(pending, want) << "64 KiB sends should wait for a receiver (rendezvous)";

    const auto t0 = Clock::now();
    m.shutdown();
    const double shut_ms = ms_since(t0);
    std::printf("[ shutdown ] shutdown() took %.1f ms\n", shut_ms);
    EXPECT_LT(shut_ms, 1000.0);
    EXPECT_EQ(m.get_state(), RdmaState::SHUTDOWN);

    std::size_t disconnected = 0, other = 0, never = 0;
    for (auto& op : ops) {
        const auto r = op->wait_for(2s);
        if (!r) ++never;
        else if (r->result == RdmaResult::DISCONNECTED) ++disconnected;
        else ++other;
    }
    std::printf("[ shutdown ] completed: %zu DISCONNECTED, %zu other, %zu never (all within %.1f ms)\n",
                disconnected, other, never, ms_since(t0));
    EXPECT_EQ(never, 0u) << "every operation must complete";
    // An op that had already completed before shutdown (none expected) may be SUCCESS.
    EXPECT_EQ(disconnected + other, ops.size());
    EXPECT_GE(disconnected, pending);

    // The other side sees the connection end (BYE): its pending receive ends DISCONNECTED.
    auto pr = peer_recv->wait_for(3s);
    if (!pr) {
        // Not told within 3 s: measure when (if ever) the heartbeat's peer_timeout ends it.
        pr = peer_recv->wait_for(12s);
        ADD_FAILURE() << "the peer was not told of our shutdown within 3 s (no BYE); its receive "
                      << (pr ? "completed " + std::string(btsp::to_string(pr->result)) : std::string("did not complete"))
                      << " after " << ms_since(t0) << " ms";
        if (!pr) return;
    }
    EXPECT_EQ(pr->result, RdmaResult::DISCONNECTED) << *pr;
    std::printf("[ shutdown ] peer's receive completed %s after %.1f ms\n",
                std::string(btsp::to_string(pr->result)).c_str(), ms_since(t0));
    const RdmaState back = shut_client ? RdmaState::LISTENING : RdmaState::IDLE;
    EXPECT_TRUE(wait_until([&] { return peer.get_state() == back; }, 3s)) << peer.get_state();
    const auto t1 = Clock::now();
    p.server.reset();
    p.client.reset();
    EXPECT_LT(ms_since(t1), 2000.0);
}

TEST(FaultShutdown, ClientShutdownWith1000OpsInFlight) { shutdown_with_ops_in_flight(true, 1000); }
TEST(FaultShutdown, ServerShutdownWith1000OpsInFlight) { shutdown_with_ops_in_flight(false, 1000); }
// Controls: the same without operations in flight (only the peer's receive).
TEST(FaultShutdown, ClientShutdownIdle) { shutdown_with_ops_in_flight(true, 0); }
TEST(FaultShutdown, ServerShutdownIdle) { shutdown_with_ops_in_flight(false, 0); }
// With a few sends only (they are what makes the close non-trivial).
TEST(FaultShutdown, ClientShutdownWithOnePendingSend) { shutdown_with_ops_in_flight(true, 1); }

}  // namespace

// ---- ending a connection on purpose -----------------------------------------------------

namespace {

using namespace btsp_test;
using namespace btsp_fault;
using btsp::RdmaResult;
using btsp::RdmaState;

// The peer closes gracefully (disconnect()): our pending receive ends DISCONNECTED at once.
TEST(FaultClose, PeerDisconnectEndsOurPendingRecv) {
    Pair p;
    p.open();
    ASSERT_FALSE(HasFatalFailure());
    std::vector<std::uint8_t> buf(64);
    auto recv = start(p.server->tag_recv(buf.data(), buf.size(), 12));
    std::this_thread::sleep_for(20ms);
    const auto t0 = Clock::now();
    const auto d = await_within(p.client->disconnect(), 5s);
    ASSERT_TRUE(d.has_value() && d->success());
    const auto r = recv->wait_for(5s);
    const double ms = ms_since(t0);
    ASSERT_TRUE(r.has_value()) << "the server's receive never completed after the client's disconnect()";
    EXPECT_EQ(r->result, RdmaResult::DISCONNECTED) << *r;
    EXPECT_LT(ms, 1000.0);
    EXPECT_TRUE(wait_until([&] { return p.server->get_state() == RdmaState::LISTENING; }, 2s));
    std::printf("[ close ] peer disconnect(): our pending recv -> %s in %.1f ms\n",
                std::string(btsp::to_string(r->result)).c_str(), ms);
}

// A pending (rendezvous) send cancelled through a stop_token: CANCELLED; UCX cannot cancel
// sends, so the connection closes and the peer sees it end (its pending receive ends).
TEST(FaultClose, CancelledSendClosesConnectionAndPeerIsTold) {
    Pair p;
    p.open();
    ASSERT_FALSE(HasFatalFailure());
    std::vector<std::uint8_t> big(4u << 20, 5), buf(64);
    auto peer_recv = start(p.server->tag_recv(buf.data(), buf.size(), 77));
    std::stop_source stop;
    auto send = start(p.client->tag_send(big.data(), big.size(), 13).cancel_with(stop.get_token()));
    std::this_thread::sleep_for(100ms);
    ASSERT_FALSE(send->ready()) << "nobody receives tag 13: the rendezvous send waits";
    const auto t0 = Clock::now();
    stop.request_stop();
    const auto s = send->wait_for(2s);
    ASSERT_TRUE(s.has_value()) << "the cancelled send never completed";
    EXPECT_EQ(s->result, RdmaResult::CANCELLED) << *s;
    EXPECT_TRUE(wait_until([&] { return p.client->get_state() == RdmaState::IDLE; }, 2s)) << p.client->get_state();
    const auto pr = peer_recv->wait_for(3s);
    const double ms = ms_since(t0);
    EXPECT_TRUE(pr.has_value()) << "the peer was not told (no BYE within 3 s)";
    if (pr) {
        EXPECT_EQ(pr->result, RdmaResult::DISCONNECTED) << *pr;
    }
    std::printf("[ close ] cancelled 4 MiB send -> %s; peer's recv -> %s after %.1f ms\n",
                std::string(btsp::to_string(s->result)).c_str(),
                pr ? std::string(btsp::to_string(pr->result)).c_str() : "nothing", ms);
}

}  // namespace
