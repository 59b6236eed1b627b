// <btsp/asio.hpp>: async_tag_send / async_tag_recv / async_connect with asio::use_awaitable,
// asio::use_future and plain callbacks, over loopback. Every handler must run on the
// caller's executor (the io_context's thread), never on a btsp progress thread.
#include "integration_util.hpp"

#include <btsp/asio.hpp>

#include <asio.hpp>
#if defined(ASIO_HAS_CO_AWAIT)  // asio 1.22 enables coroutines for g++, not for clang 14
#include <asio/experimental/awaitable_operators.hpp>
#endif
#include <asio/experimental/deferred.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using btsp::RdmaOpResult;
using btsp::RdmaResult;
using btsp_it::get_within;
namespace ops = btsp::asio_ops;

static_assert(BTSP_HAS_ASIO == 1);

TEST(AsioErrorCategory, MapsResults) {
    const std::error_code ok = btsp::make_error_code(RdmaResult::SUCCESS);
    EXPECT_FALSE(ok);
    EXPECT_STREQ(ok.category().name(), "btsp");
    const std::error_code cancelled = btsp::make_error_code(RdmaResult::CANCELLED);
    EXPECT_TRUE(cancelled);
    EXPECT_EQ(cancelled, std::errc::operation_canceled);
    EXPECT_EQ(btsp::make_error_code(RdmaResult::TIMEOUT), std::errc::timed_out);
    EXPECT_EQ(btsp::make_error_code(RdmaResult::DISCONNECTED), std::errc::not_connected);
    EXPECT_EQ(btsp::make_error_code(RdmaResult::FAILURE), std::errc::io_error);
    EXPECT_EQ(btsp::make_error_code(RdmaResult::DISCONNECTED).message(), "disconnected");
}

// ---- use_awaitable -----------------------------------------------------------------------
#if defined(ASIO_HAS_CO_AWAIT)

TEST(AsioOps, UseAwaitableConnectSendRecv) {
    btsp_it::LoopbackPair p;
    ASSERT_TRUE(p.init());
    asio::io_context io;
    const auto io_thread = std::this_thread::get_id();  // io.run_for runs here
    std::vector<std::thread::id> handler_threads;
    std::atomic<int> finished{0};
    std::string failure;
    int received[8] = {};
    RdmaOpResult recv_result;

    auto server_side = [&]() -> asio::awaitable<void> {
        // A receive needs a live connection (else DISCONNECTED at once): wait for the
        // client's, polling on an asio timer (test choreography, bounded).
        asio::steady_timer tick(io);
        for (int i = 0; i < 10000 && !p.server.is_connected(); ++i) {
            tick.expires_after(1ms);
            co_await tick.async_wait(asio::use_awaitable);
        }
        RdmaOpResult r = co_await ops::async_tag_recv(p.server, received, sizeof received, 11,
                                                      asio::use_awaitable);
        handler_threads.push_back(std::this_thread::get_id());
        recv_result = r;
        ++finished;
    };
    auto client_side = [&]() -> asio::awaitable<void> {
        RdmaOpResult c = co_await ops::async_connect(p.client, "127.0.0.1", p.port, asio::use_awaitable);
        handler_threads.push_back(std::this_thread::get_id());
        if (!c.success()) failure = "connect failed";
        int data[8];
        for (int i = 0; i < 8; ++i) data[i] = i * i;
        RdmaOpResult s = co_await ops::async_tag_send(p.client, data, sizeof data, 11, asio::use_awaitable);
        handler_threads.push_back(std::this_thread::get_id());
        if (!s.success()) failure = "send failed";
        ++finished;
    };
    auto report = [&failure](std::exception_ptr e) {
        if (!e) return;
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            failure = ex.what();
        }
    };
    asio::co_spawn(io, server_side(), report);
    asio::co_spawn(io, client_side(), report);
    io.run_for(20s);  // returns as soon as everything has completed

    EXPECT_TRUE(failure.empty()) << failure;
    ASSERT_EQ(finished.load(), 2);
    EXPECT_EQ(recv_result.result, RdmaResult::SUCCESS);
    EXPECT_EQ(recv_result.bytes_transferred, sizeof received);
    for (int i = 0; i < 8; ++i) EXPECT_EQ(received[i], i * i);
    ASSERT_EQ(handler_threads.size(), 3u);
    const auto server_progress = btsp_it::progress_thread_of(p.server);
    const auto client_progress = btsp_it::progress_thread_of(p.client);
    for (auto t : handler_threads) {
        EXPECT_EQ(t, io_thread);
        EXPECT_NE(t, server_progress);
        EXPECT_NE(t, client_progress);
    }
}

TEST(AsioOps, UseAwaitableThrowsSystemErrorOnFailure) {
    btsp::CoroutineRdmaManager client;
    ASSERT_TRUE(client.initialize(false, 0));
    const std::uint16_t nobody = btsp_it::unused_port();
    asio::io_context io;
    std::error_code caught;
    bool threw = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            try {
                (void)co_await ops::async_connect(client, "127.0.0.1", nobody, asio::use_awaitable);
            } catch (const std::system_error& e) {
                threw = true;
                caught = e.code();
            }
        },
        asio::detached);
    io.run_for(20s);
    ASSERT_TRUE(threw);
    EXPECT_STREQ(caught.category().name(), "btsp");
    EXPECT_EQ(caught.value(), static_cast<int>(RdmaResult::DISCONNECTED));
}

TEST(AsioOps, UseAwaitableCancelledByAwaitableOperator) {
    btsp_it::LoopbackPair p;
    ASSERT_TRUE(p.connect());
    asio::io_context io;
    using namespace asio::experimental::awaitable_operators;
    bool timer_won = false;
    bool done = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            int v = 0;
            asio::steady_timer timer(io, 50ms);
            // Nobody sends tag 99: the timer wins and the receive is cancelled.
            auto winner = co_await (ops::async_tag_recv(p.server, &v, sizeof v, 99, asio::use_awaitable) ||
                                    timer.async_wait(asio::use_awaitable));
            timer_won = winner.index() == 1;
            done = true;
        },
        asio::detached);
    io.run_for(20s);
    ASSERT_TRUE(done);
    EXPECT_TRUE(timer_won);
    // The receive was really withdrawn: a later message for tag 99 goes to a new receive.
    int in = 0;
    auto r = btsp::to_future(p.server.tag_recv(&in, sizeof in, 99));
    const int out = 5;
    auto s = btsp::to_future(p.client.tag_send(&out, sizeof out, 99));
    auto got = get_within(r, 10s);
    ASSERT_TRUE(got && got->success());
    EXPECT_EQ(in, 5);
    ASSERT_TRUE(get_within(s, 10s).has_value());
}

#else
TEST(AsioOps, UseAwaitable) { GTEST_SKIP() << "asio has no C++20 coroutine support with this compiler"; }
#endif  // ASIO_HAS_CO_AWAIT

// ---- use_future --------------------------------------------------------------------------

TEST(AsioOps, UseFutureConnectSendRecv) {
    btsp_it::LoopbackPair p;
    ASSERT_TRUE(p.init());
    std::future<RdmaOpResult> c = ops::async_connect(p.client, "127.0.0.1", p.port, asio::use_future);
    auto cr = get_within(c, 10s);
    ASSERT_TRUE(cr.has_value());
    EXPECT_EQ(cr->result, RdmaResult::SUCCESS) << *cr;
    auto w = btsp::to_future(p.server.wait_for_connection());
    ASSERT_TRUE(get_within(w, 10s).value_or(false));

    std::vector<char> in(100 * 1024, 0);  // rendezvous: both sides really wait
    std::vector<char> out(in.size());
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<char>(i % 251);
    std::future<RdmaOpResult> r = ops::async_tag_recv(p.server, in.data(), in.size(), 3, asio::use_future);
    std::future<RdmaOpResult> s = ops::async_tag_send(p.client, out.data(), out.size(), 3, asio::use_future);
    auto sent = get_within(s, 10s);
    auto got = get_within(r, 10s);
    ASSERT_TRUE(sent.has_value());
    ASSERT_TRUE(got.has_value());
    EXPECT_TRUE(sent->success()) << *sent;
    EXPECT_TRUE(got->success()) << *got;
    EXPECT_EQ(got->bytes_transferred, in.size());
    EXPECT_EQ(std::memcmp(in.data(), out.data(), in.size()), 0);
}

TEST(AsioOps, UseFutureCarriesTheErrorCode) {
    btsp::CoroutineRdmaManager client;
    ASSERT_TRUE(client.initialize(false, 0));
    int v = 0;
    auto f = ops::async_tag_send(client, &v, sizeof v, 1, asio::use_future);  // not connected
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
    try {
        (void)f.get();
        FAIL() << "expected std::system_error";
    } catch (const std::system_error& e) {
        EXPECT_EQ(e.code(), btsp::make_error_code(RdmaResult::DISCONNECTED));
    }
}

TEST(AsioOps, UseFutureBoundToAnIoContext) {
    // bind_executor moves even use_future's completion onto the io_context's thread.
    btsp_it::LoopbackPair p;
    ASSERT_TRUE(p.init());
    asio::io_context io;
    auto c = ops::async_connect(p.client, "127.0.0.1", p.port, asio::bind_executor(io, asio::use_future));
    EXPECT_EQ(c.wait_for(200ms), std::future_status::timeout) << "completes only when io runs";
    io.run_for(20s);
    auto cr = get_within(c, 1s);
    ASSERT_TRUE(cr.has_value());
    EXPECT_TRUE(cr->success()) << *cr;
}

// ---- plain callbacks ------------------------------------------------------------------------

TEST(AsioOps, CallbacksRunOnTheIoContextThread) {
    btsp_it::LoopbackPair p;
    ASSERT_TRUE(p.init());
    asio::io_context io;
    const auto io_thread = std::this_thread::get_id();
    std::vector<std::thread::id> threads;
    std::vector<std::string> events;
    int in = 0;
    const int out = 1234;

    // Executor-first overload: the callback has no executor of its own.
    ops::async_connect(io.get_executor(), p.client, "127.0.0.1", p.port,
                       [&](std::error_code ec, RdmaOpResult r) {
                           threads.push_back(std::this_thread::get_id());
                           events.push_back("connect " + ec.message());
                           if (ec || !r.success()) return;
                           // The server's side of the connection may lag by a moment.
                           auto w = btsp::to_future(p.server.wait_for_connection());
                           if (!get_within(w, 10s).value_or(false)) return;
                           ops::async_tag_recv(io.get_executor(), p.server, &in, sizeof in, 21,
                                               [&](std::error_code ec2, RdmaOpResult r2) {
                                                   threads.push_back(std::this_thread::get_id());
                                                   events.push_back("recv " + ec2.message() + " " +
                                                                    std::to_string(r2.bytes_transferred));
                                               });
                           // Manager-first overload with a bound executor.
                           ops::async_tag_send(p.client, &out, sizeof out, 21,
                                               asio::bind_executor(io, [&](std::error_code ec3, RdmaOpResult) {
                                                   threads.push_back(std::this_thread::get_id());
                                                   events.push_back("send " + ec3.message());
                                               }));
                       });
    EXPECT_TRUE(events.empty()) << "a handler never runs inside the initiating call";
    io.run_for(20s);

    ASSERT_EQ(events.size(), 3u);
    EXPECT_EQ(events[0], "connect success");
    EXPECT_TRUE((events[1] == "send success" && events[2] == "recv success 4") ||
                (events[1] == "recv success 4" && events[2] == "send success"))
        << events[1] << " / " << events[2];
    EXPECT_EQ(in, 1234);
    const auto server_progress = btsp_it::progress_thread_of(p.server);
    const auto client_progress = btsp_it::progress_thread_of(p.client);
    for (auto t : threads) {
        EXPECT_EQ(t, io_thread);
        EXPECT_NE(t, server_progress);
        EXPECT_NE(t, client_progress);
    }
}

TEST(AsioOps, WorkGuardKeepsRunAlive) {
    // io.run() (no deadline) must not return while an operation is pending: the handler
    // has run by the time it returns.
    btsp_it::LoopbackPair p;
    ASSERT_TRUE(p.connect());
    asio::io_context io;
    int in = 0;
    bool handled = false;
    ops::async_tag_recv(io.get_executor(), p.server, &in, sizeof in, 4,
                        [&](std::error_code ec, RdmaOpResult) { handled = !ec; });
    std::thread sender([&p] {
        std::this_thread::sleep_for(100ms);  // test choreography: send after run() started
        const int v = 8;
        auto s = btsp::to_future(p.client.tag_send(&v, sizeof v, 4));
        (void)get_within(s, 10s);
    });
    io.run();  // bounded: the sender always sends (and the test TIMEOUT backs it up)
    sender.join();
    EXPECT_TRUE(handled);
    EXPECT_EQ(in, 8);
}

TEST(AsioOps, CallbackCancelledThroughItsSlot) {
    btsp_it::LoopbackPair p;
    ASSERT_TRUE(p.connect());
    asio::io_context io;
    asio::cancellation_signal signal;
    std::error_code result_ec;
    RdmaOpResult result;
    bool handled = false;
    int v = 0;
    ops::async_tag_recv(io.get_executor(), p.server, &v, sizeof v, 55,
                        asio::bind_cancellation_slot(signal.slot(), [&](std::error_code ec, RdmaOpResult r) {
                            handled = true;
                            result_ec = ec;
                            result = r;
                        }));
    asio::steady_timer timer(io, 30ms);
    timer.async_wait([&](std::error_code) { signal.emit(asio::cancellation_type::total); });
    io.run_for(20s);
    ASSERT_TRUE(handled);
    EXPECT_EQ(result.result, RdmaResult::CANCELLED) << result;
    EXPECT_EQ(result_ec, std::errc::operation_canceled);
}

TEST(AsioOps, UnboundCallbackRunsOffTheProgressThread) {
    // No executor anywhere: asio's system executor runs the callback (not btsp's thread).
    btsp_it::LoopbackPair p;
    ASSERT_TRUE(p.init());
    std::promise<std::thread::id> where;
    auto f = where.get_future();
    ops::async_connect(p.client, "127.0.0.1", p.port,
                       [&where](std::error_code, RdmaOpResult) { where.set_value(std::this_thread::get_id()); });
    auto t = get_within(f, 10s);
    ASSERT_TRUE(t.has_value());
    EXPECT_NE(*t, std::this_thread::get_id());
    EXPECT_NE(*t, btsp_it::progress_thread_of(p.client));
}

TEST(AsioOps, DeferredTokenStartsOnlyWhenInvoked) {
    btsp_it::LoopbackPair p;
    ASSERT_TRUE(p.init());
    asio::io_context io;
    auto op = ops::async_connect(io.get_executor(), p.client, "127.0.0.1", p.port, asio::experimental::deferred);
    EXPECT_FALSE(p.client.is_connected());
    bool ok = false;
    std::move(op)([&ok](std::error_code ec, RdmaOpResult r) { ok = !ec && r.success(); });
    io.run_for(20s);
    EXPECT_TRUE(ok);
}

}  // namespace
