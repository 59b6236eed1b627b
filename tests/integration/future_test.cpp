// to_future(): std::future from an RdmaTask or an awaitable, fulfilled by a continuation.
#include "integration_util.hpp"

#include <btsp/future.hpp>

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using namespace std::chrono_literals;
using btsp::RdmaOpResult;
using btsp::RdmaResult;
using btsp::RdmaTask;
using btsp_it::get_within;

RdmaTask<int> ready_value() { co_return 42; }
RdmaTask<int> throws_at_once() {
    throw std::runtime_error("at once");
    co_return 0;
}
RdmaTask<void> void_task() { co_return; }
RdmaTask<std::unique_ptr<int>> move_only() { co_return std::make_unique<int>(7); }

// Receives four ints on tag 5 and returns their sum (suspends until the peer sends).
RdmaTask<int> sum_received(btsp::CoroutineRdmaManager& m) {
    int v[4] = {};
    RdmaOpResult r = co_await m.tag_recv(v, sizeof v, 5);
    if (!r.success()) throw std::runtime_error("recv failed: " + std::string(r.reason()));
    co_return v[0] + v[1] + v[2] + v[3];
}
// Throws after a suspension (the exception travels through the continuation).
RdmaTask<void> throws_after_recv(btsp::CoroutineRdmaManager& m) {
    int v = 0;
    (void)co_await m.tag_recv(&v, sizeof v, 6);
    throw std::logic_error("after recv " + std::to_string(v));
}

TEST(ToFuture, ValueOfAFinishedTask) {
    auto f = btsp::to_future(ready_value());
    ASSERT_EQ(f.wait_for(0s), std::future_status::ready);
    EXPECT_EQ(f.get(), 42);
}

TEST(ToFuture, ExceptionOfAFinishedTask) {
    auto f = btsp::to_future(throws_at_once());
    ASSERT_EQ(f.wait_for(0s), std::future_status::ready);
    EXPECT_THROW(f.get(), std::runtime_error);
}

TEST(ToFuture, VoidAndMoveOnlyResults) {
    auto v = btsp::to_future(void_task());
    ASSERT_EQ(v.wait_for(0s), std::future_status::ready);
    EXPECT_NO_THROW(v.get());
    auto m = btsp::to_future(move_only());
    ASSERT_EQ(m.wait_for(0s), std::future_status::ready);
    auto p = m.get();
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(*p, 7);
}

TEST(ToFuture, EmptyTaskGivesLogicError) {
    auto f = btsp::to_future(RdmaTask<int>{});
    ASSERT_EQ(f.wait_for(0s), std::future_status::ready);
    EXPECT_THROW(f.get(), std::logic_error);
}

TEST(ToFuture, TaskCompletedByTheNetwork) {
    btsp_it::LoopbackPair p;
    ASSERT_TRUE(p.connect());
    auto f = btsp::to_future(sum_received(p.server));
    EXPECT_EQ(f.wait_for(50ms), std::future_status::timeout) << "nothing was sent yet";
    const int data[4] = {1, 2, 3, 4};
    auto s = btsp::to_future(p.client.tag_send(data, sizeof data, 5));
    auto sent = get_within(s, 10s);
    ASSERT_TRUE(sent && sent->success());
    auto sum = get_within(f, 10s);
    ASSERT_TRUE(sum.has_value());
    EXPECT_EQ(*sum, 10);
}

TEST(ToFuture, ExceptionAfterSuspensionPropagates) {
    btsp_it::LoopbackPair p;
    ASSERT_TRUE(p.connect());
    auto f = btsp::to_future(throws_after_recv(p.server));
    const int v = 9;
    auto s = btsp::to_future(p.client.tag_send(&v, sizeof v, 6));
    ASSERT_TRUE(get_within(s, 10s).has_value());
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
    try {
        f.get();
        FAIL() << "expected std::logic_error";
    } catch (const std::logic_error& e) {
        EXPECT_STREQ(e.what(), "after recv 9");
    }
}

TEST(ToFuture, RdmaAwaitablesOverLoopback) {
    btsp_it::LoopbackPair p;
    ASSERT_TRUE(p.connect());
    std::vector<char> in(64 * 1024, 0);  // rendezvous-sized: the send really suspends
    std::vector<char> out(in.size());
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<char>(i * 7);
    auto r = btsp::to_future(p.server.tag_recv(in.data(), in.size(), 77));
    auto s = btsp::to_future(p.client.tag_send(out.data(), out.size(), 77));
    auto sent = get_within(s, 10s);
    auto got = get_within(r, 10s);
    ASSERT_TRUE(sent.has_value());
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(sent->result, RdmaResult::SUCCESS) << *sent;
    EXPECT_EQ(got->result, RdmaResult::SUCCESS) << *got;
    EXPECT_EQ(got->bytes_transferred, out.size());
    EXPECT_EQ(got->sender_tag, 77u);
    EXPECT_EQ(std::memcmp(in.data(), out.data(), in.size()), 0);
}

TEST(ToFuture, FailedOperationIsAValueNotAnException) {
    btsp::CoroutineRdmaManager idle;  // never initialised
    int v = 0;
    auto f = btsp::to_future(idle.tag_send(&v, sizeof v, 1));
    ASSERT_EQ(f.wait_for(0s), std::future_status::ready) << "fails at once";
    EXPECT_EQ(f.get().result, RdmaResult::FAILURE);
}

TEST(ToFuture, WithTimeoutAwaitableThrowsTimeoutError) {
    btsp_it::LoopbackPair p;
    ASSERT_TRUE(p.connect());
    int v = 0;
    auto f = btsp::to_future(btsp::with_timeout(p.server.tag_recv(&v, sizeof v, 404), 50ms));
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
    EXPECT_THROW(f.get(), btsp::TimeoutError);
}

TEST(ToFuture, StateAwaitable) {
    btsp_it::LoopbackPair p;
    ASSERT_TRUE(p.init());
    auto connected = btsp::to_future(p.server.wait_for_connection());
    EXPECT_EQ(connected.wait_for(20ms), std::future_status::timeout);
    auto c = btsp::to_future(p.client.connect("127.0.0.1", p.port));
    auto cr = get_within(c, 10s);
    ASSERT_TRUE(cr && cr->success());
    auto ok = get_within(connected, 10s);
    ASSERT_TRUE(ok.has_value());
    EXPECT_TRUE(*ok);
}

}  // namespace
