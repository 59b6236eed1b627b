#include "config_parse.hpp"

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

}  // namespace btsp::detail
