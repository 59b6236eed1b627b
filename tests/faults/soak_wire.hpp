// Wire vocabulary shared by the fault tests and btsp_fault_peer: tags and the soak header.
#pragma once

#include <cstddef>
#include <cstdint>

namespace btsp_fault {

/// Requests carry upper 32 bits 1, echoes upper 32 bits 2 (same low 32 bits), so a
/// masked receive never matches btsp's own control tags (0xB75FC0DE_xxxxxxxx).
constexpr std::uint64_t kUpperMask = 0xffffffff00000000ull;
constexpr std::uint64_t kRequestTag = 0x0000000100000000ull;
constexpr std::uint64_t kReplyTag = 0x0000000200000000ull;

constexpr std::uint32_t kSoakMagic = 0x50414b53;  // "SKAP"

/// Header at the front of every soak message; the payload follows.
struct SoakHeader {
    std::uint32_t magic;
    std::uint32_t client;
    std::uint32_t lane;
    std::uint32_t pad;
    std::uint64_t seq;
    std::uint64_t length;    // payload bytes after the header
    std::uint64_t checksum;  // FNV-1a 64 of the payload
};

inline std::uint64_t fnv1a(const void* data, std::size_t n) {
    const auto* p = static_cast<const std::uint8_t*>(data);
    std::uint64_t h = 1469598103934665603ull;
    for (std::size_t i = 0; i < n; ++i) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

}  // namespace btsp_fault
