// btsp — standalone asio integration: completion-token operations over a manager.
//
//     co_await btsp::asio_ops::async_tag_send(manager, buf, len, tag, asio::use_awaitable);
//
// Each operation starts a small internal btsp coroutine that awaits the manager operation
// and then posts the completion handler to the handler's associated executor — so the
// handler never runs on btsp's progress thread (nor inside the initiating function). A work
// guard on that executor is held while the operation is pending, so io_context::run() does
// not return early. Completion signature: void(std::error_code, btsp::RdmaOpResult); the
// error_code is btsp::make_error_code(result.result) (category "btsp", 0 on success).
//
// Needs standalone asio (Debian: libasio-dev, header <asio.hpp>). Without it, this header
// only declares the error category (and BTSP_HAS_ASIO is 0).
#pragma once

#include <btsp/manager.hpp>
#include <btsp/types.hpp>

#include <string>
#include <system_error>

namespace btsp {

/// The std::error_category named "btsp": error values are RdmaResult values (0 = SUCCESS).
/// Conditions: TIMEOUT ≈ std::errc::timed_out, CANCELLED ≈ std::errc::operation_canceled,
/// DISCONNECTED ≈ std::errc::not_connected, FAILURE ≈ std::errc::io_error; so
/// `ec == std::errc::operation_canceled` holds for a cancelled operation.
class RdmaErrorCategory final : public std::error_category {
public:
    /// "btsp".
    const char* name() const noexcept override { return "btsp"; }
    /// "success", "failure", "timeout", "disconnected", "cancelled".
    std::string message(int value) const override {
        switch (static_cast<RdmaResult>(value)) {
            case RdmaResult::SUCCESS: return "success";
            case RdmaResult::FAILURE: return "failure";
            case RdmaResult::TIMEOUT: return "timeout";
            case RdmaResult::DISCONNECTED: return "disconnected";
            case RdmaResult::CANCELLED: return "cancelled";
        }
        return "unknown btsp error " + std::to_string(value);
    }
    /// Maps each value to the portable std::errc condition listed above.
    std::error_condition default_error_condition(int value) const noexcept override {
        switch (static_cast<RdmaResult>(value)) {
            case RdmaResult::SUCCESS: return {};
            case RdmaResult::FAILURE: return std::make_error_condition(std::errc::io_error);
            case RdmaResult::TIMEOUT: return std::make_error_condition(std::errc::timed_out);
            case RdmaResult::DISCONNECTED: return std::make_error_condition(std::errc::not_connected);
            case RdmaResult::CANCELLED:
                return std::make_error_condition(std::errc::operation_canceled);
        }
        return {value, *this};
    }
};

/// The single instance of RdmaErrorCategory.
inline const std::error_category& rdma_category() noexcept {
    static const RdmaErrorCategory category;
    return category;
}

/// error_code of an RdmaResult: value 0 (false) for SUCCESS, category rdma_category().
inline std::error_code make_error_code(RdmaResult r) noexcept {
    return {static_cast<int>(r), rdma_category()};
}

/// error_code of an operation result (its `result` member).
inline std::error_code make_error_code(const RdmaOpResult& r) noexcept { return make_error_code(r.result); }

}  // namespace btsp

#if __has_include(<asio.hpp>)

#include <asio.hpp>

#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <stop_token>
#include <type_traits>
#include <utility>

/// 1 when <btsp/asio.hpp> found standalone asio and defines btsp::asio_ops.
#define BTSP_HAS_ASIO 1

namespace btsp {

/// Completion-token operations of a CoroutineRdmaManager for standalone asio.
namespace asio_ops {

/// Completion signature of every operation here.
using completion_signature = void(std::error_code, RdmaOpResult);

namespace detail {

// The internal btsp coroutine: starts at once, frees its frame at its end.
struct Detached {
    struct promise_type {
        Detached get_return_object() noexcept { return {}; }
        std::suspend_never initial_suspend() noexcept { return {}; }
        std::suspend_never final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        // Only allocation failures (posting the handler) can get here; a handler that can
        // never be delivered leaves its waiter hanging, so fail loudly instead.
        void unhandled_exception() noexcept { std::terminate(); }
    };
};

// Which asio cancellation types an operation honours (see the functions below).
inline constexpr asio::cancellation_type kCancelAny =
    asio::cancellation_type::terminal | asio::cancellation_type::partial | asio::cancellation_type::total;

// Awaits `op` (started here, on the initiating thread), then posts the handler to its
// associated executor (default `io_ex`), holding outstanding work on it meanwhile.
template <typename Handler, typename IoExecutor>
Detached run_op(RdmaAwaitable op, Handler handler, IoExecutor io_ex, asio::cancellation_type honoured) {
    auto ex = asio::get_associated_executor(handler, io_ex);
    auto work = asio::make_work_guard(ex);
    auto slot = asio::get_associated_cancellation_slot(handler);
    if (slot.is_connected()) {
        // The slot's handler owns a std::stop_source (shared state), so a cancellation
        // emitted late — after completion — is harmless. It is cleared on `ex` just before
        // the handler runs, the executor the cancellation is emitted from.
        std::stop_source source;
        op.cancel_with(source.get_token());
        slot.assign([source, honoured](asio::cancellation_type type) mutable {
            if ((type & honoured) != asio::cancellation_type::none) source.request_stop();
        });
    }
    const RdmaOpResult result = co_await op;
    const std::error_code ec = make_error_code(result.result);
    asio::post(ex, [handler = std::move(handler), work = std::move(work), slot, ec, result]() mutable {
        if (slot.is_connected()) slot.clear();
        work.reset();
        std::move(handler)(ec, result);
    });
}

// Initiation object passed to asio::async_initiate. `make` builds the RdmaAwaitable (it
// is only created when the operation is initiated, so deferred tokens work).
template <typename IoExecutor>
struct Initiate {
    IoExecutor io_ex;
    asio::cancellation_type honoured;

    /// asio's convention: the I/O executor of the operation.
    using executor_type = IoExecutor;
    /// The I/O executor of the operation.
    executor_type get_executor() const noexcept { return io_ex; }

    template <typename Handler, typename Make>
    void operator()(Handler&& handler, Make make) const {
        run_op(make(), std::decay_t<Handler>(std::forward<Handler>(handler)), io_ex, honoured);
    }
};

struct MakeSend {
    CoroutineRdmaManager* m;
    const void* data;
    std::size_t size;
    std::uint64_t tag;
    RdmaAwaitable operator()() const { return m->tag_send(data, size, tag); }
};
struct MakeRecv {
    CoroutineRdmaManager* m;
    void* data;
    std::size_t size;
    std::uint64_t tag;
    std::uint64_t mask;
    RdmaAwaitable operator()() const { return m->tag_recv(data, size, tag, mask); }
};
struct MakeConnect {
    CoroutineRdmaManager* m;
    std::string host;
    std::uint16_t port;
    RdmaAwaitable operator()() const { return m->connect(host, port); }
};

template <typename E>
inline constexpr bool is_executor_v = asio::is_executor<E>::value || asio::execution::is_executor<E>::value;

template <typename Token, typename IoExecutor, typename Make>
auto initiate(Token&& token, const IoExecutor& io_ex, asio::cancellation_type honoured, Make make) {
    return asio::async_initiate<Token, completion_signature>(Initiate<IoExecutor>{io_ex, honoured},
                                                             token, std::move(make));
}

}  // namespace detail

// ---- tag_send -------------------------------------------------------------------------

/// Sends `size` bytes at `data` with `tag` (CoroutineRdmaManager::tag_send) and completes
/// `token` with (error_code, RdmaOpResult) on the executor associated with the handler,
/// or `io_ex` when it has none. `data` must stay valid until completion. Cancellation
/// (asio cancellation slot): terminal only — UCX cannot withdraw a pending send, so a
/// cancelled send closes its connection (see RdmaAwaitable::cancel_with).
template <typename IoExecutor, ASIO_COMPLETION_TOKEN_FOR(completion_signature) CompletionToken>
    requires detail::is_executor_v<IoExecutor>
auto async_tag_send(const IoExecutor& io_ex, CoroutineRdmaManager& manager, const void* data,
                    std::size_t size, std::uint64_t tag, CompletionToken&& token) {
    return detail::initiate(std::forward<CompletionToken>(token), io_ex, asio::cancellation_type::terminal,
                            detail::MakeSend{&manager, data, size, tag});
}

/// As above; the handler's associated executor (asio::system_executor if it has none)
/// receives the completion. With a plain callback, bind it with asio::bind_executor (or
/// use the executor-first overload) to run it on your io_context.
template <ASIO_COMPLETION_TOKEN_FOR(completion_signature) CompletionToken>
auto async_tag_send(CoroutineRdmaManager& manager, const void* data, std::size_t size, std::uint64_t tag,
                    CompletionToken&& token) {
    return async_tag_send(asio::system_executor(), manager, data, size, tag,
                          std::forward<CompletionToken>(token));
}

// ---- tag_recv -------------------------------------------------------------------------

/// Receives one message whose tag matches `tag` under `tag_mask` into `data` (capacity
/// `size`) — CoroutineRdmaManager::tag_recv — completing `token` on the handler's
/// associated executor (default `io_ex`). bytes_transferred is the message's length,
/// sender_tag its tag. Cancellation: terminal, partial and total (a cancelled receive
/// never writes its buffer afterwards).
template <typename IoExecutor, ASIO_COMPLETION_TOKEN_FOR(completion_signature) CompletionToken>
    requires detail::is_executor_v<IoExecutor>
auto async_tag_recv(const IoExecutor& io_ex, CoroutineRdmaManager& manager, void* data, std::size_t size,
                    std::uint64_t tag, std::uint64_t tag_mask, CompletionToken&& token) {
    return detail::initiate(std::forward<CompletionToken>(token), io_ex, detail::kCancelAny,
                            detail::MakeRecv{&manager, data, size, tag, tag_mask});
}

/// Receives one message with exactly `tag`, completing on the handler's associated
/// executor (default `io_ex`).
template <typename IoExecutor, ASIO_COMPLETION_TOKEN_FOR(completion_signature) CompletionToken>
    requires detail::is_executor_v<IoExecutor>
auto async_tag_recv(const IoExecutor& io_ex, CoroutineRdmaManager& manager, void* data, std::size_t size,
                    std::uint64_t tag, CompletionToken&& token) {
    return async_tag_recv(io_ex, manager, data, size, tag, ~std::uint64_t{0},
                          std::forward<CompletionToken>(token));
}

/// Receives one message with exactly `tag`, completing on the handler's associated
/// executor (asio::system_executor if it has none).
template <ASIO_COMPLETION_TOKEN_FOR(completion_signature) CompletionToken>
auto async_tag_recv(CoroutineRdmaManager& manager, void* data, std::size_t size, std::uint64_t tag,
                    CompletionToken&& token) {
    return async_tag_recv(asio::system_executor(), manager, data, size, tag, ~std::uint64_t{0},
                          std::forward<CompletionToken>(token));
}

/// Masked receive, completing on the handler's associated executor (asio::system_executor
/// if it has none).
template <ASIO_COMPLETION_TOKEN_FOR(completion_signature) CompletionToken>
auto async_tag_recv(CoroutineRdmaManager& manager, void* data, std::size_t size, std::uint64_t tag,
                    std::uint64_t tag_mask, CompletionToken&& token) {
    return async_tag_recv(asio::system_executor(), manager, data, size, tag, tag_mask,
                          std::forward<CompletionToken>(token));
}

// ---- connect --------------------------------------------------------------------------

/// Connects `manager` to host:port (CoroutineRdmaManager::connect), completing `token` on
/// the handler's associated executor (default `io_ex`). Cancellation: terminal and
/// partial (the connect is abandoned).
template <typename IoExecutor, ASIO_COMPLETION_TOKEN_FOR(completion_signature) CompletionToken>
    requires detail::is_executor_v<IoExecutor>
auto async_connect(const IoExecutor& io_ex, CoroutineRdmaManager& manager, std::string host,
                   std::uint16_t port, CompletionToken&& token) {
    return detail::initiate(std::forward<CompletionToken>(token), io_ex,
                            asio::cancellation_type::terminal | asio::cancellation_type::partial,
                            detail::MakeConnect{&manager, std::move(host), port});
}

/// Connects, completing on the handler's associated executor (asio::system_executor if it
/// has none).
template <ASIO_COMPLETION_TOKEN_FOR(completion_signature) CompletionToken>
auto async_connect(CoroutineRdmaManager& manager, std::string host, std::uint16_t port,
                   CompletionToken&& token) {
    return async_connect(asio::system_executor(), manager, std::move(host), port,
                         std::forward<CompletionToken>(token));
}

}  // namespace asio_ops
}  // namespace btsp

#else  // no <asio.hpp>

/// 0: standalone asio was not found; btsp::asio_ops is not defined.
#define BTSP_HAS_ASIO 0

#endif
