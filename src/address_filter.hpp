// Server admission: which client addresses may connect (exact addresses or CIDR blocks).
#pragma once

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace btsp::detail {

class AddressFilter {
public:
    /// Parses entries like "127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8". Returns false
    /// (with the offending entry in `error`) if one is malformed. An empty list allows all.
    bool parse(const std::vector<std::string>& entries, std::string& error);
    /// True if `sa` (AF_INET or AF_INET6; IPv4-mapped IPv6 counts as IPv4) is allowed.
    bool allows(const sockaddr* sa) const noexcept;
    bool empty() const noexcept { return rules_.empty(); }

    /// Parses one entry; exposed for the fuzz target.
    static bool parse_entry(std::string_view text, int& family, std::array<std::uint8_t, 16>& addr,
                            int& prefix) noexcept;

private:
    struct Rule {
        int family;
        std::array<std::uint8_t, 16> addr;
        int prefix;
    };
    std::vector<Rule> rules_;
};

}  // namespace btsp::detail
