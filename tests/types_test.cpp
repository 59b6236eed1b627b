// Tests of the vocabulary types, option parsing and the logging facility.
#include "test_util.hpp"

#include <btsp/log.hpp>
#include <btsp/options.hpp>
#include <btsp/types.hpp>

#include <gtest/gtest.h>

#include <ucs/type/status.h>

#include <chrono>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using btsp::LogLevel;
using btsp::ProgressMode;
using btsp::RdmaOpResult;
using btsp::RdmaResult;
using btsp::RdmaState;

template <typename T>
std::string streamed(const T& v) {
    std::ostringstream os;
    os << v;
    return os.str();
}

bool contains(std::string_view hay, std::string_view needle) {
    return hay.find(needle) != std::string_view::npos;
}

// ---- RdmaResult / RdmaState names -------------------------------------------------------

TEST(Types, RdmaResultNames) {
    const std::pair<RdmaResult, const char*> cases[] = {
        {RdmaResult::SUCCESS, "SUCCESS"},
        {RdmaResult::FAILURE, "FAILURE"},
        {RdmaResult::TIMEOUT, "TIMEOUT"},
        {RdmaResult::DISCONNECTED, "DISCONNECTED"},
        {RdmaResult::CANCELLED, "CANCELLED"},
    };
    for (const auto& [value, name] : cases) {
        EXPECT_EQ(btsp::to_string(value), name);
        EXPECT_EQ(streamed(value), name);
    }
}

TEST(Types, RdmaStateNames) {
    const std::pair<RdmaState, const char*> cases[] = {
        {RdmaState::IDLE, "IDLE"},           {RdmaState::LISTENING, "LISTENING"},
        {RdmaState::CONNECTING, "CONNECTING"}, {RdmaState::CONNECTED, "CONNECTED"},
        {RdmaState::SENDING, "SENDING"},     {RdmaState::RECEIVING, "RECEIVING"},
        {RdmaState::ERROR, "ERROR"},         {RdmaState::SHUTDOWN, "SHUTDOWN"},
    };
    for (const auto& [value, name] : cases) {
        EXPECT_EQ(btsp::to_string(value), name);
        EXPECT_EQ(streamed(value), name);
    }
}

TEST(Types, OutOfRangeEnumValuesDoNotCrashToString) {
    const auto bad_result = static_cast<RdmaResult>(200);
    const auto bad_state = static_cast<RdmaState>(200);
    EXPECT_FALSE(btsp::to_string(bad_result).empty());
    EXPECT_FALSE(btsp::to_string(bad_state).empty());
    EXPECT_FALSE(streamed(bad_result).empty());
}

TEST(Types, IsConnectedStateHoldsForConnectedSendingReceivingOnly) {
    static_assert(btsp::is_connected_state(RdmaState::CONNECTED));
    static_assert(btsp::is_connected_state(RdmaState::SENDING));
    static_assert(btsp::is_connected_state(RdmaState::RECEIVING));
    static_assert(!btsp::is_connected_state(RdmaState::IDLE));
    static_assert(!btsp::is_connected_state(RdmaState::LISTENING));
    static_assert(!btsp::is_connected_state(RdmaState::CONNECTING));
    static_assert(!btsp::is_connected_state(RdmaState::ERROR));
    static_assert(!btsp::is_connected_state(RdmaState::SHUTDOWN));
    SUCCEED();
}

// ---- RdmaOpResult --------------------------------------------------------------------------

TEST(RdmaOpResult, DefaultIsFailureWithNothingTransferred) {
    const RdmaOpResult r;
    EXPECT_EQ(r.result, RdmaResult::FAILURE);
    EXPECT_EQ(r.bytes_transferred, 0u);
    EXPECT_FALSE(r.success());
    EXPECT_FALSE(static_cast<bool>(r));
}

TEST(RdmaOpResult, SuccessAndBoolTrueOnlyForSuccess) {
    for (auto v : {RdmaResult::SUCCESS, RdmaResult::FAILURE, RdmaResult::TIMEOUT,
                   RdmaResult::DISCONNECTED, RdmaResult::CANCELLED}) {
        RdmaOpResult r;
        r.result = v;
        EXPECT_EQ(r.success(), v == RdmaResult::SUCCESS) << v;
        EXPECT_EQ(static_cast<bool>(r), v == RdmaResult::SUCCESS) << v;
        if (r) {
            EXPECT_EQ(v, RdmaResult::SUCCESS);
        }
    }
}

TEST(RdmaOpResult, ReasonOfSuccessIsSuccess) {
    RdmaOpResult r;
    r.result = RdmaResult::SUCCESS;
    r.bytes_transferred = 4096;
    EXPECT_EQ(r.reason(), "success");
}

TEST(RdmaOpResult, ReasonPrefersLibraryDetail) {
    RdmaOpResult r;
    r.result = RdmaResult::DISCONNECTED;
    r.detail = "manager shut down";
    EXPECT_EQ(r.reason(), "manager shut down");
}

TEST(RdmaOpResult, ReasonFallsBackToUcxStatusText) {
    RdmaOpResult r;
    r.result = RdmaResult::FAILURE;
    r.status = UCS_ERR_MESSAGE_TRUNCATED;
    EXPECT_EQ(r.reason(), ucs_status_string(UCS_ERR_MESSAGE_TRUNCATED));

    r.result = RdmaResult::DISCONNECTED;
    r.status = UCS_ERR_ENDPOINT_TIMEOUT;
    EXPECT_EQ(r.reason(), ucs_status_string(UCS_ERR_ENDPOINT_TIMEOUT));
}

TEST(RdmaOpResult, ReasonOfFailureWithoutDetailOrStatusIsNotEmpty) {
    RdmaOpResult r;
    r.result = RdmaResult::TIMEOUT;
    EXPECT_FALSE(r.reason().empty());
}

TEST(RdmaOpResult, StreamsSuccessWithByteCount) {
    RdmaOpResult r;
    r.result = RdmaResult::SUCCESS;
    r.bytes_transferred = 4096;
    EXPECT_EQ(streamed(r), "SUCCESS (4096 bytes)");
}

TEST(RdmaOpResult, StreamsFailureWithReason) {
    RdmaOpResult r;
    r.result = RdmaResult::DISCONNECTED;
    r.status = UCS_ERR_ENDPOINT_TIMEOUT;
    EXPECT_EQ(streamed(r),
              std::string("DISCONNECTED: ") + ucs_status_string(UCS_ERR_ENDPOINT_TIMEOUT));

    RdmaOpResult d;
    d.result = RdmaResult::FAILURE;
    d.detail = "null buffer";
    EXPECT_EQ(streamed(d), "FAILURE: null buffer");
}

// ---- ProgressMode -------------------------------------------------------------------------

TEST(ProgressMode, ParsesAllSpellingsInAnyCase) {
    const std::pair<const char*, ProgressMode> cases[] = {
        {"polling", ProgressMode::POLLING},   {"poll", ProgressMode::POLLING},
        {"POLLING", ProgressMode::POLLING},   {"Poll", ProgressMode::POLLING},
        {"blocking", ProgressMode::BLOCKING}, {"block", ProgressMode::BLOCKING},
        {"BLOCKING", ProgressMode::BLOCKING}, {"BlOcK", ProgressMode::BLOCKING},
        {"adaptive", ProgressMode::ADAPTIVE}, {"ADAPTIVE", ProgressMode::ADAPTIVE},
        {"Adaptive", ProgressMode::ADAPTIVE},
    };
    for (const auto& [text, expected] : cases) {
        ProgressMode out = expected == ProgressMode::ADAPTIVE ? ProgressMode::POLLING
                                                              : ProgressMode::ADAPTIVE;
        EXPECT_TRUE(btsp::parse_progress_mode(text, out)) << text;
        EXPECT_EQ(out, expected) << text;
    }
}

TEST(ProgressMode, RejectsUnknownText) {
    ProgressMode out = ProgressMode::ADAPTIVE;
    for (const char* bad : {"", "fast", "poll ing", "pollingx", " polling", "adapt"}) {
        EXPECT_FALSE(btsp::parse_progress_mode(bad, out)) << '"' << bad << '"';
    }
}

TEST(ProgressMode, NamesRoundTripThroughParse) {
    for (auto m : {ProgressMode::POLLING, ProgressMode::BLOCKING, ProgressMode::ADAPTIVE}) {
        const std::string_view name = btsp::to_string(m);
        EXPECT_FALSE(name.empty());
        EXPECT_EQ(streamed(m), std::string(name));
        ProgressMode out = ProgressMode::ADAPTIVE;
        if (m == ProgressMode::ADAPTIVE) out = ProgressMode::POLLING;
        EXPECT_TRUE(btsp::parse_progress_mode(name, out)) << name;
        EXPECT_EQ(out, m);
    }
}

// ---- ManagerOptions ------------------------------------------------------------------------

using btsp_test::EnvVar;

TEST(ManagerOptions, DefaultsMatchTheDocumentation) {
    const btsp::ManagerOptions o;
    EXPECT_EQ(o.progress_mode, ProgressMode::ADAPTIVE);
    EXPECT_EQ(o.connect_timeout, std::chrono::milliseconds(5000));
    EXPECT_EQ(o.handoff_threshold, std::chrono::milliseconds(5));
    EXPECT_TRUE(o.listen_address.empty());
    EXPECT_EQ(o.progress_cpu, -1);
    EXPECT_EQ(o.shm_fifo_size, 256u);
    EXPECT_EQ(o.recv_poll, 64u);
}

TEST(ManagerOptions, FromEnvAppliesVariables) {
    EnvVar mode("BTSP_PROGRESS_MODE", "polling");
    EnvVar timeout("BTSP_CONNECT_TIMEOUT_MS", "1234");
    EnvVar spin("BTSP_ADAPTIVE_SPIN_US", "77");
    EnvVar handoff("BTSP_HANDOFF_MS", "9");
    EnvVar close("BTSP_CLOSE_TIMEOUT_MS", "321");
    EnvVar fifo("BTSP_SHM_FIFO_SIZE", "1024");
    EnvVar poll("BTSP_RECV_POLL", "0");
    const auto o = btsp::ManagerOptions::from_env();
    EXPECT_EQ(o.shm_fifo_size, 1024u);
    EXPECT_EQ(o.recv_poll, 0u);
    EXPECT_EQ(o.progress_mode, ProgressMode::POLLING);
    EXPECT_EQ(o.connect_timeout, std::chrono::milliseconds(1234));
    EXPECT_EQ(o.adaptive_spin, std::chrono::microseconds(77));
    EXPECT_EQ(o.handoff_threshold, std::chrono::milliseconds(9));
    EXPECT_EQ(o.close_timeout, std::chrono::milliseconds(321));
}

TEST(ManagerOptions, FromEnvIgnoresMalformedValues) {
    EnvVar mode("BTSP_PROGRESS_MODE", "warp-speed");
    EnvVar timeout("BTSP_CONNECT_TIMEOUT_MS", "12abc");
    const auto saved = btsp::log_level();
    btsp::set_log_level(LogLevel::OFF);  // the warnings are expected
    const auto o = btsp::ManagerOptions::from_env();
    btsp::set_log_level(saved);
    const btsp::ManagerOptions defaults;
    EXPECT_EQ(o.progress_mode, defaults.progress_mode);
    EXPECT_EQ(o.connect_timeout, defaults.connect_timeout);
}

// ---- Logging --------------------------------------------------------------------------------

TEST(LogLevel, ParsesAllNamesInAnyCase) {
    const std::pair<const char*, LogLevel> cases[] = {
        {"trace", LogLevel::TRACE}, {"TRACE", LogLevel::TRACE},   {"debug", LogLevel::DEBUG},
        {"Debug", LogLevel::DEBUG}, {"info", LogLevel::INFO},     {"INFO", LogLevel::INFO},
        {"warn", LogLevel::WARN},   {"warning", LogLevel::WARN},  {"WARNING", LogLevel::WARN},
        {"error", LogLevel::ERROR}, {"ERROR", LogLevel::ERROR},   {"off", LogLevel::OFF},
        {"OFF", LogLevel::OFF},
    };
    for (const auto& [text, expected] : cases) {
        LogLevel out = expected == LogLevel::TRACE ? LogLevel::OFF : LogLevel::TRACE;
        EXPECT_TRUE(btsp::parse_log_level(text, out)) << text;
        EXPECT_EQ(out, expected) << text;
    }
}

TEST(LogLevel, RejectsUnknownText) {
    LogLevel out = LogLevel::WARN;
    for (const char* bad : {"", "verbose", "warnx", "5", " info"}) {
        EXPECT_FALSE(btsp::parse_log_level(bad, out)) << '"' << bad << '"';
    }
}

TEST(LogLevel, NamesRoundTripThroughParse) {
    for (auto l : {LogLevel::TRACE, LogLevel::DEBUG, LogLevel::INFO, LogLevel::WARN,
                   LogLevel::ERROR, LogLevel::OFF}) {
        LogLevel out = l == LogLevel::TRACE ? LogLevel::OFF : LogLevel::TRACE;
        EXPECT_TRUE(btsp::parse_log_level(btsp::to_string(l), out)) << btsp::to_string(l);
        EXPECT_EQ(out, l);
    }
}

/// Captures log lines; restores level and sink on destruction.
class LogCapture : public ::testing::Test {
protected:
    void SetUp() override {
        saved_level_ = btsp::log_level();
        btsp::set_log_sink([this](LogLevel level, std::string_view msg) {
            std::lock_guard<std::mutex> lock(mutex_);
            lines_.emplace_back(level, std::string(msg));
        });
    }
    void TearDown() override {
        btsp::set_log_sink({});
        btsp::set_log_level(saved_level_);
    }
    std::vector<std::pair<LogLevel, std::string>> lines() {
        std::lock_guard<std::mutex> lock(mutex_);
        return lines_;
    }

    LogLevel saved_level_ = LogLevel::WARN;
    std::mutex mutex_;
    std::vector<std::pair<LogLevel, std::string>> lines_;
};

TEST_F(LogCapture, SinkReceivesFormattedMessagesAtTheirLevels) {
    btsp::set_log_level(LogLevel::TRACE);
    EXPECT_EQ(btsp::log_level(), LogLevel::TRACE);
    BTSP_LOG_TRACE("t %d", 1);
    BTSP_LOG_DEBUG("d %s", "two");
    BTSP_LOG_INFO("i %u", 3u);
    BTSP_LOG_WARN("w %c", 'x');
    BTSP_LOG_ERROR("e %.1f", 5.5);
    const auto got = lines();
    ASSERT_EQ(got.size(), 5u);
    const std::pair<LogLevel, const char*> expected[] = {
        {LogLevel::TRACE, "t 1"}, {LogLevel::DEBUG, "d two"}, {LogLevel::INFO, "i 3"},
        {LogLevel::WARN, "w x"},  {LogLevel::ERROR, "e 5.5"},
    };
    for (std::size_t i = 0; i < got.size(); ++i) {
        EXPECT_EQ(got[i].first, expected[i].first) << i;
        EXPECT_TRUE(contains(got[i].second, expected[i].second)) << got[i].second;
        EXPECT_TRUE(got[i].second.empty() || got[i].second.back() != '\n')
            << "messages come without a trailing newline";
    }
}

TEST_F(LogCapture, ThresholdFiltersLowerLevels) {
    btsp::set_log_level(LogLevel::WARN);
    BTSP_LOG_DEBUG("hidden debug");
    BTSP_LOG_INFO("hidden info");
    BTSP_LOG_WARN("shown warn");
    BTSP_LOG_ERROR("shown error");
    btsp::set_log_level(LogLevel::ERROR);
    BTSP_LOG_WARN("hidden warn");
    BTSP_LOG_ERROR("shown error 2");
    btsp::set_log_level(LogLevel::OFF);
    BTSP_LOG_ERROR("hidden error");
    const auto got = lines();
    ASSERT_EQ(got.size(), 3u);
    EXPECT_TRUE(contains(got[0].second, "shown warn"));
    EXPECT_TRUE(contains(got[1].second, "shown error"));
    EXPECT_TRUE(contains(got[2].second, "shown error 2"));
    for (const auto& [level, msg] : got) EXPECT_FALSE(contains(msg, "hidden")) << msg;
}

TEST_F(LogCapture, ArgumentsAreNotEvaluatedWhenLevelDisabled) {
    btsp::set_log_level(LogLevel::ERROR);
    int evaluated = 0;
    BTSP_LOG_DEBUG("%d", ++evaluated);
    EXPECT_EQ(evaluated, 0);
    BTSP_LOG_ERROR("%d", ++evaluated);
    EXPECT_EQ(evaluated, 1);
    EXPECT_EQ(lines().size(), 1u);
}

TEST_F(LogCapture, LongMessagesAreNotLost) {
    btsp::set_log_level(LogLevel::INFO);
    const std::string big(5000, 'z');
    BTSP_LOG_INFO("start %s end", big.c_str());
    const auto got = lines();
    ASSERT_EQ(got.size(), 1u);
    EXPECT_TRUE(contains(got[0].second, "start "));
    // Truncation of very long messages is acceptable, but the start must be there.
    EXPECT_GE(got[0].second.size(), 200u);
}

TEST(LogDefaultSink, WritesPrefixedLinesToStderr) {
    const auto saved = btsp::log_level();
    btsp::set_log_sink({});
    btsp::set_log_level(LogLevel::WARN);
    ::testing::internal::CaptureStderr();
    BTSP_LOG_WARN("default sink %d", 99);
    BTSP_LOG_INFO("not shown");
    const std::string err = ::testing::internal::GetCapturedStderr();
    btsp::set_log_level(saved);
    EXPECT_TRUE(contains(err, "btsp")) << err;
    EXPECT_TRUE(contains(err, "WARN")) << err;
    EXPECT_TRUE(contains(err, "default sink 99")) << err;
    EXPECT_FALSE(contains(err, "not shown")) << err;
    EXPECT_EQ(err.back(), '\n');
}

TEST(LogDefaultSink, DefaultThresholdIsWarnOrFromEnvironment) {
    // Runs in its own process under ctest; only meaningful if nobody changed the level.
    const char* env = std::getenv("BTSP_LOG_LEVEL");
    if (env == nullptr) {
        EXPECT_EQ(btsp::log_level(), LogLevel::WARN);
    } else {
        LogLevel expected{};
        if (btsp::parse_log_level(env, expected)) {
            EXPECT_EQ(btsp::log_level(), expected);
        }
    }
}

}  // namespace
