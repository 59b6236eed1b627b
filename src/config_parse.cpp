#include "config_parse.hpp"

#include <cstdlib>

namespace btsp::detail {

bool tls_list_allows_shm(std::string_view tls) noexcept {
    if (tls.empty() || tls.front() == '^') return true;  // exclusion list or default
    while (!tls.empty()) {
        const auto comma = tls.find(',');
        const std::string_view item = tls.substr(0, comma);
        for (std::string_view name : {"all", "sm", "shm", "sysv", "posix", "mm"})
            if (item == name) return true;
        if (comma == std::string_view::npos) break;
        tls.remove_prefix(comma + 1);
    }
    return false;
}

bool shm_fifo_set_by_env() noexcept {
    for (const char* name : {"UCX_MM_FIFO_SIZE", "UCX_POSIX_FIFO_SIZE", "UCX_SYSV_FIFO_SIZE"})
        if (std::getenv(name) != nullptr) return true;
    return false;
}

}  // namespace btsp::detail
