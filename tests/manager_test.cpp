// In-process tests of CoroutineRdmaManager over loopback: two managers (server and client)
// in one process. Each test pins a rule of docs/semantics.md.
#include "test_util.hpp"

#include <btsp/btsp.hpp>

#include <gtest/gtest.h>

#include <ucp/api/ucp.h>
#include <ucs/type/status.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <set>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace btsp_test;
using btsp::CoroutineRdmaManager;
using btsp::ManagerOptions;
using btsp::ProgressMode;
using btsp::RdmaOpResult;
using btsp::RdmaResult;
using btsp::RdmaState;
using btsp::RdmaTask;

constexpr auto kOpLimit = 10s;  // generous upper bound for one operation on loopback

// ---- fixture ------------------------------------------------------------------------------

/// Owns buffers (declared first, so they outlive the managers and any late completion),
/// a server and a client manager.
class ManagerTest : public ::testing::Test {
protected:
    void TearDown() override {
        // Shut the managers down while buffers and pending coroutines' targets still exist.
        for (auto& m : extra_) m.reset();
        client_.reset();
        server_.reset();
    }

    std::uint8_t* buffer(std::size_t n, std::uint8_t fill = 0) {
        buffers_.emplace_back(n, fill);
        return buffers_.back().data();
    }
    std::vector<std::uint8_t>& buffer_vec(std::vector<std::uint8_t> v) {
        buffers_.push_back(std::move(v));
        return buffers_.back();
    }

    void make_server(ManagerOptions o = test_options()) {
        server_ = std::make_unique<CoroutineRdmaManager>(std::move(o));
        ASSERT_TRUE(server_->initialize(true, 0)) << server_->last_error();
        port_ = server_->listening_port();
        ASSERT_NE(port_, 0);
    }
    void make_client(ManagerOptions o = test_options()) {
        client_ = std::make_unique<CoroutineRdmaManager>(std::move(o));
        ASSERT_TRUE(client_->initialize(false, 0)) << client_->last_error();
    }
    /// Server + client, connected; both sides see the connection.
    void connect_pair(ManagerOptions o = test_options()) {
        ASSERT_NO_FATAL_FAILURE(make_server(o));
        ASSERT_NO_FATAL_FAILURE(make_client(o));
        auto accepted = start(server_->wait_for_connection());
        const auto r = await_within(client_->connect("127.0.0.1", port_), kOpLimit);
        ASSERT_TRUE(r.has_value()) << "connect did not complete";
        ASSERT_EQ(r->result, RdmaResult::SUCCESS) << *r;
        const auto ok = accepted->wait_for(kOpLimit);
        ASSERT_TRUE(ok.has_value()) << "server never saw the connection";
        ASSERT_TRUE(*ok);
    }

    std::deque<std::vector<std::uint8_t>> buffers_;
    std::unique_ptr<CoroutineRdmaManager> server_;
    std::unique_ptr<CoroutineRdmaManager> client_;
    std::vector<std::unique_ptr<CoroutineRdmaManager>> extra_;
    std::uint16_t port_ = 0;
};

/// Receives on `in_tag` and sends the same bytes back on `out_tag` until an op fails.
RdmaTask<void> echo_loop(CoroutineRdmaManager& m, std::uint8_t* buf, std::size_t cap,
                         std::uint64_t in_tag, std::uint64_t out_tag, std::atomic<int>* echoed) {
    for (;;) {
        const RdmaOpResult r = co_await m.tag_recv(buf, cap, in_tag);
        if (!r) co_return;
        const RdmaOpResult s = co_await m.tag_send(buf, r.bytes_transferred, out_tag);
        if (!s) co_return;
        if (echoed) ++*echoed;
    }
}

/// `rounds` round trips of `size` bytes against echo_loop; "" on success, else what broke.
RdmaTask<std::string> ping_pong(CoroutineRdmaManager& m, std::size_t size, int rounds,
                                std::uint64_t out_tag, std::uint64_t in_tag) {
    std::vector<std::uint8_t> in(size);
    for (int i = 0; i < rounds; ++i) {
        auto out = pattern(size, static_cast<std::uint32_t>(i));
        const RdmaOpResult s = co_await m.tag_send(out.data(), out.size(), out_tag);
        if (!s) co_return "send " + std::to_string(i) + ": " + std::string(s.reason());
        const RdmaOpResult r = co_await m.tag_recv(in.data(), in.size(), in_tag);
        if (!r) co_return "recv " + std::to_string(i) + ": " + std::string(r.reason());
        if (r.bytes_transferred != size) co_return "recv " + std::to_string(i) + ": wrong length";
        if (r.sender_tag != in_tag) co_return "recv " + std::to_string(i) + ": wrong tag";
        if (in != out) co_return "recv " + std::to_string(i) + ": wrong data";
    }
    co_return std::string();
}

// ============================================================================================
// States and lifecycle
// ============================================================================================

TEST_F(ManagerTest, NewManagerIsIdleAndNotRunning) {
    CoroutineRdmaManager m(test_options());
    EXPECT_EQ(m.get_state(), RdmaState::IDLE);
    EXPECT_FALSE(m.is_running());
    EXPECT_FALSE(m.is_connected());
    EXPECT_EQ(m.listening_port(), 0);
    EXPECT_EQ(m.connection_count(), 0u);
    EXPECT_TRUE(m.last_error().empty());
    EXPECT_EQ(m.ucx_endpoint(), nullptr);
}

TEST_F(ManagerTest, DefaultConstructedManagerUsesOptionsFromEnvironment) {
    CoroutineRdmaManager m;
    const auto env = ManagerOptions::from_env();
    EXPECT_EQ(m.options().progress_mode, env.progress_mode);
    EXPECT_EQ(m.options().connect_timeout, env.connect_timeout);
}

TEST_F(ManagerTest, ServerInitializeListensOnEphemeralPort) {
    ASSERT_NO_FATAL_FAILURE(make_server());
    EXPECT_EQ(server_->get_state(), RdmaState::LISTENING);
    EXPECT_TRUE(server_->is_running());
    EXPECT_FALSE(server_->is_connected());
    EXPECT_NE(server_->listening_port(), 0);
    EXPECT_TRUE(server_->last_error().empty());
    EXPECT_NE(server_->ucx_context(), nullptr);
    EXPECT_NE(server_->ucx_worker(), nullptr);
}

TEST_F(ManagerTest, ClientInitializeIsIdleAndRunning) {
    ASSERT_NO_FATAL_FAILURE(make_client());
    EXPECT_EQ(client_->get_state(), RdmaState::IDLE);
    EXPECT_TRUE(client_->is_running());
    EXPECT_FALSE(client_->is_connected());
    EXPECT_EQ(client_->listening_port(), 0);
}

TEST_F(ManagerTest, ConnectMakesBothSidesConnected) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    EXPECT_EQ(client_->get_state(), RdmaState::CONNECTED);
    EXPECT_TRUE(client_->is_connected());
    EXPECT_EQ(client_->connection_count(), 1u);
    EXPECT_NE(client_->ucx_endpoint(), nullptr);
    ASSERT_TRUE(wait_until([&] { return server_->get_state() == RdmaState::CONNECTED; }, 5s))
        << server_->get_state();
    EXPECT_TRUE(server_->is_connected());
    EXPECT_EQ(server_->connection_count(), 1u);
    EXPECT_NE(server_->ucx_endpoint(), nullptr);
}

TEST_F(ManagerTest, ConnectResultReportsSuccessWithoutBytes) {
    ASSERT_NO_FATAL_FAILURE(make_server());
    ASSERT_NO_FATAL_FAILURE(make_client());
    const auto r = await_within(client_->connect("127.0.0.1", port_), kOpLimit);
    ASSERT_TRUE(r.has_value());
    EXPECT_TRUE(r->success()) << *r;
    EXPECT_TRUE(static_cast<bool>(*r));
    EXPECT_EQ(r->reason(), "success");
}

TEST_F(ManagerTest, WaitForConnectionResumesWhenClientConnectsLater) {
    ASSERT_NO_FATAL_FAILURE(make_server());
    auto waiter = start(server_->wait_for_connection());
    auto state_waiter = start(server_->wait_for_state(RdmaState::CONNECTED));
    std::this_thread::sleep_for(50ms);
    EXPECT_FALSE(waiter->ready()) << "no client yet";
    ASSERT_NO_FATAL_FAILURE(make_client());
    const auto r = await_within(client_->connect("127.0.0.1", port_), kOpLimit);
    ASSERT_TRUE(r.has_value() && r->success());
    const auto w = waiter->wait_for(kOpLimit);
    ASSERT_TRUE(w.has_value()) << "wait_for_connection never resumed";
    EXPECT_TRUE(*w);
    const auto sw = state_waiter->wait_for(kOpLimit);
    ASSERT_TRUE(sw.has_value());
    EXPECT_TRUE(*sw);
}

// State waiters registered from another thread while the base state changes, many times:
// in each round a thread keeps registering waiters for the next state until the change has
// happened, and every one must wake with true. (This does not reproduce the narrow race
// set_base_state now closes, where the only waiter checks the state just before the change
// and counts itself just after the progress thread read the count: that needs one
// ~100 ns window to straddle the change. It does exercise the waiter list from two
// threads, under TSan too.)
TEST_F(ManagerTest, StateWaitersFromAnotherThreadAllWakeOnEveryChange) {
    ASSERT_NO_FATAL_FAILURE(make_server());
    ASSERT_NO_FATAL_FAILURE(make_client());
    constexpr std::size_t kMaxWaiters = 2000;  // per change
    std::size_t total = 0;
    // Runs `act` (a connect or a disconnect) while another thread registers waiters for
    // `target`, until the server has `conns_after` connections.
    auto change = [&](RdmaState target, auto act, std::size_t conns_after, int round) {
        std::atomic<bool> stop{false};
        std::vector<std::unique_ptr<PendingState>> waiters;
        std::thread t([&] {
            while (!stop.load() && waiters.size() < kMaxWaiters) waiters.push_back(start(server_->wait_for_state(target)));
        });
        const auto r = await_within(act(), kOpLimit);
        const bool changed = wait_until([&] { return server_->connection_count() == conns_after; }, 5s);
        stop = true;
        t.join();
        ASSERT_TRUE(r.has_value() && r->success()) << target << ", round " << round;
        ASSERT_TRUE(changed) << target << ", round " << round << ": the server did not follow";
        for (std::size_t i = 0; i < waiters.size(); ++i) {
            const auto v = waiters[i]->wait_for(kOpLimit);
            ASSERT_TRUE(v.has_value()) << target << " waiter " << i << " of " << waiters.size() << " in round "
                                       << round << " slept through the change";
            EXPECT_TRUE(*v);
        }
        total += waiters.size();
    };
    constexpr int kRounds = 10;
    for (int round = 0; round < kRounds; ++round) {
        ASSERT_NO_FATAL_FAILURE(
            change(RdmaState::CONNECTED, [&] { return client_->connect("127.0.0.1", port_); }, 1, round));
        ASSERT_NO_FATAL_FAILURE(change(RdmaState::LISTENING, [&] { return client_->disconnect(); }, 0, round));
    }
    std::printf("[ waiters ] %zu waiters registered around %d state changes, all woke\n", total, 2 * kRounds);
}

TEST_F(ManagerTest, WaitForConnectionWhenAlreadyConnectedCompletesAtOnce) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    auto w = start(client_->wait_for_connection());
    EXPECT_TRUE(w->completed_at_once());
    const auto v = w->wait_for(kOpLimit);
    ASSERT_TRUE(v.has_value());
    EXPECT_TRUE(*v);
}

TEST_F(ManagerTest, WaitForStateBeforeInitializeReturnsFalse) {
    CoroutineRdmaManager m(test_options());
    const auto v = await_within(m.wait_for_connection(), 2s);
    ASSERT_TRUE(v.has_value()) << "a waiter on an uninitialised manager must not hang";
    EXPECT_FALSE(*v);
}

TEST_F(ManagerTest, StateWaiterResumesFalseOnShutdown) {
    ASSERT_NO_FATAL_FAILURE(make_server());
    auto waiter = start(server_->wait_for_connection());
    std::this_thread::sleep_for(20ms);
    ASSERT_FALSE(waiter->ready());
    server_->shutdown();
    const auto v = waiter->wait_for(2s);
    ASSERT_TRUE(v.has_value()) << "shutdown must wake every state waiter";
    EXPECT_FALSE(*v);
}

TEST_F(ManagerTest, PendingRecvMakesStateReceiving) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    std::uint8_t* buf = buffer(64);
    auto recv = start(client_->tag_recv(buf, 64, 77));
    ASSERT_TRUE(wait_until([&] { return client_->get_state() == RdmaState::RECEIVING; }, 5s))
        << "state is " << client_->get_state();
    EXPECT_TRUE(client_->is_connected()) << "RECEIVING counts as connected";
    // wait_for_state(CONNECTED) is satisfied by RECEIVING.
    const auto w = await_within(client_->wait_for_state(RdmaState::CONNECTED), 2s);
    ASSERT_TRUE(w.has_value());
    EXPECT_TRUE(*w);
    const auto w2 = await_within(client_->wait_for_state(RdmaState::RECEIVING), 2s);
    ASSERT_TRUE(w2.has_value());
    EXPECT_TRUE(*w2);

    std::uint8_t* msg = buffer(8, 0x5a);
    const auto s = await_within(server_->tag_send(msg, 8, 77), kOpLimit);
    ASSERT_TRUE(s.has_value() && s->success());
    const auto r = recv->wait_for(kOpLimit);
    ASSERT_TRUE(r.has_value());
    EXPECT_TRUE(r->success()) << *r;
    EXPECT_TRUE(wait_until([&] { return client_->get_state() == RdmaState::CONNECTED; }, 5s))
        << "state is " << client_->get_state();
}

TEST_F(ManagerTest, PendingRendezvousSendMakesStateSending) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    constexpr std::size_t kSize = 4u << 20;
    auto& data = buffer_vec(pattern(kSize, 1));
    auto send = start(client_->tag_send(data.data(), data.size(), 5));
    ASSERT_TRUE(wait_until([&] { return client_->get_state() == RdmaState::SENDING; }, 5s))
        << "state is " << client_->get_state();
    EXPECT_TRUE(client_->is_connected());
    EXPECT_FALSE(send->ready()) << "a rendezvous send completes only once the peer receives";

    // A pending receive does not change SENDING into RECEIVING.
    std::uint8_t* small = buffer(16);
    auto recv = start(client_->tag_recv(small, 16, 6));
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(client_->get_state(), RdmaState::SENDING);

    std::uint8_t* in = buffer(kSize);
    const auto r = await_within(server_->tag_recv(in, kSize, 5), kOpLimit);
    ASSERT_TRUE(r.has_value());
    ASSERT_TRUE(r->success()) << *r;
    EXPECT_EQ(r->bytes_transferred, kSize);
    EXPECT_EQ(checksum(in, kSize), checksum(data.data(), kSize));
    const auto s = send->wait_for(kOpLimit);
    ASSERT_TRUE(s.has_value());
    EXPECT_TRUE(s->success()) << *s;
    EXPECT_EQ(s->bytes_transferred, kSize);
    EXPECT_TRUE(wait_until([&] { return client_->get_state() == RdmaState::RECEIVING; }, 5s))
        << "with the send done and a recv pending: " << client_->get_state();

    std::uint8_t* one = buffer(1, 1);
    ASSERT_TRUE(await_within(server_->tag_send(one, 1, 6), kOpLimit).value_or(RdmaOpResult{}));
    ASSERT_TRUE(recv->wait_for(kOpLimit).value_or(RdmaOpResult{}));
    EXPECT_TRUE(wait_until([&] { return client_->get_state() == RdmaState::CONNECTED; }, 5s))
        << client_->get_state();
}

TEST_F(ManagerTest, StateChangesAreLoggedAtInfo) {
    std::mutex mu;
    std::vector<std::string> lines;
    const auto saved = btsp::log_level();
    btsp::set_log_sink([&](btsp::LogLevel level, std::string_view msg) {
        if (level != btsp::LogLevel::INFO) return;
        std::lock_guard<std::mutex> lock(mu);
        lines.emplace_back(msg);
    });
    btsp::set_log_level(btsp::LogLevel::INFO);
    ASSERT_NO_FATAL_FAILURE(make_client());
    client_->shutdown();
    btsp::set_log_level(saved);
    btsp::set_log_sink({});
    std::lock_guard<std::mutex> lock(mu);
    const bool found = std::any_of(lines.begin(), lines.end(), [](const std::string& l) {
        return l.find("State changed from IDLE to SHUTDOWN") != std::string::npos;
    });
    EXPECT_TRUE(found) << "expected 'State changed from IDLE to SHUTDOWN' among "
                       << lines.size() << " INFO lines";
}

TEST_F(ManagerTest, InitializeOnBusyPortFailsWithError) {
    ASSERT_NO_FATAL_FAILURE(make_server());
    const auto saved = btsp::log_level();
    btsp::set_log_level(btsp::LogLevel::OFF);  // the failure is expected
    CoroutineRdmaManager second(test_options());
    const bool ok = second.initialize(true, port_);
    btsp::set_log_level(saved);
    EXPECT_FALSE(ok);
    EXPECT_FALSE(second.last_error().empty());
    EXPECT_EQ(second.get_state(), RdmaState::ERROR);
    EXPECT_FALSE(second.is_running());
    // The unusable manager fails operations instead of hanging.
    std::uint8_t* buf = buffer(8);
    const auto r = await_within(second.tag_send(buf, 8, 1), 2s);
    ASSERT_TRUE(r.has_value());
    EXPECT_FALSE(r->success());
    // The first server is unaffected.
    EXPECT_EQ(server_->get_state(), RdmaState::LISTENING);
}

TEST_F(ManagerTest, DoubleInitializeReturnsFalseAndKeepsState) {
    ASSERT_NO_FATAL_FAILURE(make_server());
    EXPECT_FALSE(server_->initialize(true, 0));
    EXPECT_FALSE(server_->initialize(false, 0));
    EXPECT_EQ(server_->get_state(), RdmaState::LISTENING);
    EXPECT_TRUE(server_->is_running());
    ASSERT_NO_FATAL_FAILURE(make_client());
    const auto r = await_within(client_->connect("127.0.0.1", port_), kOpLimit);
    ASSERT_TRUE(r.has_value());
    EXPECT_TRUE(r->success()) << "the server still works after the refused re-initialize";
}

TEST_F(ManagerTest, InitializeAfterShutdownReturnsFalse) {
    ASSERT_NO_FATAL_FAILURE(make_client());
    client_->shutdown();
    EXPECT_FALSE(client_->initialize(false, 0));
    EXPECT_EQ(client_->get_state(), RdmaState::SHUTDOWN);
    EXPECT_FALSE(client_->is_running());
}

TEST_F(ManagerTest, ShutdownIsIdempotent) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    client_->shutdown();
    EXPECT_EQ(client_->get_state(), RdmaState::SHUTDOWN);
    EXPECT_FALSE(client_->is_running());
    EXPECT_FALSE(client_->is_connected());
    client_->shutdown();
    EXPECT_EQ(client_->get_state(), RdmaState::SHUTDOWN);
    CoroutineRdmaManager never_initialized(test_options());
    never_initialized.shutdown();
    never_initialized.shutdown();
    EXPECT_FALSE(never_initialized.is_running());
}

TEST_F(ManagerTest, ShutdownFromTwoThreadsAtOnce) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    std::thread a([&] { client_->shutdown(); });
    std::thread b([&] { client_->shutdown(); });
    a.join();
    b.join();
    EXPECT_EQ(client_->get_state(), RdmaState::SHUTDOWN);
}

// ============================================================================================
// Operations in the wrong state / bad arguments
// ============================================================================================

TEST_F(ManagerTest, OpsBeforeInitializeFailAtOnce) {
    CoroutineRdmaManager m(test_options());
    std::uint8_t* buf = buffer(16);
    auto s = start(m.tag_send(buf, 16, 1));
    auto r = start(m.tag_recv(buf, 16, 1));
    auto rm = start(m.tag_recv(buf, 16, 1, 0xff));
    for (auto* p : {s.get(), r.get(), rm.get()}) {
        EXPECT_TRUE(p->completed_at_once());
        const auto v = p->wait_for(1s);
        ASSERT_TRUE(v.has_value());
        EXPECT_EQ(v->result, RdmaResult::FAILURE) << *v;
        EXPECT_EQ(v->reason(), "manager not initialized");
        EXPECT_EQ(p->resumed_on(), std::this_thread::get_id()) << "no suspension, same thread";
    }
}

TEST_F(ManagerTest, OpsWithoutConnectionAreDisconnected) {
    ASSERT_NO_FATAL_FAILURE(make_server());
    ASSERT_NO_FATAL_FAILURE(make_client());
    std::uint8_t* buf = buffer(16);
    for (CoroutineRdmaManager* m : {client_.get(), server_.get()}) {
        auto s = start(m->tag_send(buf, 16, 1));
        auto r = start(m->tag_recv(buf, 16, 1));
        for (auto* p : {s.get(), r.get()}) {
            const auto v = p->wait_for(1s);
            ASSERT_TRUE(v.has_value());
            EXPECT_EQ(v->result, RdmaResult::DISCONNECTED) << *v;
            EXPECT_EQ(v->reason(), "not connected");
        }
    }
}

TEST_F(ManagerTest, OpsWithoutConnectionCompleteWithoutSuspending) {
    // docs/semantics.md: "tag_send/tag_recv without a live connection: DISCONNECTED, at once".
    ASSERT_NO_FATAL_FAILURE(make_client());
    std::uint8_t* buf = buffer(16);
    auto s = start(client_->tag_send(buf, 16, 1));
    auto r = start(client_->tag_recv(buf, 16, 1));
    for (auto* p : {s.get(), r.get()}) {
        ASSERT_TRUE(p->wait_for(1s).has_value());
        EXPECT_TRUE(p->completed_at_once()) << "completed later, on another thread";
        EXPECT_EQ(p->resumed_on(), std::this_thread::get_id());
    }
}

TEST_F(ManagerTest, OpsAfterShutdownAreDisconnectedAtOnce) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    client_->shutdown();
    std::uint8_t* buf = buffer(16);
    auto s = start(client_->tag_send(buf, 16, 1));
    auto r = start(client_->tag_recv(buf, 16, 1));
    auto c = start(client_->connect("127.0.0.1", port_));
    auto l = start(client_->listen(0));
    for (auto* p : {s.get(), r.get(), c.get(), l.get()}) {
        const auto v = p->wait_for(1s);
        ASSERT_TRUE(v.has_value());
        EXPECT_TRUE(p->completed_at_once());
        EXPECT_EQ(v->result, RdmaResult::DISCONNECTED) << *v;
        EXPECT_EQ(v->reason(), "manager shut down");
    }
    const auto w = await_within(client_->wait_for_connection(), 1s);
    ASSERT_TRUE(w.has_value());
    EXPECT_FALSE(*w);
}

TEST_F(ManagerTest, NullBufferWithSizeFails) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    auto s = start(client_->tag_send(nullptr, 16, 1));
    auto r = start(client_->tag_recv(nullptr, 16, 1));
    for (auto* p : {s.get(), r.get()}) {
        const auto v = p->wait_for(1s);
        ASSERT_TRUE(v.has_value());
        EXPECT_TRUE(p->completed_at_once());
        EXPECT_EQ(v->result, RdmaResult::FAILURE) << *v;
        EXPECT_EQ(v->reason(), "null buffer");
    }
    // The connection is still fine.
    EXPECT_TRUE(client_->is_connected());
}

TEST_F(ManagerTest, ZeroLengthMessageIsDelivered) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    std::uint8_t* buf = buffer(8, 0xee);
    auto recv = start(server_->tag_recv(buf, 8, 9));
    const auto s = await_within(client_->tag_send(nullptr, 0, 9), kOpLimit);
    ASSERT_TRUE(s.has_value());
    EXPECT_TRUE(s->success()) << *s;
    EXPECT_EQ(s->bytes_transferred, 0u);
    const auto r = recv->wait_for(kOpLimit);
    ASSERT_TRUE(r.has_value());
    EXPECT_TRUE(r->success()) << *r;
    EXPECT_EQ(r->bytes_transferred, 0u);
    EXPECT_EQ(r->sender_tag, 9u);
    EXPECT_EQ(buf[0], 0xee) << "nothing written";
}

TEST_F(ManagerTest, ConnectArgumentErrorsFailAtOnce) {
    ASSERT_NO_FATAL_FAILURE(make_server());
    ASSERT_NO_FATAL_FAILURE(make_client());
    auto empty = start(client_->connect("", port_));
    auto zero = start(client_->connect("127.0.0.1", 0));
    for (auto* p : {empty.get(), zero.get()}) {
        const auto v = p->wait_for(1s);
        ASSERT_TRUE(v.has_value());
        EXPECT_TRUE(p->completed_at_once());
        EXPECT_EQ(v->result, RdmaResult::FAILURE) << *v;
    }
    EXPECT_EQ(client_->get_state(), RdmaState::IDLE);
}

TEST_F(ManagerTest, ConnectWhenAlreadyConnectedFails) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    auto again = start(client_->connect("127.0.0.1", port_));
    const auto v = again->wait_for(2s);
    ASSERT_TRUE(v.has_value());
    EXPECT_EQ(v->result, RdmaResult::FAILURE) << *v;
    EXPECT_TRUE(client_->is_connected()) << "the existing connection is kept";
    EXPECT_EQ(client_->connection_count(), 1u);
}

// ============================================================================================
// connect failures
// ============================================================================================

TEST_F(ManagerTest, ConnectToPortWithoutListenerFailsWithinOneSecond) {
    ASSERT_NO_FATAL_FAILURE(make_client());
    const std::uint16_t port = free_tcp_port();
    ASSERT_NE(port, 0);
    const auto t0 = Clock::now();
    const auto r = await_within(client_->connect("127.0.0.1", port), 5s);
    const double ms = ms_since(t0);
    ASSERT_TRUE(r.has_value()) << "connect to a dead port never completed";
    EXPECT_NE(r->result, RdmaResult::SUCCESS);
    EXPECT_EQ(r->result, RdmaResult::DISCONNECTED) << *r;
    EXPECT_LT(ms, 1000.0);
    EXPECT_EQ(client_->get_state(), RdmaState::IDLE);
    EXPECT_FALSE(client_->is_connected());
}

TEST_F(ManagerTest, ConnectWithNoAnswerTimesOut) {
    ManagerOptions o = test_options();
    o.connect_timeout = 500ms;
    ASSERT_NO_FATAL_FAILURE(make_client(o));
    SilentListener silent;
    ASSERT_NE(silent.port(), 0);
    const auto t0 = Clock::now();
    auto c = start(client_->connect("127.0.0.1", silent.port()));
    EXPECT_TRUE(wait_until([&] { return client_->get_state() == RdmaState::CONNECTING; }, 400ms))
        << "state while connecting: " << client_->get_state();
    const auto r = c->wait_for(5s);
    const double ms = ms_since(t0);
    ASSERT_TRUE(r.has_value()) << "connect without an answer never completed";
    EXPECT_EQ(r->result, RdmaResult::TIMEOUT) << *r;
    EXPECT_GE(ms, 400.0);
    EXPECT_LT(ms, 2000.0);
    EXPECT_TRUE(wait_until([&] { return client_->get_state() == RdmaState::IDLE; }, 1s))
        << client_->get_state();
}

TEST_F(ManagerTest, ShutdownDuringConnectCompletesItDisconnected) {
    ManagerOptions o = test_options();
    o.connect_timeout = 10s;
    ASSERT_NO_FATAL_FAILURE(make_client(o));
    SilentListener silent;
    auto c = start(client_->connect("127.0.0.1", silent.port()));
    std::this_thread::sleep_for(50ms);
    ASSERT_FALSE(c->ready());
    const auto t0 = Clock::now();
    client_->shutdown();
    EXPECT_LT(ms_since(t0), 2000.0);
    const auto r = c->wait_for(2s);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->result, RdmaResult::DISCONNECTED) << *r;
}

TEST_F(ManagerTest, ClientReconnectsAfterFailedConnect) {
    ASSERT_NO_FATAL_FAILURE(make_client());
    const auto bad = await_within(client_->connect("127.0.0.1", free_tcp_port()), 5s);
    ASSERT_TRUE(bad.has_value());
    ASSERT_FALSE(bad->success());
    ASSERT_NO_FATAL_FAILURE(make_server());
    const auto good = await_within(client_->connect("127.0.0.1", port_), kOpLimit);
    ASSERT_TRUE(good.has_value());
    EXPECT_TRUE(good->success()) << *good;
    EXPECT_TRUE(client_->is_connected());
}

// Disabled: UCX 1.13.1 itself cannot do this here. A plain UCP server listening on ::1
// (tests/peer/plain_ucp_peer server 2 ::1) fails ucp_ep_create(conn_request) for an ::1
// client ("connect(dest_addr=::1:<port>) failed: Connection refused" from UCX's tcp
// transport, client sees UCS_ERR_REJECTED) and then aborts in ucp_worker_destroy with
// "free(): invalid pointer" — the same as btsp does. Run with
// --gtest_also_run_disabled_tests once UCX is fixed.
TEST_F(ManagerTest, DISABLED_ServerListeningOnIpv6LoopbackAcceptsIpv6Client) {
    if (!ipv6_loopback_available()) GTEST_SKIP() << "no IPv6 loopback here";
    ManagerOptions o = test_options();
    o.listen_address = "::1";
    ASSERT_NO_FATAL_FAILURE(make_server(o));
    ASSERT_NO_FATAL_FAILURE(make_client());
    const auto r = await_within(client_->connect("::1", port_), kOpLimit);
    ASSERT_TRUE(r.has_value());
    ASSERT_TRUE(r->success()) << *r;
    std::uint8_t* out = buffer(5, 0x61);
    std::uint8_t* in = buffer(5);
    auto recv = start(server_->tag_recv(in, 5, 1));
    ASSERT_TRUE(await_within(client_->tag_send(out, 5, 1), kOpLimit).value_or(RdmaOpResult{}));
    const auto got = recv->wait_for(kOpLimit);
    ASSERT_TRUE(got.has_value() && got->success());
    EXPECT_EQ(std::memcmp(in, out, 5), 0);
}

// ============================================================================================
// Data transfer
// ============================================================================================

TEST_F(ManagerTest, SendReportsSizeAndRecvReportsRealLength) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    std::uint8_t* in = buffer(100, 0);
    auto& out = buffer_vec(pattern(10, 3));
    auto recv = start(server_->tag_recv(in, 100, 42));
    const auto s = await_within(client_->tag_send(out.data(), 10, 42), kOpLimit);
    ASSERT_TRUE(s.has_value());
    ASSERT_TRUE(s->success()) << *s;
    EXPECT_EQ(s->bytes_transferred, 10u);
    const auto r = recv->wait_for(kOpLimit);
    ASSERT_TRUE(r.has_value());
    ASSERT_TRUE(r->success()) << *r;
    EXPECT_EQ(r->bytes_transferred, 10u) << "the real length, not the buffer size";
    EXPECT_EQ(r->sender_tag, 42u);
    EXPECT_EQ(std::memcmp(in, out.data(), 10), 0);
    EXPECT_EQ(in[10], 0) << "nothing written past the message";
}

TEST_F(ManagerTest, RecvOfAlreadyArrivedMessageReportsRealLength) {
    // The message waits in UCX's unexpected queue before the receive is posted: the
    // receive then completes at once inside UCX, and must still report length and tag.
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    auto& out = buffer_vec(pattern(10, 4));
    ASSERT_TRUE(await_within(client_->tag_send(out.data(), 10, 43), kOpLimit)
                    .value_or(RdmaOpResult{}));
    std::this_thread::sleep_for(100ms);  // let it arrive
    std::uint8_t* in = buffer(100, 0);
    const auto r = await_within(server_->tag_recv(in, 100, 43), kOpLimit);
    ASSERT_TRUE(r.has_value());
    ASSERT_TRUE(r->success()) << *r;
    EXPECT_EQ(r->bytes_transferred, 10u);
    EXPECT_EQ(r->sender_tag, 43u);
    EXPECT_EQ(std::memcmp(in, out.data(), 10), 0);
}

TEST_F(ManagerTest, OutOfOrderTagsAreMatchedByTag) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    auto& m300 = buffer_vec(pattern(32, 300));
    auto& m100 = buffer_vec(pattern(48, 100));
    ASSERT_TRUE(await_within(client_->tag_send(m300.data(), m300.size(), 300), kOpLimit)
                    .value_or(RdmaOpResult{}));
    ASSERT_TRUE(await_within(client_->tag_send(m100.data(), m100.size(), 100), kOpLimit)
                    .value_or(RdmaOpResult{}));
    std::uint8_t* in100 = buffer(64);
    std::uint8_t* in300 = buffer(64);
    const auto r100 = await_within(server_->tag_recv(in100, 64, 100), kOpLimit);
    const auto r300 = await_within(server_->tag_recv(in300, 64, 300), kOpLimit);
    ASSERT_TRUE(r100.has_value() && r300.has_value());
    ASSERT_TRUE(r100->success()) << *r100;
    ASSERT_TRUE(r300->success()) << *r300;
    EXPECT_EQ(r100->bytes_transferred, 48u);
    EXPECT_EQ(r300->bytes_transferred, 32u);
    EXPECT_EQ(r100->sender_tag, 100u);
    EXPECT_EQ(r300->sender_tag, 300u);
    EXPECT_EQ(std::memcmp(in100, m100.data(), 48), 0);
    EXPECT_EQ(std::memcmp(in300, m300.data(), 32), 0);
}

TEST_F(ManagerTest, MaskedRecvMatchesMaskedTagAndReportsFullTag) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    std::uint8_t* in = buffer(16);
    auto recv = start(server_->tag_recv(in, 16, 0x1200, 0xff00));
    auto& other = buffer_vec(pattern(4, 1));
    auto& match = buffer_vec(pattern(8, 2));
    ASSERT_TRUE(await_within(client_->tag_send(other.data(), 4, 0x1300), kOpLimit)
                    .value_or(RdmaOpResult{}));
    ASSERT_TRUE(await_within(client_->tag_send(match.data(), 8, 0x1234), kOpLimit)
                    .value_or(RdmaOpResult{}));
    const auto r = recv->wait_for(kOpLimit);
    ASSERT_TRUE(r.has_value());
    ASSERT_TRUE(r->success()) << *r;
    EXPECT_EQ(r->sender_tag, 0x1234u);
    EXPECT_EQ(r->bytes_transferred, 8u);
    EXPECT_EQ(std::memcmp(in, match.data(), 8), 0);
    // The non-matching message is still there for its own tag.
    std::uint8_t* in2 = buffer(16);
    const auto r2 = await_within(server_->tag_recv(in2, 16, 0x1300), kOpLimit);
    ASSERT_TRUE(r2.has_value() && r2->success());
    EXPECT_EQ(r2->bytes_transferred, 4u);
}

TEST_F(ManagerTest, TruncatedMessageFailsAndNextMessageStillArrives) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    auto& big = buffer_vec(pattern(100, 7));
    auto& next = buffer_vec(pattern(20, 8));
    std::uint8_t* small = buffer(10);
    auto recv = start(server_->tag_recv(small, 10, 11));
    const auto s = await_within(client_->tag_send(big.data(), big.size(), 11), kOpLimit);
    ASSERT_TRUE(s.has_value());
    EXPECT_TRUE(s->success()) << "the sender does not see the receiver's truncation: " << *s;
    const auto r = recv->wait_for(kOpLimit);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->result, RdmaResult::FAILURE) << *r;
    EXPECT_EQ(r->status, UCS_ERR_MESSAGE_TRUNCATED) << *r;
    EXPECT_FALSE(r->reason().empty());

    EXPECT_TRUE(server_->is_connected()) << "truncation keeps the connection";
    std::uint8_t* in = buffer(64);
    auto recv2 = start(server_->tag_recv(in, 64, 12));
    ASSERT_TRUE(await_within(client_->tag_send(next.data(), next.size(), 12), kOpLimit)
                    .value_or(RdmaOpResult{}));
    const auto r2 = recv2->wait_for(kOpLimit);
    ASSERT_TRUE(r2.has_value());
    ASSERT_TRUE(r2->success()) << *r2;
    EXPECT_EQ(r2->bytes_transferred, 20u);
    EXPECT_EQ(std::memcmp(in, next.data(), 20), 0);
}

TEST_F(ManagerTest, TruncatedRendezvousMessageFailsAndConnectionSurvives) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    constexpr std::size_t kBig = 256u << 10;
    auto& big = buffer_vec(pattern(kBig, 9));
    std::uint8_t* small = buffer(1024);
    auto recv = start(server_->tag_recv(small, 1024, 13));
    auto send = start(client_->tag_send(big.data(), big.size(), 13));
    const auto r = recv->wait_for(kOpLimit);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->result, RdmaResult::FAILURE) << *r;
    EXPECT_EQ(r->status, UCS_ERR_MESSAGE_TRUNCATED) << *r;
    const auto s = send->wait_for(kOpLimit);
    ASSERT_TRUE(s.has_value()) << "the truncated rendezvous send must complete";
    // Then a normal exchange still works.
    auto& next = buffer_vec(pattern(64, 10));
    std::uint8_t* in = buffer(64);
    auto recv2 = start(server_->tag_recv(in, 64, 14));
    ASSERT_TRUE(await_within(client_->tag_send(next.data(), 64, 14), kOpLimit)
                    .value_or(RdmaOpResult{}));
    const auto r2 = recv2->wait_for(kOpLimit);
    ASSERT_TRUE(r2.has_value() && r2->success());
    EXPECT_EQ(std::memcmp(in, next.data(), 64), 0);
}

// ---- sizes across eager / rendezvous -------------------------------------------------------

class ManagerSizeTest : public ManagerTest, public ::testing::WithParamInterface<std::size_t> {};

TEST_P(ManagerSizeTest, MessageArrivesIntactBothWays) {
    const std::size_t size = GetParam();
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    auto& out = buffer_vec(pattern(size, static_cast<std::uint32_t>(size)));
    std::uint8_t* in = buffer(size);
    auto recv = start(server_->tag_recv(in, size, 21));
    const auto s = await_within(client_->tag_send(out.data(), size, 21), kOpLimit);
    ASSERT_TRUE(s.has_value());
    ASSERT_TRUE(s->success()) << *s;
    EXPECT_EQ(s->bytes_transferred, size);
    const auto r = recv->wait_for(kOpLimit);
    ASSERT_TRUE(r.has_value());
    ASSERT_TRUE(r->success()) << *r;
    EXPECT_EQ(r->bytes_transferred, size);
    EXPECT_EQ(checksum(in, size), checksum(out.data(), size));

    // Back from the server (recv posted after the send: unexpected-queue path).
    auto& back = buffer_vec(pattern(size, static_cast<std::uint32_t>(size) + 1));
    std::uint8_t* in2 = buffer(size);
    auto send2 = start(server_->tag_send(back.data(), size, 22));
    const auto r2 = await_within(client_->tag_recv(in2, size, 22), kOpLimit);
    ASSERT_TRUE(r2.has_value());
    ASSERT_TRUE(r2->success()) << *r2;
    EXPECT_EQ(r2->bytes_transferred, size);
    EXPECT_EQ(checksum(in2, size), checksum(back.data(), size));
    const auto s2 = send2->wait_for(kOpLimit);
    ASSERT_TRUE(s2.has_value() && s2->success());
}

INSTANTIATE_TEST_SUITE_P(EagerAndRendezvous, ManagerSizeTest,
                         ::testing::Values(std::size_t{8}, std::size_t{8} << 10,
                                           std::size_t{64} << 10, std::size_t{4} << 20),
                         [](const ::testing::TestParamInfo<std::size_t>& i) {
                             return std::to_string(i.param) + "B";
                         });

// ---- concurrency -----------------------------------------------------------------------------

TEST_F(ManagerTest, TwoHundredConcurrentSendsAndRecvsFromFourThreads) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    constexpr int kThreads = 4;
    constexpr int kPerThread = 50;
    constexpr int kTotal = kThreads * kPerThread;
    constexpr std::size_t kCap = 64;
    std::uint8_t* in = buffer(kTotal * kCap);
    std::vector<std::vector<std::uint8_t>*> payloads;
    for (int i = 0; i < kTotal; ++i)
        payloads.push_back(&buffer_vec(pattern(8 + static_cast<std::size_t>(i % 50),
                                               static_cast<std::uint32_t>(i))));

    std::vector<std::unique_ptr<PendingOp>> recvs(kTotal);
    std::vector<std::unique_ptr<PendingOp>> sends(kTotal);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (int k = 0; k < kPerThread; ++k) {
                const int i = t * kPerThread + k;
                recvs[static_cast<std::size_t>(i)] = start(server_->tag_recv(
                    in + static_cast<std::size_t>(i) * kCap, kCap, 1000 + static_cast<std::uint64_t>(i)));
            }
        });
    }
    for (auto& th : threads) th.join();
    threads.clear();
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (int k = 0; k < kPerThread; ++k) {
                const int i = t * kPerThread + k;
                auto* p = payloads[static_cast<std::size_t>(i)];
                sends[static_cast<std::size_t>(i)] = start(
                    client_->tag_send(p->data(), p->size(), 1000 + static_cast<std::uint64_t>(i)));
            }
        });
    }
    for (auto& th : threads) th.join();

    const auto deadline = Clock::now() + 20s;
    int ok_recv = 0;
    int ok_send = 0;
    for (int i = 0; i < kTotal; ++i) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        const auto s = sends[static_cast<std::size_t>(i)]->wait_for(std::max(left, 1ms));
        if (s && s->success()) ++ok_send;
        const auto r = recvs[static_cast<std::size_t>(i)]->wait_for(std::max(left, 1ms));
        ASSERT_TRUE(r.has_value()) << "recv " << i << " never completed";
        ASSERT_TRUE(r->success()) << "recv " << i << ": " << *r;
        auto* p = payloads[static_cast<std::size_t>(i)];
        EXPECT_EQ(r->bytes_transferred, p->size()) << i;
        EXPECT_EQ(r->sender_tag, 1000u + static_cast<std::uint64_t>(i));
        EXPECT_EQ(std::memcmp(in + static_cast<std::size_t>(i) * kCap, p->data(), p->size()), 0) << i;
        ++ok_recv;
    }
    EXPECT_EQ(ok_send, kTotal);
    EXPECT_EQ(ok_recv, kTotal);
}

TEST_F(ManagerTest, ManyMessagesOnOneTagAreAllDelivered) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    constexpr int kCount = 300;
    std::uint8_t* in = buffer(kCount * sizeof(int));
    std::uint8_t* out = buffer(kCount * sizeof(int));
    for (int i = 0; i < kCount; ++i) std::memcpy(out + static_cast<std::size_t>(i) * sizeof(int), &i, sizeof i);
    std::vector<std::unique_ptr<PendingOp>> recvs;
    for (int i = 0; i < kCount; ++i)
        recvs.push_back(start(server_->tag_recv(in + static_cast<std::size_t>(i) * sizeof(int),
                                                sizeof(int), 5)));
    std::vector<std::unique_ptr<PendingOp>> sends;
    for (int i = 0; i < kCount; ++i)
        sends.push_back(start(
            client_->tag_send(out + static_cast<std::size_t>(i) * sizeof(int), sizeof(int), 5)));
    std::set<int> seen;
    for (int i = 0; i < kCount; ++i) {
        const auto r = recvs[static_cast<std::size_t>(i)]->wait_for(kOpLimit);
        ASSERT_TRUE(r.has_value() && r->success()) << i;
        int v = -1;
        std::memcpy(&v, in + static_cast<std::size_t>(i) * sizeof(int), sizeof v);
        seen.insert(v);
        const auto s = sends[static_cast<std::size_t>(i)]->wait_for(kOpLimit);
        ASSERT_TRUE(s.has_value() && s->success()) << i;
    }
    EXPECT_EQ(seen.size(), static_cast<std::size_t>(kCount)) << "every message exactly once";
    EXPECT_EQ(*seen.begin(), 0);
    EXPECT_EQ(*seen.rbegin(), kCount - 1);
}

TEST_F(ManagerTest, SuspendedOperationResumesOnProgressThread) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    std::uint8_t* in = buffer(8);
    auto recv = start(client_->tag_recv(in, 8, 31));
    std::this_thread::sleep_for(20ms);
    ASSERT_FALSE(recv->ready());
    std::uint8_t* out = buffer(8, 1);
    ASSERT_TRUE(await_within(server_->tag_send(out, 8, 31), kOpLimit).value_or(RdmaOpResult{}));
    ASSERT_TRUE(recv->wait_for(kOpLimit).value_or(RdmaOpResult{}));
    EXPECT_NE(recv->resumed_on(), std::this_thread::get_id());
}

// ============================================================================================
// Peer going away, shutdown with operations in flight
// ============================================================================================

TEST_F(ManagerTest, PeerShutdownCompletesPendingRecvDisconnectedAndClientBecomesIdle) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    std::uint8_t* in = buffer(64);
    auto recv = start(client_->tag_recv(in, 64, 50));
    std::this_thread::sleep_for(20ms);
    ASSERT_FALSE(recv->ready());
    const auto t0 = Clock::now();
    server_->shutdown();
    const auto r = recv->wait_for(5s);
    ASSERT_TRUE(r.has_value()) << "pending recv never completed after the peer left";
    EXPECT_EQ(r->result, RdmaResult::DISCONNECTED) << *r;
    EXPECT_LT(ms_since(t0), 1000.0);
    EXPECT_TRUE(wait_until([&] { return !client_->is_connected(); }, 2s));
    EXPECT_TRUE(wait_until([&] { return client_->get_state() == RdmaState::IDLE; }, 2s))
        << client_->get_state();
    EXPECT_EQ(client_->connection_count(), 0u);
}

// Receives use request memory from the engine's pool. One that is matched to a large
// message still being transferred when its manager shuts down cannot be cancelled in UCX;
// shutdown ends it (DISCONNECTED) and UCX may still complete it while the worker is
// destroyed: it must complete exactly once, and its buffer must not be written after.
TEST_F(ManagerTest, ShutdownDuringRendezvousReceiveCompletesItOnce) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    constexpr std::size_t kSize = 64u << 20;
    std::uint8_t* in = buffer(kSize);
    auto recv = start(client_->tag_recv(in, kSize, 52));
    auto& big = buffer_vec(pattern(kSize, 12));
    auto send = start(server_->tag_send(big.data(), big.size(), 52));
    std::this_thread::sleep_for(6ms);  // often in the middle of the transfer (64 MiB take ~8 ms here)
    client_->shutdown();
    const auto r = recv->wait_for(5s);
    ASSERT_TRUE(r.has_value()) << "receive not completed by shutdown";
    EXPECT_TRUE(r->result == RdmaResult::SUCCESS || r->result == RdmaResult::DISCONNECTED) << *r;
    std::printf("[ info ] receive ended: %s\n", std::string(r->reason()).c_str());
    if (r->success()) {
        EXPECT_EQ(r->bytes_transferred, kSize);
    }
    const auto s = send->wait_for(5s);
    ASSERT_TRUE(s.has_value()) << "the server's send never completed";
}

TEST_F(ManagerTest, PeerShutdownCompletesPendingRendezvousSendDisconnected) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    auto& big = buffer_vec(pattern(4u << 20, 11));
    auto send = start(client_->tag_send(big.data(), big.size(), 51));
    std::this_thread::sleep_for(50ms);
    ASSERT_FALSE(send->ready()) << "no receiver: the rendezvous send waits";
    const auto t0 = Clock::now();
    server_->shutdown();
    const auto s = send->wait_for(5s);
    ASSERT_TRUE(s.has_value()) << "pending send never completed after the peer left";
    EXPECT_EQ(s->result, RdmaResult::DISCONNECTED) << *s;
    EXPECT_LT(ms_since(t0), 1000.0);
    EXPECT_TRUE(wait_until([&] { return client_->get_state() == RdmaState::IDLE; }, 2s))
        << client_->get_state();
}

TEST_F(ManagerTest, ClientShutdownReturnsServerToListeningAndItAcceptsAgain) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    std::uint8_t* in = buffer(64);
    auto recv = start(server_->tag_recv(in, 64, 60));
    std::this_thread::sleep_for(20ms);
    client_->shutdown();
    const auto r = recv->wait_for(5s);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->result, RdmaResult::DISCONNECTED) << *r;
    EXPECT_TRUE(wait_until([&] { return server_->get_state() == RdmaState::LISTENING; }, 2s))
        << server_->get_state();
    EXPECT_FALSE(server_->is_connected());
    EXPECT_EQ(server_->connection_count(), 0u);

    // A new client is accepted and works.
    auto accepted = start(server_->wait_for_connection());
    ASSERT_NO_FATAL_FAILURE(make_client());
    const auto c = await_within(client_->connect("127.0.0.1", port_), kOpLimit);
    ASSERT_TRUE(c.has_value() && c->success());
    ASSERT_TRUE(accepted->wait_for(kOpLimit).value_or(false));
    auto& msg = buffer_vec(pattern(24, 12));
    auto recv2 = start(server_->tag_recv(in, 64, 61));
    ASSERT_TRUE(await_within(client_->tag_send(msg.data(), 24, 61), kOpLimit).value_or(RdmaOpResult{}));
    const auto r2 = recv2->wait_for(kOpLimit);
    ASSERT_TRUE(r2.has_value() && r2->success());
    EXPECT_EQ(std::memcmp(in, msg.data(), 24), 0);
}

TEST_F(ManagerTest, ClientReconnectsAfterServerWentAway) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    server_->shutdown();
    ASSERT_TRUE(wait_until([&] { return client_->get_state() == RdmaState::IDLE; }, 3s))
        << client_->get_state();
    server_.reset();
    ASSERT_NO_FATAL_FAILURE(make_server());
    const auto c = await_within(client_->connect("127.0.0.1", port_), kOpLimit);
    ASSERT_TRUE(c.has_value());
    EXPECT_TRUE(c->success()) << *c;
    EXPECT_TRUE(client_->is_connected());
}

RdmaTask<RdmaOpResult> accept_then_recv(CoroutineRdmaManager& m, std::uint8_t* buf, std::size_t n) {
    // (never `if (!co_await ...)`: g++ 12 miscompiles co_await inside a condition)
    const bool connected = co_await m.wait_for_connection();
    if (!connected) co_return RdmaOpResult{};
    const RdmaOpResult r = co_await m.tag_recv(buf, n, 42);  // posted on the progress thread at once
    co_return r;
}

TEST_F(ManagerTest, MessageSentRightAfterConnectIsDeliveredThoughClientShutsDownAtOnce) {
    // The spec's quick start: the client connects, sends one eager message and shuts down
    // at once; the server (waiting in wait_for_connection, then tag_recv) must get it.
    // A connect that reports SUCCESS before the server has accepted the connection loses
    // the message (and the server never sees a connection). Repeated: it is a race.
    ASSERT_NO_FATAL_FAILURE(make_server());
    std::uint8_t* in = buffer(64);
    auto& msg = buffer_vec(pattern(16, 42));
    for (int i = 0; i < 40; ++i) {
        std::fill(in, in + 64, std::uint8_t{0});
        auto srv = start(accept_then_recv(*server_, in, 64));
        {
            CoroutineRdmaManager client(test_options());
            ASSERT_TRUE(client.initialize(false, 0));
            const auto c = await_within(client.connect("127.0.0.1", port_), kOpLimit);
            ASSERT_TRUE(c.has_value() && c->success()) << "iteration " << i;
            const auto s = await_within(client.tag_send(msg.data(), msg.size(), 42), kOpLimit);
            ASSERT_TRUE(s.has_value() && s->success()) << "iteration " << i;
            client.shutdown();
        }
        const auto r = srv->wait_for(5s);
        ASSERT_TRUE(r.has_value()) << "iteration " << i
                                   << ": the server never saw the connection (state "
                                   << server_->get_state() << ")";
        ASSERT_TRUE(r->success()) << "iteration " << i << ": " << *r;
        EXPECT_EQ(r->bytes_transferred, msg.size());
        EXPECT_EQ(std::memcmp(in, msg.data(), msg.size()), 0);
        ASSERT_TRUE(wait_until([&] { return server_->get_state() == RdmaState::LISTENING; }, 3s))
            << server_->get_state();
    }
}

TEST_F(ManagerTest, ShutdownWithHundredPendingRecvsCompletesAllDisconnectedQuickly) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    constexpr int kCount = 100;
    std::uint8_t* in = buffer(kCount * 16);
    std::vector<std::unique_ptr<PendingOp>> recvs;
    for (int i = 0; i < kCount; ++i)
        recvs.push_back(start(client_->tag_recv(in + i * 16, 16, 700 + static_cast<std::uint64_t>(i))));
    auto& big = buffer_vec(pattern(4u << 20, 13));
    auto send = start(client_->tag_send(big.data(), big.size(), 799));
    auto waiter = start(client_->wait_for_state(RdmaState::SHUTDOWN));
    std::this_thread::sleep_for(50ms);
    const auto t0 = Clock::now();
    client_->shutdown();
    const double ms = ms_since(t0);
    EXPECT_LT(ms, 1500.0) << "shutdown must not wait for the peer";
    for (int i = 0; i < kCount; ++i) {
        const auto r = recvs[static_cast<std::size_t>(i)]->wait_for(2s);
        ASSERT_TRUE(r.has_value()) << "recv " << i << " not completed by shutdown";
        EXPECT_EQ(r->result, RdmaResult::DISCONNECTED) << *r;
        EXPECT_EQ(r->reason(), "manager shut down");
    }
    const auto s = send->wait_for(2s);
    ASSERT_TRUE(s.has_value()) << "pending send not completed by shutdown";
    EXPECT_EQ(s->result, RdmaResult::DISCONNECTED) << *s;
    const auto w = waiter->wait_for(2s);
    ASSERT_TRUE(w.has_value());
    EXPECT_EQ(client_->get_state(), RdmaState::SHUTDOWN);
    // And the peer notices: the server goes back to listening.
    EXPECT_TRUE(wait_until([&] { return server_->get_state() == RdmaState::LISTENING; }, 3s))
        << server_->get_state();
}

TEST_F(ManagerTest, DestructorWithOpsInFlightCompletesThem) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    std::uint8_t* in = buffer(64);
    auto recv = start(client_->tag_recv(in, 64, 1));
    std::this_thread::sleep_for(20ms);
    const auto t0 = Clock::now();
    client_.reset();
    EXPECT_LT(ms_since(t0), 1500.0);
    const auto r = recv->wait_for(2s);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->result, RdmaResult::DISCONNECTED) << *r;
}

// ---- shutdown / destruction from inside the manager's own coroutine -------------------------

RdmaTask<int> recv_then_shutdown(CoroutineRdmaManager& m, std::uint8_t* buf) {
    const RdmaOpResult r = co_await m.tag_recv(buf, 8, 70);
    m.shutdown();  // on the manager's own progress thread
    co_return r.success() ? 1 : -1;
}

TEST_F(ManagerTest, ShutdownFromInsideOwnCoroutine) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    std::uint8_t* in = buffer(8);
    auto task = start(recv_then_shutdown(*client_, in));
    std::this_thread::sleep_for(20ms);
    std::uint8_t* out = buffer(8, 3);
    ASSERT_TRUE(await_within(server_->tag_send(out, 8, 70), kOpLimit).value_or(RdmaOpResult{}));
    const auto v = task->wait_for(5s);
    ASSERT_TRUE(v.has_value()) << "shutdown inside the coroutine deadlocked";
    EXPECT_EQ(*v, 1);
    EXPECT_NE(task->resumed_on(), std::this_thread::get_id());
    EXPECT_EQ(client_->get_state(), RdmaState::SHUTDOWN);
    EXPECT_FALSE(client_->is_running());
}

RdmaTask<int> recv_then_destroy(std::unique_ptr<CoroutineRdmaManager>* owner, std::uint8_t* buf) {
    const RdmaOpResult r = co_await (*owner)->tag_recv(buf, 8, 71);
    owner->reset();  // destroys the manager on its own progress thread
    co_return r.success() ? 1 : -1;
}

TEST_F(ManagerTest, DestroyManagerFromInsideOwnCoroutine) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    std::uint8_t* in = buffer(8);
    auto holder = std::make_unique<std::unique_ptr<CoroutineRdmaManager>>(std::move(client_));
    auto task = start(recv_then_destroy(holder.get(), in));
    std::this_thread::sleep_for(20ms);
    std::uint8_t* out = buffer(8, 4);
    ASSERT_TRUE(await_within(server_->tag_send(out, 8, 71), kOpLimit).value_or(RdmaOpResult{}));
    const auto v = task->wait_for(5s);
    ASSERT_TRUE(v.has_value()) << "destroying the manager inside its coroutine deadlocked";
    EXPECT_EQ(*v, 1);
    EXPECT_EQ(*holder, nullptr);
    EXPECT_TRUE(wait_until([&] { return server_->get_state() == RdmaState::LISTENING; }, 3s))
        << server_->get_state();
}

RdmaTask<int> manager_local_to_coroutine(std::uint16_t port, std::uint8_t* buf) {
    // The spec's pattern: the manager lives in the coroutine frame, so the coroutine's
    // end (on that manager's progress thread) destroys it.
    CoroutineRdmaManager manager(test_options());
    if (!manager.initialize(false, 0)) co_return -1;
    const RdmaOpResult c = co_await manager.connect("127.0.0.1", port);
    if (!c) co_return -2;
    const RdmaOpResult r = co_await manager.tag_recv(buf, 8, 72);
    co_return r.success() ? 1 : -3;
}

TEST_F(ManagerTest, ManagerLocalToCoroutineIsDestroyedAtCoroutineEnd) {
    ASSERT_NO_FATAL_FAILURE(make_server());
    std::uint8_t* in = buffer(8);
    auto accepted = start(server_->wait_for_connection());
    auto task = start(manager_local_to_coroutine(port_, in));
    ASSERT_TRUE(accepted->wait_for(kOpLimit).value_or(false));
    std::uint8_t* out = buffer(8, 5);
    ASSERT_TRUE(await_within(server_->tag_send(out, 8, 72), kOpLimit).value_or(RdmaOpResult{}));
    const auto v = task->wait_for(5s);
    ASSERT_TRUE(v.has_value()) << "the coroutine-local manager's destructor deadlocked";
    EXPECT_EQ(*v, 1);
    EXPECT_TRUE(wait_until([&] { return server_->get_state() == RdmaState::LISTENING; }, 3s))
        << server_->get_state();
}

// The checks of an operation run when it is awaited. On the progress thread a send or
// receive takes the fast path (engine.cpp, Engine::start) and anything unusual falls back
// to the full checks; every fallback must report what the slow path reports.
RdmaTask<std::vector<RdmaOpResult>> checks_on_progress_thread(CoroutineRdmaManager& m, std::uint8_t* buf,
                                                              std::thread::id* ran_on) {
    std::vector<RdmaOpResult> out;
    const RdmaOpResult first = co_await m.tag_recv(buf, 8, 90);  // resumes on the progress thread
    out.push_back(first);
    *ran_on = std::this_thread::get_id();
    RdmaOpResult r = co_await m.tag_send(buf, 8, 0xB75FC0DE00000001ull);  // reserved tag
    out.push_back(r);
    r = co_await m.tag_send(nullptr, 8, 91);  // null buffer
    out.push_back(r);
    r = co_await m.tag_send(buf, 4096, 91);  // over max_message_size (1024 here)
    out.push_back(r);
    r = co_await m.tag_recv(buf, 4096, 91);
    out.push_back(r);
    std::stop_source stopped;
    stopped.request_stop();
    r = co_await m.tag_send(buf, 8, 91).cancel_with(stopped.get_token());  // cancelled before it starts
    out.push_back(r);
    r = co_await m.tag_send(buf, 8, 91);  // the fast path itself
    out.push_back(r);
    r = co_await m.disconnect();
    out.push_back(r);
    r = co_await m.tag_send(buf, 8, 91);  // no connection left
    out.push_back(r);
    co_return out;
}

TEST_F(ManagerTest, ChecksRunOnTheProgressThreadToo) {
    ManagerOptions o = test_options();
    o.max_message_size = 1024;
    ASSERT_NO_FATAL_FAILURE(connect_pair(o));
    std::uint8_t* buf = buffer(4096);
    std::uint8_t* in = buffer(64);
    auto got = start(server_->tag_recv(in, 64, 91));  // the one good send lands here
    std::thread::id ran_on{};
    auto t = start(checks_on_progress_thread(*client_, buf, &ran_on));
    ASSERT_TRUE(await_within(server_->tag_send(buffer(8, 3), 8, 90), kOpLimit).value_or(RdmaOpResult{}));
    const auto v = t->wait_for(kOpLimit);
    ASSERT_TRUE(v.has_value()) << "the task did not finish";
    ASSERT_EQ(v->size(), 9u);
    EXPECT_NE(ran_on, std::this_thread::get_id()) << "the checks did not run on the progress thread";
    EXPECT_TRUE((*v)[0]) << (*v)[0];
    EXPECT_EQ((*v)[1].result, RdmaResult::FAILURE) << (*v)[1];
    EXPECT_NE((*v)[1].reason().find("reserved"), std::string_view::npos) << (*v)[1];
    EXPECT_EQ((*v)[2].result, RdmaResult::FAILURE) << (*v)[2];
    EXPECT_EQ((*v)[2].reason(), "null buffer");
    for (int i : {3, 4}) {
        EXPECT_EQ((*v)[i].result, RdmaResult::FAILURE) << (*v)[i];
        EXPECT_NE((*v)[i].reason().find("max_message_size"), std::string_view::npos) << (*v)[i];
    }
    EXPECT_EQ((*v)[5].result, RdmaResult::CANCELLED) << (*v)[5];
    EXPECT_EQ((*v)[5].reason(), "cancelled before it started");
    EXPECT_TRUE((*v)[6]) << (*v)[6];
    EXPECT_EQ((*v)[6].bytes_transferred, 8u);
    EXPECT_TRUE((*v)[7]) << (*v)[7];
    EXPECT_EQ((*v)[8].result, RdmaResult::DISCONNECTED) << (*v)[8];
    EXPECT_EQ((*v)[8].reason(), "not connected");
    const auto g = got->wait_for(kOpLimit);
    ASSERT_TRUE(g.has_value());
    EXPECT_TRUE(*g) << *g;
    EXPECT_EQ(g->bytes_transferred, 8u);

    // Every one of them is counted: 1 good send, 6 failed or cancelled (reserved, null,
    // too large, cancelled, not connected); the receive: 1 good, 1 too large.
    const btsp::MetricsSnapshot s = client_->metrics();
    EXPECT_EQ(s.send.completed, 6u);
    EXPECT_EQ(s.send.by_result[static_cast<std::size_t>(RdmaResult::SUCCESS)], 1u);
    EXPECT_EQ(s.send.by_result[static_cast<std::size_t>(RdmaResult::FAILURE)], 3u);
    EXPECT_EQ(s.send.by_result[static_cast<std::size_t>(RdmaResult::CANCELLED)], 1u);
    EXPECT_EQ(s.send.by_result[static_cast<std::size_t>(RdmaResult::DISCONNECTED)], 1u);
    EXPECT_EQ(s.recv.completed, 2u);
    EXPECT_EQ(s.recv.by_result[static_cast<std::size_t>(RdmaResult::FAILURE)], 1u);
}

// ============================================================================================
// Progress hand-off and progress modes
// ============================================================================================

RdmaTask<int> recv_then_block(CoroutineRdmaManager& m, std::uint8_t* buf,
                              std::atomic<bool>* blocking, Clock::time_point* unblocked_at) {
    const RdmaOpResult r = co_await m.tag_recv(buf, 8, 80);  // resumes on the progress thread
    *blocking = true;
    std::this_thread::sleep_for(300ms);  // user code blocks the progress thread
    *unblocked_at = Clock::now();
    co_return r.success() ? 1 : -1;
}

TEST_F(ManagerTest, BlockingCoroutineDoesNotStallOtherOperations) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    std::atomic<int> echoed{0};
    std::uint8_t* echo_buf = buffer(256);
    auto echo = start(echo_loop(*server_, echo_buf, 256, 81, 82, &echoed));

    std::uint8_t* in = buffer(8);
    std::atomic<bool> blocking{false};
    Clock::time_point unblocked_at{};
    auto blocker = start(recv_then_block(*client_, in, &blocking, &unblocked_at));
    std::uint8_t* trigger = buffer(8, 6);
    ASSERT_TRUE(await_within(server_->tag_send(trigger, 8, 80), kOpLimit).value_or(RdmaOpResult{}));
    ASSERT_TRUE(wait_until([&] { return blocking.load(); }, 5s));

    // The client's progress thread now sleeps for 300 ms inside user code.
    const auto t0 = Clock::now();
    auto pp = start(ping_pong(*client_, 64, 5, 81, 82));
    const auto result = pp->wait_for(kOpLimit);
    ASSERT_TRUE(result.has_value()) << "ping-pong never finished";
    EXPECT_EQ(*result, "");
    const auto b = blocker->wait_for(kOpLimit);
    ASSERT_TRUE(b.has_value());
    EXPECT_EQ(*b, 1);
    EXPECT_LT(pp->elapsed(), unblocked_at - t0)
        << "the ping-pong must finish while the other coroutine is still blocked ("
        << std::chrono::duration<double, std::milli>(pp->elapsed()).count() << " ms vs "
        << std::chrono::duration<double, std::milli>(unblocked_at - t0).count() << " ms)";
    // The echo loop counts after its send completes, which may be after our receive.
    EXPECT_TRUE(wait_until([&] { return echoed.load() == 5; }, 5s)) << echoed.load();
    // The 300 ms block was a hand-off, and metrics say so (the server never blocked).
    EXPECT_GE(client_->metrics().progress_handoffs, 1u);
    EXPECT_NE(client_->metrics().summary().find("progress hand-offs="), std::string::npos);
    EXPECT_EQ(server_->metrics().progress_handoffs, 0u);
}

namespace {
// On the progress thread (after a receive): the guard owns the worker, a nested one does
// not, and after both are gone operations still run.
RdmaTask<int> guard_probe(CoroutineRdmaManager& m, std::uint8_t* in) {
    RdmaOpResult r = co_await m.tag_recv(in, 8, 90);
    if (!r) co_return -1;
    int score = 0;
    {
        btsp::WorkerGuard g = m.lock_worker();
        if (g.owns() && g.worker() != nullptr) score |= 1;
        if (g.owns()) (void)ucp_worker_progress(g.worker());  // what the guard is for
        btsp::WorkerGuard nested = m.lock_worker();
        if (!nested.owns() && nested.worker() == nullptr) score |= 2;
    }
    r = co_await m.tag_recv(in, 8, 91);
    if (r) score |= 4;
    co_return score;
}
}  // namespace

TEST_F(ManagerTest, WorkerGuardOwnsOnlyOnTheProgressThread) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    {
        btsp::WorkerGuard foreign = client_->lock_worker();
        EXPECT_FALSE(foreign.owns()) << "a foreign thread must not get the worker";
        EXPECT_EQ(foreign.worker(), nullptr);
    }
    std::uint8_t* in = buffer(8);
    auto probe = start(guard_probe(*client_, in));
    std::uint8_t* out = buffer(8, 3);
    ASSERT_TRUE(await_within(server_->tag_send(out, 8, 90), kOpLimit).value_or(RdmaOpResult{}));
    ASSERT_TRUE(await_within(server_->tag_send(out, 8, 91), kOpLimit).value_or(RdmaOpResult{}));
    const auto score = probe->wait_for(kOpLimit);
    ASSERT_TRUE(score.has_value());
    EXPECT_EQ(*score, 7) << "1: owns on the progress thread, 2: nested guard refused, 4: ops after release";
}

class ProgressModeTest : public ManagerTest, public ::testing::WithParamInterface<ProgressMode> {};

TEST_P(ProgressModeTest, PingPongCompletes) {
    ManagerOptions o = test_options();
    o.progress_mode = GetParam();
    ASSERT_NO_FATAL_FAILURE(connect_pair(o));
    EXPECT_EQ(client_->options().progress_mode, GetParam());
    std::atomic<int> echoed{0};
    std::uint8_t* echo_buf = buffer(1u << 20);
    auto echo = start(echo_loop(*server_, echo_buf, 1u << 20, 91, 92, &echoed));
    const auto t0 = Clock::now();
    auto small = start(ping_pong(*client_, 64, 300, 91, 92));
    const auto r1 = small->wait_for(30s);
    ASSERT_TRUE(r1.has_value()) << "300 small round trips did not finish in 30 s";
    EXPECT_EQ(*r1, "");
    const double small_ms = ms_since(t0);
    auto large = start(ping_pong(*client_, 1u << 20, 10, 91, 92));
    const auto r2 = large->wait_for(30s);
    ASSERT_TRUE(r2.has_value()) << "10 large round trips did not finish in 30 s";
    EXPECT_EQ(*r2, "");
    EXPECT_TRUE(wait_until([&] { return echoed.load() == 310; }, 5s)) << echoed.load();
    // Not a benchmark (this runs beside other tests on small machines); only catches a
    // progress loop that sleeps per operation (>= 6 s here at 10 ms per operation).
    EXPECT_LT(small_ms, 6000.0) << "300 round trips of 64 B";
    RecordProperty("small_round_trips_ms", std::to_string(small_ms));
}

INSTANTIATE_TEST_SUITE_P(AllModes, ProgressModeTest,
                         ::testing::Values(ProgressMode::POLLING, ProgressMode::BLOCKING,
                                           ProgressMode::ADAPTIVE),
                         [](const ::testing::TestParamInfo<ProgressMode>& i) {
                             return std::string(btsp::to_string(i.param));
                         });

// ============================================================================================
// Receive polling (ManagerOptions::recv_poll)
// ============================================================================================

/// 8-byte round trips against echo_loop until `stop` is set or `max_rounds` are done;
/// returns the number completed (negative: -1 - rounds, when an operation failed).
/// (`stop` is shared: a test that gives up early returns while the coroutine still runs.)
RdmaTask<int> ping_until(CoroutineRdmaManager& m, std::shared_ptr<const std::atomic<bool>> stop, int max_rounds,
                         std::uint64_t out_tag, std::uint64_t in_tag) {
    std::uint8_t out[8] = {}, in[8] = {};
    int i = 0;
    for (; i < max_rounds && !stop->load(std::memory_order_relaxed); ++i) {
        std::memcpy(out, &i, sizeof i);
        const RdmaOpResult s = co_await m.tag_send(out, sizeof out, out_tag);
        if (!s) co_return -1 - i;
        const RdmaOpResult r = co_await m.tag_recv(in, sizeof in, in_tag);
        if (!r || std::memcmp(in, out, sizeof in) != 0) co_return -1 - i;
    }
    co_return i;
}

/// POLLING mode, no heartbeat and a rare UCX keepalive: the heartbeat's timer and the
/// keepalive's events would make polling stop every few hundred milliseconds, which would
/// hide a poll that misses cancels, stops or submissions.
ManagerOptions polling_options(std::uint32_t recv_poll) {
    ManagerOptions o = test_options();
    o.progress_mode = ProgressMode::POLLING;
    o.recv_poll = recv_poll;
    o.heartbeat_interval = std::chrono::milliseconds(0);
    o.keepalive_interval = std::chrono::milliseconds(60'000);
    return o;
}

/// Connected pair polling with a budget of 2^20 progress calls, the server echoing 91 → 92,
/// and a client ping-pong running until `stop` whose receives complete while polling.
class RecvPollTest : public ManagerTest {
protected:
    void start_polling_ping_pong(const std::shared_ptr<std::atomic<bool>>& stop,
                                 std::unique_ptr<Pending<int>>& pings) {
        ASSERT_NO_FATAL_FAILURE(connect_pair(polling_options(1u << 20)));
        std::uint8_t* echo_buf = buffer(64);
        echo_ = start(echo_loop(*server_, echo_buf, 64, 91, 92, nullptr));
        pings = start(ping_until(*client_, stop, 50'000'000, 91, 92));
        ASSERT_TRUE(wait_until([&] { return client_->metrics().recvs_polled > 100; }, 20s))
            << "the ping-pong did not get going (polled " << client_->metrics().recvs_polled << ")";
    }
    std::unique_ptr<Pending<Unit>> echo_;
};

TEST_F(ManagerTest, RecvPollCompletesRepliesWithoutSuspending) {
    // A budget far beyond a loopback round trip: nearly every reply arrives while polling.
    ASSERT_NO_FATAL_FAILURE(connect_pair(polling_options(1u << 16)));
    std::uint8_t* echo_buf = buffer(64);
    auto echo = start(echo_loop(*server_, echo_buf, 64, 91, 92, nullptr));
    auto stop = std::make_shared<std::atomic<bool>>(false);
    auto pings = start(ping_until(*client_, stop, 2000, 91, 92));
    const auto n = pings->wait_for(30s);
    ASSERT_TRUE(n.has_value()) << "2000 round trips did not finish in 30 s";
    EXPECT_EQ(*n, 2000);
    const auto m = client_->metrics();
    EXPECT_EQ(m.recv.by_result[0], 2000u);  // polled receives are counted like the others
    EXPECT_GT(m.recvs_polled, 0u);
    EXPECT_LE(m.recvs_polled, 2000u);
    EXPECT_EQ(m.in_flight_recvs, 0u);
    RecordProperty("recvs_polled", std::to_string(m.recvs_polled));
}

TEST_F(ManagerTest, RecvPollZeroAndBlockingModeNeverPoll) {
    for (const bool blocking : {false, true}) {
        SCOPED_TRACE(blocking ? "BLOCKING, recv_poll 65536" : "POLLING, recv_poll 0");
        ManagerOptions o = polling_options(blocking ? 1u << 16 : 0);
        if (blocking) o.progress_mode = ProgressMode::BLOCKING;
        ASSERT_NO_FATAL_FAILURE(connect_pair(o));
        std::uint8_t* echo_buf = buffer(64);
        auto echo = start(echo_loop(*server_, echo_buf, 64, 91, 92, nullptr));
        auto stop = std::make_shared<std::atomic<bool>>(false);
        auto pings = start(ping_until(*client_, stop, 300, 91, 92));
        const auto n = pings->wait_for(30s);
        ASSERT_TRUE(n.has_value());
        EXPECT_EQ(*n, 300);
        EXPECT_EQ(client_->metrics().recv.by_result[0], 300u);
        EXPECT_EQ(client_->metrics().recvs_polled, 0u);
        client_.reset();
        server_.reset();
    }
}

// A coroutine whose every receive completes while polling never suspends. Timers, other
// threads' submissions and cancellations must still be served while it runs.
TEST_F(RecvPollTest, PollingCoroutineDoesNotStarveTimersSubmissionsOrCancels) {
    auto stop = std::make_shared<std::atomic<bool>>(false);
    std::unique_ptr<Pending<int>> pings;
    ASSERT_NO_FATAL_FAILURE(start_polling_ping_pong(stop, pings));

    std::uint8_t* sink = buffer(64);
    // A deadline (the loop's timers).
    const auto t0 = Clock::now();
    const auto timed = await_within(client_->tag_recv(sink, 8, 777).timeout(50ms), 5s);
    ASSERT_TRUE(timed.has_value()) << "a 50 ms timeout did not fire within 5 s";
    EXPECT_EQ(timed->result, RdmaResult::TIMEOUT) << *timed;
    EXPECT_LT(ms_since(t0), 3000.0);
    // A cross-thread cancellation of a pending receive.
    std::stop_source src;
    auto cancelled = start(client_->tag_recv(sink + 8, 8, 778).cancel_with(src.get_token()));
    EXPECT_FALSE(cancelled->wait_for(20ms).has_value());
    src.request_stop();
    const auto c = cancelled->wait_for(5s);
    ASSERT_TRUE(c.has_value()) << "a cancel was not served within 5 s";
    EXPECT_EQ(c->result, RdmaResult::CANCELLED) << *c;
    // A send submitted from this thread, received by the server.
    auto got = start(server_->tag_recv(sink + 16, 8, 779));
    std::uint64_t v = 0x5eed;
    const auto sent = await_within(client_->tag_send(&v, sizeof v, 779), 5s);
    ASSERT_TRUE(sent.has_value()) << "a submitted send did not complete within 5 s";
    EXPECT_TRUE(sent->success()) << *sent;
    const auto g = got->wait_for(5s);
    ASSERT_TRUE(g.has_value());
    EXPECT_TRUE(g->success()) << *g;

    const auto before = client_->metrics().recvs_polled;
    EXPECT_TRUE(wait_until([&] { return client_->metrics().recvs_polled > before; }, 10s))
        << "the ping-pong stopped";
    *stop = true;
    const auto n = pings->wait_for(20s);
    ASSERT_TRUE(n.has_value());
    EXPECT_GT(*n, 0);
}

/// Resumes on the client's progress thread (after a send it submits from the test
/// thread), then awaits a receive there, so that receive polls.
RdmaTask<RdmaOpResult> recv_on_progress_thread(CoroutineRdmaManager& m, void* buf, std::size_t size,
                                               std::uint64_t tag, std::stop_token token,
                                               std::chrono::milliseconds timeout = {}) {
    std::uint64_t hello = 1;
    const RdmaOpResult s = co_await m.tag_send(&hello, sizeof hello, 90);
    if (!s) co_return s;
    co_return co_await m.tag_recv(buf, size, tag).cancel_with(std::move(token)).timeout(timeout);
}

// A receive that nothing answers, with a budget of ~2^30 progress calls (tens of seconds):
// other threads' cancels, submissions and shutdown() must stop its polling at once.
TEST_F(ManagerTest, LongPollOfASilentReceiveYieldsToCancelSubmissionAndShutdown) {
    ASSERT_NO_FATAL_FAILURE(connect_pair(polling_options(1u << 30)));
    std::uint8_t* sink = buffer(64);
    auto hellos = start(server_->tag_recv(sink + 32, 8, 90));
    {
        std::stop_source src;
        auto r = start(recv_on_progress_thread(*client_, sink, 8, 555, src.get_token()));
        ASSERT_TRUE(hellos->wait_for(kOpLimit).has_value());
        EXPECT_FALSE(r->wait_for(50ms).has_value());
        const auto t0 = Clock::now();
        src.request_stop();
        const auto c = r->wait_for(5s);
        ASSERT_TRUE(c.has_value()) << "a cancel did not stop the polling receive within 5 s";
        EXPECT_EQ(c->result, RdmaResult::CANCELLED) << *c;
        RecordProperty("cancel_ms", std::to_string(ms_since(t0)));
    }
    hellos = start(server_->tag_recv(sink + 32, 8, 90));
    auto polling = start(recv_on_progress_thread(*client_, sink, 8, 556, {}));
    ASSERT_TRUE(hellos->wait_for(kOpLimit).has_value());
    EXPECT_FALSE(polling->wait_for(50ms).has_value());
    // A send submitted from this thread while the receive polls.
    auto got = start(server_->tag_recv(sink + 16, 8, 779));
    std::uint64_t v = 0x5eed;
    const auto sent = await_within(client_->tag_send(&v, sizeof v, 779), 5s);
    ASSERT_TRUE(sent.has_value()) << "a submitted send did not complete within 5 s";
    EXPECT_TRUE(sent->success()) << *sent;
    ASSERT_TRUE(got->wait_for(5s).has_value());
    // The answer still arrives (through the registry, the poll having stopped).
    std::uint64_t answer = 42;
    ASSERT_TRUE(await_within(server_->tag_send(&answer, sizeof answer, 556), kOpLimit).has_value());
    const auto a = polling->wait_for(5s);
    ASSERT_TRUE(a.has_value());
    EXPECT_TRUE(a->success()) << *a;
    // shutdown() while another receive polls.
    hellos = start(server_->tag_recv(sink + 32, 8, 90));
    auto last = start(recv_on_progress_thread(*client_, sink, 8, 557, {}));
    ASSERT_TRUE(hellos->wait_for(kOpLimit).has_value());
    EXPECT_FALSE(last->wait_for(50ms).has_value());
    const auto t0 = Clock::now();
    client_->shutdown();
    const double shutdown_ms = ms_since(t0);
    EXPECT_LT(shutdown_ms, 5000.0) << "shutdown() waited for the polling receive";
    RecordProperty("shutdown_ms", std::to_string(shutdown_ms));
    const auto d = last->wait_for(5s);
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->result, RdmaResult::DISCONNECTED) << *d;
}

// A receive submitted from another thread is posted by the loop itself (which may have
// more submissions to post): it never polls.
TEST_F(ManagerTest, ReceiveSubmittedFromAnotherThreadDoesNotPoll) {
    ASSERT_NO_FATAL_FAILURE(connect_pair(polling_options(1u << 30)));
    // Let the handshake's last control message (the server's PING) arrive first: it would
    // stop a poll at once and hide one.
    std::this_thread::sleep_for(100ms);
    std::uint8_t* sink = buffer(64);
    auto r = start(client_->tag_recv(sink, 8, 600));
    EXPECT_FALSE(r->wait_for(20ms).has_value());
    std::uint64_t v = 7;
    ASSERT_TRUE(await_within(server_->tag_send(&v, sizeof v, 600), kOpLimit).has_value());
    const auto got = r->wait_for(kOpLimit);
    ASSERT_TRUE(got.has_value());
    EXPECT_TRUE(got->success()) << *got;
    EXPECT_EQ(client_->metrics().recvs_polled, 0u);
}

// A receive with a deadline does not poll: the deadline starts when it is tracked.
TEST_F(ManagerTest, RecvWithTimeoutDoesNotPollPastItsDeadline) {
    ASSERT_NO_FATAL_FAILURE(connect_pair(polling_options(1u << 30)));
    std::uint8_t* sink = buffer(64);
    auto hellos = start(server_->tag_recv(sink + 32, 8, 90));
    auto r = start(recv_on_progress_thread(*client_, sink, 8, 558, {}, std::chrono::milliseconds(50)));
    ASSERT_TRUE(hellos->wait_for(kOpLimit).has_value());
    const auto t = r->wait_for(5s);
    ASSERT_TRUE(t.has_value()) << "a 50 ms deadline did not fire within 5 s";
    EXPECT_EQ(t->result, RdmaResult::TIMEOUT) << *t;
    EXPECT_EQ(client_->metrics().recvs_polled, 0u);
}

TEST_F(RecvPollTest, ShutdownDuringAPollingPingPongEndsItPromptly) {
    auto stop = std::make_shared<std::atomic<bool>>(false);
    std::unique_ptr<Pending<int>> pings;
    ASSERT_NO_FATAL_FAILURE(start_polling_ping_pong(stop, pings));
    const auto t0 = Clock::now();
    client_->shutdown();
    EXPECT_LT(ms_since(t0), 5000.0) << "shutdown() waited for the polling coroutine";
    const auto n = pings->wait_for(5s);
    ASSERT_TRUE(n.has_value()) << "the ping-pong did not end at shutdown";
    EXPECT_LT(*n, 0) << "it ended by an operation failing";
    EXPECT_EQ(client_->get_state(), RdmaState::SHUTDOWN);
    *stop = true;
}

// ============================================================================================
// Several clients on one server
// ============================================================================================

TEST_F(ManagerTest, ServerReceivesFromAnyClientAndSendsToOldest) {
    ASSERT_NO_FATAL_FAILURE(connect_pair());
    auto second = std::make_unique<CoroutineRdmaManager>(test_options());
    ASSERT_TRUE(second->initialize(false, 0));
    const auto c = await_within(second->connect("127.0.0.1", port_), kOpLimit);
    ASSERT_TRUE(c.has_value() && c->success());
    ASSERT_TRUE(wait_until([&] { return server_->connection_count() == 2; }, 5s))
        << server_->connection_count();

    // Receives match messages from either client.
    std::uint8_t* in = buffer(2 * 8);
    auto r1 = start(server_->tag_recv(in, 8, 5));
    auto r2 = start(server_->tag_recv(in + 8, 8, 5));
    std::uint8_t* a = buffer(8, 0xa1);
    std::uint8_t* b = buffer(8, 0xb2);
    ASSERT_TRUE(await_within(client_->tag_send(a, 8, 5), kOpLimit).value_or(RdmaOpResult{}));
    ASSERT_TRUE(await_within(second->tag_send(b, 8, 5), kOpLimit).value_or(RdmaOpResult{}));
    ASSERT_TRUE(r1->wait_for(kOpLimit).value_or(RdmaOpResult{}));
    ASSERT_TRUE(r2->wait_for(kOpLimit).value_or(RdmaOpResult{}));
    std::set<int> firsts{in[0], in[8]};
    EXPECT_EQ(firsts, (std::set<int>{0xa1, 0xb2}));

    // tag_send goes to the oldest live connection: the first client.
    std::uint8_t* in1 = buffer(8);
    std::uint8_t* in2 = buffer(8);
    auto got1 = start(client_->tag_recv(in1, 8, 6));
    auto got2 = start(second->tag_recv(in2, 8, 6));
    std::uint8_t* msg = buffer(8, 0xc3);
    ASSERT_TRUE(await_within(server_->tag_send(msg, 8, 6), kOpLimit).value_or(RdmaOpResult{}));
    const auto g1 = got1->wait_for(kOpLimit);
    ASSERT_TRUE(g1.has_value() && g1->success());
    EXPECT_EQ(in1[0], 0xc3);
    std::this_thread::sleep_for(50ms);
    EXPECT_FALSE(got2->ready()) << "the second client must not get the primary's message";

    // When the first client leaves, the second becomes primary.
    client_->shutdown();
    ASSERT_TRUE(wait_until([&] { return server_->connection_count() == 1; }, 5s));
    EXPECT_TRUE(server_->is_connected());
    std::uint8_t* msg2 = buffer(8, 0xd4);
    ASSERT_TRUE(await_within(server_->tag_send(msg2, 8, 6), kOpLimit).value_or(RdmaOpResult{}));
    const auto g2 = got2->wait_for(kOpLimit);
    ASSERT_TRUE(g2.has_value() && g2->success());
    EXPECT_EQ(in2[0], 0xd4);
    extra_.push_back(std::move(second));
}

TEST_F(ManagerTest, ListenOnClientStartsListener) {
    ASSERT_NO_FATAL_FAILURE(make_client());
    const auto l = await_within(client_->listen(0), kOpLimit);
    ASSERT_TRUE(l.has_value());
    ASSERT_TRUE(l->success()) << *l;
    EXPECT_EQ(l->bytes_transferred, 0u);
    const std::uint16_t port = client_->listening_port();
    ASSERT_NE(port, 0);
    EXPECT_EQ(client_->get_state(), RdmaState::LISTENING);
    // Something can connect to it.
    auto other = std::make_unique<CoroutineRdmaManager>(test_options());
    ASSERT_TRUE(other->initialize(false, 0));
    const auto c = await_within(other->connect("127.0.0.1", port), kOpLimit);
    ASSERT_TRUE(c.has_value());
    EXPECT_TRUE(c->success()) << *c;
    EXPECT_TRUE(await_within(client_->wait_for_connection(), kOpLimit).value_or(false));
    extra_.push_back(std::move(other));
}

}  // namespace
