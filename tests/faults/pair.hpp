// An in-process server + client pair over loopback, connected, for the fault tests.
#pragma once

#include "test_util.hpp"

#include <btsp/btsp.hpp>

#include <gtest/gtest.h>

#include <memory>
#include <string>

namespace btsp_fault {

struct Pair {
    std::unique_ptr<btsp::CoroutineRdmaManager> server;
    std::unique_ptr<btsp::CoroutineRdmaManager> client;

    /// Starts both and connects; check with ::testing::Test::HasFatalFailure().
    void open(btsp::ManagerOptions so = btsp_test::test_options(),
              btsp::ManagerOptions co = btsp_test::test_options()) {
        using namespace std::chrono_literals;
        server = std::make_unique<btsp::CoroutineRdmaManager>(so);
        ASSERT_TRUE(server->initialize(true, 0)) << server->last_error();
        client = std::make_unique<btsp::CoroutineRdmaManager>(co);
        ASSERT_TRUE(client->initialize(false, 0)) << client->last_error();
        const auto c = btsp_test::await_within(client->connect("127.0.0.1", server->listening_port()), 10s);
        ASSERT_TRUE(c.has_value()) << "connect never completed";
        ASSERT_TRUE(c->success()) << *c;
        ASSERT_TRUE(btsp_test::await_within(server->wait_for_connection(), 10s).value_or(false));
    }
};

}  // namespace btsp_fault
