// btsp — metrics: what every manager records by itself, and the spec's RdmaMetrics.
#pragma once

#include <btsp/types.hpp>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <string_view>
#include <vector>

namespace btsp {

/// Latency histogram with power-of-two buckets of nanoseconds (bucket i holds samples in
/// [2^(i-1), 2^i) ns; bucket 0 holds 0 ns).
struct LatencyHistogram {
    static constexpr int kBuckets = 48;
    std::array<std::uint64_t, kBuckets> buckets{};
    std::uint64_t count = 0;
    std::uint64_t sum_ns = 0;
    std::uint64_t max_ns = 0;

    /// Estimated percentile in nanoseconds (p in [0, 1]); 0 when empty. Within the
    /// bucket the value is interpolated linearly, so it is exact to a factor of two.
    [[nodiscard]] double percentile(double p) const noexcept;
    void add(std::uint64_t ns) noexcept;
};

/// Counters of one kind of operation.
struct OpStats {
    std::uint64_t completed = 0;                     ///< operations completed (any result)
    std::uint64_t bytes = 0;                         ///< bytes of the successful ones
    std::array<std::uint64_t, 5> by_result{};        ///< indexed by RdmaResult
    LatencyHistogram latency;                        ///< sampled start-to-completion latency

    [[nodiscard]] std::uint64_t failures() const noexcept { return completed - by_result[0]; }
};

/// A consistent-enough copy of a manager's (or an RdmaMetrics') counters.
struct MetricsSnapshot {
    OpStats send;
    OpStats recv;
    OpStats connect;
    std::uint64_t connections_opened = 0;   ///< accepted or connected
    std::uint64_t connections_lost = 0;     ///< ended by the peer or an error
    std::uint64_t connections_rejected = 0; ///< refused by admission control
    std::uint64_t in_flight_sends = 0;
    std::uint64_t in_flight_recvs = 0;
    std::uint64_t live_connections = 0;
    /// UCX endpoints this manager holds and has not yet handed back to UCX for closing
    /// (a btsp connection holds two while its handshake runs, one after). Back to 0 once
    /// every connection has closed: a number that only grows is a leak.
    std::uint64_t open_endpoints = 0;
    /// Receives that completed while polling right after they were posted, without their
    /// coroutine suspending (ManagerOptions::recv_poll). Counted in `recv` too.
    std::uint64_t recvs_polled = 0;
    /// Progress hand-offs: times a coroutine kept the progress thread in user code longer
    /// than ManagerOptions::handoff_threshold, so the worker moved to a new thread. A count
    /// that keeps growing means coroutines block (sleep, wait on locks, long computation).
    std::uint64_t progress_handoffs = 0;

    /// Prometheus text exposition format (version 0.0.4). `labels` is inserted into every
    /// sample, e.g. `manager="kv0"`.
    [[nodiscard]] std::string prometheus(std::string_view prefix = "btsp", std::string_view labels = {}) const;
    /// Human-readable summary (counts, bytes, failures by reason, p50/p99/max latency).
    [[nodiscard]] std::string summary() const;
};

/// One operation in flight, as listed by CoroutineRdmaManager::in_flight().
struct InFlightOp {
    std::string kind;            ///< "send", "recv", "connect"
    std::uint64_t tag = 0;
    std::size_t size = 0;
    std::string peer;            ///< "host:port" of the connection it was posted on
    std::int64_t age_ms = 0;     ///< time since it started waiting (coarse clock)
    bool cancel_requested = false;
};

/// Formats a list of in-flight operations, one per line.
std::string format_in_flight(const std::vector<InFlightOp>& ops);

/// The spec's RdmaMetrics (性能指标收集), made real: thread-safe counters that user code
/// feeds, exportable like a manager's own metrics. Every CoroutineRdmaManager already
/// records all of this by itself (CoroutineRdmaManager::metrics()); use this class for
/// counting at the application level.
class RdmaMetrics {
public:
    void record_send(std::size_t bytes, bool success) noexcept;
    void record_receive(std::size_t bytes, bool success) noexcept;
    /// Records a finished operation with its result and latency.
    void record(RdmaResult kind_result, bool is_send, std::size_t bytes, std::uint64_t latency_ns) noexcept;
    /// Prints the spec's statistics block (to std::cout by default).
    void print_stats() const;
    void print_stats(std::ostream& os) const;
    [[nodiscard]] MetricsSnapshot snapshot() const noexcept;
    void reset() noexcept;

private:
    struct Counters {
        std::atomic<std::uint64_t> ops{0};
        std::atomic<std::uint64_t> bytes{0};
        std::atomic<std::uint64_t> failures{0};
        std::array<std::atomic<std::uint64_t>, 5> by_result{};
        std::array<std::atomic<std::uint64_t>, LatencyHistogram::kBuckets> latency{};
        std::atomic<std::uint64_t> lat_count{0};
        std::atomic<std::uint64_t> lat_sum{0};
        std::atomic<std::uint64_t> lat_max{0};
    };
    Counters sends_;
    Counters receives_;
    static void fill(const Counters& c, OpStats& out) noexcept;
    static void add(Counters& c, RdmaResult r, std::size_t bytes, std::uint64_t latency_ns, bool timed) noexcept;
};

}  // namespace btsp
