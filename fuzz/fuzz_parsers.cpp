// libFuzzer target over every parser of bytes that reach the library from the network or
// the environment: handshake/control messages, allowed_clients entries, BTSP_* option
// values, progress-mode and log-level names, UCX_TLS lists.
//
// The first input byte picks the parser; the rest is its input.
#include "address_filter.hpp"
#include "config_parse.hpp"
#include "handshake.hpp"

#include <btsp/log.hpp>
#include <btsp/options.hpp>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

void check(bool ok) {
    if (!ok) std::abort();
}

void fuzz_ctrl(const std::uint8_t* data, std::size_t size) {
    using namespace btsp::detail;
    CtrlMessage msg;
    if (decode_ctrl(data, size, msg)) {
        // Whatever parses must point inside the input and re-encode to the same bytes.
        check(msg.address_length == 0 || (msg.address >= data && msg.address + msg.address_length <= data + size));
        std::vector<std::uint8_t> again;
        check(encode_ctrl(msg.type, msg.token, msg.address, msg.address_length, again));
        check(again.size() == size && std::memcmp(again.data(), data, size) == 0);
    }
    // And every message we can build parses back.
    if (size >= 9) {
        std::uint64_t token = 0;
        std::memcpy(&token, data + 1, 8);
        const auto type = static_cast<CtrlType>(1 + data[0] % 4);
        const std::size_t alen = carries_address(type) ? size - 9 + 1 : 0;
        std::vector<std::uint8_t> addr(alen, 0x5A);
        std::vector<std::uint8_t> out;
        if (encode_ctrl(type, token, addr.data(), addr.size(), out)) {
            CtrlMessage m;
            check(decode_ctrl(out.data(), out.size(), m) && m.type == type && m.token == token &&
                  m.address_length == alen);
        }
    }
}

void fuzz_env(const std::uint8_t* data, std::size_t size) {
    static const char* const vars[] = {"BTSP_PROGRESS_MODE",    "BTSP_CONNECT_TIMEOUT_MS", "BTSP_ADAPTIVE_SPIN_US",
                                       "BTSP_HANDOFF_MS",       "BTSP_CLOSE_TIMEOUT_MS",   "BTSP_PROGRESS_CPU",
                                       "BTSP_FAST_PATH",        "BTSP_HANDSHAKE_GRACE_MS", "BTSP_KEEPALIVE_MS",
                                       "BTSP_HEARTBEAT_MS",     "BTSP_PEER_TIMEOUT_MS",    "BTSP_SHM_FIFO_SIZE",
                                       "BTSP_RECV_POLL"};
    if (size == 0) return;
    const char* var = vars[data[0] % (sizeof vars / sizeof vars[0])];
    std::string value(reinterpret_cast<const char*>(data + 1), size - 1);
    value = value.c_str();  // an environment value ends at the first NUL
    ::setenv(var, value.c_str(), 1);
    const btsp::ManagerOptions o = btsp::ManagerOptions::from_env();
    check(o.connect_timeout.count() >= 1 && o.progress_cpu >= -1 && o.peer_timeout.count() >= 1 &&
          o.shm_fifo_size <= (1u << 20));
    ::unsetenv(var);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const bool quiet = [] {
        btsp::set_log_level(btsp::LogLevel::OFF);
        return true;
    }();
    (void)quiet;
    if (size == 0) return 0;
    const std::uint8_t which = data[0];
    ++data;
    --size;
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    switch (which % 6) {
        case 0:
            fuzz_ctrl(data, size);
            break;
        case 1: {
            int family = 0;
            int prefix = 0;
            std::array<std::uint8_t, 16> addr{};
            if (btsp::detail::AddressFilter::parse_entry(text, family, addr, prefix))
                check((family == AF_INET && prefix <= 32) || (family == AF_INET6 && prefix <= 128));
            btsp::detail::AddressFilter f;
            std::string err;
            (void)f.parse({std::string(text)}, err);
            break;
        }
        case 2:
            fuzz_env(data, size);
            break;
        case 3: {
            btsp::ProgressMode m{};
            (void)btsp::parse_progress_mode(text, m);
            btsp::LogLevel l{};
            (void)btsp::parse_log_level(text, l);
            break;
        }
        case 4:
            (void)btsp::detail::tls_list_allows_shm(text);
            break;
        default:
            fuzz_ctrl(data, size);
            break;
    }
    return 0;
}
