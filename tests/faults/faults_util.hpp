// Helpers of the fault tests: the peer process, network-namespace labs (RAII: always
// deleted), and resource counters of this process. Builds on tests/process_util.hpp
// (ChildProcess: SIGKILL + waitpid in its destructor) and tests/test_util.hpp.
#pragma once

#include "process_util.hpp"
#include "soak_wire.hpp"
#include "test_util.hpp"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifndef BTSP_FAULT_PEER
#error "BTSP_FAULT_PEER (path of btsp_fault_peer) must be defined by the build"
#endif

namespace btsp_fault {

using btsp_test::ChildProcess;

inline std::unique_ptr<ChildProcess> spawn_peer(const std::vector<std::string>& args,
                                                const std::vector<std::string>& env = {}) {
    return std::make_unique<ChildProcess>(BTSP_FAULT_PEER, args, env);
}

/// CLOCK_MONOTONIC in ns (the same clock in every network namespace: no time namespaces).
inline std::uint64_t mono_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

/// Runs a shell command quietly; its exit status (or -1).
inline int run(const std::string& cmd) {
    const int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
    if (rc < 0 || !WIFEXITED(rc)) return -1;
    return WEXITSTATUS(rc);
}

/// Output of a command (stdout), for `ip netns list`.
inline std::string capture(const std::string& cmd) {
    std::string out;
    if (FILE* f = ::popen((cmd + " 2>/dev/null").c_str(), "r")) {
        char buf[512];
        while (std::fgets(buf, sizeof buf, f) != nullptr) out += buf;
        ::pclose(f);
    }
    return out;
}

/// Network namespaces named <prefix><letter><pid>, joined by veth pairs. Everything is
/// deleted by the destructor (and leftovers of dead test processes with the same prefix
/// by the constructor). Check ok() and GTEST_SKIP if false (not root, no `ip netns`).
class NetnsLab {
public:
    static constexpr const char* kPrefix = "btspf";

    NetnsLab() {
        cleanup_leftovers();
        if (::geteuid() != 0) {
            why_ = "not root";
            return;
        }
        const std::string probe = name('Z');
        if (run("ip netns add " + probe) != 0) {
            why_ = "`ip netns add` failed";
            return;
        }
        run("ip netns del " + probe);
        ok_ = true;
    }
    ~NetnsLab() {
        for (const auto& ns : created_) run("ip netns del " + ns);
    }
    NetnsLab(const NetnsLab&) = delete;
    NetnsLab& operator=(const NetnsLab&) = delete;

    bool ok() const noexcept { return ok_; }
    const std::string& why() const noexcept { return why_; }

    std::string name(char letter) const { return std::string(kPrefix) + letter + std::to_string(::getpid()); }

    /// Creates namespace `letter` with its loopback up; its name.
    std::string add(char letter) {
        const std::string ns = name(letter);
        run("ip netns del " + ns);
        if (run("ip netns add " + ns) != 0) return {};
        created_.push_back(ns);
        run("ip -n " + ns + " link set lo up");
        return ns;
    }

    /// veth pair between namespaces a and b; `addr_a`/`addr_b` are CIDR ("10.199.1.1/24").
    /// Interface names: v<a><b><pid%100000> in a, v<b><a>... in b (<= 15 chars).
    bool link(char a, char b, const std::string& addr_a, const std::string& addr_b) {
        const std::string ia = ifname(a, b), ib = ifname(b, a);
        const std::string na = name(a), nb = name(b);
        return run("ip -n " + na + " link add " + ia + " type veth peer name " + ib + " netns " + nb) == 0 &&
               run("ip -n " + na + " addr add " + addr_a + " dev " + ia) == 0 &&
               run("ip -n " + nb + " addr add " + addr_b + " dev " + ib) == 0 &&
               run("ip -n " + na + " link set " + ia + " up") == 0 &&
               run("ip -n " + nb + " link set " + ib + " up") == 0 && wait_carrier(a, b) && wait_carrier(b, a);
    }
    /// A bridge "br0" with address `cidr` in namespace s: one interface, like a host on a LAN.
    bool bridge(char s, const std::string& cidr) {
        const std::string ns = name(s);
        return run("ip -n " + ns + " link add br0 type bridge") == 0 &&
               run("ip -n " + ns + " addr add " + cidr + " dev br0") == 0 &&
               run("ip -n " + ns + " link set br0 up") == 0;
    }
    /// Namespace p joins the bridge of namespace s through a veth pair; `addr_p` is CIDR.
    bool attach(char s, char p, const std::string& addr_p) {
        const std::string ns = name(s), np = name(p), is = ifname(s, p), ip = ifname(p, s);
        return run("ip -n " + ns + " link add " + is + " type veth peer name " + ip + " netns " + np) == 0 &&
               run("ip -n " + ns + " link set " + is + " master br0") == 0 &&
               run("ip -n " + np + " addr add " + addr_p + " dev " + ip) == 0 &&
               run("ip -n " + ns + " link set " + is + " up") == 0 &&
               run("ip -n " + np + " link set " + ip + " up") == 0 && wait_carrier(s, p) && wait_carrier(p, s) &&
               wait_forwarding(s);
    }
    /// Waits until the bridge forwards (state UP; STP is off by default, so no delay).
    bool wait_forwarding(char s) {
        for (int i = 0; i < 500; ++i) {
            if (run("ip -n " + name(s) + " link show dev br0 | grep -q 'state UP'") == 0) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return false;
    }
    /// Waits (up to 5 s) until the interface of a towards b has its carrier (LOWER_UP):
    /// connecting before that fails at once.
    bool wait_carrier(char a, char b) {
        for (int i = 0; i < 500; ++i) {
            if (run("ip -n " + name(a) + " link show dev " + ifname(a, b) + " | grep -q LOWER_UP") == 0) {
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
                return true;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return false;
    }
    std::string ifname(char a, char b) const {
        return std::string("v") + a + b + std::to_string(::getpid() % 100000);
    }
    /// `ip link set dev <if of a towards b> up|down` inside a.
    bool set_link(char a, char b, bool up) {
        return run("ip -n " + name(a) + " link set dev " + ifname(a, b) + (up ? " up" : " down")) == 0;
    }

    /// A peer process inside namespace `letter` (through `ip netns exec`, which execs it:
    /// the pid is the peer's, so ChildProcess's SIGKILL + waitpid reach it).
    std::unique_ptr<ChildProcess> spawn_in(char letter, const std::vector<std::string>& args,
                                           const std::vector<std::string>& env = {}) {
        std::vector<std::string> full{"netns", "exec", name(letter), BTSP_FAULT_PEER};
        full.insert(full.end(), args.begin(), args.end());
        return std::make_unique<ChildProcess>(ip_path(), full, env);
    }

    static std::string ip_path() {
        for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"})
            if (::access(p, X_OK) == 0) return p;
        return "/usr/sbin/ip";
    }

private:
    /// Deletes namespaces with our prefix whose creating process is gone.
    static void cleanup_leftovers() {
        std::istringstream in(capture("ip netns list"));
        std::string line;
        while (std::getline(in, line)) {
            const std::string ns = line.substr(0, line.find(' '));
            if (ns.rfind(kPrefix, 0) != 0 || ns.size() < std::string(kPrefix).size() + 2) continue;
            const long pid = std::strtol(ns.c_str() + std::string(kPrefix).size() + 1, nullptr, 10);
            if (pid > 0 && pid != ::getpid() && ::kill(static_cast<pid_t>(pid), 0) != 0)
                run("ip netns del " + ns);
        }
    }

    bool ok_ = false;
    std::string why_;
    std::vector<std::string> created_;
};

// ---- resources of this process -------------------------------------------------------

inline std::size_t count_dir(const char* path) {
    std::size_t n = 0;
    if (DIR* d = ::opendir(path)) {
        while (dirent* e = ::readdir(d))
            if (e->d_name[0] != '.') ++n;
        ::closedir(d);
    }
    return n;
}
inline std::size_t open_fds() { return count_dir("/proc/self/fd") - 1; }  // minus opendir's own
inline std::size_t thread_count() { return count_dir("/proc/self/task"); }
/// VmRSS in KiB.
inline std::size_t rss_kib() {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("VmRSS:", 0) == 0) return std::strtoul(line.c_str() + 6, nullptr, 10);
    return 0;
}

inline long env_long(const char* name, long fallback) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') return fallback;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    return (end != nullptr && *end == '\0' && n > 0) ? n : fallback;
}

}  // namespace btsp_fault
