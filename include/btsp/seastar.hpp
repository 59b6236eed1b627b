// btsp — Seastar integration: manager operations and tasks as seastar::future, completed
// on the calling shard.
//
// NOT COMPILED IN THIS PROJECT'S CI: Seastar is not packaged for Debian 12. Without
// <seastar/core/future.hh> this header defines nothing but BTSP_HAS_SEASTAR (0). See
// docs/integrations.md for how to build and use it.
//
// Design (the spec's sketch busy-waits on the shard with sleep_for; this does not):
//   1. The operation is started from the shard (its RdmaAwaitable is co_awaited by a small
//      internal btsp coroutine; the manager hands it to its progress thread).
//   2. The shard's reactor is free meanwhile — nothing polls or sleeps on it.
//   3. When the operation completes, the internal coroutine runs on btsp's progress thread,
//      which is an alien thread to Seastar; it sends the result to the originating shard
//      with seastar::alien::run_on(instance, shard, func), and func (run by that shard's
//      reactor) fulfils the seastar::promise. The promise is created, fulfilled and
//      destroyed on the shard only; the progress thread merely moves a pointer to it.
// Requires Seastar with the alien::instance API (2021 and later): run_on(instance&, ...)
// and reactor::alien().
#pragma once

#include <btsp/log.hpp>
#include <btsp/manager.hpp>
#include <btsp/task.hpp>
#include <btsp/types.hpp>

#if __has_include(<seastar/core/future.hh>)

#include <seastar/core/alien.hh>
#include <seastar/core/future.hh>
#include <seastar/core/reactor.hh>
#include <seastar/core/smp.hh>

#include <coroutine>
#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

/// 1 when <btsp/seastar.hpp> found Seastar and defines btsp::seastar_ops.
#define BTSP_HAS_SEASTAR 1

namespace btsp {

/// Seastar integration: every function must be called on a Seastar shard (reactor thread).
namespace seastar_ops {

namespace detail {

// Fire-and-forget coroutine: starts at once, frees its frame when it ends.
struct Detached {
    struct promise_type {
        Detached get_return_object() noexcept { return {}; }
        std::suspend_never initial_suspend() noexcept { return {}; }
        std::suspend_never final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        void unhandled_exception() noexcept { std::terminate(); }  // bodies catch everything
    };
};

// Where a completion must go back to: the Seastar instance and shard of the caller.
struct Origin {
    seastar::alien::instance* instance;
    unsigned shard;
    static Origin here() { return {&seastar::engine().alien(), seastar::this_shard_id()}; }
};

// Awaits `a` (on whatever thread resumes it) and fulfils `*p` on `origin.shard`.
template <typename A, typename T>
Detached complete_on_shard(A a, std::unique_ptr<seastar::promise<T>> p, Origin origin) {
    std::exception_ptr error;
    std::optional<std::conditional_t<std::is_void_v<T>, bool, T>> value;
    try {
        if constexpr (std::is_void_v<T>) {
            co_await std::move(a);
            value.emplace(true);
        } else {
            value.emplace(co_await std::move(a));
        }
    } catch (...) {
        error = std::current_exception();
    }
    // Runs on the progress thread (alien to Seastar) or, if `a` completed at once, still on
    // the shard; run_on is valid from both. The lambda runs on the shard's reactor.
    seastar::alien::run_on(*origin.instance, origin.shard,
                           [p = std::move(p), value = std::move(value), error]() mutable noexcept {
                               if (error) {
                                   p->set_exception(error);
                               } else if constexpr (std::is_void_v<T>) {
                                   p->set_value();
                               } else {
                                   p->set_value(std::move(*value));
                               }
                           });
}

}  // namespace detail

/// Runs a manager operation (tag_send, tag_recv, connect, ...) and returns a future of its
/// result, resolved on the calling shard. Call on a shard. The operation's buffers must
/// stay valid until the future resolves. A failed operation resolves with its
/// RdmaOpResult (check .success()), not with an exception.
///     seastar::future<btsp::RdmaOpResult> f =
///         btsp::seastar_ops::to_seastar_future(manager.tag_send(buf, len, tag));
inline seastar::future<RdmaOpResult> to_seastar_future(RdmaAwaitable op) {
    auto p = std::make_unique<seastar::promise<RdmaOpResult>>();
    auto f = p->get_future();
    detail::complete_on_shard<RdmaAwaitable, RdmaOpResult>(std::move(op), std::move(p),
                                                            detail::Origin::here());
    return f;
}

/// Runs an RdmaTask to its end and returns a future of its value (or exception), resolved on
/// the calling shard. T must be nothrow move constructible (Seastar's requirement).
template <typename T>
seastar::future<T> to_seastar_future(RdmaTask<T> task) {
    auto p = std::make_unique<seastar::promise<T>>();
    auto f = p->get_future();
    detail::complete_on_shard<RdmaTask<T>, T>(std::move(task), std::move(p), detail::Origin::here());
    return f;
}

/// tag_send as a Seastar future (see to_seastar_future).
inline seastar::future<RdmaOpResult> tag_send(CoroutineRdmaManager& m, const void* data, std::size_t size,
                                              std::uint64_t tag) {
    return to_seastar_future(m.tag_send(data, size, tag));
}
/// tag_recv as a Seastar future (see to_seastar_future).
inline seastar::future<RdmaOpResult> tag_recv(CoroutineRdmaManager& m, void* data, std::size_t size,
                                              std::uint64_t tag) {
    return to_seastar_future(m.tag_recv(data, size, tag));
}
/// connect as a Seastar future (see to_seastar_future).
inline seastar::future<RdmaOpResult> connect(CoroutineRdmaManager& m, const std::string& host,
                                             std::uint16_t port) {
    return to_seastar_future(m.connect(host, port));
}

}  // namespace seastar_ops

/// The spec's SeastarRdmaIntegration (与 Seastar 集成) without its busy-wait: one manager
/// per instance, used from the shard that owns the object (Seastar's share-nothing model:
/// create one per shard, e.g. with seastar::sharded<>).
class SeastarRdmaIntegration {
public:
    /// Initialises the manager as a client (the spec's initialize(false, 0)). initialize()
    /// itself is short (it starts UCX and the progress thread) and runs on the shard.
    /// The future fails with std::runtime_error carrying last_error() on failure.
    seastar::future<> initialize_rdma() {
        if (!rdma_manager.initialize(false, 0))
            return seastar::make_exception_future<>(
                std::runtime_error("RDMA 初始化失败: " + rdma_manager.last_error()));
        return seastar::make_ready_future<>();
    }

    /// Connects to host:port; resolves true on success.
    seastar::future<bool> connect_async(const std::string& host, std::uint16_t port) {
        return seastar_ops::connect(rdma_manager, host, port).then([](RdmaOpResult r) { return r.success(); });
    }

    /// The spec's send_data_async: resolves true when the send completed successfully,
    /// false otherwise (the reason is printed, as in the spec). `data` must stay valid
    /// until the future resolves.
    seastar::future<bool> send_data_async(void* data, std::size_t size, std::uint64_t tag) {
        return seastar_ops::tag_send(rdma_manager, data, size, tag).then([](RdmaOpResult r) {
            if (!r.success()) {
                BTSP_LOG_WARN("RDMA 发送失败: %s", std::string(r.reason()).c_str());
                return false;
            }
            return true;
        });
    }

    /// Receives one message with `tag` into `data`; resolves with the operation's result.
    seastar::future<RdmaOpResult> recv_data_async(void* data, std::size_t size, std::uint64_t tag) {
        return seastar_ops::tag_recv(rdma_manager, data, size, tag);
    }

    /// The manager (for anything not wrapped here).
    CoroutineRdmaManager& manager() noexcept { return rdma_manager; }

private:
    CoroutineRdmaManager rdma_manager;
};

}  // namespace btsp

#else  // no Seastar

/// 0: Seastar was not found; btsp::seastar_ops is not defined.
#define BTSP_HAS_SEASTAR 0

#endif
