// One endpoint to one peer, its phase and the UCX requests that still refer to it.
#pragma once

#include <btsp/detail/operation.hpp>

#include <ucp/api/ucp.h>

#include <chrono>
#include <cstdint>
#include <string>

namespace btsp::detail {

class Engine;

/// A deadline in the engine's timer list (intrusive, sorted by deadline).
struct TimerNode {
    std::chrono::steady_clock::time_point deadline{};
    TimerNode* prev = nullptr;
    TimerNode* next = nullptr;
    bool armed = false;
    void (*fire)(TimerNode*) noexcept = nullptr;
    void* ctx = nullptr;  // what the timer belongs to
};

enum class ConnPhase : std::uint8_t {
    CONNECTING,  // client: ep created, waiting for the wire-up flush
    OPEN,        // usable; in the engine's live list
    FAILED,      // error seen; waiting to be force-closed
    CLOSING,     // ucp_ep_close_nbx issued
    CLOSED,      // ep released by UCX; may be freed once ucx_refs == 0
};

class Connection {
public:
    Connection(Engine* e, bool client, std::uint64_t conn_id) noexcept
        : engine(e), is_client(client), id(conn_id) {}

    Engine* engine;
    bool is_client;
    std::uint64_t id;
    ucp_ep_h ep = nullptr;
    ConnPhase phase = ConnPhase::CONNECTING;
    ucs_status_t error = UCS_OK;       // why it failed, if it did
    Operation* connect_op = nullptr;   // client: the pending connect awaiter
    TimerNode connect_timer;           // client: connect deadline
    int pending_sends = 0;             // sends with a pending UCX request on this ep
    int ucx_refs = 0;                  // UCX requests whose user_data is this object
    int tracked_ops = 0;               // in-flight operations whose conn is this object
    void* close_request = nullptr;     // pending ucp_ep_close_nbx request
    bool close_forced = false;
    std::string peer;                  // "host:port" for logs

    // Engine lists: all connections; live (OPEN) ones in accept order; failed ones.
    Connection* all_prev = nullptr;
    Connection* all_next = nullptr;
    Connection* live_prev = nullptr;
    Connection* live_next = nullptr;
    Connection* failed_next = nullptr;
    bool in_failed_list = false;
};

}  // namespace btsp::detail
