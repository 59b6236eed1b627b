// A child process for the multi-process tests: started with posix_spawn, stdout read
// through a pipe with deadlines, always SIGKILLed and reaped by its destructor (so no
// process leaks even when an assertion fails half-way).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>
#include <vector>

extern char** environ;  // NOLINT(readability-redundant-declaration)

namespace btsp_test {

class ChildProcess {
public:
    /// Starts `path` with `args` (argv[1..]) and this process's environment plus
    /// `extra_env` ("NAME=value"); its stdout goes to a pipe we read.
    ChildProcess(const std::string& path, const std::vector<std::string>& args,
                 const std::vector<std::string>& extra_env = {}) {
        int fds[2];
        if (::pipe2(fds, O_CLOEXEC) != 0) {
            error_ = "pipe failed";
            return;
        }
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
        std::vector<std::string> argv_store;
        argv_store.push_back(path);
        argv_store.insert(argv_store.end(), args.begin(), args.end());
        std::vector<char*> argv;
        for (auto& a : argv_store) argv.push_back(a.data());
        argv.push_back(nullptr);
        std::vector<std::string> env_store(extra_env);
        for (char** e = environ; *e != nullptr; ++e) env_store.emplace_back(*e);
        std::vector<char*> envp;
        for (auto& e : env_store) envp.push_back(e.data());
        envp.push_back(nullptr);
        const int rc = ::posix_spawn(&pid_, path.c_str(), &actions, nullptr, argv.data(), envp.data());
        posix_spawn_file_actions_destroy(&actions);
        ::close(fds[1]);
        out_fd_ = fds[0];
        if (rc != 0) {
            pid_ = -1;
            error_ = "posix_spawn failed: " + std::to_string(rc);
        }
    }
    ~ChildProcess() {
        kill_now();
        if (out_fd_ >= 0) ::close(out_fd_);
    }
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;

    bool started() const noexcept { return pid_ > 0; }
    const std::string& error() const noexcept { return error_; }
    pid_t pid() const noexcept { return pid_; }

    /// Next line of the child's stdout (without '\n'), or nullopt on EOF / deadline.
    std::optional<std::string> read_line(std::chrono::milliseconds limit) {
        const auto deadline = std::chrono::steady_clock::now() + limit;
        for (;;) {
            const auto nl = buffer_.find('\n');
            if (nl != std::string::npos) {
                std::string line = buffer_.substr(0, nl);
                buffer_.erase(0, nl + 1);
                return line;
            }
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0 || out_fd_ < 0) return std::nullopt;
            pollfd p{out_fd_, POLLIN, 0};
            const int n = ::poll(&p, 1, static_cast<int>(left.count()));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return std::nullopt;
            char chunk[256];
            const ssize_t got = ::read(out_fd_, chunk, sizeof chunk);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) return std::nullopt;  // EOF
            buffer_.append(chunk, static_cast<std::size_t>(got));
        }
    }

    /// Reads lines until one starts with `prefix`; returns the rest of that line.
    std::optional<std::string> expect_line(const std::string& prefix, std::chrono::milliseconds limit) {
        const auto deadline = std::chrono::steady_clock::now() + limit;
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) return std::nullopt;
            auto line = read_line(left);
            if (!line) return std::nullopt;
            if (line->rfind(prefix, 0) == 0) return line->substr(prefix.size());
        }
    }

    /// Reads "PORT <n>" and returns n (0 on failure).
    std::uint16_t read_port(std::chrono::milliseconds limit) {
        const auto rest = expect_line("PORT ", limit);
        if (!rest) return 0;
        return static_cast<std::uint16_t>(std::strtoul(rest->c_str(), nullptr, 10));
    }

    /// Sends SIGKILL and reaps the child.
    void kill_now() {
        if (pid_ <= 0) return;
        ::kill(pid_, SIGKILL);
        int status = 0;
        while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
        }
        pid_ = -1;
    }

    /// Waits for the child to exit by itself; its exit code, or nullopt on deadline
    /// (the child is then still running) or if it died of a signal (-signal).
    std::optional<int> wait_exit(std::chrono::milliseconds limit) {
        if (pid_ <= 0) return std::nullopt;
        const auto deadline = std::chrono::steady_clock::now() + limit;
        for (;;) {
            int status = 0;
            const pid_t r = ::waitpid(pid_, &status, WNOHANG);
            if (r == pid_) {
                pid_ = -1;
                if (WIFEXITED(status)) return WEXITSTATUS(status);
                if (WIFSIGNALED(status)) return -WTERMSIG(status);
                return std::nullopt;
            }
            if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    }

private:
    pid_t pid_ = -1;
    int out_fd_ = -1;
    std::string buffer_;
    std::string error_;
};

}  // namespace btsp_test
