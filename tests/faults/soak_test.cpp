// Fault 7: soak. A server process (one manager per client slot: a server's tag_send goes to
// its oldest connection, so one manager per client keeps echoes addressed) and 3 client
// processes, each with 4 lanes on their own tags, sending checksummed messages of random
// sizes (1 B .. 256 KiB, across the eager/rendezvous threshold) and verifying every echo.
// A few times a random client is SIGKILLed (+ reaped) and respawned. Bounded:
// BTSP_SOAK_SECONDS (default 60).
//
// What is asserted:
//  - every echo a client received matched its header (client, lane, sequence, length) and
//    its payload checksum; no sequence number came back twice or out of order (BAD lines);
//  - no loss: for every client that was not killed, every send reported SUCCESS got its
//    echo (FINAL sent_ok == echoed_ok, lost == 0, send_failed == 0);
//  - every operation completed: each surviving client ends by itself (its last op has a
//    20 s deadline at most, and it exits within SECONDS + 30 s), the server is still alive;
//  - respawned clients connect to the slot their killed predecessor used and exchange.
// Killed clients' in-flight messages are not counted (their process is gone).
#include "faults_util.hpp"

#include <gtest/gtest.h>

#include <csignal>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace btsp_test;
using namespace btsp_fault;

struct Counts {
    std::uint64_t sent_ok = 0, echoed_ok = 0, bad = 0, lost = 0, send_failed = 0, bytes = 0;
};
Counts parse_counts(const std::string& s) {
    Counts c;
    std::istringstream in(s);
    std::string kv;
    while (in >> kv) {
        const auto eq = kv.find('=');
        if (eq == std::string::npos) continue;
        const std::string k = kv.substr(0, eq);
        const std::uint64_t v = std::strtoull(kv.c_str() + eq + 1, nullptr, 10);
        if (k == "sent_ok") c.sent_ok = v;
        else if (k == "echoed_ok") c.echoed_ok = v;
        else if (k == "bad") c.bad = v;
        else if (k == "lost") c.lost = v;
        else if (k == "send_failed") c.send_failed = v;
        else if (k == "bytes") c.bytes = v;
    }
    return c;
}

struct Client {
    std::unique_ptr<ChildProcess> proc;
    int id = 0;
    Counts last;
    bool final_seen = false;
    bool connected = false;
    std::vector<std::string> bad_lines;
};

TEST(FaultSoak, ClientsWithRandomKillsLoseNothing) {
    const long seconds = env_long("BTSP_SOAK_SECONDS", 60);
    constexpr int kClients = 3;
    const int kills = seconds >= 20 ? 3 : 1;
    std::mt19937 rng(static_cast<unsigned>(::getpid()));

    auto server = spawn_peer({"server", "--slots", std::to_string(kClients)});
    ASSERT_TRUE(server->started());
    std::vector<std::uint16_t> ports;
    for (int i = 0; i < kClients; ++i) {
        const std::uint16_t p = server->read_port(10s);
        ASSERT_NE(p, 0);
        ports.push_back(p);
    }
    std::vector<long> slot_conns(kClients, 0);
    bool dump_end = false;
    auto drain_server = [&] {
        while (auto line = server->read_line(5ms)) {
            if (line->rfind("DUMP", 0) == 0) {  // the server's state, asked for after a loss
                std::printf("[ soak ] server %s\n", line->c_str());
                dump_end = dump_end || *line == "DUMP END";
                continue;
            }
            std::istringstream in(*line);
            std::string w;
            int slot = -1;
            std::uint64_t served = 0;
            long conns = 0;
            if (in >> w >> slot >> served >> conns && w == "SERVED" && slot >= 0 && slot < kClients)
                slot_conns[static_cast<std::size_t>(slot)] = conns;
        }
    };

    const auto t_start = Clock::now();
    const auto t_end = t_start + std::chrono::seconds(seconds);
    int next_id = 0;
    std::vector<Client> clients(kClients);
    auto launch = [&](int slot) {
        Client& c = clients[static_cast<std::size_t>(slot)];
        c = Client{};
        c.id = next_id++;
        const long left = std::max<long>(
            3, std::chrono::duration_cast<std::chrono::seconds>(t_end - Clock::now()).count());
        c.proc = spawn_peer({"soak", "127.0.0.1", std::to_string(ports[static_cast<std::size_t>(slot)]),
                             std::to_string(c.id), std::to_string(left), std::to_string(rng())});
    };
    // After a loss, the server prints each slot's state, lane phases and operations in
    // flight (SIGUSR1), so a failure here says where the echoes stopped.
    bool dump_wanted = false, dumped = false;
    auto dump_server = [&] {
        if (dumped) return;
        dumped = true;
        dump_end = false;
        ::kill(server->pid(), SIGUSR1);
        wait_until([&] {
            drain_server();
            return dump_end;
        }, 3s);
    };
    Counts killed_totals;
    int killed = 0;
    auto drain_client = [&](Client& c) {
        while (auto line = c.proc->read_line(5ms)) {
            if (line->rfind("PROGRESS ", 0) == 0) c.last = parse_counts(line->substr(9));
            else if (line->rfind("FINAL ", 0) == 0) {
                c.last = parse_counts(line->substr(6));
                c.final_seen = true;
            } else if (line->rfind("CONNECT ", 0) == 0) {
                c.connected = *line == "CONNECT SUCCESS";
                EXPECT_TRUE(c.connected) << "client " << c.id << ": " << *line;
            } else if (line->rfind("BAD ", 0) == 0) {
                c.bad_lines.push_back(*line);
                dump_wanted = true;
                ADD_FAILURE() << "client " << c.id << ": " << *line;
            } else if (line->rfind("INFO ", 0) == 0) {
                std::printf("[ soak ] client %d %s\n", c.id, line->c_str());
            }
        }
    };
    for (int i = 0; i < kClients; ++i) launch(i);

    // Kill times: spread over the run, not in the last 5 s.
    std::vector<double> kill_at;
    for (int k = 0; k < kills; ++k)
        kill_at.push_back(static_cast<double>(seconds) * (k + 1) / (kills + 1) + (rng() % 1000) / 1000.0);

    std::size_t next_kill = 0;
    while (Clock::now() < t_end + 30s) {
        drain_server();
        bool all_final = true;
        for (auto& c : clients) {
            drain_client(c);
            all_final = all_final && c.final_seen;
        }
        if (all_final) break;
        if (dump_wanted) dump_server();
        const double t = ms_since(t_start) / 1000.0;
        if (next_kill < kill_at.size() && t >= kill_at[next_kill]) {
            ++next_kill;
            const int slot = static_cast<int>(rng() % kClients);
            Client& victim = clients[static_cast<std::size_t>(slot)];
            drain_client(victim);
            if (victim.final_seen) continue;
            victim.proc->kill_now();  // SIGKILL + waitpid
            ++killed;
            killed_totals.sent_ok += victim.last.sent_ok;
            killed_totals.echoed_ok += victim.last.echoed_ok;
            killed_totals.bad += victim.last.bad;
            std::printf("[ soak ] t=%.1fs killed client %d (slot %d) after %llu echoes\n", t, victim.id, slot,
                        static_cast<unsigned long long>(victim.last.echoed_ok));
            // The server must notice before the new client comes (its sends go to the oldest
            // live connection of the slot).
            const bool gone = wait_until([&] {
                drain_server();
                return slot_conns[static_cast<std::size_t>(slot)] == 0;
            }, 3s);
            EXPECT_TRUE(gone) << "the server did not notice the killed client within 3 s";
            if (!gone) dump_server();
            launch(slot);
        }
    }

    for (auto& c : clients)
        if (!c.final_seen || c.last.lost != 0 || c.last.sent_ok != c.last.echoed_ok) dump_server();
    Counts total;
    for (auto& c : clients) {
        ASSERT_TRUE(c.final_seen) << "client " << c.id << " did not finish: an operation hung";
        const auto rc = c.proc->wait_exit(10s);
        ASSERT_TRUE(rc.has_value()) << "client " << c.id << " did not exit";
        EXPECT_EQ(*rc, 0);
        EXPECT_TRUE(c.connected);
        EXPECT_EQ(c.last.bad, 0u) << "client " << c.id;
        EXPECT_EQ(c.last.lost, 0u) << "client " << c.id;
        EXPECT_EQ(c.last.send_failed, 0u) << "client " << c.id;
        EXPECT_EQ(c.last.sent_ok, c.last.echoed_ok) << "client " << c.id << ": a send without its echo";
        EXPECT_GT(c.last.echoed_ok, 0u) << "client " << c.id;
        total.sent_ok += c.last.sent_ok;
        total.echoed_ok += c.last.echoed_ok;
        total.bytes += c.last.bytes;
        total.bad += c.last.bad + c.bad_lines.size();
    }
    EXPECT_FALSE(server->wait_exit(0ms).has_value()) << "the server process died";
    std::printf("[ soak ] %ld s, %d clients, %d killed+respawned: survivors sent_ok=%llu echoed_ok=%llu "
                "(%.1f MiB) bad=%llu; killed clients had %llu verified echoes before their kill\n",
                seconds, kClients, killed, static_cast<unsigned long long>(total.sent_ok),
                static_cast<unsigned long long>(total.echoed_ok), static_cast<double>(total.bytes) / 1048576.0,
                static_cast<unsigned long long>(total.bad),
                static_cast<unsigned long long>(killed_totals.echoed_ok));
    EXPECT_EQ(killed_totals.bad, 0u);
    EXPECT_GT(killed, 0);
}

}  // namespace
