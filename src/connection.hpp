// One connection to one peer: its endpoints, its phase and the UCX requests that still
// refer to it.
#pragma once

#include <btsp/detail/operation.hpp>

#include <ucp/api/ucp.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace btsp::detail {

class Engine;

enum class ConnPhase : std::uint8_t {
    CONNECTING,  // client: sockaddr endpoint created; wire-up / handshake in progress
    HANDSHAKE,   // server: accepted; waiting for the client's ACCEPT (or the grace period)
    OPEN,        // usable; in the engine's live list
    FAILED,      // error seen; waiting to be force-closed
    CLOSING,     // ucp_ep_close_nbx issued on its endpoints
    CLOSED,      // endpoints released; freed once nothing refers to it any more
};

enum ConnEvent : std::uint8_t {
    kEvOfferArrived = 1u << 0,  // client: the OFFER receive completed
    kEvRetireSock = 1u << 1,    // the peer retired the sockaddr endpoint: close ours
    kEvByeSent = 1u << 2,       // our BYE left: the deferred forced close may proceed
    kEvFastFlushed = 1u << 3,   // graceful close: ep_fast flushed, force-close it now
    kEvSockFlushed = 1u << 4,   // graceful close: ep_sock flushed, force-close it now
};

class Connection {
public:
    Connection(Engine* e, bool client, std::uint64_t conn_id) noexcept
        : engine(e), is_client(client), id(conn_id) {}

    /// Endpoint that carries data: the worker-address one when the handshake succeeded.
    ucp_ep_h data_ep() const noexcept { return ep_fast != nullptr ? ep_fast : ep_sock; }

    Engine* engine;
    bool is_client;
    std::uint64_t id;
    ucp_ep_h ep_sock = nullptr;        // sockaddr-flow endpoint (handshake; data for plain peers)
    ucp_ep_h ep_fast = nullptr;        // endpoint from the peer's worker address (btsp peers)
    ConnPhase phase = ConnPhase::CONNECTING;
    ucs_status_t error = UCS_OK;       // why it failed, if it did
    Operation* connect_op = nullptr;   // client: the pending connect awaiter
    TimerNode connect_timer;           // client: connect deadline
    TimerNode grace_timer;             // handshake: how long to wait for a btsp answer
    std::uint64_t token = 0;           // handshake token (server-chosen)
    bool sock_flushed = false;         // client: sockaddr wire-up done
    bool offer_arrived = false;        // client: OFFER handled
    bool accept_pending = false;       // client: ACCEPT waits for the sockaddr wire-up
    bool fast_confirmed = false;       // client: the server's first PING arrived (it uses ep_fast)
    bool sock_reset_pending = false;   // client: sockaddr reset seen before that confirmation
    std::uint8_t events = 0;           // ConnEvent bits waiting for process_deferred()
    int pending_sends = 0;             // user sends with a pending UCX request
    int ucx_refs = 0;                  // UCX requests whose user_data is this object
    int tracked_ops = 0;               // in-flight user operations posted on it
    int closes_pending = 0;            // endpoint closes not finished yet
    void* close_req_sock = nullptr;
    void* close_req_fast = nullptr;
    ucp_ep_h flushing_sock = nullptr;  // graceful close: flushed first, then force-closed
    ucp_ep_h flushing_fast = nullptr;
    bool close_forced = false;
    bool bye_pending = false;          // our BYE's send has not completed yet
    bool close_deferred = false;       // forced close waits for the BYE (or close_deadline)
    std::chrono::steady_clock::time_point close_deadline{};

    // client: the OFFER receive
    std::vector<std::uint8_t> ctrl_in;
    void* offer_req = nullptr;
    bool offer_in_call = false;
    bool offer_done = false;
    ucs_status_t offer_status = UCS_OK;
    std::size_t offer_length = 0;
    // our OFFER (server) or ACCEPT (client) while its send is pending
    std::vector<std::uint8_t> ctrl_out;
    std::vector<std::uint8_t> bye_out;   // our BYE while its send is pending
    std::vector<std::uint8_t> ping_out;  // our PING while its send is pending
    bool ping_pending = false;
    std::chrono::steady_clock::time_point last_heard{};  // last PING from the peer

    std::string peer;                  // "host:port" for logs

    // Engine lists: all connections; live (OPEN) ones in accept order; deferred work.
    Connection* all_prev = nullptr;
    Connection* all_next = nullptr;
    Connection* live_prev = nullptr;
    Connection* live_next = nullptr;
    Connection* deferred_next = nullptr;
    bool in_deferred_list = false;
};

}  // namespace btsp::detail
