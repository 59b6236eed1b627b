// The spec's code snippets (shared/seed/000_a81450e32184783a.txt), compiled as written and
// run against a peer in this process: every snippet of the sections before "高级用法", and
// the tag matching, error handling and state monitoring snippets of "高级用法".
//
// Adaptations, and only these: the fixed port 12345 is `g_spec_port`, a free port
// port chosen by each test; the unreachable 192.168.1.100 is 127.0.0.1 on a port nobody
// listens on (tests never leave loopback); `main` is `spec_main`; the bare statement
// snippet of "基本设置" is wrapped in a function. What the snippets print is their
// observable outcome: std::cout / std::cerr are captured line by line and checked.
#include "rpc/coroutine_rdma_manager.hpp"  // the spec's include path

#include "test_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <future>
#include <iostream>
#include <map>
#include <mutex>
#include <streambuf>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace spec {

using namespace btsp;  // as the spec writes it

std::uint16_t g_spec_port = 0;          // stands for the spec's 12345
std::uint16_t g_refused_port = 0;       // with 127.0.0.1, stands for 192.168.1.100:12345

// ================================ 快速开始 1. 基本设置 ================================
void basic_setup() {
    // 创建管理器实例
    CoroutineRdmaManager manager;

    // 初始化（服务器模式）
    if (!manager.initialize(true, g_spec_port)) {
        std::cerr << "初始化失败" << std::endl;
        return;
    }
}

// ============================= 快速开始 2. 简单的服务器协程 =============================
RdmaTask<void> server_coroutine() {
    CoroutineRdmaManager manager;
    manager.initialize(true, g_spec_port);

    // 等待客户端连接
    std::cout << "等待连接..." << std::endl;
    co_await manager.wait_for_connection();
    std::cout << "客户端已连接!" << std::endl;

    // 接收数据
    std::vector<int> buffer(4, 0);
    RdmaOpResult result = co_await manager.tag_recv(
        buffer.data(),
        buffer.size() * sizeof(int),
        42  // tag
    );

    if (result.success()) {
        std::cout << "接收成功: ";
        for (const auto& val : buffer) {
            std::cout << val << " ";
        }
        std::cout << std::endl;
    }

    manager.shutdown();
}

// ============================= 快速开始 3. 简单的客户端协程 =============================
RdmaTask<void> client_coroutine() {
    CoroutineRdmaManager manager;
    manager.initialize(false, 0);

    // 连接服务器
    std::cout << "连接服务器..." << std::endl;
    RdmaOpResult connect_result = co_await manager.connect("127.0.0.1", g_spec_port);

    if (!connect_result.success()) {
        std::cerr << "连接失败" << std::endl;
        co_return;
    }

    std::cout << "连接成功!" << std::endl;

    // 发送数据
    std::vector<int> data = {10, 20, 30, 40};
    RdmaOpResult send_result = co_await manager.tag_send(
        data.data(),
        data.size() * sizeof(int),
        42  // tag
    );

    if (send_result.success()) {
        std::cout << "发送成功!" << std::endl;
    }

    manager.shutdown();
}

// ================================ 快速开始 4. 运行协程 ================================
void run_coroutine(auto coroutine_func) {
    auto task = coroutine_func();

    // 等待协程完成
    while (!task.done()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }

    // 检查结果
    try {
        task.get();
        std::cout << "协程完成成功" << std::endl;
    } catch (const std::exception& e) {
        std::cerr << "协程异常: " << e.what() << std::endl;
    }
}

int spec_main() {
    // 运行服务器或客户端
    run_coroutine(server_coroutine);  // 或 client_coroutine
    return 0;
}

// ==================================== API 参考 ====================================
// The reference lists declarations; check that code written against them compiles
// and that the types are what it says.
struct ApiReference {
    static void lifecycle() {
        // 构造函数 / 析构函数 / 初始化管理器 (default arguments) / 关闭管理器
        CoroutineRdmaManager manager;
        static_assert(std::is_same_v<decltype(manager.initialize()), bool>);
        static_assert(std::is_same_v<decltype(manager.initialize(true)), bool>);
        static_assert(std::is_same_v<decltype(manager.initialize(false, std::uint16_t{0})), bool>);
        static_assert(std::is_same_v<decltype(manager.shutdown()), void>);
    }
    static void operations(CoroutineRdmaManager& m, void* data, size_t size, uint64_t tag,
                           const std::string& remote_addr, uint16_t remote_port, uint16_t port) {
        // RdmaAwaitable tag_send(void* data, size_t size, uint64_t tag);
        static_assert(std::is_same_v<decltype(m.tag_send(data, size, tag)), RdmaAwaitable>);
        // RdmaAwaitable tag_recv(void* data, size_t size, uint64_t tag);
        static_assert(std::is_same_v<decltype(m.tag_recv(data, size, tag)), RdmaAwaitable>);
        // RdmaAwaitable connect(const std::string& remote_addr, uint16_t remote_port);
        static_assert(std::is_same_v<decltype(m.connect(remote_addr, remote_port)), RdmaAwaitable>);
        // RdmaAwaitable listen(uint16_t port);
        static_assert(std::is_same_v<decltype(m.listen(port)), RdmaAwaitable>);
    }
    static void state(CoroutineRdmaManager& m, const CoroutineRdmaManager& cm) {
        // StateChangeAwaitable wait_for_state(RdmaState target_state);
        static_assert(std::is_same_v<decltype(m.wait_for_state(RdmaState::CONNECTED)),
                                     StateChangeAwaitable>);
        // StateChangeAwaitable wait_for_connection();
        static_assert(std::is_same_v<decltype(m.wait_for_connection()), StateChangeAwaitable>);
        // RdmaState get_state() const; bool is_connected() const; bool is_running() const;
        static_assert(std::is_same_v<decltype(cm.get_state()), RdmaState>);
        static_assert(std::is_same_v<decltype(cm.is_connected()), bool>);
        static_assert(std::is_same_v<decltype(cm.is_running()), bool>);
    }
    static void result_struct() {
        // struct RdmaOpResult { RdmaResult result; size_t bytes_transferred;
        //                       bool success() const; operator bool() const; };
        const RdmaOpResult r{};
        static_assert(std::is_same_v<decltype(r.result), RdmaResult>);
        static_assert(std::is_same_v<decltype(r.bytes_transferred), size_t>);
        static_assert(std::is_same_v<decltype(r.success()), bool>);
        if (r) {
        }  // "隐式转换为 bool": usable in a condition
        // enum class RdmaResult { SUCCESS, FAILURE, TIMEOUT, DISCONNECTED };
        static_assert(std::is_enum_v<RdmaResult>);
        [[maybe_unused]] RdmaResult all_results[] = {RdmaResult::SUCCESS, RdmaResult::FAILURE,
                                                     RdmaResult::TIMEOUT, RdmaResult::DISCONNECTED};
        // enum class RdmaState { IDLE, LISTENING, CONNECTING, CONNECTED, SENDING, RECEIVING,
        //                        ERROR, SHUTDOWN };
        [[maybe_unused]] RdmaState all_states[] = {
            RdmaState::IDLE,      RdmaState::LISTENING, RdmaState::CONNECTING, RdmaState::CONNECTED,
            RdmaState::SENDING,   RdmaState::RECEIVING, RdmaState::ERROR,      RdmaState::SHUTDOWN};
    }
};

// ============================ 高级用法 1. Tag Matching 通信 ============================
RdmaTask<void> tag_matching_example() {
    CoroutineRdmaManager manager;
    manager.initialize(true, g_spec_port);

    co_await manager.wait_for_connection();

    // 接收不同类型的数据
    std::vector<int> int_data(5, 0);
    std::vector<float> float_data(3, 0.0f);
    char string_data[256] = {0};

    // 使用不同的 tag 接收数据
    auto int_result = co_await manager.tag_recv(
        int_data.data(), int_data.size() * sizeof(int), 100);

    auto float_result = co_await manager.tag_recv(
        float_data.data(), float_data.size() * sizeof(float), 200);

    auto string_result = co_await manager.tag_recv(
        string_data, sizeof(string_data), 300);

    // 处理结果
    if (int_result.success()) {
        std::cout << "接收到整数数组" << std::endl;
    }
    if (float_result.success()) {
        std::cout << "接收到浮点数组" << std::endl;
    }
    if (string_result.success()) {
        std::cout << "接收到字符串: " << string_data << std::endl;
    }
}

// ================================ 高级用法 2. 错误处理 ================================
RdmaTask<void> error_handling_example() {
    CoroutineRdmaManager manager;

    try {
        if (!manager.initialize(false, 0)) {
            throw std::runtime_error("初始化失败");
        }

        // 尝试连接
        RdmaOpResult result = co_await manager.connect("127.0.0.1", g_refused_port);

        if (!result.success()) {
            if (result.result == RdmaResult::TIMEOUT) {
                std::cerr << "连接超时" << std::endl;
            } else if (result.result == RdmaResult::DISCONNECTED) {
                std::cerr << "连接被拒绝" << std::endl;
            } else {
                std::cerr << "连接失败" << std::endl;
            }
            co_return;
        }

        // 继续处理...

    } catch (const std::exception& e) {
        std::cerr << "协程异常: " << e.what() << std::endl;
    }

    manager.shutdown();
}

// ================================ 高级用法 3. 状态监控 ================================
RdmaTask<void> state_monitoring_example() {
    CoroutineRdmaManager manager;
    manager.initialize(true, g_spec_port);

    // 等待连接
    std::cout << "当前状态: " << static_cast<int>(manager.get_state()) << std::endl;

    co_await manager.wait_for_state(RdmaState::CONNECTED);
    std::cout << "连接已建立" << std::endl;

    // 监控连接状态
    while (manager.is_connected()) {
        // 执行 RDMA 操作
        std::this_thread::sleep_for(std::chrono::seconds(1));
    }

    std::cout << "连接已断开" << std::endl;
}

}  // namespace spec

namespace {

using namespace btsp_test;

/// Captures what is written to a std::ostream, as whole lines per thread (so lines of
/// concurrent coroutines do not interleave).
class LineCapture : public std::streambuf {
public:
    explicit LineCapture(std::ostream& os) : os_(os), old_(os.rdbuf(this)) {
        std::lock_guard<std::mutex> lock(active_mutex());
        active().push_back(this);
    }
    ~LineCapture() override {
        os_.rdbuf(old_);
        {
            std::lock_guard<std::mutex> lock(active_mutex());
            std::erase(active(), this);
        }
        for (auto& [id, partial] : partial_)
            if (!partial.empty()) lines_.push_back(partial);
    }
    LineCapture(const LineCapture&) = delete;
    LineCapture& operator=(const LineCapture&) = delete;

    std::vector<std::string> lines() {
        std::lock_guard<std::mutex> lock(mutex_);
        return lines_;
    }
    bool has_line(const std::string& text) {
        for (const auto& l : lines())
            if (l.find(text) != std::string::npos) return true;
        return false;
    }
    int count_lines(const std::string& text) {
        int n = 0;
        for (const auto& l : lines())
            if (l.find(text) != std::string::npos) ++n;
        return n;
    }
    std::string dump() {
        std::string all;
        for (const auto& l : lines()) all += "  | " + l + "\n";
        std::lock_guard<std::mutex> lock(mutex_);
        for (const auto& [id, partial] : partial_)
            if (!partial.empty()) all += "  | " + partial + " (no newline yet)\n";
        return all;
    }
    /// Everything captured so far by every live capture (for a failure report).
    static std::string dump_all() {
        std::lock_guard<std::mutex> lock(active_mutex());
        std::string all;
        for (LineCapture* c : active()) all += c->dump();
        return all;
    }

protected:
    int_type overflow(int_type ch) override {
        if (traits_type::eq_int_type(ch, traits_type::eof())) return traits_type::not_eof(ch);
        const char c = traits_type::to_char_type(ch);
        xsputn(&c, 1);
        return ch;
    }
    std::streamsize xsputn(const char* s, std::streamsize n) override {
        std::lock_guard<std::mutex> lock(mutex_);
        std::string& partial = partial_[std::this_thread::get_id()];
        for (std::streamsize i = 0; i < n; ++i) {
            if (s[i] == '\n') {
                lines_.push_back(partial);
                partial.clear();
            } else {
                partial.push_back(s[i]);
            }
        }
        return n;
    }

private:
    static std::vector<LineCapture*>& active() {
        static std::vector<LineCapture*> v;
        return v;
    }
    static std::mutex& active_mutex() {
        static std::mutex m;
        return m;
    }

    std::ostream& os_;
    std::streambuf* old_;
    std::mutex mutex_;
    std::map<std::thread::id, std::string> partial_;
    std::vector<std::string> lines_;
};

/// Runs `fn` on its own thread; fails (and ends the process, since the thread cannot be
/// stopped) if it does not return within `limit`.
void run_bounded(const char* what, std::function<void()> fn, std::chrono::seconds limit) {
    std::packaged_task<void()> job(std::move(fn));
    auto done = job.get_future();
    std::thread t(std::move(job));
    if (done.wait_for(limit) != std::future_status::ready) {
        // std::cerr may be captured: write to the stderr file directly.
        const std::string captured = LineCapture::dump_all();
        std::fprintf(stderr, "spec snippet test: '%s' did not finish within %lld s; output so far:\n%s",
                     what, static_cast<long long>(limit.count()), captured.c_str());
        std::fflush(stderr);
        std::_Exit(1);
    }
    t.join();
    done.get();
}

/// True once something listens on 127.0.0.1:port (probed by trying to bind it).
bool port_in_use(std::uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return false;
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons(port);
    const bool busy = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0;
    ::close(fd);
    return busy;
}

class SpecSnippets : public ::testing::Test {
protected:
    void SetUp() override {
        spec::g_spec_port = free_tcp_port();
        ASSERT_NE(spec::g_spec_port, 0);
    }
};

TEST_F(SpecSnippets, BasicSetupInitializesServer) {
    {
        LineCapture err(std::cerr);
        run_bounded("basic_setup", spec::basic_setup, std::chrono::seconds(10));
        EXPECT_FALSE(err.has_line("初始化失败")) << err.dump();
    }
    // On a busy port the snippet reports the failure.
    btsp::CoroutineRdmaManager holder;
    ASSERT_TRUE(holder.initialize(true, spec::g_spec_port));
    const auto saved = btsp::log_level();
    btsp::set_log_level(btsp::LogLevel::OFF);
    LineCapture err(std::cerr);
    run_bounded("basic_setup on a busy port", spec::basic_setup, std::chrono::seconds(10));
    btsp::set_log_level(saved);
    EXPECT_TRUE(err.has_line("初始化失败")) << err.dump();
}

TEST_F(SpecSnippets, QuickStartServerAndClientExchangeData) {
    LineCapture out(std::cout);
    LineCapture err(std::cerr);
    std::thread server([] { (void)spec::spec_main(); });  // run_coroutine(server_coroutine)
    const bool listening = wait_until([] { return port_in_use(spec::g_spec_port); }, 10s);
    if (listening) {
        run_bounded("run_coroutine(client_coroutine)",
                    [] { spec::run_coroutine(spec::client_coroutine); }, std::chrono::seconds(20));
    }
    run_bounded("spec_main (server)", [&server] { server.join(); }, std::chrono::seconds(20));
    ASSERT_TRUE(listening) << "the server coroutine never listened";
    EXPECT_TRUE(out.has_line("等待连接...")) << out.dump();
    EXPECT_TRUE(out.has_line("客户端已连接!")) << out.dump();
    EXPECT_TRUE(out.has_line("连接成功!")) << out.dump();
    EXPECT_TRUE(out.has_line("发送成功!")) << out.dump();
    EXPECT_TRUE(out.has_line("接收成功: 10 20 30 40 ")) << "data received equals data sent\n"
                                                         << out.dump();
    EXPECT_EQ(out.count_lines("协程完成成功"), 2) << out.dump();
    EXPECT_FALSE(err.has_line("连接失败")) << err.dump();
    EXPECT_FALSE(err.has_line("协程异常")) << err.dump();
}

TEST_F(SpecSnippets, ApiReferenceDeclarationsCompile) {
    // The checks are static_asserts; also run the lifecycle part.
    spec::ApiReference::lifecycle();
    spec::ApiReference::result_struct();
    SUCCEED();
}

btsp::RdmaTask<bool> send_typed_messages(btsp::CoroutineRdmaManager& m) {
    const btsp::RdmaOpResult c = co_await m.connect("127.0.0.1", spec::g_spec_port);
    if (!c) co_return false;
    static const int ints[5] = {1, 2, 3, 4, 5};
    static const float floats[3] = {1.5f, 2.5f, 3.5f};
    static const char text[] = "hello spec";
    // Out of order on purpose: the string first.
    // (not `if (!co_await ...)`: g++ 12 miscompiles co_await inside a condition)
    const btsp::RdmaOpResult s1 = co_await m.tag_send(text, sizeof text, 300);
    const btsp::RdmaOpResult s2 = co_await m.tag_send(ints, sizeof ints, 100);
    const btsp::RdmaOpResult s3 = co_await m.tag_send(floats, sizeof floats, 200);
    co_return s1.success() && s2.success() && s3.success();
}

TEST_F(SpecSnippets, TagMatchingExampleReceivesEachTypeByTag) {
    LineCapture out(std::cout);
    std::thread server([] { spec::run_coroutine(spec::tag_matching_example); });
    const bool listening = wait_until([] { return port_in_use(spec::g_spec_port); }, 10s);
    btsp::CoroutineRdmaManager client(test_options());
    std::optional<bool> sent;
    if (listening && client.initialize(false, 0)) sent = await_within(send_typed_messages(client), 10s);
    run_bounded("run_coroutine(tag_matching_example)", [&server] { server.join(); },
                std::chrono::seconds(20));
    client.shutdown();
    ASSERT_TRUE(listening);
    ASSERT_TRUE(sent.has_value() && *sent) << "the peer could not send";
    EXPECT_TRUE(out.has_line("接收到整数数组")) << out.dump();
    EXPECT_TRUE(out.has_line("接收到浮点数组")) << out.dump();
    EXPECT_TRUE(out.has_line("接收到字符串: hello spec")) << out.dump();
    EXPECT_TRUE(out.has_line("协程完成成功")) << out.dump();
}

TEST_F(SpecSnippets, ErrorHandlingExampleReportsRefusedConnection) {
    spec::g_refused_port = free_tcp_port();
    ASSERT_NE(spec::g_refused_port, 0);
    LineCapture out(std::cout);
    LineCapture err(std::cerr);
    const auto t0 = Clock::now();
    run_bounded("run_coroutine(error_handling_example)",
                [] { spec::run_coroutine(spec::error_handling_example); }, std::chrono::seconds(20));
    EXPECT_LT(ms_since(t0), 2000.0) << "a refused connection is reported quickly";
    EXPECT_TRUE(err.has_line("连接被拒绝")) << "DISCONNECTED branch expected\n" << err.dump();
    EXPECT_FALSE(err.has_line("连接超时")) << err.dump();
    EXPECT_FALSE(err.has_line("协程异常")) << err.dump();
    EXPECT_TRUE(out.has_line("协程完成成功")) << out.dump();
}

TEST_F(SpecSnippets, StateMonitoringExampleSeesConnectAndDisconnect) {
    LineCapture out(std::cout);
    std::thread server([] { spec::run_coroutine(spec::state_monitoring_example); });
    const bool listening = wait_until([] { return port_in_use(spec::g_spec_port); }, 10s);
    bool connected = false;
    if (listening) {
        btsp::CoroutineRdmaManager client(test_options());
        if (client.initialize(false, 0)) {
            const auto c = await_within(client.connect("127.0.0.1", spec::g_spec_port), 10s);
            connected = c.has_value() && c->success();
            std::this_thread::sleep_for(300ms);
        }
        client.shutdown();  // the monitored connection goes away
    }
    const auto t0 = Clock::now();
    run_bounded("run_coroutine(state_monitoring_example)", [&server] { server.join(); },
                std::chrono::seconds(20));
    ASSERT_TRUE(listening);
    ASSERT_TRUE(connected);
    EXPECT_LT(ms_since(t0), 4000.0) << "the monitor loop notices the disconnect within its 1 s poll";
    EXPECT_TRUE(out.has_line("当前状态: " + std::to_string(static_cast<int>(btsp::RdmaState::LISTENING))))
        << out.dump();
    EXPECT_TRUE(out.has_line("连接已建立")) << out.dump();
    EXPECT_TRUE(out.has_line("连接已断开")) << out.dump();
    EXPECT_TRUE(out.has_line("协程完成成功")) << out.dump();
}

}  // namespace
