// CoroutineRdmaManager and its awaitables: thin forwarding to the engine.
#include "engine.hpp"

#include <btsp/manager.hpp>

#include <cstring>
#include <new>
#include <utility>

namespace btsp {

// ---- RdmaAwaitable ---------------------------------------------------------------------

RdmaAwaitable::RdmaAwaitable(RdmaAwaitable&& other) noexcept {
    op_.take(other.op_);
    if (op_.opts & detail::kOptExtras) {
        // Moved only before it is awaited: no stop callback is registered yet.
        Extras& from = *std::launder(reinterpret_cast<Extras*>(other.extras_));
        Extras* to = ::new (static_cast<void*>(extras_)) Extras{std::move(from.host), std::move(from.stop_token), {}};
        op_.host = to->host.get();
    }
}

RdmaAwaitable::Extras& RdmaAwaitable::extras() noexcept {
    if ((op_.opts & detail::kOptExtras) == 0) {
        ::new (static_cast<void*>(extras_)) Extras{};
        op_.opts |= detail::kOptExtras;
    }
    return *std::launder(reinterpret_cast<Extras*>(extras_));
}

void RdmaAwaitable::destroy_extras() noexcept {
    std::launder(reinterpret_cast<Extras*>(extras_))->~Extras();
    op_.opts &= static_cast<std::uint8_t>(~detail::kOptExtras);
}

RdmaAwaitable&& RdmaAwaitable::timeout(std::chrono::nanoseconds d) && noexcept {
    op_.set_timeout(d);
    return std::move(*this);
}
RdmaAwaitable& RdmaAwaitable::timeout(std::chrono::nanoseconds d) & noexcept {
    op_.set_timeout(d);
    return *this;
}
RdmaAwaitable&& RdmaAwaitable::cancel_with(std::stop_token token) && noexcept {
    extras().stop_token = std::move(token);
    return std::move(*this);
}
RdmaAwaitable& RdmaAwaitable::cancel_with(std::stop_token token) & noexcept {
    extras().stop_token = std::move(token);
    return *this;
}

void RdmaAwaitable::arm_stop_callback() noexcept {
    Extras& x = extras();
    if (x.stop_token.stop_possible()) x.stop_callback.emplace(x.stop_token, OnStop{&op_});
}

void RdmaAwaitable::disarm_stop_callback() noexcept { extras().stop_callback.reset(); }

// ---- StateChangeAwaitable --------------------------------------------------------------

StateChangeAwaitable::StateChangeAwaitable(detail::Engine* engine, RdmaState target) noexcept
    : engine_(engine), target_(target) {}

StateChangeAwaitable::StateChangeAwaitable(StateChangeAwaitable&& other) noexcept
    : engine_(other.engine_), target_(other.target_) {}

bool StateChangeAwaitable::await_ready() noexcept {
    if (engine_ == nullptr) return true;
    if (engine_->state_matches(target_)) {
        reached_ = true;
        return true;
    }
    return !engine_->is_running();
}

bool StateChangeAwaitable::await_suspend(std::coroutine_handle<> awaiting) noexcept {
    waiter = awaiting;
    return engine_->add_waiter(this);
}

// ---- WorkerGuard -----------------------------------------------------------------------

WorkerGuard::WorkerGuard(detail::Engine* engine) noexcept : engine_(engine) {
    gen_ = engine_->claim_worker();
    owns_ = gen_ != 0;
}

WorkerGuard::WorkerGuard(WorkerGuard&& other) noexcept
    : engine_(other.engine_), gen_(other.gen_), owns_(std::exchange(other.owns_, false)) {}

WorkerGuard::~WorkerGuard() {
    if (owns_) engine_->release_worker(gen_);
}

ucp_worker_h WorkerGuard::worker() const noexcept { return owns_ ? engine_->worker() : nullptr; }

// ---- CoroutineRdmaManager --------------------------------------------------------------

CoroutineRdmaManager::CoroutineRdmaManager() : CoroutineRdmaManager(ManagerOptions::from_env()) {}

CoroutineRdmaManager::CoroutineRdmaManager(ManagerOptions options)
    : options_(std::move(options)), engine_(std::make_shared<detail::Engine>(options_)) {}

CoroutineRdmaManager::~CoroutineRdmaManager() { engine_->shutdown(); }

bool CoroutineRdmaManager::initialize(bool server_mode, std::uint16_t port) {
    return engine_->initialize(server_mode, port);
}

void CoroutineRdmaManager::shutdown() { engine_->shutdown(); }

RdmaAwaitable CoroutineRdmaManager::connect(const std::string& remote_addr, std::uint16_t remote_port) {
    RdmaAwaitable a = make_op(detail::OpKind::CONNECT, nullptr, 0, 0);
    std::unique_ptr<char[]>& host = a.extras().host;
    host = std::make_unique<char[]>(remote_addr.size() + 1);
    std::memcpy(host.get(), remote_addr.c_str(), remote_addr.size() + 1);
    a.op_.host = host.get();
    a.op_.port = remote_port;
    return a;
}

RdmaAwaitable CoroutineRdmaManager::listen(std::uint16_t port) {
    RdmaAwaitable a = make_op(detail::OpKind::LISTEN, nullptr, 0, 0);
    a.op_.port = port;
    return a;
}

RdmaAwaitable CoroutineRdmaManager::disconnect() { return make_op(detail::OpKind::DISCONNECT, nullptr, 0, 0); }

StateChangeAwaitable CoroutineRdmaManager::wait_for_state(RdmaState target_state) {
    return StateChangeAwaitable(engine_.get(), target_state);
}

StateChangeAwaitable CoroutineRdmaManager::wait_for_connection() {
    return wait_for_state(RdmaState::CONNECTED);
}

RdmaState CoroutineRdmaManager::get_state() const noexcept { return engine_->state(); }
bool CoroutineRdmaManager::is_connected() const noexcept { return is_connected_state(engine_->state()); }
bool CoroutineRdmaManager::is_running() const noexcept { return engine_->is_running(); }
std::uint16_t CoroutineRdmaManager::listening_port() const noexcept { return engine_->listening_port(); }
std::size_t CoroutineRdmaManager::connection_count() const noexcept { return engine_->connection_count(); }
std::string CoroutineRdmaManager::last_error() const { return engine_->last_error(); }
ucp_context_h CoroutineRdmaManager::ucx_context() const noexcept { return engine_->context(); }
ucp_worker_h CoroutineRdmaManager::ucx_worker() const noexcept { return engine_->worker(); }
ucp_ep_h CoroutineRdmaManager::ucx_endpoint() const noexcept { return engine_->primary_endpoint(); }
std::shared_ptr<ucp_context> CoroutineRdmaManager::ucx_context_shared() const { return engine_->shared_context(); }
WorkerGuard CoroutineRdmaManager::lock_worker() noexcept { return WorkerGuard(engine_.get()); }
MetricsSnapshot CoroutineRdmaManager::metrics() const noexcept { return engine_->metrics(); }

std::vector<InFlightOp> CoroutineRdmaManager::in_flight() {
    std::vector<InFlightOp> out;
    if (!engine_->is_running()) return out;
    RdmaAwaitable a = make_op(detail::OpKind::INSPECT, &out, 0, 0);
    (void)sync_wait(std::move(a));
    return out;
}

std::string CoroutineRdmaManager::dump_in_flight() { return format_in_flight(in_flight()); }

}  // namespace btsp
