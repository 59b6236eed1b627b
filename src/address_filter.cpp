#include "address_filter.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <charconv>
#include <cstring>

namespace btsp::detail {

bool AddressFilter::parse_entry(std::string_view text, int& family, std::array<std::uint8_t, 16>& addr,
                                int& prefix) noexcept {
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
    while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
    if (text.empty() || text.size() > 64) return false;
    std::string_view host = text;
    int bits = -1;
    if (const auto slash = text.find('/'); slash != std::string_view::npos) {
        host = text.substr(0, slash);
        const std::string_view p = text.substr(slash + 1);
        if (p.empty()) return false;
        auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), bits);
        if (ec != std::errc() || end != p.data() + p.size()) return false;
    }
    char buf[65];
    std::memcpy(buf, host.data(), host.size());
    buf[host.size()] = '\0';
    addr.fill(0);
    if (inet_pton(AF_INET, buf, addr.data()) == 1) {
        family = AF_INET;
        if (bits < 0) bits = 32;
        if (bits > 32) return false;
    } else if (inet_pton(AF_INET6, buf, addr.data()) == 1) {
        family = AF_INET6;
        if (bits < 0) bits = 128;
        if (bits > 128) return false;
    } else {
        return false;
    }
    prefix = bits;
    return true;
}

bool AddressFilter::parse(const std::vector<std::string>& entries, std::string& error) {
    rules_.clear();
    for (const std::string& e : entries) {
        Rule r{};
        if (!parse_entry(e, r.family, r.addr, r.prefix)) {
            error = "invalid allowed_clients entry '" + e + "'";
            rules_.clear();
            return false;
        }
        rules_.push_back(r);
    }
    return true;
}

namespace {
bool prefix_match(const std::uint8_t* a, const std::uint8_t* b, int bits) noexcept {
    const int bytes = bits / 8;
    if (std::memcmp(a, b, static_cast<std::size_t>(bytes)) != 0) return false;
    const int rest = bits % 8;
    if (rest == 0) return true;
    const auto mask = static_cast<std::uint8_t>(0xFF << (8 - rest));
    return (a[bytes] & mask) == (b[bytes] & mask);
}
}  // namespace

bool AddressFilter::allows(const sockaddr* sa) const noexcept {
    if (rules_.empty()) return true;
    if (sa == nullptr) return false;
    int family = sa->sa_family;
    const std::uint8_t* bytes = nullptr;
    if (family == AF_INET) {
        bytes = reinterpret_cast<const std::uint8_t*>(&reinterpret_cast<const sockaddr_in*>(sa)->sin_addr);
    } else if (family == AF_INET6) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
        bytes = reinterpret_cast<const std::uint8_t*>(&in6->sin6_addr);
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            family = AF_INET;
            bytes += 12;
        }
    } else {
        return false;
    }
    for (const Rule& r : rules_)
        if (r.family == family && prefix_match(bytes, r.addr.data(), r.prefix)) return true;
    return false;
}

}  // namespace btsp::detail
