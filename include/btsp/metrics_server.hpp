// btsp — an optional HTTP endpoint serving metrics in Prometheus text format.
#pragma once

#include <btsp/manager.hpp>
#include <btsp/metrics.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace btsp {

/// Serves `GET /metrics` (Prometheus text format 0.0.4) from its own thread. Sources are
/// added with add(); each gets a `manager="<name>"` label. Binds 127.0.0.1 by default.
/// The sources must outlive the server (or be removed by destroying it first).
class MetricsHttpServer {
public:
    /// Listens on `bind_address:port` (port 0 = ephemeral, see port()). Throws
    /// std::runtime_error if the socket cannot be bound.
    explicit MetricsHttpServer(std::uint16_t port = 0, std::string bind_address = "127.0.0.1");
    ~MetricsHttpServer();
    MetricsHttpServer(const MetricsHttpServer&) = delete;
    MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

    void add(const CoroutineRdmaManager& manager, std::string name);
    void add(const RdmaMetrics& metrics, std::string name);
    /// The port actually bound.
    [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
    /// The text a scrape returns now.
    [[nodiscard]] std::string render() const;

private:
    void run() noexcept;
    struct Source {
        std::string name;
        std::function<MetricsSnapshot()> snapshot;
    };
    mutable std::mutex mutex_;
    std::vector<Source> sources_;
    int listen_fd_ = -1;
    int stop_fd_ = -1;  // eventfd that ends the serving thread
    std::uint16_t port_ = 0;
    std::thread thread_;
};

}  // namespace btsp
