// Deadlines, cancellation, with_timeout, disconnect(), admission control: each pins a row
// of docs/semantics.md ("Deadlines and cancellation", "Ending connections", "Admission").
#include "test_util.hpp"

#include <btsp/btsp.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <stop_token>
#include <thread>
#include <utility>
#include <vector>

using namespace btsp;
using namespace btsp_test;

namespace {

struct Pair {
    std::unique_ptr<CoroutineRdmaManager> server;
    std::unique_ptr<CoroutineRdmaManager> client;
    explicit Pair(ManagerOptions so = test_options(), ManagerOptions co = test_options()) {
        server = std::make_unique<CoroutineRdmaManager>(so);
        client = std::make_unique<CoroutineRdmaManager>(co);
        EXPECT_TRUE(server->initialize(true, 0)) << server->last_error();
        EXPECT_TRUE(client->initialize(false, 0));
    }
    bool connect() {
        auto c = await_within(client->connect("127.0.0.1", server->listening_port()), 10s);
        auto s = await_within(server->wait_for_connection(), 10s);
        return c && c->success() && s && *s;
    }
};

RdmaTask<RdmaOpResult> recv_in_task(CoroutineRdmaManager& m, void* buf, std::size_t n, std::uint64_t tag) {
    const RdmaOpResult r = co_await m.tag_recv(buf, n, tag);
    co_return r;
}

// A task two levels deep, so cancellation must travel through an awaited sub-task.
RdmaTask<int> outer_task(CoroutineRdmaManager& m, void* buf, RdmaOpResult* inner_result) {
    *inner_result = co_await recv_in_task(m, buf, 8, 77);
    co_return 1;
}

}  // namespace

TEST(Deadline, RecvTimeoutCompletesWithTimeoutAndConnectionSurvives) {
    Pair p;
    ASSERT_TRUE(p.connect());
    char buf[64];
    const auto t0 = Clock::now();
    auto r = await_within(p.client->tag_recv(buf, sizeof buf, 1).timeout(100ms), 5s);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->result, RdmaResult::TIMEOUT) << *r;
    EXPECT_GE(ms_since(t0), 95.0);
    EXPECT_TRUE(p.client->is_connected());
    // The buffer is not written later: a message for that tag now goes to a new receive.
    std::memset(buf, 0, sizeof buf);
    char msg[8] = "late";
    ASSERT_TRUE(await_within(p.server->tag_send(msg, 5, 1), 5s)->success());
    char other[64] = {};
    auto r2 = await_within(p.client->tag_recv(other, sizeof other, 1), 5s);
    ASSERT_TRUE(r2 && r2->success());
    EXPECT_STREQ(other, "late");
    EXPECT_EQ(buf[0], 0) << "the timed-out receive's buffer was written";
}

TEST(Deadline, PendingSendTimeoutClosesItsConnection) {
    Pair p;
    ASSERT_TRUE(p.connect());
    std::vector<char> big(4 << 20, 'x');  // rendezvous: pending until a receive is posted
    auto r = await_within(p.client->tag_send(big.data(), big.size(), 9).timeout(100ms), 5s);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->result, RdmaResult::TIMEOUT) << *r;
    EXPECT_FALSE(p.client->is_connected()) << "UCX cannot cancel sends: the connection closes";
    EXPECT_TRUE(wait_until([&] { return !p.server->is_connected(); }, 3s)) << "the peer sees it end (BYE)";
}

TEST(Deadline, ConnectToSilentListenerTimesOut) {
    SilentListener silent;
    CoroutineRdmaManager c(test_options());
    ASSERT_TRUE(c.initialize(false, 0));
    const auto t0 = Clock::now();
    auto r = await_within(c.connect("127.0.0.1", silent.port()).timeout(200ms), 5s);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->result, RdmaResult::TIMEOUT) << *r;
    EXPECT_LT(ms_since(t0), 2000.0);
    EXPECT_EQ(c.get_state(), RdmaState::IDLE);
}

TEST(Cancel, StopTokenCancelsPendingRecv) {
    Pair p;
    ASSERT_TRUE(p.connect());
    char buf[8];
    std::stop_source src;
    auto pending = start(p.client->tag_recv(buf, sizeof buf, 3).cancel_with(src.get_token()));
    std::this_thread::sleep_for(30ms);
    EXPECT_FALSE(pending->ready());
    src.request_stop();
    auto r = pending->wait_for(3s);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->result, RdmaResult::CANCELLED) << *r;
    EXPECT_TRUE(p.client->is_connected());
}

TEST(Cancel, StopRequestedBeforeStartCompletesAtOnce) {
    Pair p;
    ASSERT_TRUE(p.connect());
    char buf[8];
    std::stop_source src;
    src.request_stop();
    auto pending = start(p.client->tag_recv(buf, sizeof buf, 3).cancel_with(src.get_token()));
    auto r = pending->wait_for(3s);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->result, RdmaResult::CANCELLED);
}

// The stop token and callback live in storage the awaiter builds on demand (cancel_with);
// they must be deregistered by the time the awaiter is gone, so a stop requested after
// the awaiting coroutine finished touches nothing. (Checked by mutation: without the
// awaiter destroying them, ASan reports a heap-use-after-free in request_stop.)
TEST(Cancel, StopAfterCompletionTouchesNothing) {
    Pair p;
    ASSERT_TRUE(p.connect());
    char buf[8];
    std::stop_source src;
    {
        auto pending = start(p.client->tag_recv(buf, sizeof buf, 3).cancel_with(src.get_token()));
        char msg[4] = "ok";
        ASSERT_TRUE(await_within(p.server->tag_send(msg, 3, 3), 5s)->success());
        auto r = pending->wait_for(3s);
        ASSERT_TRUE(r.has_value());
        EXPECT_TRUE(r->success()) << *r;
        EXPECT_EQ(r->bytes_transferred, 3u);
    }
    src.request_stop();  // no callback is registered any more
    char msg[4] = "no";
    ASSERT_TRUE(await_within(p.server->tag_send(msg, 3, 4), 5s)->success());
    auto r = await_within(p.client->tag_recv(buf, sizeof buf, 4), 5s);
    ASSERT_TRUE(r && r->success()) << "the manager still works";
}

TEST(WithTimeout, AwaitableThrowsTimeoutError) {
    Pair p;
    ASSERT_TRUE(p.connect());
    char buf[8];
    auto body = [](CoroutineRdmaManager* m, char* b) -> RdmaTask<int> {
        try {
            (void)co_await with_timeout(m->tag_recv(b, 8, 4), std::chrono::milliseconds(100));
        } catch (const TimeoutError&) {
            co_return 1;
        }
        co_return 0;
    };
    EXPECT_EQ(sync_wait(body(p.client.get(), buf)), 1);
}

TEST(WithTimeout, TaskIsCancelledThroughSubTaskThenThrows) {
    Pair p;
    ASSERT_TRUE(p.connect());
    char buf[8];
    RdmaOpResult inner;
    const auto t0 = Clock::now();
    EXPECT_THROW(sync_wait(with_timeout(outer_task(*p.client, buf, &inner), 150ms)), TimeoutError);
    EXPECT_EQ(inner.result, RdmaResult::TIMEOUT) << "the pending receive was cancelled, not abandoned";
    EXPECT_LT(ms_since(t0), 3000.0);
    EXPECT_TRUE(p.client->is_connected());
}

TEST(WithTimeout, FastTaskReturnsItsValue) {
    auto quick = []() -> RdmaTask<int> { co_return 42; };
    EXPECT_EQ(sync_wait(with_timeout(quick(), 1s)), 42);
}

TEST(Cancel, RequestCancelOnTaskEndsItsPendingOperation) {
    Pair p;
    ASSERT_TRUE(p.connect());
    char buf[8];
    auto t = recv_in_task(*p.client, buf, sizeof buf, 5);
    std::this_thread::sleep_for(20ms);
    EXPECT_TRUE(t.request_cancel());
    auto r = await_within(std::move(t), 3s);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->result, RdmaResult::CANCELLED);
}

// Receives tag 30, then holds the progress thread until `go`, then receives tag 31 (whose
// message is already there): the second receive starts on the fast path after the task
// was cancelled.
RdmaTask<std::pair<RdmaOpResult, RdmaOpResult>> recv_then_hold(CoroutineRdmaManager& m, char* buf,
                                                               std::atomic<bool>* reached,
                                                               std::atomic<bool>* go) {
    const RdmaOpResult first = co_await m.tag_recv(buf, 8, 30);
    reached->store(true);
    const auto until = Clock::now() + 5s;
    while (!go->load() && Clock::now() < until) std::this_thread::yield();
    const RdmaOpResult second = co_await m.tag_recv(buf, 8, 31);
    co_return std::make_pair(first, second);
}

// A task that alternates between receives that complete at once and pending ones.
RdmaTask<RdmaOpResult> recv_until_failure(CoroutineRdmaManager& m, char* buf, std::uint64_t tag,
                                          std::uint64_t* received) {
    RdmaOpResult r;
    for (std::uint64_t i = 0; i < 50'000'000; ++i) {
        r = co_await m.tag_recv(buf, 8, tag);
        if (!r) break;
        ++*received;
    }
    co_return r;
}

// Cancellation is sticky: an operation the task starts afterwards ends at once with the
// task's result, even one that could complete at once (its message is already there).
TEST(Cancel, OperationStartedAfterTaskCancelEndsAtOnce) {
    Pair p;
    ASSERT_TRUE(p.connect());
    const char msg[8] = {};
    ASSERT_TRUE(await_within(p.server->tag_send(msg, sizeof msg, 31), 5s).value_or(RdmaOpResult{}).success());
    char buf[8];
    std::atomic<bool> reached{false}, go{false};
    auto t = recv_then_hold(*p.client, buf, &reached, &go);
    ASSERT_TRUE(await_within(p.server->tag_send(msg, sizeof msg, 30), 5s).value_or(RdmaOpResult{}).success());
    ASSERT_TRUE(wait_until([&] { return reached.load(); }, 5000ms));
    EXPECT_TRUE(t.request_cancel(RdmaResult::TIMEOUT));
    EXPECT_FALSE(t.request_cancel()) << "the first request decides the result";
    go = true;
    auto r = await_within(std::move(t), 5s);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->first.result, RdmaResult::SUCCESS);
    EXPECT_EQ(r->second.result, RdmaResult::TIMEOUT) << r->second;
    EXPECT_TRUE(p.client->is_connected());
}

TEST(Cancel, RequestCancelRacingReceivesEndsTheTask) {
    Pair p;
    ASSERT_TRUE(p.connect());
    // The server keeps sending tag 22 while the client's task receives, so its receives are
    // sometimes pending and sometimes complete at once when the cancellation arrives.
    std::atomic<bool> stop{false};
    std::thread feeder([&] {
        const char msg[8] = {};
        for (int i = 0; i < 2'000'000 && !stop.load(); ++i) {
            if (!sync_wait(p.server->tag_send(msg, sizeof msg, 22))) break;
            if (i % 64 == 0) std::this_thread::sleep_for(std::chrono::microseconds(50));
        }
    });
    for (int round = 0; round < 20; ++round) {
        char buf[8];
        std::uint64_t received = 0;
        auto t = recv_until_failure(*p.client, buf, 22, &received);
        std::this_thread::sleep_for(std::chrono::microseconds(300 * (round % 7)));
        t.request_cancel();
        auto r = await_within(std::move(t), 5s);
        ASSERT_TRUE(r.has_value()) << "round " << round << ": the task did not end";
        EXPECT_EQ(r->result, RdmaResult::CANCELLED) << "round " << round << ", " << received << " received";
    }
    stop = true;
    feeder.join();
    EXPECT_TRUE(p.client->is_connected());
    const MetricsSnapshot m = p.client->metrics();
    EXPECT_EQ(m.in_flight_recvs, 0u) << "a cancelled receive stayed registered";
}

TEST(Disconnect, ClientDisconnectEndsPendingOpsAndAllowsReconnect) {
    Pair p;
    ASSERT_TRUE(p.connect());
    char buf[8];
    auto server_recv = start(p.server->tag_recv(buf, sizeof buf, 6));
    auto client_recv = start(p.client->tag_recv(buf, sizeof buf, 6));
    auto d = await_within(p.client->disconnect(), 5s);
    ASSERT_TRUE(d && d->success());
    auto cr = client_recv->wait_for(3s);
    ASSERT_TRUE(cr.has_value());
    EXPECT_EQ(cr->result, RdmaResult::DISCONNECTED);
    auto sr = server_recv->wait_for(3s);
    ASSERT_TRUE(sr.has_value()) << "the server did not notice the disconnect";
    EXPECT_EQ(sr->result, RdmaResult::DISCONNECTED);
    EXPECT_EQ(p.client->get_state(), RdmaState::IDLE);
    ASSERT_TRUE(p.connect()) << "connect again after disconnect()";
    char msg[4] = "hi";
    ASSERT_TRUE(await_within(p.client->tag_send(msg, 3, 7), 5s)->success());
    auto r = await_within(p.server->tag_recv(buf, sizeof buf, 7), 5s);
    ASSERT_TRUE(r && r->success());
}

TEST(Admission, MaxConnectionsRejectsTheExtraClient) {
    ManagerOptions so = test_options();
    so.max_connections = 1;
    Pair p(so);
    ASSERT_TRUE(p.connect());
    CoroutineRdmaManager extra(test_options());
    ASSERT_TRUE(extra.initialize(false, 0));
    auto r = await_within(extra.connect("127.0.0.1", p.server->listening_port()), 10s);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->result, RdmaResult::DISCONNECTED) << *r;
    EXPECT_EQ(p.server->metrics().connections_rejected, 1u);
}

TEST(Admission, AllowListRejectsOtherAddresses) {
    ManagerOptions so = test_options();
    so.allowed_clients = {"10.0.0.0/8"};
    Pair p(so);
    auto r = await_within(p.client->connect("127.0.0.1", p.server->listening_port()), 10s);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->result, RdmaResult::DISCONNECTED) << *r;
}

TEST(Admission, MalformedAllowListFailsInitialize) {
    ManagerOptions so = test_options();
    so.allowed_clients = {"300.1.2.3"};
    CoroutineRdmaManager m(so);
    EXPECT_FALSE(m.initialize(true, 0));
    EXPECT_NE(m.last_error().find("300.1.2.3"), std::string::npos) << m.last_error();
}

TEST(Admission, ShmFifoSizeNotAPowerOfTwoFailsInitialize) {
    for (const std::uint32_t bad : {1u, 100u, 257u}) {
        ManagerOptions so = test_options();
        so.shm_fifo_size = bad;
        CoroutineRdmaManager m(so);
        EXPECT_FALSE(m.initialize(true, 0)) << bad;
        EXPECT_NE(m.last_error().find("shm_fifo_size"), std::string::npos) << m.last_error();
        EXPECT_EQ(m.get_state(), RdmaState::ERROR);
        char buf[8];
        auto r = start(m.tag_recv(buf, sizeof buf, 1));
        ASSERT_TRUE(r->completed_at_once());
        EXPECT_EQ(r->wait_for(1s)->result, RdmaResult::FAILURE);
    }
}

TEST(BadInput, AbsurdSizeAndReservedTagFailAtOnce) {
    Pair p;
    ASSERT_TRUE(p.connect());
    char buf[8];
    auto big = start(p.client->tag_send(buf, static_cast<std::size_t>(-5), 1));
    ASSERT_TRUE(big->completed_at_once());
    EXPECT_EQ(big->wait_for(1s)->result, RdmaResult::FAILURE);
    auto reserved = start(p.client->tag_send(buf, 8, 0xB75FC0DE00000001ull));
    ASSERT_TRUE(reserved->completed_at_once());
    EXPECT_EQ(reserved->wait_for(1s)->result, RdmaResult::FAILURE);
    EXPECT_TRUE(p.client->is_connected());
}
