// btsp — RdmaSession: the spec's RAII session (最佳实践 1. 资源管理), made real.
#pragma once

#include <btsp/manager.hpp>
#include <btsp/options.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

namespace btsp {

/// RAII owner of an initialised CoroutineRdmaManager. The constructor initialises it
/// (server: listening on `port`, 0 = ephemeral; client: ready to connect) and throws
/// std::runtime_error carrying the manager's last_error() if that fails; the destructor
/// shuts it down (every pending operation completes DISCONNECTED, connections close, the
/// progress thread stops). Neither copyable nor movable: the manager's address is stable,
/// so coroutines may keep a reference to it for the session's lifetime.
///     btsp::RdmaSession session(true, 0);
///     auto port = session->listening_port();
///     co_await session->wait_for_connection();
class RdmaSession {
public:
    /// Initialises a manager with `options` in server (`server_mode` = true, listening on
    /// `port`) or client mode. Throws std::runtime_error("btsp::RdmaSession: ...: <reason>")
    /// when initialize() fails (UCX cannot start, the port is busy, bad options).
    explicit RdmaSession(bool server_mode = false, std::uint16_t port = 0,
                         ManagerOptions options = ManagerOptions::from_env())
        : manager_(std::move(options)) {
        if (!manager_.initialize(server_mode, port)) {
            std::string what = "btsp::RdmaSession: cannot initialize the ";
            what += server_mode ? "server on port " + std::to_string(port) : std::string("client");
            what += ": ";
            what += manager_.last_error();
            throw std::runtime_error(what);
        }
    }

    /// Shuts the manager down (idempotent; see CoroutineRdmaManager::shutdown()).
    ~RdmaSession() { manager_.shutdown(); }

    RdmaSession(const RdmaSession&) = delete;
    RdmaSession& operator=(const RdmaSession&) = delete;
    RdmaSession(RdmaSession&&) = delete;
    RdmaSession& operator=(RdmaSession&&) = delete;

    /// The session's manager.
    [[nodiscard]] CoroutineRdmaManager& manager() noexcept { return manager_; }
    /// The session's manager (read-only).
    [[nodiscard]] const CoroutineRdmaManager& manager() const noexcept { return manager_; }
    /// Member access to the manager: `session->tag_send(...)`.
    CoroutineRdmaManager* operator->() noexcept { return &manager_; }
    /// Member access to the manager (read-only).
    const CoroutineRdmaManager* operator->() const noexcept { return &manager_; }
    /// The manager, as a reference: `co_await (*session).connect(...)`.
    CoroutineRdmaManager& operator*() noexcept { return manager_; }

    /// Shuts the manager down before the session ends (the destructor then does nothing).
    void shutdown() { manager_.shutdown(); }

private:
    CoroutineRdmaManager manager_;
};

}  // namespace btsp
