// Connections: client connect (sockaddr flow + wire-up flush + deadline), server accept,
// failure handling, closing. All of it runs on the progress thread.
#include "engine.hpp"

#include "status.hpp"

#include <btsp/log.hpp>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>

namespace btsp::detail {
namespace {

using Clock = std::chrono::steady_clock;

void ep_error_callback(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
    auto* conn = static_cast<Connection*>(arg);
    conn->engine->on_connection_error(conn, status);
}

void flush_callback(void* request, ucs_status_t status, void* user_data) {
    auto* conn = static_cast<Connection*>(user_data);
    ucp_request_free(request);
    --conn->ucx_refs;
    conn->engine->on_connect_flushed(conn, status);
}

void close_callback(void* request, ucs_status_t /*status*/, void* user_data) {
    auto* conn = static_cast<Connection*>(user_data);
    ucp_request_free(request);
    conn->close_request = nullptr;
    --conn->ucx_refs;
    conn->engine->on_close_done(conn);
}

std::string format_addr(const sockaddr* sa) {
    char host[INET6_ADDRSTRLEN] = "?";
    std::uint16_t port = 0;
    if (sa->sa_family == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        port = ntohs(in6->sin6_port);
        return std::string("[") + host + "]:" + std::to_string(port);
    }
    return std::string(host) + ":" + std::to_string(port);
}

// Numeric addresses resolve without touching DNS; names go through getaddrinfo, IPv4
// preferred (the default listener is IPv4).
bool resolve(const char* host, std::uint16_t port, sockaddr_storage& out, socklen_t& len) {
    std::memset(&out, 0, sizeof out);
    auto* in = reinterpret_cast<sockaddr_in*>(&out);
    if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        len = sizeof(sockaddr_in);
        return true;
    }
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&out);
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
    if (pick->ai_family == AF_INET || pick->ai_family == AF_INET6) {
        std::memcpy(&out, pick->ai_addr, pick->ai_addrlen);
        len = static_cast<socklen_t>(pick->ai_addrlen);
        if (pick->ai_family == AF_INET) in->sin_port = htons(port); else in6->sin6_port = htons(port);
        ok = true;
    }
    freeaddrinfo(res);
    return ok;
}

}  // namespace

void Engine::add_live(Connection* c) noexcept {
    c->phase = ConnPhase::OPEN;
    c->live_prev = live_tail_;
    c->live_next = nullptr;
    if (live_tail_) live_tail_->live_next = c; else live_head_ = c;
    live_tail_ = c;
    live_count_.fetch_add(1, std::memory_order_relaxed);
    primary_ep_.store(live_head_->ep, std::memory_order_release);
}

void Engine::remove_live(Connection* c) noexcept {
    if (c->live_prev) c->live_prev->live_next = c->live_next; else live_head_ = c->live_next;
    if (c->live_next) c->live_next->live_prev = c->live_prev; else live_tail_ = c->live_prev;
    c->live_prev = c->live_next = nullptr;
    live_count_.fetch_sub(1, std::memory_order_relaxed);
    primary_ep_.store(live_head_ ? live_head_->ep : nullptr, std::memory_order_release);
}

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
    const ucs_status_t st = ucp_ep_create(worker_, &ep, &conn->ep);
    if (st != UCS_OK) {
        BTSP_LOG_WARN("connect to %s: ucp_ep_create: %s", conn->peer.c_str(), ucs_status_string(st));
        delete conn;
        op->result.status = st;
        op->fail_now(map_status(st) == RdmaResult::DISCONNECTED ? RdmaResult::DISCONNECTED
                                                               : RdmaResult::FAILURE,
                     nullptr);
        return;
    }
    conn->all_next = all_head_;
    if (all_head_) all_head_->all_prev = conn;
    all_head_ = conn;
    conn->phase = ConnPhase::CONNECTING;
    conn->connect_op = op;
    op->conn = conn;
    track(op);
    set_base_state(RdmaState::CONNECTING);
    BTSP_LOG_DEBUG("connecting to %s", conn->peer.c_str());

    // UCX reports no "connected" event: a flush completes once wire-up is done.
    ucp_request_param_t p;
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = &flush_callback;
    p.user_data = conn;
    ucs_status_ptr_t sp = ucp_ep_flush_nbx(conn->ep, &p);
    if (sp == nullptr) {
        on_connect_flushed(conn, UCS_OK);
        return;
    }
    if (UCS_PTR_IS_ERR(sp)) {
        on_connection_error(conn, UCS_PTR_STATUS(sp));
        return;
    }
    ++conn->ucx_refs;
    conn->connect_timer.fire = [](TimerNode* t) noexcept {
        auto* c = static_cast<Connection*>(t->ctx);
        c->engine->on_connect_timeout(c);
    };
    conn->connect_timer.ctx = conn;
    arm_timer(&conn->connect_timer, Clock::now() + opts_.connect_timeout);
}

void Engine::on_connect_flushed(Connection* conn, ucs_status_t status) noexcept {
    if (conn->phase != ConnPhase::CONNECTING) {
        maybe_free(conn);
        return;
    }
    if (status != UCS_OK) {
        on_connection_error(conn, status);
        return;
    }
    disarm_timer(&conn->connect_timer);
    add_live(conn);
    if (Operation* op = conn->connect_op) {
        conn->connect_op = nullptr;
        untrack(op);
        op->result.result = RdmaResult::SUCCESS;
        op->result.status = UCS_OK;
        complete(op);
    }
    BTSP_LOG_INFO("connected to %s", conn->peer.c_str());
    set_base_state(RdmaState::CONNECTED);
}

void Engine::on_connect_timeout(Connection* conn) noexcept {
    if (conn->phase != ConnPhase::CONNECTING) return;
    BTSP_LOG_WARN("connect to %s: no answer within %lld ms", conn->peer.c_str(),
                  static_cast<long long>(opts_.connect_timeout.count()));
    conn->phase = ConnPhase::FAILED;
    conn->error = UCS_ERR_TIMED_OUT;
    if (Operation* op = conn->connect_op) {
        conn->connect_op = nullptr;
        untrack(op);
        op->result.result = RdmaResult::TIMEOUT;
        op->result.status = UCS_ERR_TIMED_OUT;
        op->result.detail = "connect timed out";
        complete(op);
    }
    if (!conn->in_failed_list) {
        conn->in_failed_list = true;
        conn->failed_next = failed_head_;
        failed_head_ = conn;
    }
    if (live_head_ == nullptr) set_base_state(idle_state());
}

// Runs inside ucp_worker_progress (UCX's endpoint error callback): only record the
// failure; cancelling and closing happen in process_deferred() once progress returned.
void Engine::on_connection_error(Connection* conn, ucs_status_t status) noexcept {
    if (conn->phase == ConnPhase::FAILED || conn->phase == ConnPhase::CLOSING ||
        conn->phase == ConnPhase::CLOSED)
        return;
    const bool was_open = conn->phase == ConnPhase::OPEN;
    conn->phase = ConnPhase::FAILED;
    conn->error = status;
    disarm_timer(&conn->connect_timer);
    if (was_open) {
        remove_live(conn);
        BTSP_LOG_INFO("connection to %s lost: %s", conn->peer.c_str(), ucs_status_string(status));
    } else {
        BTSP_LOG_INFO("connect to %s failed: %s", conn->peer.c_str(), ucs_status_string(status));
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
    if (!conn->in_failed_list) {
        conn->in_failed_list = true;
        conn->failed_next = failed_head_;
        failed_head_ = conn;
    }
    if (live_head_ == nullptr && !tearing_down_) set_base_state(idle_state());
}

void Engine::process_deferred() noexcept {
    while (Connection* conn = failed_head_) {
        failed_head_ = conn->failed_next;
        conn->failed_next = nullptr;
        conn->in_failed_list = false;
        // Receives bound to this connection would wait forever (they are per worker).
        for (Operation* op = tracked_head_; op != nullptr;) {
            Operation* next = op->reg_next;
            if (op->kind == OpKind::RECV && op->conn == conn)
                cancel_op(op, RdmaResult::DISCONNECTED, "connection lost");
            op = next;
        }
        // Pending sends complete through UCX once the endpoint is force-closed.
        if (conn->ep != nullptr && conn->phase == ConnPhase::FAILED) close_connection(conn, true);
    }
    if (!pending_requests_.empty()) {
        // accept() may not add to the vector (only the conn handler does, inside progress).
        std::vector<ucp_conn_request_h> reqs;
        reqs.swap(pending_requests_);
        for (ucp_conn_request_h req : reqs) accept(req);
        reqs.clear();
        if (pending_requests_.empty()) pending_requests_.swap(reqs);  // keep the capacity
    }
}

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
    if (ucp_conn_request_query(req, &attr) == UCS_OK)
        peer = format_addr(reinterpret_cast<const sockaddr*>(&attr.client_address));

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
    const ucs_status_t st = ucp_ep_create(worker_, &ep, &conn->ep);
    if (st != UCS_OK) {
        BTSP_LOG_WARN("accepting %s: ucp_ep_create: %s", conn->peer.c_str(), ucs_status_string(st));
        delete conn;
        return;
    }
    conn->all_next = all_head_;
    if (all_head_) all_head_->all_prev = conn;
    all_head_ = conn;
    add_live(conn);
    BTSP_LOG_INFO("accepted connection from %s", conn->peer.c_str());
    set_base_state(RdmaState::CONNECTED);
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

void Engine::close_connection(Connection* conn, bool force) noexcept {
    if (conn->phase == ConnPhase::OPEN) remove_live(conn);
    disarm_timer(&conn->connect_timer);
    ucp_request_param_t p;
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    p.cb.send = &close_callback;
    p.user_data = conn;
    p.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    conn->phase = ConnPhase::CLOSING;
    conn->close_forced = force;
    ucs_status_ptr_t sp = ucp_ep_close_nbx(conn->ep, &p);
    if (sp == nullptr || UCS_PTR_IS_ERR(sp)) {
        if (UCS_PTR_IS_ERR(sp))
            BTSP_LOG_DEBUG("closing %s: %s", conn->peer.c_str(), ucs_status_string(UCS_PTR_STATUS(sp)));
        on_close_done(conn);
        return;
    }
    conn->close_request = sp;
    ++conn->ucx_refs;
}

void Engine::on_close_done(Connection* conn) noexcept {
    conn->phase = ConnPhase::CLOSED;
    conn->ep = nullptr;
    maybe_free(conn);
}

void Engine::maybe_free(Connection* conn) noexcept {
    if (tearing_down_) return;  // teardown frees every connection at its end
    if (conn->phase != ConnPhase::CLOSED || conn->ucx_refs != 0 || conn->tracked_ops != 0 ||
        conn->in_failed_list)
        return;
    if (conn->all_prev) conn->all_prev->all_next = conn->all_next; else all_head_ = conn->all_next;
    if (conn->all_next) conn->all_next->all_prev = conn->all_prev;
    delete conn;
}

}  // namespace btsp::detail
