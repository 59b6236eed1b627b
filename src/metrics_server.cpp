#include <btsp/log.hpp>
#include <btsp/metrics_server.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace btsp {

MetricsHttpServer::MetricsHttpServer(std::uint16_t port, std::string bind_address) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) throw std::runtime_error(std::string("metrics server: socket: ") + std::strerror(errno));
    const int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    if (inet_pton(AF_INET, bind_address.c_str(), &addr.sin_addr) != 1) {
        ::close(listen_fd_);
        throw std::runtime_error("metrics server: invalid bind address '" + bind_address + "'");
    }
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listen_fd_, 16) != 0) {
        const std::string why = std::strerror(errno);
        ::close(listen_fd_);
        throw std::runtime_error("metrics server: cannot listen on " + bind_address + ":" + std::to_string(port) +
                                 ": " + why);
    }
    socklen_t len = sizeof addr;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    thread_ = std::thread([this] { run(); });
    BTSP_LOG_INFO("metrics served at http://%s:%u/metrics", bind_address.c_str(), port_);
}

MetricsHttpServer::~MetricsHttpServer() {
    const std::uint64_t one = 1;
    (void)!::write(stop_fd_, &one, sizeof one);
    if (thread_.joinable()) thread_.join();
    ::close(listen_fd_);
    ::close(stop_fd_);
}

void MetricsHttpServer::add(const CoroutineRdmaManager& manager, std::string name) {
    std::lock_guard<std::mutex> lock(mutex_);
    sources_.push_back({std::move(name), [&manager] { return manager.metrics(); }});
}

void MetricsHttpServer::add(const RdmaMetrics& metrics, std::string name) {
    std::lock_guard<std::mutex> lock(mutex_);
    sources_.push_back({std::move(name), [&metrics] { return metrics.snapshot(); }});
}

std::string MetricsHttpServer::render() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string out;
    for (const Source& s : sources_) out += s.snapshot().prometheus("btsp", "manager=\"" + s.name + "\"");
    return out;
}

void MetricsHttpServer::run() noexcept {
    for (;;) {
        pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return;
        }
        if (fds[1].revents != 0) return;
        if ((fds[0].revents & POLLIN) == 0) continue;
        const int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) continue;
        // One request per connection; read the request head (bounded) with a timeout.
        char req[2048];
        std::size_t got = 0;
        pollfd cp{c, POLLIN, 0};
        while (got < sizeof req - 1 && ::poll(&cp, 1, 1000) > 0) {
            const ssize_t n = ::recv(c, req + got, sizeof req - 1 - got, 0);
            if (n <= 0) break;
            got += static_cast<std::size_t>(n);
            req[got] = '\0';
            if (std::strstr(req, "\r\n\r\n") != nullptr || std::strstr(req, "\n\n") != nullptr) break;
        }
        req[got] = '\0';
        std::string body;
        std::string status = "200 OK";
        std::string type = "text/plain; version=0.0.4; charset=utf-8";
        if (std::strncmp(req, "GET /metrics", 12) == 0) {
            try {
                body = render();
            } catch (...) {
                status = "500 Internal Server Error";
                body = "error\n";
            }
        } else if (std::strncmp(req, "GET ", 4) == 0) {
            status = "404 Not Found";
            body = "try /metrics\n";
        } else {
            status = "400 Bad Request";
            body = "bad request\n";
        }
        const std::string head = "HTTP/1.0 " + status + "\r\nContent-Type: " + type +
                                 "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
        const std::string resp = head + body;
        std::size_t off = 0;
        while (off < resp.size()) {
            const ssize_t n = ::send(c, resp.data() + off, resp.size() - off, MSG_NOSIGNAL);
            if (n <= 0) break;
            off += static_cast<std::size_t>(n);
        }
        ::close(c);
    }
}

}  // namespace btsp
