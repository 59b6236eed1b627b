// Pooled, UCX-registered buffers vs a fresh malloc per message, for large transfers.
// Two managers on loopback in one process; both variants alternate in one run.
//   pool_bench [size_bytes=16777216] [messages=40] [rounds=3]
#include <btsp/btsp.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

using namespace btsp;
using Clock = std::chrono::steady_clock;

namespace {

RdmaTask<RdmaOpResult> recv_one(CoroutineRdmaManager* m, char* buf, std::size_t n, ucp_mem_h h) {
    const RdmaOpResult r = co_await m->tag_recv(buf, n, 9).memory(h);
    co_return r;
}

// Seconds per message for `n` transfers of `size` bytes.
double run(CoroutineRdmaManager& cli, CoroutineRdmaManager& srv, RdmaMemoryPool* spool, RdmaMemoryPool* rpool,
           std::size_t size, int n) {
    const auto t0 = Clock::now();
    for (int i = 0; i < n; ++i) {
        char* a = spool ? spool->allocate(size) : static_cast<char*>(std::malloc(size));
        char* b = rpool ? rpool->allocate(size) : static_cast<char*>(std::malloc(size));
        if (a == nullptr || b == nullptr) std::exit(2);
        std::memset(a, i, size);  // the application fills the message
        auto rt = recv_one(&srv, b, size, rpool ? rpool->memh(b) : nullptr);
        const RdmaOpResult s = sync_wait(cli.tag_send(a, size, 9).memory(spool ? spool->memh(a) : nullptr));
        const RdmaOpResult r = sync_wait(std::move(rt));
        if (!s || !r || b[size - 1] != static_cast<char>(i)) {
            std::fprintf(stderr, "transfer failed\n");
            std::exit(1);
        }
        if (spool) spool->deallocate(a); else std::free(a);
        if (rpool) rpool->deallocate(b); else std::free(b);
    }
    return std::chrono::duration<double>(Clock::now() - t0).count() / n;
}

}  // namespace

int main(int argc, char** argv) {
    const std::size_t size = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : (16u << 20);
    const int n = argc > 2 ? std::atoi(argv[2]) : 40;
    const int rounds = argc > 3 ? std::atoi(argv[3]) : 3;
    CoroutineRdmaManager srv, cli;
    if (!srv.initialize(true, 0) || !cli.initialize(false, 0)) return 1;
    if (!sync_wait(cli.connect("127.0.0.1", srv.listening_port()))) return 1;
    sync_wait(srv.wait_for_connection());
    RdmaMemoryPool spool(cli), rpool(srv);
    std::vector<double> fresh, pooled;
    for (int r = 0; r < rounds; ++r) {  // alternate, so both see the same machine
        fresh.push_back(run(cli, srv, nullptr, nullptr, size, n));
        pooled.push_back(run(cli, srv, &spool, &rpool, size, n));
    }
    std::sort(fresh.begin(), fresh.end());
    std::sort(pooled.begin(), pooled.end());
    const double f = fresh[fresh.size() / 2], p = pooled[pooled.size() / 2];
    const auto st = spool.stats();
    std::printf("message %zu B, %d messages x %d rounds (median round)\n", size, n, rounds);
    std::printf("  fresh malloc per message: %8.3f ms/msg  %8.1f MiB/s\n", f * 1e3, size / f / 1048576.0);
    std::printf("  RdmaMemoryPool:           %8.3f ms/msg  %8.1f MiB/s\n", p * 1e3, size / p / 1048576.0);
    std::printf("  speed-up: %.2fx   (pool: %llu allocations, %llu reused, %llu registrations)\n", f / p,
                static_cast<unsigned long long>(st.allocations), static_cast<unsigned long long>(st.reuses),
                static_cast<unsigned long long>(st.registrations));
    return 0;
}
