// btsp_fault_peer — the other processes of the fault tests (tests/faults/).
//
// Options come from the environment (ManagerOptions::from_env: BTSP_PEER_TIMEOUT_MS,
// BTSP_HEARTBEAT_MS, ...; UCX_TLS for the transports), plus these arguments:
//
//   server [--listen ADDR] [--max N] [--allow A,B] [--slots K]
//       listen on ADDR (default all), ephemeral port(s); print "PORT <p>" for each of the
//       K managers (default 1), then echo: every message whose tag has upper 32 bits 1 is
//       sent back with upper 32 bits 2 (same low bits). One manager per slot, because a
//       server's tag_send always goes to its oldest connection: each client gets its own
//       manager. Prints "SERVED <slot> <echoed> <live connections> <open UCX endpoints>" every 200 ms.
//       On SIGUSR1 it prints, for each slot, "DUMP <slot> state=<S> conns=<n> handoffs=<h> lanes=<phases>"
//       (each lane's phase: W waiting for a connection, R receiving, S sending, X ended)
//       followed by one "DUMP <slot> op <line>" per operation in flight, then "DUMP END".
//   hold-server        listen, print "PORT <p>", "CONNECTED" once a client is there, then
//                      never receive.
//   hold HOST PORT     connect, print "CONNECTED", never receive.
//   client HOST PORT N SIZE
//       connect (prints "CONNECT <RESULT>"), N echo exchanges of SIZE bytes; exit 0 if all
//       matched, 4 if the connect failed, 6 on a wrong echo.
//   blast HOST PORT SIZE
//       connect (prints "CONNECT <RESULT>"), print "SENDING", send one SIZE-byte message
//       of 0xA5 with the request tag (upper 32 bits 1), print "SENT <RESULT>", then hold.
//   stream HOST PORT SIZE
//       connect, print "CONNECTED", then exchange SIZE-byte echoes forever, printing
//       "XFER <n>" every 10 exchanges; when an op fails print
//       "FAILED <op> <RESULT> <CLOCK_MONOTONIC ns>" and exit 0.
//   stream-server [--listen ADDR]
//       like server (one slot), but when an op fails print "FAILED <op> <RESULT> <ns>".
//   soak HOST PORT ID SECONDS SEED
//       4 lanes, each exchanging random-size (1 B .. 256 KiB) checksummed messages on its
//       own tags for SECONDS; prints "PROGRESS ok=<n> ..." every 250 ms, "BAD <text>" on any
//       corrupted / duplicated / misrouted echo, "FINAL ..." at the end; exit 0. After a
//       lost echo it also prints its manager's state and operations in flight ("INFO ...").
//
// Every mode exits by itself after 180 s (alarm; BTSP_PEER_LIFETIME_S overrides), so a
// leaked peer cannot linger.
#include "soak_wire.hpp"

#include <btsp/btsp.hpp>

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

using btsp::CoroutineRdmaManager;
using btsp::ManagerOptions;
using btsp::RdmaOpResult;
using btsp::RdmaResult;
using btsp::RdmaTask;
using namespace btsp_fault;

std::mutex g_out;
void say(const std::string& line) {
    std::lock_guard<std::mutex> lock(g_out);
    std::fputs(line.c_str(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
}

// One line per line of `text`, each with `prefix`.
void say_lines(const std::string& prefix, const std::string& text) {
    for (std::size_t p = 0; p < text.size();) {
        const std::size_t nl = std::min(text.find('\n', p), text.size());
        if (nl > p) say(prefix + text.substr(p, nl - p));
        p = nl + 1;
    }
}

std::uint64_t mono_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

std::string res(const RdmaOpResult& r) { return std::string(btsp::to_string(r.result)); }

struct ServerArgs {
    std::string listen;
    std::size_t max = 0;
    std::vector<std::string> allow;
    int slots = 1;
};

ServerArgs parse_server(int argc, char** argv, int from) {
    ServerArgs a;
    for (int i = from; i + 1 < argc; i += 2) {
        const std::string k = argv[i];
        const std::string v = argv[i + 1];
        if (k == "--listen") a.listen = v;
        else if (k == "--max") a.max = std::strtoul(v.c_str(), nullptr, 10);
        else if (k == "--slots") a.slots = std::atoi(v.c_str());
        else if (k == "--allow") {
            std::size_t p = 0;
            while (p <= v.size()) {
                const auto c = v.find(',', p);
                a.allow.push_back(v.substr(p, c == std::string::npos ? std::string::npos : c - p));
                if (c == std::string::npos) break;
                p = c + 1;
            }
        }
    }
    return a;
}

constexpr std::size_t kCapacity = (256u << 10) + sizeof(SoakHeader) + 64;
constexpr std::size_t kStreamCapacity = 8u << 20;

// What an echo lane is doing now, for the SIGUSR1 dump.
enum LanePhase : char { kLaneWaiting = 'W', kLaneReceiving = 'R', kLaneSending = 'S', kLaneEnded = 'X' };

RdmaTask<void> echo_lane(CoroutineRdmaManager& m, std::atomic<std::uint64_t>& served, bool report_failure,
                         std::size_t capacity, std::atomic<char>& phase) {
    std::vector<std::uint8_t> buf(capacity);
    for (;;) {
        phase.store(kLaneWaiting);
        const bool connected = co_await m.wait_for_connection();  // not in a condition: g++ 12
        if (!connected) break;
        for (;;) {
            phase.store(kLaneReceiving);
            const RdmaOpResult r = co_await m.tag_recv(buf.data(), buf.size(), kRequestTag, kUpperMask);
            if (!r) {
                if (report_failure) say("FAILED recv " + res(r) + " " + std::to_string(mono_ns()));
                break;
            }
            const std::uint64_t back = (r.sender_tag & ~kUpperMask) | kReplyTag;
            phase.store(kLaneSending);
            const RdmaOpResult s = co_await m.tag_send(buf.data(), r.bytes_transferred, back);
            if (!s) {
                if (report_failure) say("FAILED send " + res(s) + " " + std::to_string(mono_ns()));
                break;
            }
            served.fetch_add(1, std::memory_order_relaxed);
        }
    }
    phase.store(kLaneEnded);
}

volatile std::sig_atomic_t g_dump_requested = 0;
void on_dump_signal(int) { g_dump_requested = 1; }

int run_server(const ServerArgs& a, bool stream) {
    struct Slot {
        std::unique_ptr<CoroutineRdmaManager> m;
        std::atomic<std::uint64_t> served{0};
        std::atomic<char> phases[4] = {};
        std::vector<RdmaTask<void>> lanes;
    };
    struct sigaction sa {};
    sa.sa_handler = on_dump_signal;
    ::sigemptyset(&sa.sa_mask);
    ::sigaction(SIGUSR1, &sa, nullptr);
    std::vector<std::unique_ptr<Slot>> slots;
    for (int i = 0; i < a.slots; ++i) {
        ManagerOptions o = ManagerOptions::from_env();
        o.listen_address = a.listen;
        o.max_connections = a.max;
        o.allowed_clients = a.allow;
        auto s = std::make_unique<Slot>();
        s->m = std::make_unique<CoroutineRdmaManager>(o);
        if (!s->m->initialize(true, 0)) {
            std::fprintf(stderr, "fault_peer: initialize failed: %s\n", s->m->last_error().c_str());
            return 2;
        }
        say("PORT " + std::to_string(s->m->listening_port()));
        const int lanes = stream ? 1 : 4;
        for (int l = 0; l < lanes; ++l)
            s->lanes.push_back(echo_lane(*s->m, s->served, stream, stream ? kStreamCapacity : kCapacity,
                                         s->phases[l]));
        slots.push_back(std::move(s));
    }
    for (;;) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        for (std::size_t i = 0; i < slots.size(); ++i)
            say("SERVED " + std::to_string(i) + " " + std::to_string(slots[i]->served.load()) + " " +
                std::to_string(slots[i]->m->connection_count()) + " " +
                std::to_string(slots[i]->m->metrics().open_endpoints));
        if (g_dump_requested != 0) {
            g_dump_requested = 0;
            for (std::size_t i = 0; i < slots.size(); ++i) {
                Slot& s = *slots[i];
                std::string lanes;
                for (std::size_t l = 0; l < s.lanes.size(); ++l) lanes += s.phases[l].load();
                const std::string head = "DUMP " + std::to_string(i) + " ";
                say(head + "state=" + std::string(btsp::to_string(s.m->get_state())) +
                    " conns=" + std::to_string(s.m->connection_count()) +
                    " handoffs=" + std::to_string(s.m->metrics().progress_handoffs) + " lanes=" + lanes);
                say_lines(head + "op ", s.m->dump_in_flight());
            }
            say("DUMP END");
        }
    }
}

int run_hold_server() {
    CoroutineRdmaManager m;
    if (!m.initialize(true, 0)) return 2;
    say("PORT " + std::to_string(m.listening_port()));
    if (!btsp::sync_wait(m.wait_for_connection())) return 3;
    say("CONNECTED");
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

// Connects and sends one message of `size` bytes of 0xA5 with kRequestTag (large sizes
// go by rendezvous: the data moves while both sides progress), then holds the connection.
int run_blast(const char* host, std::uint16_t port, std::size_t size) {
    CoroutineRdmaManager m;
    if (!m.initialize(false, 0)) return 2;
    const RdmaOpResult c = btsp::sync_wait(m.connect(host, port));
    say("CONNECT " + res(c));
    if (!c) return 4;
    std::vector<std::uint8_t> out(size, 0xA5);
    say("SENDING");
    const RdmaOpResult s = btsp::sync_wait(m.tag_send(out.data(), out.size(), kRequestTag));
    say("SENT " + res(s));
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

int run_hold(const char* host, std::uint16_t port) {
    CoroutineRdmaManager m;
    if (!m.initialize(false, 0)) return 2;
    const RdmaOpResult c = btsp::sync_wait(m.connect(host, port));
    say("CONNECT " + res(c));
    if (!c) return 4;
    say("CONNECTED");
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

RdmaTask<int> client_task(CoroutineRdmaManager& m, std::string host, std::uint16_t port, int count,
                          std::size_t size) {
    const RdmaOpResult c = co_await m.connect(host, port);
    say("CONNECT " + res(c));
    if (!c) co_return 4;
    std::vector<std::uint8_t> out(size), in(size);
    std::mt19937 rng(static_cast<unsigned>(::getpid()));
    for (int i = 0; i < count; ++i) {
        for (auto& b : out) b = static_cast<std::uint8_t>(rng());
        const std::uint64_t low = static_cast<std::uint64_t>(i) & 0xffff;
        auto recv = m.tag_recv(in.data(), in.size(), kReplyTag | low).timeout(std::chrono::seconds(10));
        RdmaTask<RdmaOpResult> pending = [](btsp::RdmaAwaitable a) -> RdmaTask<RdmaOpResult> {
            co_return co_await a;
        }(std::move(recv));
        const RdmaOpResult s = co_await m.tag_send(out.data(), out.size(), kRequestTag | low);
        if (!s) {
            say("FAILED send " + res(s));
            co_return 5;
        }
        const RdmaOpResult r = co_await pending;
        if (!r || r.bytes_transferred != size || in != out) {
            say("FAILED echo " + res(r));
            co_return 6;
        }
    }
    say("OK");
    co_return 0;
}

int run_client(const char* host, std::uint16_t port, int count, std::size_t size) {
    CoroutineRdmaManager m;
    if (!m.initialize(false, 0)) return 2;
    const int rc = btsp::sync_wait(client_task(m, host, port, count, size));
    m.shutdown();
    return rc;
}

RdmaTask<int> stream_task(CoroutineRdmaManager& m, std::string host, std::uint16_t port, std::size_t size) {
    const RdmaOpResult c = co_await m.connect(host, port);
    say("CONNECT " + res(c));
    if (!c) co_return 4;
    say("CONNECTED");
    std::vector<std::uint8_t> out(size, 0x5a), in(size);
    for (std::uint64_t i = 0;; ++i) {
        const std::uint64_t low = i & 0xffff;
        RdmaTask<RdmaOpResult> pending = [](btsp::RdmaAwaitable a) -> RdmaTask<RdmaOpResult> {
            co_return co_await a;
        }(m.tag_recv(in.data(), in.size(), kReplyTag | low));
        const RdmaOpResult s = co_await m.tag_send(out.data(), out.size(), kRequestTag | low);
        if (!s) {
            const auto t = mono_ns();
            say("FAILED send " + res(s) + " " + std::to_string(t));
            const RdmaOpResult r = co_await pending;  // must complete too
            say("FAILED recv " + res(r) + " " + std::to_string(mono_ns()));
            co_return 0;
        }
        const RdmaOpResult r = co_await pending;
        if (!r) {
            say("FAILED recv " + res(r) + " " + std::to_string(mono_ns()));
            co_return 0;
        }
        if (i % 10 == 9) say("XFER " + std::to_string(i + 1));
    }
}

int run_stream(const char* host, std::uint16_t port, std::size_t size) {
    CoroutineRdmaManager m;
    if (!m.initialize(false, 0)) return 2;
    const int rc = btsp::sync_wait(stream_task(m, host, port, size));
    say("EXIT " + std::to_string(rc));
    m.shutdown();
    return rc;
}

// ---- soak client ---------------------------------------------------------------------

struct SoakStats {
    std::atomic<std::uint64_t> sent_ok{0};     // sends reported SUCCESS
    std::atomic<std::uint64_t> echoed_ok{0};   // echoes received and verified
    std::atomic<std::uint64_t> bytes{0};
    std::atomic<std::uint64_t> bad{0};         // corrupted, misrouted or duplicated echoes
    std::atomic<std::uint64_t> lost{0};        // send SUCCESS but no echo (recv failed)
    std::atomic<std::uint64_t> send_failed{0};
};

RdmaTask<void> soak_lane(CoroutineRdmaManager& m, std::uint32_t client, std::uint32_t lane, std::uint64_t seed,
                         std::chrono::steady_clock::time_point end, SoakStats& st) {
    std::mt19937_64 rng(seed * 1000003u + lane);
    std::vector<std::uint8_t> out(kCapacity), in(kCapacity);
    std::set<std::uint64_t> seen;
    for (std::uint64_t seq = 0; std::chrono::steady_clock::now() < end; ++seq) {
        // Sizes spread across the eager/rendezvous threshold: log-uniform 1 B .. 256 KiB.
        const int bits = static_cast<int>(rng() % 19);
        std::size_t len = 1 + static_cast<std::size_t>(rng() % (std::size_t{1} << bits));
        if (len > (256u << 10)) len = 256u << 10;
        SoakHeader h{};
        h.magic = kSoakMagic;
        h.client = client;
        h.lane = lane;
        h.seq = seq;
        h.length = len;
        std::uint8_t* payload = out.data() + sizeof h;
        for (std::size_t i = 0; i < len; i += 8) {
            const std::uint64_t v = rng();
            std::memcpy(payload + i, &v, std::min<std::size_t>(8, len - i));
        }
        h.checksum = fnv1a(payload, len);
        std::memcpy(out.data(), &h, sizeof h);
        const std::size_t total = sizeof h + len;
        const std::uint64_t low = (static_cast<std::uint64_t>(client & 0xff) << 24) |
                                  (static_cast<std::uint64_t>(lane & 0xff) << 16) | (seq & 0xffff);
        std::memset(in.data(), 0, sizeof h);
        RdmaTask<RdmaOpResult> pending = [](btsp::RdmaAwaitable a) -> RdmaTask<RdmaOpResult> {
            co_return co_await a;
        }(m.tag_recv(in.data(), in.size(), kReplyTag | low).timeout(std::chrono::seconds(20)));
        const RdmaOpResult s = co_await m.tag_send(out.data(), total, kRequestTag | low);
        if (!s) {
            st.send_failed.fetch_add(1);
            say("BAD send failed: " + std::string(s.reason()));
            (void)co_await pending;
            co_return;
        }
        st.sent_ok.fetch_add(1);
        const RdmaOpResult r = co_await pending;
        if (!r) {
            st.lost.fetch_add(1);
            say("BAD echo lost lane " + std::to_string(lane) + " seq " + std::to_string(seq) + ": " +
                std::string(r.reason()));
            say("INFO state=" + std::string(btsp::to_string(m.get_state())) +
                " conns=" + std::to_string(m.connection_count()) +
                " handoffs=" + std::to_string(m.metrics().progress_handoffs) + " in flight:");
            say_lines("INFO op ", m.dump_in_flight());
            co_return;
        }
        SoakHeader e{};
        std::memcpy(&e, in.data(), sizeof e);
        std::string why;
        if (r.bytes_transferred != total) why = "length " + std::to_string(r.bytes_transferred);
        else if (e.magic != kSoakMagic) why = "magic";
        else if (e.client != client || e.lane != lane) why = "misrouted";
        else if (e.seq != seq) why = "sequence " + std::to_string(e.seq);
        else if (e.length != len) why = "header length";
        else if (fnv1a(in.data() + sizeof e, len) != e.checksum) why = "checksum";
        else if (!seen.insert(e.seq).second) why = "duplicate";
        if (!why.empty()) {
            st.bad.fetch_add(1);
            say("BAD lane " + std::to_string(lane) + " seq " + std::to_string(seq) + ": " + why);
            continue;
        }
        st.echoed_ok.fetch_add(1);
        st.bytes.fetch_add(total);
    }
}

std::string soak_line(const char* word, const SoakStats& st) {
    return std::string(word) + " sent_ok=" + std::to_string(st.sent_ok.load()) +
           " echoed_ok=" + std::to_string(st.echoed_ok.load()) + " bad=" + std::to_string(st.bad.load()) +
           " lost=" + std::to_string(st.lost.load()) + " send_failed=" + std::to_string(st.send_failed.load()) +
           " bytes=" + std::to_string(st.bytes.load());
}

int run_soak(const char* host, std::uint16_t port, std::uint32_t id, int seconds, std::uint64_t seed) {
    CoroutineRdmaManager m;
    if (!m.initialize(false, 0)) return 2;
    const RdmaOpResult c = btsp::sync_wait(m.connect(host, port));
    say("CONNECT " + res(c));
    if (!c) return 4;
    SoakStats st;
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    std::vector<RdmaTask<void>> lanes;
    for (std::uint32_t l = 0; l < 4; ++l) lanes.push_back(soak_lane(m, id, l, seed, end, st));
    for (;;) {
        bool all = true;
        for (auto& t : lanes) all = all && t.done();
        if (all) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
        say(soak_line("PROGRESS", st));
    }
    say(soak_line("FINAL", st));
    m.shutdown();
    return 0;
}

int usage() {
    std::fprintf(stderr, "usage: see the head of tests/faults/fault_peer.cpp\n");
    return 64;
}

}  // namespace

int main(int argc, char** argv) {
    // A leaked peer cannot linger: 180 s, or BTSP_PEER_LIFETIME_S for long runs.
    const char* life = std::getenv("BTSP_PEER_LIFETIME_S");
    const long life_s = life != nullptr ? std::atol(life) : 0;
    ::alarm(life_s > 0 && life_s < 86400 ? static_cast<unsigned>(life_s) : 180u);
    if (argc < 2) return usage();
    const std::string mode = argv[1];
    if (mode == "server") return run_server(parse_server(argc, argv, 2), false);
    if (mode == "stream-server") return run_server(parse_server(argc, argv, 2), true);
    if (mode == "hold-server" && argc == 2) return run_hold_server();
    if (mode == "hold" && argc == 4) return run_hold(argv[2], static_cast<std::uint16_t>(std::atoi(argv[3])));
    if (mode == "client" && argc == 6)
        return run_client(argv[2], static_cast<std::uint16_t>(std::atoi(argv[3])), std::atoi(argv[4]),
                          static_cast<std::size_t>(std::atoll(argv[5])));
    if (mode == "blast" && argc == 5)
        return run_blast(argv[2], static_cast<std::uint16_t>(std::atoi(argv[3])),
                         static_cast<std::size_t>(std::atoll(argv[4])));
    if (mode == "stream" && argc == 5)
        return run_stream(argv[2], static_cast<std::uint16_t>(std::atoi(argv[3])),
                          static_cast<std::size_t>(std::atoll(argv[4])));
    if (mode == "soak" && argc == 7)
        return run_soak(argv[2], static_cast<std::uint16_t>(std::atoi(argv[3])),
                        static_cast<std::uint32_t>(std::atoi(argv[4])), std::atoi(argv[5]),
                        std::strtoull(argv[6], nullptr, 10));
    return usage();
}
