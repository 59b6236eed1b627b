#include <btsp/log.hpp>
#include <btsp/options.hpp>

#include <cctype>
#include <charconv>
#include <cstdlib>
#include <ostream>
#include <string>

namespace btsp {

std::string_view to_string(ProgressMode m) noexcept {
    switch (m) {
        case ProgressMode::POLLING: return "polling";
        case ProgressMode::BLOCKING: return "blocking";
        case ProgressMode::ADAPTIVE: return "adaptive";
    }
    return "unknown";
}

std::ostream& operator<<(std::ostream& os, ProgressMode m) { return os << to_string(m); }

bool parse_progress_mode(std::string_view text, ProgressMode& out) noexcept {
    std::string s;
    for (char c : text) s.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    if (s == "polling" || s == "poll") out = ProgressMode::POLLING;
    else if (s == "blocking" || s == "block") out = ProgressMode::BLOCKING;
    else if (s == "adaptive") out = ProgressMode::ADAPTIVE;
    else return false;
    return true;
}

namespace {
// Reads a non-negative integer environment variable; false (with a warning) if malformed.
bool env_int(const char* name, long long& out, long long min, long long max) {
    const char* v = std::getenv(name);
    if (v == nullptr) return false;
    const std::string_view s(v);
    long long x = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), x);
    if (ec != std::errc() || p != s.data() + s.size() || x < min || x > max) {
        BTSP_LOG_WARN("ignoring %s=\"%s\": expected an integer in [%lld, %lld]", name, v, min, max);
        return false;
    }
    out = x;
    return true;
}
}  // namespace

ManagerOptions ManagerOptions::from_env() {
    ManagerOptions o;
    if (const char* v = std::getenv("BTSP_PROGRESS_MODE")) {
        if (!parse_progress_mode(v, o.progress_mode))
            BTSP_LOG_WARN("ignoring BTSP_PROGRESS_MODE=\"%s\": expected polling|blocking|adaptive", v);
    }
    long long x = 0;
    if (env_int("BTSP_CONNECT_TIMEOUT_MS", x, 1, 3600LL * 1000)) o.connect_timeout = std::chrono::milliseconds(x);
    if (env_int("BTSP_ADAPTIVE_SPIN_US", x, 0, 10LL * 1000 * 1000)) o.adaptive_spin = std::chrono::microseconds(x);
    if (env_int("BTSP_HANDOFF_MS", x, 0, 3600LL * 1000)) o.handoff_threshold = std::chrono::milliseconds(x);
    if (env_int("BTSP_CLOSE_TIMEOUT_MS", x, 0, 60LL * 1000)) o.close_timeout = std::chrono::milliseconds(x);
    if (env_int("BTSP_PROGRESS_CPU", x, -1, 4095)) o.progress_cpu = static_cast<int>(x);
    if (env_int("BTSP_KEEPALIVE_MS", x, 0, 3600LL * 1000)) o.keepalive_interval = std::chrono::milliseconds(x);
    if (env_int("BTSP_HEARTBEAT_MS", x, 0, 3600LL * 1000)) o.heartbeat_interval = std::chrono::milliseconds(x);
    if (env_int("BTSP_PEER_TIMEOUT_MS", x, 1, 24LL * 3600 * 1000)) o.peer_timeout = std::chrono::milliseconds(x);
    if (env_int("BTSP_FAST_PATH", x, 0, 1)) o.fast_path = x != 0;
    if (env_int("BTSP_HANDSHAKE_GRACE_MS", x, 0, 60LL * 1000)) o.handshake_grace = std::chrono::milliseconds(x);
    if (env_int("BTSP_RECV_POLL", x, 0, 1LL << 20)) o.recv_poll = static_cast<std::uint32_t>(x);
    if (env_int("BTSP_SHM_FIFO_SIZE", x, 0, 1LL << 20)) o.shm_fifo_size = static_cast<std::uint32_t>(x);
    return o;
}

}  // namespace btsp
