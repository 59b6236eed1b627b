// The library's logging facility (see include/btsp/log.hpp).
#include <btsp/log.hpp>

#include <cctype>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace btsp {
namespace {

std::uint8_t initial_threshold() noexcept {
    LogLevel level = LogLevel::WARN;
    if (const char* env = std::getenv("BTSP_LOG_LEVEL")) {
        if (!parse_log_level(env, level)) level = LogLevel::WARN;
    }
    return static_cast<std::uint8_t>(level);
}

std::mutex& sink_mutex() {
    static std::mutex m;
    return m;
}
LogSink& sink_slot() {
    static LogSink sink;
    return sink;
}

void default_sink(LogLevel level, std::string_view message) {
    using namespace std::chrono;
    const auto us = duration_cast<microseconds>(system_clock::now().time_since_epoch()).count();
    char head[64];
    const int n = std::snprintf(head, sizeof head, "[%lld.%06lld] btsp %-5s ",
                                static_cast<long long>(us / 1000000),
                                static_cast<long long>(us % 1000000), to_string(level).data());
    std::string line(head, static_cast<std::size_t>(n > 0 ? n : 0));
    line.append(message);
    line.push_back('\n');
    std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace

namespace detail {
std::atomic<std::uint8_t> g_log_threshold{initial_threshold()};

void log_write(LogLevel level, const char* fmt, ...) noexcept {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    const int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    const std::string_view msg(buf, static_cast<std::size_t>(n) < sizeof buf
                                        ? static_cast<std::size_t>(n)
                                        : sizeof buf - 1);
    try {
        std::lock_guard<std::mutex> lock(sink_mutex());
        if (sink_slot()) {
            sink_slot()(level, msg);
        } else {
            default_sink(level, msg);
        }
    } catch (...) {
        // A throwing user sink must not take the progress thread down.
    }
}
}  // namespace detail

LogLevel log_level() noexcept {
    return static_cast<LogLevel>(detail::g_log_threshold.load(std::memory_order_relaxed));
}

void set_log_level(LogLevel level) noexcept {
    detail::g_log_threshold.store(static_cast<std::uint8_t>(level), std::memory_order_relaxed);
}

void set_log_sink(LogSink sink) {
    std::lock_guard<std::mutex> lock(sink_mutex());
    sink_slot() = std::move(sink);
}

std::string_view to_string(LogLevel level) noexcept {
    switch (level) {
        case LogLevel::TRACE: return "TRACE";
        case LogLevel::DEBUG: return "DEBUG";
        case LogLevel::INFO: return "INFO";
        case LogLevel::WARN: return "WARN";
        case LogLevel::ERROR: return "ERROR";
        case LogLevel::OFF: return "OFF";
    }
    return "?";
}

bool parse_log_level(std::string_view text, LogLevel& out) noexcept {
    std::string s;
    for (char c : text) s.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    if (s == "trace") out = LogLevel::TRACE;
    else if (s == "debug") out = LogLevel::DEBUG;
    else if (s == "info") out = LogLevel::INFO;
    else if (s == "warn" || s == "warning") out = LogLevel::WARN;
    else if (s == "error") out = LogLevel::ERROR;
    else if (s == "off" || s == "none") out = LogLevel::OFF;
    else return false;
    return true;
}

}  // namespace btsp
