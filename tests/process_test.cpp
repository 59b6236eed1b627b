// Two-process tests over loopback: this process against tests/peer/btsp_test_peer.
// Pins: exchange across processes, and what a SIGKILLed peer does to our pending
// receives and sends (docs/semantics.md: "peer goes away (closed, killed)").
#include "process_util.hpp"
#include "test_util.hpp"

#include <btsp/btsp.hpp>

#include <gtest/gtest.h>

#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#ifndef BTSP_TEST_PEER
#error "BTSP_TEST_PEER (path of btsp_test_peer) must be defined by the build"
#endif

namespace {

using namespace btsp_test;
using btsp::CoroutineRdmaManager;
using btsp::RdmaOpResult;
using btsp::RdmaResult;
using btsp::RdmaState;
using btsp::RdmaTask;

constexpr auto kOpLimit = 10s;
constexpr auto kStartLimit = 10s;

class ProcessTest : public ::testing::Test {
protected:
    void TearDown() override {
        manager_.reset();
        children_.clear();  // SIGKILL + waitpid
    }

    ChildProcess& spawn(const std::vector<std::string>& args) {
        children_.push_back(std::make_unique<ChildProcess>(BTSP_TEST_PEER, args));
        return *children_.back();
    }
    std::uint8_t* buffer(std::size_t n, std::uint8_t fill = 0) {
        buffers_.emplace_back(n, fill);
        return buffers_.back().data();
    }
    std::vector<std::uint8_t>& buffer_vec(std::vector<std::uint8_t> v) {
        buffers_.push_back(std::move(v));
        return buffers_.back();
    }
    void make_client() {
        manager_ = std::make_unique<CoroutineRdmaManager>(test_options());
        ASSERT_TRUE(manager_->initialize(false, 0)) << manager_->last_error();
    }
    void make_server() {
        manager_ = std::make_unique<CoroutineRdmaManager>(test_options());
        ASSERT_TRUE(manager_->initialize(true, 0)) << manager_->last_error();
    }
    /// Spawns `mode` (server / hold-server), reads its port, connects our client to it.
    ChildProcess& connect_to_child(const std::string& mode) {
        ChildProcess& child = spawn({mode});
        EXPECT_TRUE(child.started()) << child.error();
        const std::uint16_t port = child.read_port(kStartLimit);
        EXPECT_NE(port, 0) << "the peer did not report its port";
        make_client();
        if (port == 0 || !manager_) return child;
        const auto c = await_within(manager_->connect("127.0.0.1", port), kOpLimit);
        EXPECT_TRUE(c.has_value() && c->success())
            << (c ? std::string(c->reason()) : std::string("connect never completed"));
        return child;
    }

    std::deque<std::vector<std::uint8_t>> buffers_;
    std::vector<std::unique_ptr<ChildProcess>> children_;
    std::unique_ptr<CoroutineRdmaManager> manager_;
};

RdmaTask<void> echo_loop(CoroutineRdmaManager& m, std::uint8_t* buf, std::size_t cap) {
    for (;;) {
        const bool connected = co_await m.wait_for_connection();  // not in a condition: g++ 12
        if (!connected) co_return;
        for (;;) {
            const RdmaOpResult r = co_await m.tag_recv(buf, cap, 1);
            if (!r) break;
            const RdmaOpResult s = co_await m.tag_send(buf, r.bytes_transferred, 2);
            if (!s) break;
        }
    }
}

TEST_F(ProcessTest, ExchangeWithServerInAnotherProcess) {
    ChildProcess& child = connect_to_child("server");
    ASSERT_FALSE(HasFailure());
    (void)child;
    for (std::size_t size : {std::size_t{8}, std::size_t{64} << 10, std::size_t{4} << 20}) {
        auto& out = buffer_vec(pattern(size, static_cast<std::uint32_t>(size)));
        std::uint8_t* in = buffer(size);
        auto recv = start(manager_->tag_recv(in, size, 2));
        const auto s = await_within(manager_->tag_send(out.data(), size, 1), kOpLimit);
        ASSERT_TRUE(s.has_value() && s->success()) << size;
        const auto r = recv->wait_for(kOpLimit);
        ASSERT_TRUE(r.has_value()) << "no echo of " << size << " bytes";
        ASSERT_TRUE(r->success()) << *r;
        EXPECT_EQ(r->bytes_transferred, size);
        EXPECT_EQ(checksum(in, size), checksum(out.data(), size)) << size;
    }
}

TEST_F(ProcessTest, ClientInAnotherProcessExchangesWithOurServer) {
    make_server();
    std::uint8_t* echo_buf = buffer(1u << 20);
    auto echo = start(echo_loop(*manager_, echo_buf, 1u << 20));
    ChildProcess& child = spawn({"client", "127.0.0.1", std::to_string(manager_->listening_port()),
                                 "20", "65536"});
    ASSERT_TRUE(child.started()) << child.error();
    const auto rc = child.wait_exit(20s);
    ASSERT_TRUE(rc.has_value()) << "the client process did not finish";
    EXPECT_EQ(*rc, 0) << "the client process saw a wrong echo (exit code)";
}

TEST_F(ProcessTest, RecvCompletesDisconnectedWhenPeerIsKilled) {
    ChildProcess& child = connect_to_child("hold-server");
    ASSERT_FALSE(HasFailure());
    ASSERT_TRUE(child.expect_line("CONNECTED", kStartLimit).has_value());
    std::uint8_t* in = buffer(64);
    auto recv = start(manager_->tag_recv(in, 64, 9));
    std::this_thread::sleep_for(50ms);
    ASSERT_FALSE(recv->ready());
    const auto t0 = Clock::now();
    child.kill_now();
    const auto r = recv->wait_for(5s);
    const double ms = ms_since(t0);
    ASSERT_TRUE(r.has_value()) << "the receive never completed after the peer was killed";
    EXPECT_EQ(r->result, RdmaResult::DISCONNECTED) << *r;
    EXPECT_LT(ms, 1000.0);
    EXPECT_TRUE(wait_until([&] { return manager_->get_state() == RdmaState::IDLE; }, 2s))
        << manager_->get_state();
    EXPECT_FALSE(manager_->is_connected());
}

TEST_F(ProcessTest, LargeSendCompletesDisconnectedWhenPeerIsKilled) {
    ChildProcess& child = connect_to_child("hold-server");
    ASSERT_FALSE(HasFailure());
    ASSERT_TRUE(child.expect_line("CONNECTED", kStartLimit).has_value());
    auto& big = buffer_vec(pattern(4u << 20, 5));
    auto send = start(manager_->tag_send(big.data(), big.size(), 9));
    ASSERT_TRUE(wait_until([&] { return manager_->get_state() == RdmaState::SENDING; }, 2s))
        << manager_->get_state();
    std::this_thread::sleep_for(50ms);
    ASSERT_FALSE(send->ready()) << "rendezvous: nobody receives, so the send waits";
    const auto t0 = Clock::now();
    child.kill_now();
    const auto s = send->wait_for(5s);
    const double ms = ms_since(t0);
    ASSERT_TRUE(s.has_value()) << "the send never completed after the peer was killed";
    EXPECT_EQ(s->result, RdmaResult::DISCONNECTED) << *s;
    EXPECT_LT(ms, 1000.0);
    EXPECT_TRUE(wait_until([&] { return manager_->get_state() == RdmaState::IDLE; }, 2s))
        << manager_->get_state();
}

TEST_F(ProcessTest, ServerAcceptsNewClientAfterClientWasKilled) {
    make_server();
    const std::uint16_t port = manager_->listening_port();
    ChildProcess& holder = spawn({"hold", "127.0.0.1", std::to_string(port)});
    ASSERT_TRUE(holder.started());
    ASSERT_TRUE(holder.expect_line("CONNECTED", kStartLimit).has_value());
    ASSERT_TRUE(await_within(manager_->wait_for_connection(), kOpLimit).value_or(false));
    std::uint8_t* in = buffer(64);
    auto recv = start(manager_->tag_recv(in, 64, 1));
    std::this_thread::sleep_for(50ms);
    const auto t0 = Clock::now();
    holder.kill_now();
    const auto r = recv->wait_for(5s);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->result, RdmaResult::DISCONNECTED) << *r;
    EXPECT_LT(ms_since(t0), 1000.0);
    ASSERT_TRUE(wait_until([&] { return manager_->get_state() == RdmaState::LISTENING; }, 3s))
        << manager_->get_state();
    EXPECT_EQ(manager_->connection_count(), 0u);

    // A new client process is served.
    std::uint8_t* echo_buf = buffer(1u << 20);
    auto echo = start(echo_loop(*manager_, echo_buf, 1u << 20));
    ChildProcess& client = spawn({"client", "127.0.0.1", std::to_string(port), "10", "1024"});
    ASSERT_TRUE(client.started());
    const auto rc = client.wait_exit(20s);
    ASSERT_TRUE(rc.has_value()) << "the second client did not finish";
    EXPECT_EQ(*rc, 0);
}

}  // namespace
