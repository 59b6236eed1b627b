// btsp — configuration of a CoroutineRdmaManager.
#pragma once

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace btsp {

/// How the progress thread waits for network events.
enum class ProgressMode : std::uint8_t {
    POLLING,   ///< Busy-poll the UCX worker: lowest latency, one core at 100 %.
    BLOCKING,  ///< ucp_worker_arm + epoll on the worker's fd: near-zero idle CPU.
    ADAPTIVE,  ///< Poll for `adaptive_spin` after the last activity, then block (default).
};

[[nodiscard]] std::string_view to_string(ProgressMode m) noexcept;
std::ostream& operator<<(std::ostream& os, ProgressMode m);
/// Parses "polling"/"poll", "blocking"/"block", "adaptive" (any case).
[[nodiscard]] bool parse_progress_mode(std::string_view text, ProgressMode& out) noexcept;

/// Options of a manager. Defaults are what `CoroutineRdmaManager()` uses, after
/// `from_env()` has applied the BTSP_* environment variables.
struct ManagerOptions {
    ProgressMode progress_mode = ProgressMode::ADAPTIVE;
    /// ADAPTIVE: how long to keep polling after the last event before sleeping.
    std::chrono::microseconds adaptive_spin{200};
    /// connect(): no answer within this time completes it with RdmaResult::TIMEOUT.
    std::chrono::milliseconds connect_timeout{5000};
    /// shutdown(): how long a graceful (flush) close of a live endpoint may take before
    /// the endpoint is force-closed.
    std::chrono::milliseconds close_timeout{200};
    /// Progress hand-off: when a coroutine keeps the progress thread busy (blocks in user
    /// code) longer than this, a standby thread takes the UCX worker over so other
    /// operations keep completing. 0 disables the hand-off.
    std::chrono::milliseconds handoff_threshold{5};
    /// Keep shared-memory transports with PEER error handling (UCX's MM_ERROR_HANDLING=y;
    /// see docs/architecture.md). Falls back automatically when UCX rejects it.
    bool shared_memory_with_error_handling = true;
    /// Between two btsp peers, move data from the sockaddr endpoint to endpoints created
    /// from exchanged worker addresses (shared memory on one host, the fastest transports
    /// elsewhere). Plain UCP peers are detected and keep the sockaddr endpoint.
    bool fast_path = true;
    /// How long a connection waits for the peer's handshake before treating it as a plain
    /// UCP peer (only plain peers ever wait this long).
    std::chrono::milliseconds handshake_grace{200};
    /// UCX keepalive period (KEEPALIVE_INTERVAL): how often endpoints without a transport
    /// level failure signal (shared memory) check that the peer is alive. A killed peer
    /// on a worker-address endpoint is noticed within about two periods. 0 = UCX default.
    std::chrono::milliseconds keepalive_interval{200};
    /// Between btsp peers: each side sends a small heartbeat this often, and a peer not heard
    /// from for `peer_timeout` is declared gone (its connection fails, every pending operation
    /// ends DISCONNECTED). Catches silent network cuts and frozen (SIGSTOPped) peers, which
    /// UCX alone does not notice on tcp. 0 disables the heartbeat.
    std::chrono::milliseconds heartbeat_interval{1000};
    std::chrono::milliseconds peer_timeout{10000};
    /// Address the server listens on; empty = all IPv4 interfaces ("0.0.0.0").
    std::string listen_address;
    /// Server: most client connections at once (0 = no limit). Clients beyond it are
    /// rejected by UCX (their connect completes DISCONNECTED).
    std::size_t max_connections = 0;
    /// Server: if not empty, only clients whose address matches an entry are accepted:
    /// exact addresses ("127.0.0.1", "::1") or CIDR blocks ("10.0.0.0/8", "fd00::/8").
    /// A malformed entry makes initialize() fail.
    std::vector<std::string> allowed_clients;
    /// Largest message a tag_send/tag_recv accepts; larger sizes fail at once (catches
    /// garbage sizes such as a negative length cast to size_t). Default 1 TiB.
    std::size_t max_message_size = std::size_t{1} << 40;
    /// CPU to pin the progress thread to; -1 = no pinning.
    int progress_cpu = -1;
    /// Depth of the shared-memory transports' receive FIFO, in messages (UCX's
    /// MM_FIFO_SIZE, whose own default is 64). A deeper FIFO lets a sender run further
    /// ahead of a busy receiver: 8-byte streams run ~20 % faster here, latency and memory
    /// do not move measurably (docs/performance.md). A power of two >= 2, or 0 for UCX's
    /// default; anything else makes initialize() fail. Not applied when the environment sets
    /// UCX_MM_FIFO_SIZE, UCX_POSIX_FIFO_SIZE or UCX_SYSV_FIFO_SIZE (those win).
    std::uint32_t shm_fifo_size = 256;
    /// Progress calls a receive may make itself, right after it is posted, before its
    /// coroutine suspends. Only for receives awaited on the progress thread (not those
    /// submitted from other threads), when no other coroutine is ready to run and the
    /// progress loop has nothing else to do (polling stops at the first other event), and
    /// not for a receive with a timeout. A message that arrives meanwhile completes inside
    /// co_await, without a suspension and a resume: ~7 % fewer instructions per 8-byte
    /// round trip, ~2 % lower ping-pong latency on shared memory (docs/performance.md).
    /// 0 turns it off; BLOCKING mode never polls. MetricsSnapshot::recvs_polled counts the
    /// receives it completed.
    std::uint32_t recv_poll = 64;
    /// Extra UCX configuration applied with ucp_config_modify (e.g. {"TLS", "tcp"}).
    std::vector<std::pair<std::string, std::string>> ucx_config;

    /// Defaults overridden by the environment: BTSP_PROGRESS_MODE, BTSP_CONNECT_TIMEOUT_MS,
    /// BTSP_ADAPTIVE_SPIN_US, BTSP_HANDOFF_MS, BTSP_CLOSE_TIMEOUT_MS, BTSP_PROGRESS_CPU,
    /// BTSP_FAST_PATH (0/1), BTSP_HANDSHAKE_GRACE_MS, BTSP_KEEPALIVE_MS, BTSP_HEARTBEAT_MS,
    /// BTSP_PEER_TIMEOUT_MS, BTSP_SHM_FIFO_SIZE, BTSP_RECV_POLL.
    /// Malformed values are ignored with a warning in the log.
    [[nodiscard]] static ManagerOptions from_env();
};

}  // namespace btsp
