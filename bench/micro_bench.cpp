// Micro-benchmarks (Google Benchmark) of btsp's coroutine machinery, in nanoseconds:
// task creation, co_await, resume / symmetric transfer, awaiter construction, sync_wait,
// and an operation submitted from a non-progress thread over a loopback connection.
//
//   build-perf/bin/micro_bench                     # all
//   build-perf/bin/micro_bench --benchmark_filter=Task
#include <btsp/btsp.hpp>

#include <benchmark/benchmark.h>

#include <chrono>
#include <coroutine>
#include <cstdio>
#include <memory>
#include <thread>

using btsp::CoroutineRdmaManager;
using btsp::RdmaTask;

namespace {

RdmaTask<int> ready_task(int v) { co_return v; }

// A hand-rolled suspension point whose handle the benchmark resumes.
struct Park {
    std::coroutine_handle<>* slot;
    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) noexcept {
        *slot = h;
        return true;
    }
    void await_resume() noexcept {}
};

// RdmaTask creation + completion: frame allocation, eager start, co_return, destruction.
void BM_TaskCreateComplete(benchmark::State& state) {
    for (auto _ : state) {
        RdmaTask<int> t = ready_task(1);
        benchmark::DoNotOptimize(t.get());
    }
}
BENCHMARK(BM_TaskCreateComplete);

// (Coroutines are free functions, not lambdas: clang 14 crashes on some coroutine lambdas.)
RdmaTask<void> await_completed_loop(benchmark::State& s, RdmaTask<int>& d) {
    for (auto _ : s) {
        int v = co_await d;
        benchmark::DoNotOptimize(v);
    }
}

// co_await of an already completed task (await_ready true: no suspension).
void BM_AwaitCompletedTask(benchmark::State& state) {
    RdmaTask<int> done = ready_task(7);
    RdmaTask<void> t = await_completed_loop(state, done);
    t.get();
}
BENCHMARK(BM_AwaitCompletedTask);

RdmaTask<void> park_loop(std::coroutine_handle<>* slot, bool* stop_flag) {
    long n = 0;
    while (!*stop_flag) {
        co_await Park{slot};
        ++n;
    }
    benchmark::DoNotOptimize(n);
}

RdmaTask<int> parked_child(std::coroutine_handle<>* slot) {
    co_await Park{slot};
    co_return 1;
}

RdmaTask<long> parent_loop(std::coroutine_handle<>* slot, bool* stop_flag) {
    long sum = 0;
    while (!*stop_flag) sum += co_await parked_child(slot);
    co_return sum;
}

// Resume of a suspended coroutine from outside (h.resume() to the next suspension).
void BM_ResumeSuspended(benchmark::State& state) {
    std::coroutine_handle<> h;
    bool stop = false;
    RdmaTask<void> t = park_loop(&h, &stop);
    for (auto _ : state) h.resume();
    stop = true;
    h.resume();
    t.get();
}
BENCHMARK(BM_ResumeSuspended);

// Child completes after a resume and hands control to its awaiting parent by symmetric
// transfer; the parent then creates the next child. Per iteration: child creation +
// resume + final_suspend symmetric transfer + parent step.
void BM_ResumeSymmetricTransfer(benchmark::State& state) {
    std::coroutine_handle<> h;
    bool stop = false;
    RdmaTask<long> p = parent_loop(&h, &stop);
    for (auto _ : state) h.resume();
    stop = true;
    h.resume();
    benchmark::DoNotOptimize(p.get());
}
BENCHMARK(BM_ResumeSymmetricTransfer);

// RdmaAwaitable construction (tag_send builds it inline; its checks run when it is
// awaited, so this is the construction alone, on a manager that was never initialised).
void BM_AwaitableConstructUninit(benchmark::State& state) {
    CoroutineRdmaManager m;
    char buf[8] = {};
    for (auto _ : state) {
        auto a = m.tag_send(buf, sizeof buf, 1);
        benchmark::DoNotOptimize(a.await_ready());
    }
}
BENCHMARK(BM_AwaitableConstructUninit);

RdmaTask<void> co_await_uninit_loop(benchmark::State& s, CoroutineRdmaManager& mgr) {
    char buf[8] = {};
    for (auto _ : s) {
        btsp::RdmaOpResult r = co_await mgr.tag_send(buf, sizeof buf, 1);
        benchmark::DoNotOptimize(r);
    }
}

// Same, plus co_await inside a coroutine: the checks run and the operation fails at once
// ("manager not initialized"), without suspending.
void BM_AwaitableCoAwaitUninit(benchmark::State& state) {
    CoroutineRdmaManager m;
    RdmaTask<void> t = co_await_uninit_loop(state, m);
    t.get();
}
BENCHMARK(BM_AwaitableCoAwaitUninit);

// What a co_await of a sub-task inside an RdmaTask pays so that the task can be cancelled
// from another thread: attach the awaited task to the parent's CancelSlot, detach it
// after. (Manager operations no longer attach: they take the slot when they start.)
void BM_CancelSlotAttachDetach(benchmark::State& state) {
    btsp::detail::CancelSlot slot;
    btsp::detail::CancelTarget target;
    target.cancel = [](btsp::detail::CancelTarget*, std::uint8_t) noexcept {};
    for (auto _ : state) {
        slot.attach(&target);
        slot.detach();
        benchmark::ClobberMemory();
    }
}
BENCHMARK(BM_CancelSlotAttachDetach);

// sync_wait of a trivial task: sync_wait's own coroutine frame, mutex + condition variable.
void BM_SyncWaitTrivial(benchmark::State& state) {
    for (auto _ : state) benchmark::DoNotOptimize(btsp::sync_wait(ready_task(3)));
}
BENCHMARK(BM_SyncWaitTrivial);

// ---- over a loopback connection ---------------------------------------------------------
struct Loopback {
    std::unique_ptr<CoroutineRdmaManager> server, client;
    RdmaTask<void> drain;
    char rbuf[64] = {};
    bool ok = false;

    static RdmaTask<void> drain_loop(CoroutineRdmaManager& m, char* buf) {
        for (;;) {
            const btsp::RdmaOpResult r = co_await m.tag_recv(buf, 64, 99);
            if (!r) break;
        }
    }

    explicit Loopback(btsp::ProgressMode mode) {
        btsp::ManagerOptions o = btsp::ManagerOptions::from_env();
        o.progress_mode = mode;
        server = std::make_unique<CoroutineRdmaManager>(o);
        client = std::make_unique<CoroutineRdmaManager>(o);
        if (!server->initialize(true, 0) || !client->initialize(false, 0)) return;
        if (!btsp::sync_wait(client->connect("127.0.0.1", server->listening_port()))) return;
        if (!btsp::sync_wait(server->wait_for_connection())) return;
        drain = drain_loop(*server, rbuf);
        ok = true;
    }
    ~Loopback() {
        client->shutdown();
        server->shutdown();
    }
};

// Cross-thread submission: an 8-byte send awaited (sync_wait) on the benchmark thread is
// queued to the client's progress thread, posted there, and the waiting thread is woken.
void BM_CrossThreadSendRoundTrip(benchmark::State& state) {
    Loopback lb(static_cast<btsp::ProgressMode>(state.range(0)));
    if (!lb.ok) {
        state.SkipWithError("loopback connection failed");
        return;
    }
    char buf[8] = {};
    for (auto _ : state) {
        auto r = btsp::sync_wait(lb.client->tag_send(buf, sizeof buf, 99));
        if (!r) {
            state.SkipWithError("send failed");
            break;
        }
    }
}
BENCHMARK(BM_CrossThreadSendRoundTrip)
    ->Arg(static_cast<int>(btsp::ProgressMode::POLLING))
    ->Arg(static_cast<int>(btsp::ProgressMode::ADAPTIVE))
    ->Arg(static_cast<int>(btsp::ProgressMode::BLOCKING))
    ->ArgName("mode(0=poll,1=block,2=adaptive)")
    ->UseRealTime();

// For contrast: the same send awaited inside a coroutine already on the progress thread
// (the fast path: posted to UCX directly; an eager send does not suspend).
RdmaTask<bool> on_thread_send_loop(benchmark::State& s, CoroutineRdmaManager& m) {
    char buf[8] = {};
    const btsp::RdmaOpResult first = co_await m.tag_send(buf, sizeof buf, 99);
    if (!first) co_return false;  // hop to the progress thread
    for (auto _ : s) {
        const btsp::RdmaOpResult res = co_await m.tag_send(buf, sizeof buf, 99);
        if (!res) co_return false;
    }
    co_return true;
}

void BM_OnThreadSend(benchmark::State& state) {
    Loopback lb(btsp::ProgressMode::ADAPTIVE);
    if (!lb.ok) {
        state.SkipWithError("loopback connection failed");
        return;
    }
    if (!btsp::sync_wait(on_thread_send_loop(state, *lb.client))) state.SkipWithError("send failed");
}
BENCHMARK(BM_OnThreadSend)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
