// plain_ucp_peer — a small program written directly on the UCP C API (no btsp), used by
// tests/interop_test.cpp to check btsp's wire format: plain UCX tag messages over UCX's
// sockaddr client/server connection flow.
//
//   plain_ucp_peer server N [ADDR]   listen on ADDR (default 0.0.0.0; "::1" for IPv6) at an
//                                    ephemeral port, print "PORT <n>",
//                                    accept one client (reject any other request), N times:
//                                    receive on tag 7 and reply with the same payload on
//                                    tag 8; print "DONE", wait (≤ 5 s) for the client to
//                                    close, exit 0
//   plain_ucp_peer client HOST PORT N SIZE
//                                    connect, N times: send SIZE bytes on tag 7, expect the
//                                    same bytes on tag 8; print "OK", close, exit 0
//
// Error handling mode PEER with an error handler on every endpoint; recvs use
// NO_IMM_CMPL (UCX 1.13 leaves recv_info empty on immediate completion); every wait is
// bounded in time. Exit codes: 0 ok, 2 setup, 3 connect/accept, 4 transfer, 5 data.
#include <ucp/api/ucp.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
constexpr ucp_tag_t kTagRequest = 7;
constexpr ucp_tag_t kTagReply = 8;
constexpr ucp_tag_t kFullMask = ~ucp_tag_t{0};

struct Peer {
    ucp_context_h context = nullptr;
    ucp_worker_h worker = nullptr;
    ucp_listener_h listener = nullptr;
    ucp_ep_h ep = nullptr;
    std::vector<ucp_conn_request_h> requests;  // not answered yet
    bool ep_failed = false;
    ucs_status_t ep_status = UCS_OK;
};

struct Completion {
    bool done = false;
    ucs_status_t status = UCS_OK;
    std::size_t length = 0;
    ucp_tag_t sender_tag = 0;
};

void on_error(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
    auto* p = static_cast<Peer*>(arg);
    p->ep_failed = true;
    p->ep_status = status;
}

void on_conn_request(ucp_conn_request_h request, void* arg) {
    static_cast<Peer*>(arg)->requests.push_back(request);
}

void on_send(void* /*request*/, ucs_status_t status, void* user_data) {
    auto* c = static_cast<Completion*>(user_data);
    c->status = status;
    c->done = true;
}

void on_recv(void* /*request*/, ucs_status_t status, const ucp_tag_recv_info_t* info,
             void* user_data) {
    auto* c = static_cast<Completion*>(user_data);
    c->status = status;
    if (info != nullptr) {
        c->length = info->length;
        c->sender_tag = info->sender_tag;
    }
    c->done = true;
}

/// Progresses until `c` is done or `limit` passes; cancels (and waits for) it on timeout.
ucs_status_t wait_request(Peer& p, ucs_status_ptr_t sp, Completion& c, std::chrono::milliseconds limit) {
    if (sp == nullptr) {  // completed at once (sends only; recvs use NO_IMM_CMPL)
        c.done = true;
        return UCS_OK;
    }
    if (UCS_PTR_IS_ERR(sp)) {
        c.done = true;
        c.status = UCS_PTR_STATUS(sp);
        return c.status;
    }
    const auto deadline = Clock::now() + limit;
    while (!c.done && Clock::now() < deadline) ucp_worker_progress(p.worker);
    if (!c.done) {
        ucp_request_cancel(p.worker, sp);
        const auto cancel_deadline = Clock::now() + std::chrono::seconds(2);
        while (!c.done && Clock::now() < cancel_deadline) ucp_worker_progress(p.worker);
        if (!c.done) {
            std::fprintf(stderr, "plain: request stuck even after cancel\n");
            std::_Exit(4);  // cannot free a request UCX still owns
        }
        ucp_request_free(sp);
        return UCS_ERR_TIMED_OUT;
    }
    ucp_request_free(sp);
    return c.status;
}

ucs_status_t send_tagged(Peer& p, const void* data, std::size_t size, ucp_tag_t tag) {
    Completion c;
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.send = on_send;
    param.user_data = &c;
    ucs_status_ptr_t sp = ucp_tag_send_nbx(p.ep, data, size, tag, &param);
    return wait_request(p, sp, c, std::chrono::seconds(10));
}

ucs_status_t recv_tagged(Peer& p, void* data, std::size_t cap, ucp_tag_t tag, std::size_t& length,
                         ucp_tag_t& sender_tag) {
    Completion c;
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                         UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
    param.cb.recv = on_recv;
    param.user_data = &c;
    ucs_status_ptr_t sp = ucp_tag_recv_nbx(p.worker, data, cap, tag, kFullMask, &param);
    const ucs_status_t st = wait_request(p, sp, c, std::chrono::seconds(10));
    length = c.length;
    sender_tag = c.sender_tag;
    return st;
}

bool setup(Peer& p) {
    ucp_config_t* config = nullptr;
    if (ucp_config_read(nullptr, nullptr, &config) != UCS_OK) return false;
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_TAG;
    const ucs_status_t st = ucp_init(&params, config, &p.context);
    ucp_config_release(config);
    if (st != UCS_OK) return false;
    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    return ucp_worker_create(p.context, &wp, &p.worker) == UCS_OK;
}

/// Closes the endpoint (flush, bounded; force if it does not finish) and tears down in the
/// safe order: reject pending requests, destroy listener, close ep, destroy worker.
void teardown(Peer& p) {
    if (p.worker != nullptr) {
        for (ucp_conn_request_h r : p.requests) ucp_listener_reject(p.listener, r);
        p.requests.clear();
        if (p.listener != nullptr) ucp_listener_destroy(p.listener);
        p.listener = nullptr;
        if (p.ep != nullptr) {
            ucp_request_param_t cp{};
            cp.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
            cp.flags = p.ep_failed ? UCP_EP_CLOSE_FLAG_FORCE : 0;
            ucs_status_ptr_t sp = ucp_ep_close_nbx(p.ep, &cp);
            if (sp != nullptr && !UCS_PTR_IS_ERR(sp)) {
                const auto deadline = Clock::now() + std::chrono::seconds(2);
                while (ucp_request_check_status(sp) == UCS_INPROGRESS && Clock::now() < deadline)
                    ucp_worker_progress(p.worker);
                ucp_request_free(sp);
            }
            p.ep = nullptr;
        }
        ucp_worker_destroy(p.worker);
    }
    if (p.context != nullptr) ucp_cleanup(p.context);
}

ucp_ep_params_t ep_params(Peer& p) {
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = on_error;
    ep.err_handler.arg = &p;
    return ep;
}

int run_server(int count, const char* listen_addr) {
    Peer p;
    if (!setup(p)) return 2;
    sockaddr_storage storage{};
    socklen_t addrlen = 0;
    if (std::strchr(listen_addr, ':') != nullptr) {
        auto* a6 = reinterpret_cast<sockaddr_in6*>(&storage);
        a6->sin6_family = AF_INET6;
        if (inet_pton(AF_INET6, listen_addr, &a6->sin6_addr) != 1) return 2;
        addrlen = sizeof(sockaddr_in6);
    } else {
        auto* a4 = reinterpret_cast<sockaddr_in*>(&storage);
        a4->sin_family = AF_INET;
        if (inet_pton(AF_INET, listen_addr, &a4->sin_addr) != 1) return 2;
        addrlen = sizeof(sockaddr_in);
    }
    ucp_listener_params_t lp{};
    lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
    lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&storage);
    lp.sockaddr.addrlen = addrlen;
    lp.conn_handler.cb = on_conn_request;
    lp.conn_handler.arg = &p;
    if (ucp_listener_create(p.worker, &lp, &p.listener) != UCS_OK) {
        teardown(p);
        return 2;
    }
    ucp_listener_attr_t la{};
    la.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
    if (ucp_listener_query(p.listener, &la) != UCS_OK) {
        teardown(p);
        return 2;
    }
    const unsigned bound_port =
        la.sockaddr.ss_family == AF_INET6
            ? ntohs(reinterpret_cast<const sockaddr_in6*>(&la.sockaddr)->sin6_port)
            : ntohs(reinterpret_cast<const sockaddr_in*>(&la.sockaddr)->sin_port);
    std::printf("PORT %u\n", bound_port);
    std::fflush(stdout);

    // Accept the first connection request; reject any other.
    const auto accept_deadline = Clock::now() + std::chrono::seconds(20);
    while (p.requests.empty() && Clock::now() < accept_deadline) ucp_worker_progress(p.worker);
    if (p.requests.empty()) {
        std::fprintf(stderr, "plain server: no client\n");
        teardown(p);
        return 3;
    }
    ucp_ep_params_t ep = ep_params(p);
    ep.field_mask |= UCP_EP_PARAM_FIELD_CONN_REQUEST;
    ep.conn_request = p.requests.front();
    p.requests.erase(p.requests.begin());
    if (ucp_ep_create(p.worker, &ep, &p.ep) != UCS_OK) {
        std::fprintf(stderr, "plain server: ucp_ep_create(conn_request) failed\n");
        p.ep = nullptr;
        teardown(p);
        return 3;
    }

    std::vector<std::uint8_t> buf(8u << 20);
    int rc = 0;
    for (int i = 0; i < count && rc == 0; ++i) {
        std::size_t length = 0;
        ucp_tag_t tag = 0;
        ucs_status_t st = recv_tagged(p, buf.data(), buf.size(), kTagRequest, length, tag);
        if (st != UCS_OK) {
            std::fprintf(stderr, "plain server: recv %d: %s\n", i, ucs_status_string(st));
            rc = 4;
            break;
        }
        if (tag != kTagRequest) {
            std::fprintf(stderr, "plain server: recv %d: sender tag %llu\n", i,
                         static_cast<unsigned long long>(tag));
            rc = 5;
            break;
        }
        st = send_tagged(p, buf.data(), length, kTagReply);
        if (st != UCS_OK) {
            std::fprintf(stderr, "plain server: send %d: %s\n", i, ucs_status_string(st));
            rc = 4;
        }
        for (ucp_conn_request_h r : p.requests) ucp_listener_reject(p.listener, r);
        p.requests.clear();
    }
    if (rc == 0) {
        std::printf("DONE\n");
        std::fflush(stdout);
        // Let the client close first (bounded).
        const auto deadline = Clock::now() + std::chrono::seconds(5);
        while (!p.ep_failed && Clock::now() < deadline) ucp_worker_progress(p.worker);
    }
    teardown(p);
    return rc;
}

int run_client(const char* host, std::uint16_t port, int count, std::size_t size) {
    Peer p;
    if (!setup(p)) return 2;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST;
    addrinfo* ai = nullptr;
    const std::string port_text = std::to_string(port);
    if (getaddrinfo(host, port_text.c_str(), &hints, &ai) != 0 || ai == nullptr) {
        teardown(p);
        return 2;
    }
    ucp_ep_params_t ep = ep_params(p);
    ep.field_mask |= UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR;
    ep.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
    ep.sockaddr.addr = ai->ai_addr;
    ep.sockaddr.addrlen = ai->ai_addrlen;
    const ucs_status_t cst = ucp_ep_create(p.worker, &ep, &p.ep);
    freeaddrinfo(ai);
    if (cst != UCS_OK) {
        p.ep = nullptr;
        teardown(p);
        return 3;
    }

    int rc = 0;
    std::vector<std::uint8_t> out(size);
    std::vector<std::uint8_t> in(size + 1);
    for (int i = 0; i < count && rc == 0; ++i) {
        for (std::size_t k = 0; k < size; ++k)
            out[k] = static_cast<std::uint8_t>((k * 31u + static_cast<std::size_t>(i) * 7u) & 0xffu);
        // Post the receive first, then send; wait for both.
        Completion rc_done;
        ucp_request_param_t rp{};
        rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                          UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
        rp.cb.recv = on_recv;
        rp.user_data = &rc_done;
        ucs_status_ptr_t rsp = ucp_tag_recv_nbx(p.worker, in.data(), in.size(), kTagReply, kFullMask, &rp);
        ucs_status_t st = send_tagged(p, out.data(), out.size(), kTagRequest);
        if (st != UCS_OK) {
            std::fprintf(stderr, "plain client: send %d: %s%s%s\n", i, ucs_status_string(st),
                         p.ep_failed ? ", endpoint error: " : "",
                         p.ep_failed ? ucs_status_string(p.ep_status) : "");
            rc = p.ep_failed ? 3 : 4;
        }
        st = wait_request(p, rsp, rc_done, std::chrono::seconds(rc == 0 ? 10 : 0));
        if (rc == 0 && st != UCS_OK) {
            std::fprintf(stderr, "plain client: recv %d: %s\n", i, ucs_status_string(st));
            rc = 4;
        }
        if (rc == 0 && (rc_done.length != size || rc_done.sender_tag != kTagReply ||
                        std::memcmp(in.data(), out.data(), size) != 0)) {
            std::fprintf(stderr, "plain client: echo %d wrong (length %zu, tag %llu)\n", i,
                         rc_done.length, static_cast<unsigned long long>(rc_done.sender_tag));
            rc = 5;
        }
    }
    if (rc == 0) {
        std::printf("OK\n");
        std::fflush(stdout);
    }
    teardown(p);
    return rc;
}

}  // namespace

int main(int argc, char** argv) {
    ::alarm(60);
    if ((argc == 3 || argc == 4) && std::strcmp(argv[1], "server") == 0)
        return run_server(std::atoi(argv[2]), argc == 4 ? argv[3] : "0.0.0.0");
    if (argc == 6 && std::strcmp(argv[1], "client") == 0)
        return run_client(argv[2], static_cast<std::uint16_t>(std::atoi(argv[3])), std::atoi(argv[4]),
                          static_cast<std::size_t>(std::atoll(argv[5])));
    std::fprintf(stderr, "usage: plain_ucp_peer server N | client HOST PORT N SIZE\n");
    return 64;
}
