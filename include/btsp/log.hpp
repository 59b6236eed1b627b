// btsp — the library's one logging facility: levels, environment control, pluggable sink.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string_view>

namespace btsp {

enum class LogLevel : std::uint8_t { TRACE, DEBUG, INFO, WARN, ERROR, OFF };

/// Current threshold. Initialised from the environment variable BTSP_LOG_LEVEL
/// (trace|debug|info|warn|error|off, case-insensitive); default WARN.
[[nodiscard]] LogLevel log_level() noexcept;
/// Sets the threshold (thread-safe).
void set_log_level(LogLevel level) noexcept;

/// Receives every message at or above the threshold, already formatted, without a
/// trailing newline. Called on the thread that logs; must be thread-safe.
using LogSink = std::function<void(LogLevel level, std::string_view message)>;
/// Installs `sink` (e.g. forwarding to glog or spdlog); an empty sink restores the
/// default, which writes "btsp <LEVEL> <message>" lines to stderr.
void set_log_sink(LogSink sink);

[[nodiscard]] std::string_view to_string(LogLevel level) noexcept;
/// Parses "trace", "debug", "info", "warn"/"warning", "error", "off" (any case).
[[nodiscard]] bool parse_log_level(std::string_view text, LogLevel& out) noexcept;

namespace detail {
extern std::atomic<std::uint8_t> g_log_threshold;
inline bool log_enabled(LogLevel level) noexcept {
    return static_cast<std::uint8_t>(level) >= g_log_threshold.load(std::memory_order_relaxed);
}
void log_write(LogLevel level, const char* fmt, ...) noexcept __attribute__((format(printf, 2, 3)));
}  // namespace detail

}  // namespace btsp

/// printf-style logging; the arguments are evaluated only when the level is enabled.
#define BTSP_LOG(level, ...)                                                  \
    do {                                                                      \
        if (::btsp::detail::log_enabled(level)) ::btsp::detail::log_write(level, __VA_ARGS__); \
    } while (0)
#define BTSP_LOG_TRACE(...) BTSP_LOG(::btsp::LogLevel::TRACE, __VA_ARGS__)
#define BTSP_LOG_DEBUG(...) BTSP_LOG(::btsp::LogLevel::DEBUG, __VA_ARGS__)
#define BTSP_LOG_INFO(...) BTSP_LOG(::btsp::LogLevel::INFO, __VA_ARGS__)
#define BTSP_LOG_WARN(...) BTSP_LOG(::btsp::LogLevel::WARN, __VA_ARGS__)
#define BTSP_LOG_ERROR(...) BTSP_LOG(::btsp::LogLevel::ERROR, __VA_ARGS__)
