// The spec's std::async integration (与其他框架集成 / 2. 与 std::async 集成), compiled as
// written and run over loopback. The class body below is the spec's, unchanged (its
// include line is the spec's include path). The snippet gives no way to initialise its
// private manager, so the test reaches it through a pointer-to-member obtained by explicit
// template instantiation (which may name private members) — no edit of the snippet.
#include <iostream>
#include <thread>

// ----------------------------------- the spec's snippet -----------------------------------
#include <future>
#include "rpc/coroutine_rdma_manager.hpp"

class AsyncRdmaWrapper {
private:
    btsp::CoroutineRdmaManager rdma_manager;

public:
    std::future<bool> send_data_future(void* data, size_t size, uint64_t tag) {
        return std::async(std::launch::async, [this, data, size, tag]() {
            auto task = this->send_coroutine(data, size, tag);

            // 等待协程完成
            while (!task.done()) {
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
            }

            try {
                task.get();
                return true;
            } catch (const std::exception& e) {
                std::cerr << "RDMA 操作失败: " << e.what() << std::endl;
                return false;
            }
        });
    }

private:
    btsp::RdmaTask<void> send_coroutine(void* data, size_t size, uint64_t tag) {
        auto result = co_await rdma_manager.tag_send(data, size, tag);
        if (!result.success()) {
            throw std::runtime_error("发送失败");
        }
    }
};
// ------------------------------------------------------------------------------------------

#include "integration_util.hpp"

#include <gtest/gtest.h>

#include <sstream>
#include <streambuf>

namespace {

using namespace std::chrono_literals;
using btsp_it::get_within;

// Access to AsyncRdmaWrapper::rdma_manager (explicit instantiation may name it).
using ManagerMember = btsp::CoroutineRdmaManager AsyncRdmaWrapper::*;
ManagerMember wrapper_manager_member();
template <ManagerMember M>
struct ManagerAccess {
    friend ManagerMember wrapper_manager_member() { return M; }
};
template struct ManagerAccess<&AsyncRdmaWrapper::rdma_manager>;

btsp::CoroutineRdmaManager& manager_of(AsyncRdmaWrapper& w) { return w.*wrapper_manager_member(); }

// Captures std::cerr for the scope.
class CerrCapture {
public:
    CerrCapture() : old_(std::cerr.rdbuf(buf_.rdbuf())) {}
    ~CerrCapture() { std::cerr.rdbuf(old_); }
    CerrCapture(const CerrCapture&) = delete;
    CerrCapture& operator=(const CerrCapture&) = delete;
    std::string text() const { return buf_.str(); }

private:
    std::ostringstream buf_;
    std::streambuf* old_;
};

TEST(SpecAsyncWrapper, SendsThroughStdAsync) {
    btsp::CoroutineRdmaManager server(btsp_it::loopback_server_options());
    ASSERT_TRUE(server.initialize(true, 0));
    AsyncRdmaWrapper wrapper;
    btsp::CoroutineRdmaManager& client = manager_of(wrapper);
    ASSERT_TRUE(client.initialize(false, 0));
    auto c = btsp::to_future(client.connect("127.0.0.1", server.listening_port()));
    auto cr = get_within(c, 10s);
    ASSERT_TRUE(cr && cr->success());
    auto w = btsp::to_future(server.wait_for_connection());
    ASSERT_TRUE(get_within(w, 10s).value_or(false));

    int in[3] = {};
    auto r = btsp::to_future(server.tag_recv(in, sizeof in, 31));
    int out[3] = {3, 1, 4};
    std::future<bool> sent = wrapper.send_data_future(out, sizeof out, 31);
    auto ok = get_within(sent, 10s);
    ASSERT_TRUE(ok.has_value()) << "send_data_future did not finish";
    EXPECT_TRUE(*ok);
    auto got = get_within(r, 10s);
    ASSERT_TRUE(got && got->success());
    EXPECT_EQ(in[0], 3);
    EXPECT_EQ(in[1], 1);
    EXPECT_EQ(in[2], 4);
}

TEST(SpecAsyncWrapper, ReportsAFailedSend) {
    AsyncRdmaWrapper wrapper;  // its manager never connects: the send fails at once
    CerrCapture err;
    int out = 1;
    std::future<bool> sent = wrapper.send_data_future(&out, sizeof out, 1);
    auto ok = get_within(sent, 10s);
    ASSERT_TRUE(ok.has_value());
    EXPECT_FALSE(*ok);
    EXPECT_NE(err.text().find("RDMA 操作失败: 发送失败"), std::string::npos) << err.text();
}

}  // namespace
