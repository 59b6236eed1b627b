// Connections: client connect (sockaddr flow, handshake, deadline), server accept,
// failure handling, closing. All of it runs on the progress thread; UCX callbacks only
// record what happened, and the work that calls UCX again runs in process_deferred()
// after ucp_worker_progress has returned.
#include "engine.hpp"

#include "handshake.hpp"
#include "status.hpp"

#include <btsp/log.hpp>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

namespace btsp::detail {
namespace {

using Clock = std::chrono::steady_clock;

void ep_error_callback(void* arg, ucp_ep_h ep, ucs_status_t status) {
    auto* conn = static_cast<Connection*>(arg);
    conn->engine->on_endpoint_error(conn, ep, status);
}

void sock_flush_callback(void* request, ucs_status_t status, void* user_data) {
    auto* conn = static_cast<Connection*>(user_data);
    ucp_request_free(request);
    --conn->ucx_refs;
    conn->engine->on_sock_flushed(conn, status);
}

void fast_flush_callback(void* request, ucs_status_t status, void* user_data) {
    auto* conn = static_cast<Connection*>(user_data);
    ucp_request_free(request);
    --conn->ucx_refs;
    conn->engine->on_fast_flushed(conn, status);
}

void ctrl_send_callback(void* request, ucs_status_t /*status*/, void* user_data) {
    auto* conn = static_cast<Connection*>(user_data);
    ucp_request_free(request);
    --conn->ucx_refs;
    conn->engine->maybe_free(conn);
}

void bye_send_callback(void* request, ucs_status_t /*status*/, void* user_data) {
    auto* conn = static_cast<Connection*>(user_data);
    ucp_request_free(request);
    conn->bye_pending = false;
    --conn->ucx_refs;
    if (conn->close_deferred) {
        conn->events |= kEvByeSent;
        conn->engine->defer_connection(conn);
    }
    conn->engine->maybe_free(conn);
}

void ping_send_callback(void* request, ucs_status_t /*status*/, void* user_data) {
    auto* conn = static_cast<Connection*>(user_data);
    ucp_request_free(request);
    conn->ping_pending = false;
    --conn->ucx_refs;
    conn->engine->maybe_free(conn);
}

void offer_recv_callback(void* request, ucs_status_t status, const ucp_tag_recv_info_t* info,
                         void* user_data) {
    auto* conn = static_cast<Connection*>(user_data);
    conn->offer_length = info != nullptr ? info->length : 0;  // inside the request: read first
    ucp_request_free(request);
    conn->offer_req = nullptr;
    conn->offer_done = true;
    conn->offer_status = status;
    --conn->ucx_refs;
    conn->engine->on_offer_received(conn);
}

void close_sock_callback(void* request, ucs_status_t /*status*/, void* user_data) {
    auto* conn = static_cast<Connection*>(user_data);
    ucp_request_free(request);
    conn->close_req_sock = nullptr;
    --conn->ucx_refs;
    conn->engine->on_close_done(conn);
}

// Always UCP_EP_CLOSE_FLAG_FORCE: UCX 1.13 destroys an endpoint closed without it only
// once the peer's side is gone too, so against a live peer it (and the peer's shared
// memory it maps) would stay until the worker is destroyed. A graceful close flushes
// first (begin_close).
ucs_status_ptr_t close_endpoint(ucp_ep_h ep, Connection* conn, ucp_send_nbx_callback_t cb) {
    ucp_request_param_t p;
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    p.cb.send = cb;
    p.user_data = conn;
    p.flags = UCP_EP_CLOSE_FLAG_FORCE;
    conn->engine->endpoint_closed();
    return ucp_ep_close_nbx(ep, &p);
}

void close_fast_callback(void* request, ucs_status_t /*status*/, void* user_data) {
    auto* conn = static_cast<Connection*>(user_data);
    ucp_request_free(request);
    conn->close_req_fast = nullptr;
    --conn->ucx_refs;
    conn->engine->on_close_done(conn);
}

void close_flush_sock_callback(void* request, ucs_status_t /*status*/, void* user_data) {
    auto* conn = static_cast<Connection*>(user_data);
    ucp_request_free(request);
    conn->close_req_sock = nullptr;
    --conn->ucx_refs;
    conn->events |= kEvSockFlushed;  // closing from inside a UCX callback aborts UCX: defer
    conn->engine->defer_connection(conn);
}

void close_flush_fast_callback(void* request, ucs_status_t /*status*/, void* user_data) {
    auto* conn = static_cast<Connection*>(user_data);
    ucp_request_free(request);
    conn->close_req_fast = nullptr;
    --conn->ucx_refs;
    conn->events |= kEvFastFlushed;
    conn->engine->defer_connection(conn);
}

std::string format_addr(const sockaddr* sa) {
    char host[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        return std::string(host) + ":" + std::to_string(ntohs(in->sin_port));
    }
    if (sa->sa_family == AF_INET6) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        return std::string("[") + host + "]:" + std::to_string(ntohs(in6->sin6_port));
    }
    return "?";
}

// Numeric addresses resolve without touching DNS; names go through getaddrinfo, IPv4
// preferred (the default listener is IPv4).
bool resolve(const char* host, std::uint16_t port, sockaddr_storage& out, socklen_t& len) {
    std::memset(&out, 0, sizeof out);
    auto* in = reinterpret_cast<sockaddr_in*>(&out);
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&out);
    if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        len = sizeof(sockaddr_in);
        return true;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        len = sizeof(sockaddr_in6);
        return true;
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (getaddrinfo(host, nullptr, &hints, &res) != 0 || res == nullptr) return false;
    const addrinfo* pick = res;
    for (const addrinfo* a = res; a != nullptr; a = a->ai_next) {
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    }
    bool ok = false;
    if ((pick->ai_family == AF_INET || pick->ai_family == AF_INET6) && pick->ai_addrlen <= sizeof out) {
        std::memcpy(&out, pick->ai_addr, pick->ai_addrlen);
        len = static_cast<socklen_t>(pick->ai_addrlen);
        if (pick->ai_family == AF_INET) in->sin_port = htons(port); else in6->sin6_port = htons(port);
        ok = true;
    }
    freeaddrinfo(res);
    return ok;
}

ucs_status_t create_ep_from_address(ucp_worker_h worker, const std::uint8_t* address, Connection* conn,
                                    ucp_ep_h* ep) {
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLER |
                   UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    p.address = reinterpret_cast<const ucp_address_t*>(address);
    p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    p.err_handler.cb = &ep_error_callback;
    p.err_handler.arg = conn;
    const ucs_status_t st = ucp_ep_create(worker, &p, ep);
    if (st == UCS_OK) conn->engine->endpoint_created();
    return st;
}

}  // namespace

// ---- lists -------------------------------------------------------------------------------

void Engine::link_connection(Connection* c) noexcept {
    c->all_prev = nullptr;
    c->all_next = all_head_;
    if (all_head_) all_head_->all_prev = c;
    all_head_ = c;
}

void Engine::add_live(Connection* c) noexcept {
    c->phase = ConnPhase::OPEN;
    c->live_prev = live_tail_;
    c->live_next = nullptr;
    if (live_tail_) live_tail_->live_next = c; else live_head_ = c;
    live_tail_ = c;
    live_count_.fetch_add(1, std::memory_order_release);
    had_connection_.store(true, std::memory_order_release);
    bump(conns_opened_);
    primary_ep_.store(live_head_->data_ep(), std::memory_order_release);
}

void Engine::remove_live(Connection* c) noexcept {
    if (c->live_prev) c->live_prev->live_next = c->live_next; else live_head_ = c->live_next;
    if (c->live_next) c->live_next->live_prev = c->live_prev; else live_tail_ = c->live_prev;
    c->live_prev = c->live_next = nullptr;
    live_count_.fetch_sub(1, std::memory_order_relaxed);
    primary_ep_.store(live_head_ ? live_head_->data_ep() : nullptr, std::memory_order_release);
}

void Engine::defer_connection(Connection* c) noexcept { defer(c); }

void Engine::defer(Connection* c) noexcept {
    if (c->in_deferred_list) return;
    c->in_deferred_list = true;
    c->deferred_next = deferred_head_;
    deferred_head_ = c;
}

void Engine::arm_conn_timer(TimerNode* t, Connection* c, void (*fire)(TimerNode*) noexcept,
                            std::chrono::milliseconds after) noexcept {
    t->fire = fire;
    t->ctx = c;
    arm_timer(t, Clock::now() + after);
}

// ---- client ------------------------------------------------------------------------------

void Engine::start_connect(Operation* op) noexcept {
    if (live_head_ != nullptr) {
        op->fail_now(RdmaResult::FAILURE, "already connected");
        return;
    }
    for (Connection* c = all_head_; c != nullptr; c = c->all_next) {
        if (c->phase == ConnPhase::CONNECTING) {
            op->fail_now(RdmaResult::FAILURE, "a connect is already in progress");
            return;
        }
    }
    sockaddr_storage ss;
    socklen_t len = 0;
    if (!resolve(op->host, op->port, ss, len)) {
        BTSP_LOG_WARN("connect: cannot resolve '%s'", op->host);
        op->fail_now(RdmaResult::FAILURE, "cannot resolve host");
        return;
    }
    auto* conn = new (std::nothrow) Connection(this, true, next_conn_id_++);
    if (conn == nullptr) {
        op->fail_now(RdmaResult::FAILURE, "out of memory");
        return;
    }
    conn->peer = format_addr(reinterpret_cast<const sockaddr*>(&ss));

    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                    UCP_EP_PARAM_FIELD_ERR_HANDLER | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
    ep.sockaddr.addr = reinterpret_cast<const sockaddr*>(&ss);
    ep.sockaddr.addrlen = len;
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = &ep_error_callback;
    ep.err_handler.arg = conn;
    const ucs_status_t st = ucp_ep_create(worker_, &ep, &conn->ep_sock);
    if (st == UCS_OK) endpoint_created();
    if (st != UCS_OK) {
        BTSP_LOG_WARN("connect to %s: ucp_ep_create: %s", conn->peer.c_str(), ucs_status_string(st));
        delete conn;
        op->result.status = st;
        op->fail_now(map_status(st) == RdmaResult::DISCONNECTED ? RdmaResult::DISCONNECTED
                                                               : RdmaResult::FAILURE,
                     nullptr);
        return;
    }
    link_connection(conn);
    conn->phase = ConnPhase::CONNECTING;
    conn->connect_op = op;
    op->conn = conn;
    track(op);
    set_base_state(RdmaState::CONNECTING);
    BTSP_LOG_DEBUG("connecting to %s", conn->peer.c_str());
    arm_conn_timer(&conn->connect_timer, conn,
                   [](TimerNode* t) noexcept {
                       auto* c = static_cast<Connection*>(t->ctx);
                       c->engine->on_connect_timeout(c);
                   },
                   opts_.connect_timeout);

    if (opts_.fast_path && local_address_ != nullptr) {
        // A btsp server sends its worker address as soon as it accepts us.
        try {
            conn->ctrl_in.resize(kCtrlBufferSize);
        } catch (...) {
            conn->ctrl_in.clear();
        }
        if (!conn->ctrl_in.empty()) {
            ucp_request_param_t p;
            p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                             UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
            p.cb.recv = &offer_recv_callback;
            p.user_data = conn;
            ++conn->ucx_refs;
            conn->offer_in_call = true;
            ucs_status_ptr_t sp = ucp_tag_recv_nbx(worker_, conn->ctrl_in.data(), conn->ctrl_in.size(),
                                                   kTagOffer, ~std::uint64_t{0}, &p);
            conn->offer_in_call = false;
            if (UCS_PTR_IS_ERR(sp)) {
                --conn->ucx_refs;
                BTSP_LOG_DEBUG("handshake receive not posted: %s", ucs_status_string(UCS_PTR_STATUS(sp)));
            } else if (!conn->offer_done) {
                conn->offer_req = sp;
            }
        }
    }

    // UCX reports no "connected" event: a flush completes once wire-up is done.
    flush_endpoint(conn, conn->ep_sock, &sock_flush_callback, &Engine::on_sock_flushed);
}

// UCX 1.13 mis-sizes eager messages posted on an endpoint whose wire-up is not finished
// (seen: "mm_ep.c: Invalid am_short length" and the message lost), so nothing is sent on
// an endpoint before its first flush completes.
void Engine::on_sock_flushed(Connection* conn, ucs_status_t status) noexcept {
    if (conn->phase == ConnPhase::OPEN && conn->accept_pending && status == UCS_OK) {
        // The fast endpoint was ready first: the ACCEPT still has to go out, or the server
        // would take us for a plain UCP client.
        conn->accept_pending = false;
        conn->sock_flushed = true;
        send_ctrl(conn, CtrlType::ACCEPT);
        return;
    }
    if (conn->phase != ConnPhase::CONNECTING && conn->phase != ConnPhase::HANDSHAKE) {
        maybe_free(conn);
        return;
    }
    if (status != UCS_OK) {
        on_connection_error(conn, status);
        return;
    }
    conn->sock_flushed = true;
    if (!conn->is_client) {
        // Server: offer our worker address; a btsp client answers with its own.
        if (!send_ctrl(conn, CtrlType::OFFER)) {
            become_open(conn);
            return;
        }
        post_ctrl_recv(accept_recv_);
        arm_conn_timer(&conn->grace_timer, conn,
                       [](TimerNode* t) noexcept {
                           auto* c = static_cast<Connection*>(t->ctx);
                           c->engine->on_grace_expired(c);
                       },
                       opts_.handshake_grace);
        return;
    }
    if (conn->offer_arrived) {  // the fast endpoint is being wired up
        if (conn->accept_pending) {
            conn->accept_pending = false;
            send_ctrl(conn, CtrlType::ACCEPT);
        }
        return;
    }
    if (conn->offer_req == nullptr && !conn->offer_done) {
        // No handshake possible (fast path off): the sockaddr endpoint carries data.
        become_open(conn);
        return;
    }
    // Wait a little for a btsp server's OFFER; a plain UCP server never sends one.
    arm_conn_timer(&conn->grace_timer, conn,
                   [](TimerNode* t) noexcept {
                       auto* c = static_cast<Connection*>(t->ctx);
                       c->engine->on_grace_expired(c);
                   },
                   opts_.handshake_grace);
}

// Inside progress (or inside ucp_tag_recv_nbx): just queue the work.
void Engine::on_offer_received(Connection* conn) noexcept {
    conn->events |= kEvOfferArrived;
    defer(conn);
}

void Engine::handle_offer(Connection* conn) noexcept {
    if (conn->phase != ConnPhase::CONNECTING) return;
    CtrlMessage msg;
    if (conn->offer_status != UCS_OK ||
        !decode_ctrl(conn->ctrl_in.data(), conn->offer_length, msg) || msg.type != CtrlType::OFFER) {
        if (conn->offer_status != UCS_ERR_CANCELED)
            BTSP_LOG_WARN("connect to %s: malformed handshake offer (%s, %zu bytes); using the sockaddr path",
                          conn->peer.c_str(), ucs_status_string(conn->offer_status), conn->offer_length);
        if (conn->sock_flushed) become_open(conn);
        return;
    }
    disarm_timer(&conn->grace_timer);
    conn->offer_arrived = true;
    conn->token = msg.token;
    ucp_ep_h fast = nullptr;
    ucs_status_t st = create_ep_from_address(worker_, msg.address, conn, &fast);
    if (st != UCS_OK) {
        BTSP_LOG_WARN("connect to %s: endpoint from worker address: %s; using the sockaddr path",
                      conn->peer.c_str(), ucs_status_string(st));
        conn->offer_arrived = false;
        if (conn->sock_flushed) become_open(conn);
        return;
    }
    conn->ep_fast = fast;
    if (conn->sock_flushed) {
        send_ctrl(conn, CtrlType::ACCEPT);
    } else {
        conn->accept_pending = true;
    }
    flush_fast(conn);
}

void Engine::flush_fast(Connection* conn) noexcept {
    flush_endpoint(conn, conn->ep_fast, &fast_flush_callback, &Engine::on_fast_flushed);
}

// Flushes `ep`: `done` runs when its wire-up (and anything sent) has completed, at once if
// nothing was pending; a failure is a connection error.
void Engine::flush_endpoint(Connection* conn, ucp_ep_h ep, ucp_send_nbx_callback_t cb,
                            void (Engine::*done)(Connection*, ucs_status_t) noexcept) noexcept {
    ucp_request_param_t p;
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = cb;
    p.user_data = conn;
    ucs_status_ptr_t sp = ucp_ep_flush_nbx(ep, &p);
    if (sp == nullptr) {
        (this->*done)(conn, UCS_OK);
    } else if (UCS_PTR_IS_ERR(sp)) {
        on_connection_error(conn, UCS_PTR_STATUS(sp));
    } else {
        ++conn->ucx_refs;
    }
}

void Engine::on_fast_flushed(Connection* conn, ucs_status_t status) noexcept {
    if (conn->phase != ConnPhase::CONNECTING && conn->phase != ConnPhase::HANDSHAKE) {
        maybe_free(conn);
        return;
    }
    if (status != UCS_OK) {
        on_connection_error(conn, status);
        return;
    }
    become_open(conn);
}

void Engine::on_grace_expired(Connection* conn) noexcept {
    if (conn->phase == ConnPhase::CONNECTING && !conn->offer_arrived) {
        BTSP_LOG_DEBUG("%s sent no handshake: plain UCP peer, data stays on the sockaddr endpoint",
                       conn->peer.c_str());
        if (conn->offer_req != nullptr) {
            ucp_request_cancel(worker_, conn->offer_req);  // callback queues a no-op event
        }
        become_open(conn);
    } else if (conn->phase == ConnPhase::HANDSHAKE && conn->ep_fast == nullptr) {
        BTSP_LOG_DEBUG("%s sent no handshake: plain UCP peer, data stays on the sockaddr endpoint",
                       conn->peer.c_str());
        become_open(conn);
    }
}

void Engine::become_open(Connection* conn) noexcept {
    disarm_timer(&conn->connect_timer);
    disarm_timer(&conn->grace_timer);
    add_live(conn);
    if (Operation* op = conn->connect_op) {
        conn->connect_op = nullptr;
        untrack(op);
        op->result.result = RdmaResult::SUCCESS;
        op->result.status = UCS_OK;
        complete(op);
    }
    BTSP_LOG_INFO("%s %s (%s)", conn->is_client ? "connected to" : "accepted connection from",
                  conn->peer.c_str(), conn->ep_fast != nullptr ? "worker-address endpoint" : "sockaddr endpoint");
    // With the data on the worker-address endpoint, the sockaddr one only costs: keeping
    // its tcp interface active adds a syscall to every progress call. The server closes
    // it; the client sees the reset and closes its side (on_endpoint_error).
    if (conn->ep_fast != nullptr) {
        try {  // PING and BYE are encoded now, so that sending them never allocates
            encode_ctrl(CtrlType::PING, conn->token, nullptr, 0, conn->ping_out);
            encode_ctrl(CtrlType::BYE, conn->token, nullptr, 0, conn->bye_out);
        } catch (...) {
            conn->ping_out.clear();
            conn->bye_out.clear();
        }
        post_ctrl_recv(bye_recv_);
        post_ctrl_recv(ping_recv_);
        // Server: a first PING at once tells the client we took the worker-address path
        // (so that the sockaddr endpoint we retire next is not mistaken for a lost peer).
        if (!conn->is_client && !conn->ping_out.empty())
            send_ctrl_on(conn, conn->ep_fast, CtrlType::PING, conn->ping_out, &conn->ping_pending);
        if (opts_.heartbeat_interval.count() > 0) {
            conn->last_heard = Clock::now();
            if (!heartbeat_timer_.armed) {
                heartbeat_timer_.fire = [](TimerNode* t) noexcept { static_cast<Engine*>(t->ctx)->heartbeat_tick(); };
                heartbeat_timer_.ctx = this;
                arm_timer(&heartbeat_timer_, Clock::now() + opts_.heartbeat_interval);
            }
        }
        if (!conn->is_client) retire_sock(conn);
    }
    set_base_state(RdmaState::CONNECTED);
}

void Engine::retire_sock(Connection* conn) noexcept {
    if (conn->ep_sock == nullptr) return;
    begin_close(conn, false, true);
}

// Starts closing ep_fast or ep_sock (which becomes nullptr at once). Graceful: flush the
// endpoint, then force-close it (on_close_flushed); else force-close it now. Either way
// closes_pending counts it until UCX is done.
void Engine::begin_close(Connection* conn, bool fast, bool graceful) noexcept {
    ucp_ep_h& ep = fast ? conn->ep_fast : conn->ep_sock;
    void*& slot = fast ? conn->close_req_fast : conn->close_req_sock;
    if (ep == nullptr) return;
    const ucp_ep_h e = ep;
    ep = nullptr;
    if (graceful) {
        ucp_request_param_t p;
        p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
        p.cb.send = fast ? &close_flush_fast_callback : &close_flush_sock_callback;
        p.user_data = conn;
        ucs_status_ptr_t sp = ucp_ep_flush_nbx(e, &p);
        if (UCS_PTR_IS_PTR(sp)) {
            (fast ? conn->flushing_fast : conn->flushing_sock) = e;
            slot = sp;
            ++conn->ucx_refs;
            ++conn->closes_pending;
            return;
        }
        // Flushed already, or failed (nothing left to deliver): close now.
    }
    ucs_status_ptr_t sp = close_endpoint(e, conn, fast ? &close_fast_callback : &close_sock_callback);
    if (UCS_PTR_IS_ERR(sp)) {
        BTSP_LOG_DEBUG("closing %s: %s", conn->peer.c_str(), ucs_status_string(UCS_PTR_STATUS(sp)));
    } else if (sp != nullptr) {
        slot = sp;
        ++conn->ucx_refs;
        ++conn->closes_pending;
    }
}

// After progress returned (never inside the flush callback: ucp_ep_close_nbx there
// re-enters the endpoint's pending queue while UCX dispatches it and aborts in arbiter.c).
void Engine::close_flushed(Connection* conn) noexcept {
    for (bool fast : {true, false}) {
        const std::uint8_t bit = fast ? kEvFastFlushed : kEvSockFlushed;
        if ((conn->events & bit) == 0) continue;
        conn->events = static_cast<std::uint8_t>(conn->events & ~bit);
        on_close_flushed(conn, fast);
    }
}

void Engine::on_close_flushed(Connection* conn, bool fast) noexcept {
    ucp_ep_h& flushing = fast ? conn->flushing_fast : conn->flushing_sock;
    const ucp_ep_h e = flushing;
    if (e == nullptr) return;  // already force-closed (shutdown abandoned the flush)
    flushing = nullptr;
    ucs_status_ptr_t sp = close_endpoint(e, conn, fast ? &close_fast_callback : &close_sock_callback);
    if (UCS_PTR_IS_PTR(sp)) {  // closes_pending still counts this endpoint
        (fast ? conn->close_req_fast : conn->close_req_sock) = sp;
        ++conn->ucx_refs;
        return;
    }
    // Closed at once. Not on_close_done(): that may free `conn`, which our callers
    // (process_deferred, teardown) still use; they free it afterwards.
    if (conn->closes_pending > 0) --conn->closes_pending;
    if (conn->closes_pending == 0 && conn->phase == ConnPhase::CLOSING) conn->phase = ConnPhase::CLOSED;
}

void Engine::on_endpoint_error(Connection* conn, ucp_ep_h ep, ucs_status_t status) noexcept {
    BTSP_LOG_DEBUG("%s: error on its %s endpoint: %s", conn->peer.c_str(),
                   ep == conn->ep_fast ? "worker-address" : ep == conn->ep_sock ? "sockaddr" : "closed",
                   ucs_status_string(status));
    if (conn->ep_fast != nullptr && ep != conn->ep_fast) {
        // The sockaddr endpoint after the data moved: an error is the peer retiring it (a
        // flush then a forced close: seen here as a reset or, depending on timing, an
        // endpoint timeout). A real loss shows on the data endpoint and the heartbeat.
        if (ep == conn->ep_sock && conn->phase == ConnPhase::OPEN) {
            if (!conn->is_client || conn->fast_confirmed) {
                conn->events |= kEvRetireSock;
                defer(conn);
            } else {
                // The server's confirming PING may still be on its way: give it a moment;
                // without it the server never took the fast path and this reset is real.
                conn->sock_reset_pending = true;
                arm_conn_timer(&conn->grace_timer, conn,
                               [](TimerNode* t) noexcept {
                                   auto* c = static_cast<Connection*>(t->ctx);
                                   if (c->phase != ConnPhase::OPEN || !c->sock_reset_pending) return;
                                   c->sock_reset_pending = false;
                                   c->engine->on_connection_error(c, UCS_ERR_CONNECTION_RESET);
                               },
                               std::max(opts_.handshake_grace, std::chrono::milliseconds(500)));
            }
            return;
        }
        if (ep != conn->ep_sock) return;  // already closed by us
    }
    on_connection_error(conn, status);
}

void Engine::on_connect_timeout(Connection* conn) noexcept {
    if (conn->phase != ConnPhase::CONNECTING) return;
    BTSP_LOG_WARN("connect to %s: no answer within %lld ms", conn->peer.c_str(),
                  static_cast<long long>(opts_.connect_timeout.count()));
    abort_connect(conn, RdmaResult::TIMEOUT, UCS_ERR_TIMED_OUT, "connect timed out");
}

// Ends a connect in progress with `r`; the half-made connection is force-closed.
void Engine::abort_connect(Connection* conn, RdmaResult r, ucs_status_t status, const char* why) noexcept {
    if (conn->phase != ConnPhase::CONNECTING) return;
    conn->phase = ConnPhase::FAILED;
    conn->error = status;
    disarm_timer(&conn->connect_timer);
    disarm_timer(&conn->grace_timer);
    if (Operation* op = conn->connect_op) {
        conn->connect_op = nullptr;
        untrack(op);
        op->result.result = r;
        op->result.status = status;
        op->result.detail = why;
        complete(op);
    }
    defer(conn);
    if (live_head_ == nullptr) set_base_state(idle_state());
}

// ---- server ------------------------------------------------------------------------------

void Engine::on_conn_request(ucp_conn_request_h req) noexcept {
    try {
        pending_requests_.push_back(req);
    } catch (...) {
        ucp_listener_reject(listener_, req);
    }
}

void Engine::accept(ucp_conn_request_h req) noexcept {
    if (tearing_down_ || listener_ == nullptr) {
        if (listener_) ucp_listener_reject(listener_, req);
        return;
    }
    std::string peer = "?";
    ucp_conn_request_attr_t attr{};
    attr.field_mask = UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR;
    const bool have_addr = ucp_conn_request_query(req, &attr) == UCS_OK;
    if (have_addr) peer = format_addr(reinterpret_cast<const sockaddr*>(&attr.client_address));

    // Admission control, answered at the UCX level: the client's connect fails.
    if (!allowed_.empty() && (!have_addr || !allowed_.allows(reinterpret_cast<const sockaddr*>(&attr.client_address)))) {
        BTSP_LOG_INFO("rejected connection from %s: not in allowed_clients", peer.c_str());
        bump(conns_rejected_);
        ucp_listener_reject(listener_, req);
        return;
    }
    if (opts_.max_connections != 0) {
        std::size_t open = 0;
        for (Connection* c = all_head_; c != nullptr; c = c->all_next)
            if (!c->is_client && (c->phase == ConnPhase::OPEN || c->phase == ConnPhase::HANDSHAKE)) ++open;
        if (open >= opts_.max_connections) {
            BTSP_LOG_INFO("rejected connection from %s: max_connections (%zu) reached", peer.c_str(),
                          opts_.max_connections);
            bump(conns_rejected_);
            ucp_listener_reject(listener_, req);
            return;
        }
    }

    auto* conn = new (std::nothrow) Connection(this, false, next_conn_id_++);
    if (conn == nullptr) {
        ucp_listener_reject(listener_, req);
        return;
    }
    conn->peer = std::move(peer);
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLER |
                    UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep.conn_request = req;
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = &ep_error_callback;
    ep.err_handler.arg = conn;
    const ucs_status_t st = ucp_ep_create(worker_, &ep, &conn->ep_sock);
    if (st == UCS_OK) endpoint_created();
    if (st != UCS_OK) {
        BTSP_LOG_WARN("accepting %s: ucp_ep_create: %s", conn->peer.c_str(), ucs_status_string(st));
        delete conn;
        return;
    }
    link_connection(conn);
    BTSP_LOG_DEBUG("connection request from %s", conn->peer.c_str());
    if (!opts_.fast_path || local_address_ == nullptr) {
        become_open(conn);
        return;
    }
    conn->phase = ConnPhase::HANDSHAKE;
    conn->token = token_seed_ ^ (conn->id * 0x9E3779B97F4A7C15ull);
    flush_endpoint(conn, conn->ep_sock, &sock_flush_callback, &Engine::on_sock_flushed);
}

bool Engine::send_ctrl(Connection* conn, CtrlType type) noexcept {
    try {
        if (!encode_ctrl(type, conn->token, local_address_, local_address_length_, conn->ctrl_out))
            return false;
    } catch (...) {
        return false;
    }
    ucp_request_param_t p;
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = &ctrl_send_callback;
    p.user_data = conn;
    ucs_status_ptr_t sp = ucp_tag_send_nbx(conn->ep_sock, conn->ctrl_out.data(), conn->ctrl_out.size(),
                                           type == CtrlType::OFFER ? kTagOffer : kTagAccept, &p);
    if (UCS_PTR_IS_ERR(sp)) {
        BTSP_LOG_DEBUG("handshake send to %s: %s", conn->peer.c_str(), ucs_status_string(UCS_PTR_STATUS(sp)));
        return false;
    }
    if (sp != nullptr) ++conn->ucx_refs;
    return true;
}

void Engine::post_ctrl_recv(CtrlRecv& r) noexcept {
    if (r.req != nullptr || tearing_down_) return;
    try {
        if (r.buf.empty()) r.buf.resize(kCtrlBufferSize);
    } catch (...) {
        return;
    }
    ucp_request_param_t p;
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
    p.cb.recv = [](void* request, ucs_status_t status, const ucp_tag_recv_info_t* info, void* user_data) {
        auto* cr = static_cast<CtrlRecv*>(user_data);
        cr->length = info != nullptr ? info->length : 0;  // inside the request: read first
        ucp_request_free(request);
        cr->req = nullptr;
        cr->done = true;
        cr->status = status;
    };
    p.user_data = &r;
    r.done = false;
    ucs_status_ptr_t sp = ucp_tag_recv_nbx(worker_, r.buf.data(), r.buf.size(), r.tag, ~std::uint64_t{0}, &p);
    if (UCS_PTR_IS_ERR(sp)) {
        BTSP_LOG_WARN("control receive: %s", ucs_status_string(UCS_PTR_STATUS(sp)));
    } else if (!r.done) {
        r.req = sp;
    }
}

void Engine::handle_accept_msg() noexcept {
    accept_recv_.done = false;
    const ucs_status_t status = accept_recv_.status;
    CtrlMessage msg;
    Connection* conn = nullptr;
    if (status == UCS_OK && decode_ctrl(accept_recv_.buf.data(), accept_recv_.length, msg) &&
        msg.type == CtrlType::ACCEPT) {
        for (Connection* c = all_head_; c != nullptr; c = c->all_next) {
            if (c->phase == ConnPhase::HANDSHAKE && c->token == msg.token) {
                conn = c;
                break;
            }
        }
        if (conn == nullptr) BTSP_LOG_DEBUG("handshake answer for an unknown connection; ignored");
    } else if (status != UCS_ERR_CANCELED) {
        BTSP_LOG_WARN("malformed handshake answer (%s, %zu bytes); ignored", ucs_status_string(status),
                      accept_recv_.length);
    }
    if (conn != nullptr) {
        ucp_ep_h fast = nullptr;
        const ucs_status_t st = create_ep_from_address(worker_, msg.address, conn, &fast);
        if (st == UCS_OK) {
            disarm_timer(&conn->grace_timer);
            conn->ep_fast = fast;
            flush_fast(conn);
        } else {
            BTSP_LOG_WARN("accepting %s: endpoint from worker address: %s; using the sockaddr path",
                          conn->peer.c_str(), ucs_status_string(st));
            become_open(conn);
        }
    }
    if (status != UCS_ERR_CANCELED && listener_ != nullptr) post_ctrl_recv(accept_recv_);
}

void Engine::handle_bye_msg() noexcept {
    bye_recv_.done = false;
    const ucs_status_t status = bye_recv_.status;
    if (status == UCS_ERR_CANCELED) return;
    CtrlMessage msg;
    if (status == UCS_OK && decode_ctrl(bye_recv_.buf.data(), bye_recv_.length, msg) && msg.type == CtrlType::BYE) {
        for (Connection* c = all_head_; c != nullptr; c = c->all_next) {
            if (c->token == msg.token && c->ep_fast != nullptr &&
                (c->phase == ConnPhase::OPEN || c->phase == ConnPhase::HANDSHAKE ||
                 c->phase == ConnPhase::CONNECTING)) {
                BTSP_LOG_DEBUG("%s closed the connection", c->peer.c_str());
                on_connection_error(c, UCS_ERR_CONNECTION_RESET);
                break;
            }
        }
    } else {
        BTSP_LOG_WARN("malformed close message (%s, %zu bytes); ignored", ucs_status_string(status),
                      bye_recv_.length);
    }
    post_ctrl_recv(bye_recv_);
}

// Closing a worker-address endpoint tells the peer nothing: say goodbye first. The BYE
// is a small eager message on the same endpoint as the data, so it arrives after it.
void Engine::send_bye(Connection* conn) noexcept {
    if (conn->ep_fast != nullptr) send_ctrl_on(conn, conn->ep_fast, CtrlType::BYE, conn->bye_out, nullptr);
}

bool Engine::send_ctrl_on(Connection* conn, ucp_ep_h ep, CtrlType type, std::vector<std::uint8_t>& buf,
                          bool* pending_flag) noexcept {
    // Encoded once per connection (the token does not change): a heartbeat allocates nothing.
    if (buf.empty()) {
        try {
            if (!encode_ctrl(type, conn->token, nullptr, 0, buf)) return false;
        } catch (...) {
            return false;
        }
    }
    ucp_request_param_t p;
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = type == CtrlType::BYE ? &bye_send_callback
              : pending_flag != nullptr ? &ping_send_callback
                                        : &ctrl_send_callback;
    p.user_data = conn;
    const std::uint64_t tag = type == CtrlType::BYE ? kTagBye : kTagPing;
    ucs_status_ptr_t sp = ucp_tag_send_nbx(ep, buf.data(), buf.size(), tag, &p);
    if (UCS_PTR_IS_ERR(sp)) return false;
    if (sp != nullptr) {
        ++conn->ucx_refs;
        if (pending_flag != nullptr) *pending_flag = true;
        if (type == CtrlType::BYE) conn->bye_pending = true;
    }
    return true;
}

void Engine::handle_ping_msg() noexcept {
    ping_recv_.done = false;
    const ucs_status_t status = ping_recv_.status;
    if (status == UCS_ERR_CANCELED) return;
    CtrlMessage msg;
    if (status == UCS_OK && decode_ctrl(ping_recv_.buf.data(), ping_recv_.length, msg) && msg.type == CtrlType::PING) {
        for (Connection* c = live_head_; c != nullptr; c = c->live_next) {
            if (c->token == msg.token && c->ep_fast != nullptr) {
                c->last_heard = Clock::now();
                c->fast_confirmed = true;
                if (c->sock_reset_pending) {  // the reset was the server retiring ep_sock
                    c->sock_reset_pending = false;
                    disarm_timer(&c->grace_timer);
                    c->events |= kEvRetireSock;
                    defer(c);
                }
                break;
            }
        }
    }
    post_ctrl_recv(ping_recv_);
}

// Every heartbeat_interval: ping each btsp peer, and give up on those not heard from.
void Engine::heartbeat_tick() noexcept {
    const auto now = Clock::now();
    bool any = false;
    for (Connection* c = live_head_; c != nullptr;) {
        Connection* next = c->live_next;
        if (c->ep_fast != nullptr) {
            any = true;
            if ((!c->is_client || c->fast_confirmed) && now - c->last_heard > opts_.peer_timeout) {
                BTSP_LOG_WARN("%s not heard from for %lld ms: connection considered lost", c->peer.c_str(),
                              static_cast<long long>(
                                  std::chrono::duration_cast<std::chrono::milliseconds>(now - c->last_heard).count()));
                on_connection_error(c, UCS_ERR_ENDPOINT_TIMEOUT);
            } else if (!c->ping_pending) {
                send_ctrl_on(c, c->ep_fast, CtrlType::PING, c->ping_out, &c->ping_pending);
            }
        }
        c = next;
    }
    if (any) arm_timer(&heartbeat_timer_, now + opts_.heartbeat_interval);
}

// ---- failure and close -------------------------------------------------------------------

// Runs inside ucp_worker_progress (UCX's endpoint error callback): only record the
// failure; cancelling and closing happen in process_deferred() once progress returned.
void Engine::on_connection_error(Connection* conn, ucs_status_t status) noexcept {
    if (conn->phase == ConnPhase::FAILED || conn->phase == ConnPhase::CLOSING ||
        conn->phase == ConnPhase::CLOSED)
        return;
    disarm_timer(&conn->connect_timer);
    disarm_timer(&conn->grace_timer);
    if (!conn->is_client && conn->phase == ConnPhase::HANDSHAKE) {
        // The client may already have sent data and left before our side of the handshake
        // finished (a plain client does not even wait for it). Report the connection as
        // opened and then lost: waiters wake, and what arrived can still be received.
        add_live(conn);
        BTSP_LOG_INFO("accepted connection from %s (it closed during the handshake)", conn->peer.c_str());
        set_base_state(RdmaState::CONNECTED);
    }
    const bool was_open = conn->phase == ConnPhase::OPEN;
    conn->phase = ConnPhase::FAILED;
    conn->error = status;
    if (was_open) {
        remove_live(conn);
        if (status != UCS_ERR_CANCELED) bump(conns_lost_);
        BTSP_LOG_INFO("connection to %s lost: %s", conn->peer.c_str(), ucs_status_string(status));
    } else {
        BTSP_LOG_INFO("%s %s failed: %s", conn->is_client ? "connect to" : "handshake with",
                      conn->peer.c_str(), ucs_status_string(status));
    }
    if (Operation* op = conn->connect_op) {
        conn->connect_op = nullptr;
        untrack(op);
        op->result.status = status;
        op->result.result = is_connection_loss(status) || status == UCS_ERR_CANCELED
                                ? RdmaResult::DISCONNECTED
                                : map_status(status);
        complete(op);
    }
    defer(conn);
    if (live_head_ == nullptr && !tearing_down_) set_base_state(idle_state());
}

void Engine::process_deferred() noexcept {
    if (accept_recv_.done) handle_accept_msg();
    if (bye_recv_.done) handle_bye_msg();
    if (ping_recv_.done) handle_ping_msg();
    while (Connection* conn = deferred_head_) {
        deferred_head_ = conn->deferred_next;
        conn->deferred_next = nullptr;
        conn->in_deferred_list = false;
        if (conn->events & kEvOfferArrived) {
            conn->events = static_cast<std::uint8_t>(conn->events & ~kEvOfferArrived);
            handle_offer(conn);
        }
        if (conn->events & (kEvFastFlushed | kEvSockFlushed)) close_flushed(conn);
        if (conn->events & kEvByeSent) {
            conn->events = static_cast<std::uint8_t>(conn->events & ~kEvByeSent);
            if (conn->close_deferred) close_endpoints(conn);
        }
        if (conn->events & kEvRetireSock) {
            conn->events = static_cast<std::uint8_t>(conn->events & ~kEvRetireSock);
            if (conn->phase == ConnPhase::OPEN) {
                // Force: the peer already closed its side, a flush would wait for nothing.
                begin_close(conn, false, false);
            }
        }
        if (conn->phase == ConnPhase::FAILED) {
            // Receives bound to this connection would wait forever (they are per worker).
            for (Operation* op = tracked_head_; op != nullptr;) {
                Operation* next = op->reg_next;
                if (op->kind == OpKind::RECV && op->conn == conn)
                    cancel_op(op, RdmaResult::DISCONNECTED, "connection lost");
                op = next;
            }
            if (conn->offer_req != nullptr) ucp_request_cancel(worker_, conn->offer_req);
            // Pending sends complete through UCX once the endpoints are force-closed.
            close_connection(conn, true);
        }
        maybe_free(conn);
    }
    if (!pending_requests_.empty()) {
        std::vector<ucp_conn_request_h> reqs;
        reqs.swap(pending_requests_);
        for (ucp_conn_request_h req : reqs) accept(req);
        reqs.clear();
        if (pending_requests_.empty()) pending_requests_.swap(reqs);  // keep the capacity
    }
}

void Engine::start_listen(Operation* op) noexcept {
    if (listener_ != nullptr) {
        if (op->port == 0 || op->port == listen_port_.load(std::memory_order_relaxed)) {
            op->result.result = RdmaResult::SUCCESS;
            op->flags |= kOpCompleted;
        } else {
            op->fail_now(RdmaResult::FAILURE, "already listening on another port");
        }
        return;
    }
    std::string err;
    if (!create_listener(op->port, err)) {
        BTSP_LOG_ERROR("listen: %s", err.c_str());
        op->fail_now(RdmaResult::FAILURE, "cannot listen on that port (see the log)");
        return;
    }
    op->result.result = RdmaResult::SUCCESS;
    op->flags |= kOpCompleted;
    if (live_head_ == nullptr) set_base_state(RdmaState::LISTENING);
}

void Engine::start_disconnect(Operation* op) noexcept {
    for (Connection* c = all_head_; c != nullptr;) {
        Connection* next = c->all_next;
        if (c->phase == ConnPhase::CONNECTING) {
            abort_connect(c, RdmaResult::DISCONNECTED, UCS_ERR_CANCELED, "disconnected");
        } else if (c->phase == ConnPhase::OPEN || c->phase == ConnPhase::HANDSHAKE) {
            for (Operation* o = tracked_head_; o != nullptr;) {
                Operation* onext = o->reg_next;
                if (o->kind == OpKind::RECV && o->conn == c) cancel_op(o, RdmaResult::DISCONNECTED, "disconnected");
                o = onext;
            }
            BTSP_LOG_INFO("closing the connection to %s", c->peer.c_str());
            close_connection(c, c->pending_sends > 0);
            maybe_free(c);
        }
        c = next;
    }
    op->result.result = RdmaResult::SUCCESS;
    op->flags |= kOpCompleted;
    set_base_state(idle_state());
}

void Engine::close_connection(Connection* conn, bool force) noexcept {
    if (conn->phase == ConnPhase::OPEN) remove_live(conn);
    if (conn->phase == ConnPhase::CLOSING || conn->phase == ConnPhase::CLOSED) return;
    disarm_timer(&conn->connect_timer);
    disarm_timer(&conn->grace_timer);
    // Our own decision (shutdown, a cancelled send): tell the peer. After a transport
    // error or the peer's own BYE there is nobody to tell.
    if (conn->error == UCS_OK || conn->error == UCS_ERR_CANCELED) send_bye(conn);
    conn->phase = ConnPhase::CLOSING;
    conn->close_forced = force;
    if (force && conn->bye_pending) {
        // A forced close drops what is queued on the endpoint, the BYE too (it waits behind
        // the pending sends' rendezvous messages): close once it has left, or after 100 ms.
        conn->close_deferred = true;
        conn->close_deadline = Clock::now() + std::chrono::milliseconds(100);
        arm_conn_timer(&conn->grace_timer, conn,
                       [](TimerNode* t) noexcept {
                           auto* c = static_cast<Connection*>(t->ctx);
                           c->engine->close_endpoints(c);
                           c->engine->maybe_free(c);
                       },
                       std::chrono::milliseconds(100));
        return;
    }
    close_endpoints(conn);
}

void Engine::close_endpoints(Connection* conn) noexcept {
    // Not gated on closes_pending: a close already under way (the server retiring its
    // sockaddr endpoint) must not keep the data endpoint open — UCX would keep it, and
    // the peer's shared-memory segments it maps, for the life of the worker.
    if (conn->phase != ConnPhase::CLOSING) return;
    conn->close_deferred = false;
    disarm_timer(&conn->grace_timer);
    // The data endpoint first: its pending sends end before the liveness one goes.
    begin_close(conn, true, !conn->close_forced);
    begin_close(conn, false, !conn->close_forced);
    if (conn->closes_pending == 0) conn->phase = ConnPhase::CLOSED;
}

void Engine::on_close_done(Connection* conn) noexcept {
    if (conn->closes_pending > 0) --conn->closes_pending;
    if (conn->closes_pending == 0 && conn->phase == ConnPhase::CLOSING) conn->phase = ConnPhase::CLOSED;
    maybe_free(conn);
}

void Engine::maybe_free(Connection* conn) noexcept {
    if (tearing_down_) return;  // teardown frees every connection at its end
    if (conn->phase != ConnPhase::CLOSED || conn->ucx_refs != 0 || conn->tracked_ops != 0 ||
        conn->in_deferred_list || conn->close_deferred)
        return;
    if (conn->all_prev) conn->all_prev->all_next = conn->all_next; else all_head_ = conn->all_next;
    if (conn->all_next) conn->all_next->all_prev = conn->all_prev;
    delete conn;
}

}  // namespace btsp::detail
