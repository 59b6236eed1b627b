#include <btsp/metrics.hpp>

#include <bit>
#include <cstdio>
#include <iostream>
#include <ostream>
#include <sstream>

namespace btsp {

namespace {
int bucket_of(std::uint64_t ns) noexcept {
    const int b = ns == 0 ? 0 : static_cast<int>(std::bit_width(ns));
    return b < LatencyHistogram::kBuckets ? b : LatencyHistogram::kBuckets - 1;
}
double bucket_low(int b) noexcept { return b == 0 ? 0.0 : static_cast<double>(std::uint64_t{1} << (b - 1)); }
double bucket_high(int b) noexcept { return b == 0 ? 0.0 : static_cast<double>(std::uint64_t{1} << b); }

constexpr std::string_view kResultNames[5] = {"SUCCESS", "FAILURE", "TIMEOUT", "DISCONNECTED", "CANCELLED"};
}  // namespace

void LatencyHistogram::add(std::uint64_t ns) noexcept {
    ++buckets[static_cast<std::size_t>(bucket_of(ns))];
    ++count;
    sum_ns += ns;
    if (ns > max_ns) max_ns = ns;
}

double LatencyHistogram::percentile(double p) const noexcept {
    if (count == 0) return 0.0;
    if (p <= 0) p = 0;
    if (p >= 1) return static_cast<double>(max_ns);
    const double target = p * static_cast<double>(count);
    double seen = 0;
    for (int b = 0; b < kBuckets; ++b) {
        const auto n = static_cast<double>(buckets[static_cast<std::size_t>(b)]);
        if (n > 0 && seen + n >= target) {
            const double frac = (target - seen) / n;
            const double v = bucket_low(b) + frac * (bucket_high(b) - bucket_low(b));
            return v < static_cast<double>(max_ns) ? v : static_cast<double>(max_ns);
        }
        seen += n;
    }
    return static_cast<double>(max_ns);
}

std::string MetricsSnapshot::prometheus(std::string_view prefix, std::string_view labels) const {
    std::ostringstream os;
    const std::string p(prefix);
    auto lbl = [&](std::string_view extra) {
        std::string s = "{";
        s.append(extra);
        if (!labels.empty()) {
            if (!extra.empty()) s.push_back(',');
            s.append(labels);
        }
        s.push_back('}');
        return s;
    };
    const std::pair<const char*, const OpStats*> kinds[] = {{"send", &send}, {"recv", &recv}, {"connect", &connect}};
    os << "# HELP " << p << "_ops_total Operations completed, by kind and result.\n";
    os << "# TYPE " << p << "_ops_total counter\n";
    for (auto [name, st] : kinds)
        for (int r = 0; r < 5; ++r)
            os << p << "_ops_total"
               << lbl(std::string("kind=\"") + name + "\",result=\"" + std::string(kResultNames[r]) + "\"") << ' '
               << st->by_result[static_cast<std::size_t>(r)] << '\n';
    os << "# HELP " << p << "_bytes_total Bytes moved by successful operations.\n";
    os << "# TYPE " << p << "_bytes_total counter\n";
    for (auto [name, st] : kinds)
        if (std::string_view(name) != "connect")
            os << p << "_bytes_total" << lbl(std::string("kind=\"") + name + "\"") << ' ' << st->bytes << '\n';
    os << "# HELP " << p << "_op_latency_seconds Sampled operation latency (start to completion).\n";
    os << "# TYPE " << p << "_op_latency_seconds histogram\n";
    for (auto [name, st] : kinds) {
        std::uint64_t cum = 0;
        const std::string k = std::string("kind=\"") + name + "\"";
        for (int b = 0; b < LatencyHistogram::kBuckets; ++b) {
            cum += st->latency.buckets[static_cast<std::size_t>(b)];
            if (b < 10 || b > 40) continue;  // ~1 us .. ~1100 s
            char le[32];
            std::snprintf(le, sizeof le, "%.9g", bucket_high(b) / 1e9);
            os << p << "_op_latency_seconds_bucket" << lbl(k + ",le=\"" + le + "\"") << ' ' << cum << '\n';
        }
        os << p << "_op_latency_seconds_bucket" << lbl(k + ",le=\"+Inf\"") << ' ' << st->latency.count << '\n';
        char sum[32];
        std::snprintf(sum, sizeof sum, "%.9g", static_cast<double>(st->latency.sum_ns) / 1e9);
        os << p << "_op_latency_seconds_sum" << lbl(k) << ' ' << sum << '\n';
        os << p << "_op_latency_seconds_count" << lbl(k) << ' ' << st->latency.count << '\n';
    }
    os << "# HELP " << p << "_connections_total Connections by event.\n";
    os << "# TYPE " << p << "_connections_total counter\n";
    os << p << "_connections_total" << lbl("event=\"opened\"") << ' ' << connections_opened << '\n';
    os << p << "_connections_total" << lbl("event=\"lost\"") << ' ' << connections_lost << '\n';
    os << p << "_connections_total" << lbl("event=\"rejected\"") << ' ' << connections_rejected << '\n';
    os << "# HELP " << p << "_live_connections Connections open now.\n";
    os << "# TYPE " << p << "_live_connections gauge\n";
    os << p << "_live_connections" << lbl("") << ' ' << live_connections << '\n';
    os << "# HELP " << p << "_open_endpoints UCX endpoints held and not yet closed.\n";
    os << "# TYPE " << p << "_open_endpoints gauge\n";
    os << p << "_open_endpoints" << lbl("") << ' ' << open_endpoints << '\n';
    os << "# HELP " << p << "_recvs_polled_total Receives completed while polling, without suspending.\n";
    os << "# TYPE " << p << "_recvs_polled_total counter\n";
    os << p << "_recvs_polled_total" << lbl("") << ' ' << recvs_polled << '\n';
    os << "# HELP " << p << "_progress_handoffs_total Times a blocking coroutine made the worker move to a new thread.\n";
    os << "# TYPE " << p << "_progress_handoffs_total counter\n";
    os << p << "_progress_handoffs_total" << lbl("") << ' ' << progress_handoffs << '\n';
    os << "# HELP " << p << "_in_flight Operations in flight now.\n";
    os << "# TYPE " << p << "_in_flight gauge\n";
    os << p << "_in_flight" << lbl("kind=\"send\"") << ' ' << in_flight_sends << '\n';
    os << p << "_in_flight" << lbl("kind=\"recv\"") << ' ' << in_flight_recvs << '\n';
    return os.str();
}

std::string MetricsSnapshot::summary() const {
    std::ostringstream os;
    const std::pair<const char*, const OpStats*> kinds[] = {{"send", &send}, {"recv", &recv}, {"connect", &connect}};
    for (auto [name, st] : kinds) {
        char line[256];
        std::snprintf(line, sizeof line, "%-7s ops=%llu bytes=%llu failed=%llu", name,
                      static_cast<unsigned long long>(st->completed), static_cast<unsigned long long>(st->bytes),
                      static_cast<unsigned long long>(st->failures()));
        os << line;
        for (int r = 1; r < 5; ++r)
            if (st->by_result[static_cast<std::size_t>(r)] != 0)
                os << ' ' << kResultNames[r] << '=' << st->by_result[static_cast<std::size_t>(r)];
        if (st->latency.count != 0) {
            std::snprintf(line, sizeof line, " latency(us) p50=%.2f p99=%.2f max=%.2f (n=%llu)",
                          st->latency.percentile(0.5) / 1e3, st->latency.percentile(0.99) / 1e3,
                          static_cast<double>(st->latency.max_ns) / 1e3,
                          static_cast<unsigned long long>(st->latency.count));
            os << line;
        }
        os << '\n';
    }
    os << "connections opened=" << connections_opened << " lost=" << connections_lost
       << " rejected=" << connections_rejected << " live=" << live_connections << " endpoints=" << open_endpoints
       << "; recvs polled=" << recvs_polled << "; progress hand-offs=" << progress_handoffs << "; in flight sends="
       << in_flight_sends << " recvs=" << in_flight_recvs << '\n';
    return os.str();
}

std::string format_in_flight(const std::vector<InFlightOp>& ops) {
    std::ostringstream os;
    os << ops.size() << " operation(s) in flight\n";
    for (const InFlightOp& o : ops) {
        char line[256];
        std::snprintf(line, sizeof line, "  %-7s tag=0x%llx size=%zu peer=%s age=%lld ms%s\n", o.kind.c_str(),
                      static_cast<unsigned long long>(o.tag), o.size, o.peer.c_str(), static_cast<long long>(o.age_ms),
                      o.cancel_requested ? " (cancel requested)" : "");
        os << line;
    }
    return os.str();
}

// ---- RdmaMetrics ------------------------------------------------------------------------

void RdmaMetrics::add(Counters& c, RdmaResult r, std::size_t bytes, std::uint64_t latency_ns, bool timed) noexcept {
    c.ops.fetch_add(1, std::memory_order_relaxed);
    c.by_result[static_cast<std::size_t>(r)].fetch_add(1, std::memory_order_relaxed);
    if (r == RdmaResult::SUCCESS) {
        c.bytes.fetch_add(bytes, std::memory_order_relaxed);
    } else {
        c.failures.fetch_add(1, std::memory_order_relaxed);
    }
    if (timed) {
        c.latency[static_cast<std::size_t>(bucket_of(latency_ns))].fetch_add(1, std::memory_order_relaxed);
        c.lat_count.fetch_add(1, std::memory_order_relaxed);
        c.lat_sum.fetch_add(latency_ns, std::memory_order_relaxed);
        std::uint64_t m = c.lat_max.load(std::memory_order_relaxed);
        while (latency_ns > m && !c.lat_max.compare_exchange_weak(m, latency_ns, std::memory_order_relaxed)) {
        }
    }
}

void RdmaMetrics::record_send(std::size_t bytes, bool success) noexcept {
    add(sends_, success ? RdmaResult::SUCCESS : RdmaResult::FAILURE, bytes, 0, false);
}
void RdmaMetrics::record_receive(std::size_t bytes, bool success) noexcept {
    add(receives_, success ? RdmaResult::SUCCESS : RdmaResult::FAILURE, bytes, 0, false);
}
void RdmaMetrics::record(RdmaResult result, bool is_send, std::size_t bytes, std::uint64_t latency_ns) noexcept {
    add(is_send ? sends_ : receives_, result, bytes, latency_ns, true);
}

void RdmaMetrics::fill(const Counters& c, OpStats& out) noexcept {
    out.completed = c.ops.load(std::memory_order_relaxed);
    out.bytes = c.bytes.load(std::memory_order_relaxed);
    for (std::size_t i = 0; i < out.by_result.size(); ++i) out.by_result[i] = c.by_result[i].load(std::memory_order_relaxed);
    for (std::size_t i = 0; i < out.latency.buckets.size(); ++i)
        out.latency.buckets[i] = c.latency[i].load(std::memory_order_relaxed);
    out.latency.count = c.lat_count.load(std::memory_order_relaxed);
    out.latency.sum_ns = c.lat_sum.load(std::memory_order_relaxed);
    out.latency.max_ns = c.lat_max.load(std::memory_order_relaxed);
}

MetricsSnapshot RdmaMetrics::snapshot() const noexcept {
    MetricsSnapshot s;
    fill(sends_, s.send);
    fill(receives_, s.recv);
    return s;
}

void RdmaMetrics::reset() noexcept {
    for (Counters* c : {&sends_, &receives_}) {
        c->ops = 0;
        c->bytes = 0;
        c->failures = 0;
        for (auto& x : c->by_result) x = 0;
        for (auto& x : c->latency) x = 0;
        c->lat_count = 0;
        c->lat_sum = 0;
        c->lat_max = 0;
    }
}

void RdmaMetrics::print_stats() const { print_stats(std::cout); }

void RdmaMetrics::print_stats(std::ostream& os) const {
    os << "=== RDMA 性能统计 ===\n";
    os << "总发送次数: " << sends_.ops.load() << '\n';
    os << "总接收次数: " << receives_.ops.load() << '\n';
    os << "总发送字节: " << sends_.bytes.load() << '\n';
    os << "总接收字节: " << receives_.bytes.load() << '\n';
    os << "失败操作数: " << sends_.failures.load() + receives_.failures.load() << std::endl;
}

}  // namespace btsp
