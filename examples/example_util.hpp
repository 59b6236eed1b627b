// Small helpers shared by the examples: argument parsing, running a coroutine with a
// deadline (the spec's run_coroutine, bounded), and spawning a copy of this program as
// a peer process. Not part of the library.
#pragma once

#include <btsp/task.hpp>

#include <spawn.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

extern char** environ;

namespace example {

using Clock = std::chrono::steady_clock;

/// Value of "--name V" or "--name=V" in argv, or `fallback`.
inline std::string arg_value(int argc, char** argv, std::string_view name, std::string fallback) {
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        if (a == name && i + 1 < argc) return argv[i + 1];
        if (a.size() > name.size() && a.substr(0, name.size()) == name && a[name.size()] == '=')
            return std::string(a.substr(name.size() + 1));
    }
    return fallback;
}

/// True if argv contains `name` as a whole argument.
inline bool has_arg(int argc, char** argv, std::string_view name) {
    for (int i = 1; i < argc; ++i)
        if (name == argv[i]) return true;
    return false;
}

/// Parses an unsigned integer in [lo, hi]; false if malformed or out of range.
inline bool parse_uint(const std::string& text, std::uint64_t lo, std::uint64_t hi,
                       std::uint64_t& out) {
    if (text.empty()) return false;
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
    if (errno != 0 || end == nullptr || *end != '\0' || text[0] == '-') return false;
    if (v < lo || v > hi) return false;
    out = v;
    return true;
}

/// The spec's run_coroutine, with a deadline: polls task.done() (the spec polls every
/// 100 ms; 5 ms here so the program exits promptly). Returns false if the deadline
/// passed first (the task is then still running).
template <typename Task>
bool wait_done(const Task& task, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (!task.done()) {
        if (Clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
}

/// Starts /proc/self/exe with `args` (argv[0] is added). File descriptors without
/// FD_CLOEXEC are inherited. Returns the child's pid, or -1.
inline pid_t spawn_self(const std::vector<std::string>& args) {
    std::vector<std::string> storage;
    storage.reserve(args.size() + 1);
    storage.emplace_back("/proc/self/exe");
    for (const auto& a : args) storage.push_back(a);
    std::vector<char*> argv;
    for (auto& s : storage) argv.push_back(s.data());
    argv.push_back(nullptr);
    pid_t pid = -1;
    // posix_spawn (vfork + exec): safe in a multi-threaded process, and the child makes
    // no UCX call before exec (UCX does not support fork without exec).
    const int rc = posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), environ);
    if (rc != 0) {
        std::cerr << "posix_spawn failed: " << rc << '\n';
        return -1;
    }
    return pid;
}

/// Waits up to `timeout` for `pid` to exit; kills it (SIGKILL) after that. Returns its
/// exit code, 128 + signal if it was killed by a signal, or -1 on error.
inline int wait_child(pid_t pid, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    int status = 0;
    for (;;) {
        const pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) break;
        if (r < 0 && errno != EINTR) return -1;
        if (Clock::now() >= deadline) {
            std::cerr << "peer process " << pid << " did not exit in time; killing it\n";
            kill(pid, SIGKILL);
            if (waitpid(pid, &status, 0) != pid) return -1;
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

}  // namespace example
