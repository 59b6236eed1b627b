// Wire format: btsp's tag_send/tag_recv are plain UCX tag messages over UCX's sockaddr
// client/server flow, so a plain UCP program (tests/peer/plain_ucp_peer.cpp, default UCX
// configuration) interoperates with our server and our client.
#include "process_util.hpp"
#include "test_util.hpp"

#include <btsp/btsp.hpp>

#include <gtest/gtest.h>

#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#ifndef PLAIN_UCP_PEER
#error "PLAIN_UCP_PEER (path of plain_ucp_peer) must be defined by the build"
#endif

namespace {

using namespace btsp_test;
using btsp::CoroutineRdmaManager;
using btsp::RdmaOpResult;
using btsp::RdmaResult;
using btsp::RdmaTask;

constexpr auto kOpLimit = 10s;
constexpr std::uint64_t kTagRequest = 7;
constexpr std::uint64_t kTagReply = 8;

/// The payload plain_ucp_peer's client sends for message i.
std::vector<std::uint8_t> plain_payload(std::size_t size, int i) {
    std::vector<std::uint8_t> v(size);
    for (std::size_t k = 0; k < size; ++k)
        v[k] = static_cast<std::uint8_t>((k * 31u + static_cast<std::size_t>(i) * 7u) & 0xffu);
    return v;
}

/// Receives on tag 7, checks the payload is plain_payload(size, i), replies on tag 8.
/// Returns "" or the first problem seen (it keeps serving after a wrong detail, so the
/// plain client does not wait for a reply that never comes).
RdmaTask<std::string> serve_plain_client(CoroutineRdmaManager& m, int count, std::size_t size) {
    // (never `if (!co_await ...)`: g++ 12 miscompiles co_await inside a condition)
    const bool connected = co_await m.wait_for_connection();
    if (!connected) co_return "no connection";
    std::vector<std::uint8_t> buf(size + 16);
    std::string problem;
    auto note = [&problem](int i, const std::string& what) {
        if (problem.empty()) problem = "message " + std::to_string(i) + ": " + what;
    };
    for (int i = 0; i < count; ++i) {
        const RdmaOpResult r = co_await m.tag_recv(buf.data(), buf.size(), kTagRequest);
        if (!r) {
            note(i, "recv " + std::string(r.reason()));
            co_return problem;
        }
        if (r.bytes_transferred != size) note(i, "length " + std::to_string(r.bytes_transferred));
        if (r.sender_tag != kTagRequest) note(i, "sender_tag " + std::to_string(r.sender_tag));
        const auto expected = plain_payload(size, i);
        if (std::memcmp(buf.data(), expected.data(), size) != 0) note(i, "payload");
        const RdmaOpResult s = co_await m.tag_send(buf.data(), r.bytes_transferred, kTagReply);
        if (!s) {
            note(i, "send " + std::string(s.reason()));
            co_return problem;
        }
    }
    co_return problem;
}

class InteropTest : public ::testing::Test {
protected:
    void TearDown() override {
        manager_.reset();
        children_.clear();
    }
    ChildProcess& spawn(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
        children_.push_back(std::make_unique<ChildProcess>(PLAIN_UCP_PEER, args, env));
        return *children_.back();
    }

    void our_client_to_plain_server(const std::vector<std::string>& env) {
        const std::vector<std::size_t> sizes = {8, 4096, 65536, 1u << 20, 4u << 20};
        ChildProcess& server = spawn({"server", std::to_string(sizes.size())}, env);
        ASSERT_TRUE(server.started()) << server.error();
        const std::uint16_t port = server.read_port(10s);
        ASSERT_NE(port, 0) << "plain server did not report its port";
        manager_ = std::make_unique<CoroutineRdmaManager>(test_options());
        ASSERT_TRUE(manager_->initialize(false, 0));
        const auto c = await_within(manager_->connect("127.0.0.1", port), kOpLimit);
        ASSERT_TRUE(c.has_value()) << "connect to the plain server never completed";
        ASSERT_TRUE(c->success()) << *c;
        for (std::size_t i = 0; i < sizes.size(); ++i) {
            const std::size_t size = sizes[i];
            auto& out = buffers_.emplace_back(pattern(size, static_cast<std::uint32_t>(i)));
            auto& in = buffers_.emplace_back(size);
            auto recv = start(manager_->tag_recv(in.data(), in.size(), kTagReply));
            const auto s = await_within(manager_->tag_send(out.data(), out.size(), kTagRequest), kOpLimit);
            ASSERT_TRUE(s.has_value()) << "send of " << size << " bytes never completed";
            ASSERT_TRUE(s->success()) << size << ": " << *s;
            const auto r = recv->wait_for(kOpLimit);
            ASSERT_TRUE(r.has_value()) << "no reply from the plain server for " << size << " bytes";
            ASSERT_TRUE(r->success()) << *r;
            EXPECT_EQ(r->bytes_transferred, size);
            EXPECT_EQ(r->sender_tag, kTagReply);
            EXPECT_EQ(checksum(in.data(), size), checksum(out.data(), size)) << size;
        }
        EXPECT_TRUE(server.expect_line("DONE", 5s).has_value());
        manager_->shutdown();  // the plain server waits for our close, then exits
        const auto rc = server.wait_exit(10s);
        ASSERT_TRUE(rc.has_value()) << "plain server did not exit";
        EXPECT_EQ(*rc, 0) << "plain server exit code";
    }

    void plain_client_to_our_server(std::size_t size, const std::vector<std::string>& env) {
        constexpr int kCount = 10;
        manager_ = std::make_unique<CoroutineRdmaManager>(test_options());
        ASSERT_TRUE(manager_->initialize(true, 0));
        auto served = start(serve_plain_client(*manager_, kCount, size));
        ChildProcess& client = spawn({"client", "127.0.0.1", std::to_string(manager_->listening_port()),
                                      std::to_string(kCount), std::to_string(size)},
                                     env);
        ASSERT_TRUE(client.started()) << client.error();
        const auto rc = client.wait_exit(30s);
        ASSERT_TRUE(rc.has_value()) << "plain client did not finish";
        EXPECT_EQ(*rc, 0) << "plain client exit code (3 connect, 4 transfer, 5 data)";
        const auto result = served->wait_for(kOpLimit);
        ASSERT_TRUE(result.has_value()) << "our server did not finish serving";
        EXPECT_EQ(*result, "");
    }

    std::deque<std::vector<std::uint8_t>> buffers_;  // outlive the manager
    std::vector<std::unique_ptr<ChildProcess>> children_;
    std::unique_ptr<CoroutineRdmaManager> manager_;
};

TEST_F(InteropTest, OurClientTalksToPlainUcpServer) { our_client_to_plain_server({}); }

TEST_F(InteropTest, PlainUcpClientTalksToOurServerSmallMessages) {
    plain_client_to_our_server(64, {});
}

TEST_F(InteropTest, PlainUcpClientTalksToOurServerLargeMessages) {
    plain_client_to_our_server(1u << 20, {});
}

// Same, with the plain peer configured like btsp configures itself (shared memory kept
// with PEER error handling): separates a lane-configuration mismatch from other faults.
TEST_F(InteropTest, OurClientTalksToPlainUcpServerWithMmErrorHandling) {
    our_client_to_plain_server({"UCX_MM_ERROR_HANDLING=y"});
}

TEST_F(InteropTest, PlainUcpClientWithMmErrorHandlingTalksToOurServer) {
    plain_client_to_our_server(64, {"UCX_MM_ERROR_HANDLING=y"});
}

}  // namespace
