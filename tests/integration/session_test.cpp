// RdmaSession: RAII around a manager (spec 最佳实践 1. 资源管理).
#include "integration_util.hpp"

#include <btsp/session.hpp>

#include <gtest/gtest.h>

#include <memory>
#include <stdexcept>
#include <string>

namespace {

using namespace std::chrono_literals;
using btsp::RdmaResult;
using btsp::RdmaSession;
using btsp::RdmaState;
using btsp_it::get_within;

// Silences the library's log for a scope (expected failures log at ERROR).
struct QuietLog {
    btsp::LogLevel saved = btsp::log_level();
    QuietLog() { btsp::set_log_level(btsp::LogLevel::OFF); }
    ~QuietLog() { btsp::set_log_level(saved); }
    QuietLog(const QuietLog&) = delete;
    QuietLog& operator=(const QuietLog&) = delete;
};

TEST(RdmaSession, InitialisesServerAndClient) {
    RdmaSession server(true, 0, btsp_it::loopback_server_options());
    RdmaSession client;  // client mode, options from the environment
    EXPECT_TRUE(server->is_running());
    EXPECT_EQ(server->get_state(), RdmaState::LISTENING);
    EXPECT_NE(server->listening_port(), 0);
    EXPECT_EQ(client.manager().get_state(), RdmaState::IDLE);
    EXPECT_EQ(&server.manager(), server.operator->());
    EXPECT_EQ(&*client, &client.manager());

    auto c = btsp::to_future(client->connect("127.0.0.1", server->listening_port()));
    auto cr = get_within(c, 10s);
    ASSERT_TRUE(cr && cr->success());
    auto w = btsp::to_future(server->wait_for_connection());
    ASSERT_TRUE(get_within(w, 10s).value_or(false));
    char in[6] = {};
    auto r = btsp::to_future(server->tag_recv(in, sizeof in, 8));
    auto s = btsp::to_future(client->tag_send("hello", 6, 8));
    auto got = get_within(r, 10s);
    ASSERT_TRUE(got && got->success());
    EXPECT_STREQ(in, "hello");
    ASSERT_TRUE(get_within(s, 10s).has_value());
}

TEST(RdmaSession, InitialisationFailureThrowsWithTheReason) {
    RdmaSession holder(true, 0, btsp_it::loopback_server_options());
    const std::uint16_t busy = holder->listening_port();
    ASSERT_NE(busy, 0);
    QuietLog quiet;
    try {
        RdmaSession second(true, busy, btsp_it::loopback_server_options());
        FAIL() << "a second server on port " << busy << " must not initialise";
    } catch (const std::runtime_error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("btsp::RdmaSession"), std::string::npos) << what;
        EXPECT_NE(what.find(std::to_string(busy)), std::string::npos) << what;
        // the manager's last_error() follows "...: "
        const auto colon = what.rfind(": ");
        ASSERT_NE(colon, std::string::npos) << what;
        EXPECT_GT(what.size(), colon + 2) << "reason is empty: " << what;
    }
    EXPECT_TRUE(holder->is_running()) << "the holder is unaffected";
}

TEST(RdmaSession, BadOptionsThrow) {
    btsp::ManagerOptions o = btsp_it::loopback_server_options();
    o.allowed_clients = {"not-an-address/99"};
    QuietLog quiet;
    EXPECT_THROW(RdmaSession(true, 0, o), std::runtime_error);
}

TEST(RdmaSession, DestructorShutsDown) {
    auto server = std::make_unique<RdmaSession>(true, 0, btsp_it::loopback_server_options());
    RdmaSession client;
    auto c = btsp::to_future(client->connect("127.0.0.1", (*server)->listening_port()));
    auto cr = get_within(c, 10s);
    ASSERT_TRUE(cr && cr->success());
    auto w = btsp::to_future((*server)->wait_for_connection());
    ASSERT_TRUE(get_within(w, 10s).value_or(false));

    int server_buf = 0;
    int client_buf = 0;
    auto pending_server = btsp::to_future((*server)->tag_recv(&server_buf, sizeof server_buf, 1));
    auto pending_client = btsp::to_future(client->tag_recv(&client_buf, sizeof client_buf, 2));
    EXPECT_EQ(pending_server.wait_for(20ms), std::future_status::timeout);

    server.reset();  // ~RdmaSession: shutdown()

    auto rs = get_within(pending_server, 10s);
    ASSERT_TRUE(rs.has_value()) << "the session's pending receive must end";
    EXPECT_EQ(rs->result, RdmaResult::DISCONNECTED) << *rs;
    auto rc = get_within(pending_client, 20s);
    ASSERT_TRUE(rc.has_value()) << "the peer must see the connection end";
    EXPECT_EQ(rc->result, RdmaResult::DISCONNECTED) << *rc;
}

TEST(RdmaSession, ExplicitShutdownThenDestructor) {
    RdmaSession s(true, 0, btsp_it::loopback_server_options());
    s.shutdown();
    EXPECT_EQ(s->get_state(), RdmaState::SHUTDOWN);
    EXPECT_FALSE(s->is_running());
    int v = 0;
    auto f = btsp::to_future(s->tag_recv(&v, sizeof v, 1));
    ASSERT_EQ(f.wait_for(0s), std::future_status::ready);
    EXPECT_EQ(f.get().result, RdmaResult::DISCONNECTED);
}  // the destructor's second shutdown() is a no-op

}  // namespace
