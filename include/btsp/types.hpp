// btsp — result and state vocabulary of the spec's CoroutineRdmaManager API.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <string_view>

namespace btsp {

/// Outcome of an operation (the spec's four values, plus CANCELLED).
enum class RdmaResult : std::uint8_t {
    SUCCESS,       ///< Completed as asked.
    FAILURE,       ///< Bad argument, wrong state, truncation, transport error.
    TIMEOUT,       ///< A deadline of ours expired (connect timeout, op deadline).
    DISCONNECTED,  ///< Connection refused / rejected / lost, or the manager shut down.
    CANCELLED,     ///< Cancelled on request (stop_token, with_timeout); not a failure.
};

/// State of a manager (see docs/semantics.md for the transitions).
enum class RdmaState : std::uint8_t {
    IDLE,        ///< Client without a connection (initial, or after a connection ended).
    LISTENING,   ///< Server listening, no live client connection.
    CONNECTING,  ///< Client connect in progress.
    CONNECTED,   ///< Live connection, no op in flight.
    SENDING,     ///< Live connection, at least one send in flight.
    RECEIVING,   ///< Live connection, receives (and no sends) in flight.
    ERROR,       ///< initialize() failed; the manager is unusable.
    SHUTDOWN,    ///< shutdown() ran; every later op fails at once.
};

/// Result of one operation. The first two members are the spec's.
struct RdmaOpResult {
    RdmaResult result = RdmaResult::FAILURE;  ///< Outcome.
    std::size_t bytes_transferred = 0;        ///< Real number of bytes sent / received.
    int status = 0;                ///< Underlying ucs_status_t (0 = UCS_OK), if any.
    std::uint64_t sender_tag = 0;  ///< For receives: the tag the message was sent with.
    const char* detail = nullptr;  ///< Static text of a library-level reason, if any.

    /// True when result == SUCCESS.
    [[nodiscard]] bool success() const noexcept { return result == RdmaResult::SUCCESS; }
    /// Same as success().
    explicit operator bool() const noexcept { return success(); }
    /// Human-readable reason: "success", the library's reason, or UCX's status text.
    [[nodiscard]] std::string_view reason() const noexcept;
};

/// Name of a value, e.g. "SUCCESS", "CONNECTED".
[[nodiscard]] std::string_view to_string(RdmaResult r) noexcept;
[[nodiscard]] std::string_view to_string(RdmaState s) noexcept;

std::ostream& operator<<(std::ostream& os, RdmaResult r);
std::ostream& operator<<(std::ostream& os, RdmaState s);
/// Prints "SUCCESS (4096 bytes)" or "DISCONNECTED: Endpoint timeout".
std::ostream& operator<<(std::ostream& os, const RdmaOpResult& r);

/// True for CONNECTED, SENDING and RECEIVING.
[[nodiscard]] constexpr bool is_connected_state(RdmaState s) noexcept {
    return s == RdmaState::CONNECTED || s == RdmaState::SENDING || s == RdmaState::RECEIVING;
}

}  // namespace btsp
