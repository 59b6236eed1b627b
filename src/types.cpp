#include <btsp/types.hpp>

#include <ostream>

#include <ucs/type/status.h>

namespace btsp {

std::string_view RdmaOpResult::reason() const noexcept {
    if (detail != nullptr) return detail;
    if (status != 0) return ucs_status_string(static_cast<ucs_status_t>(status));
    switch (result) {
        case RdmaResult::SUCCESS: return "success";
        case RdmaResult::FAILURE: return "failure";
        case RdmaResult::TIMEOUT: return "timed out";
        case RdmaResult::DISCONNECTED: return "disconnected";
        case RdmaResult::CANCELLED: return "cancelled";
    }
    return "unknown";
}

std::string_view to_string(RdmaResult r) noexcept {
    switch (r) {
        case RdmaResult::SUCCESS: return "SUCCESS";
        case RdmaResult::FAILURE: return "FAILURE";
        case RdmaResult::TIMEOUT: return "TIMEOUT";
        case RdmaResult::DISCONNECTED: return "DISCONNECTED";
        case RdmaResult::CANCELLED: return "CANCELLED";
    }
    return "UNKNOWN";
}

std::string_view to_string(RdmaState s) noexcept {
    switch (s) {
        case RdmaState::IDLE: return "IDLE";
        case RdmaState::LISTENING: return "LISTENING";
        case RdmaState::CONNECTING: return "CONNECTING";
        case RdmaState::CONNECTED: return "CONNECTED";
        case RdmaState::SENDING: return "SENDING";
        case RdmaState::RECEIVING: return "RECEIVING";
        case RdmaState::ERROR: return "ERROR";
        case RdmaState::SHUTDOWN: return "SHUTDOWN";
    }
    return "UNKNOWN";
}

std::ostream& operator<<(std::ostream& os, RdmaResult r) { return os << to_string(r); }
std::ostream& operator<<(std::ostream& os, RdmaState s) { return os << to_string(s); }
std::ostream& operator<<(std::ostream& os, const RdmaOpResult& r) {
    if (r.success()) return os << "SUCCESS (" << r.bytes_transferred << " bytes)";
    return os << to_string(r.result) << ": " << r.reason();
}

}  // namespace btsp
