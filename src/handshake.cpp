#include "handshake.hpp"

#include <cstring>

namespace btsp::detail {
namespace {

void put(std::vector<std::uint8_t>& out, std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

std::uint64_t get(const std::uint8_t* p, int bytes) noexcept {
    std::uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
    return v;
}

}  // namespace

bool encode_ctrl(CtrlType type, std::uint64_t token, const void* address, std::size_t length,
                 std::vector<std::uint8_t>& out) {
    if (length > kMaxWorkerAddress) return false;
    out.clear();
    out.reserve(kCtrlHeaderSize + length);
    put(out, kCtrlMagic, 4);
    put(out, kCtrlVersion, 2);
    put(out, static_cast<std::uint16_t>(type), 2);
    put(out, token, 8);
    put(out, length, 4);
    const auto* a = static_cast<const std::uint8_t*>(address);
    out.insert(out.end(), a, a + length);
    return true;
}

bool decode_ctrl(const std::uint8_t* data, std::size_t size, CtrlMessage& out) noexcept {
    if (data == nullptr || size < kCtrlHeaderSize) return false;
    if (get(data, 4) != kCtrlMagic) return false;
    if (get(data + 4, 2) != kCtrlVersion) return false;
    const auto type = get(data + 6, 2);
    if (type < static_cast<std::uint16_t>(CtrlType::OFFER) || type > static_cast<std::uint16_t>(CtrlType::PING))
        return false;
    const std::uint64_t length = get(data + 16, 4);
    if (length > kMaxWorkerAddress || length != size - kCtrlHeaderSize) return false;
    if (carries_address(static_cast<CtrlType>(type)) != (length != 0)) return false;
    out.type = static_cast<CtrlType>(type);
    out.token = get(data + 8, 8);
    out.address = data + kCtrlHeaderSize;
    out.address_length = static_cast<std::size_t>(length);
    return true;
}

}  // namespace btsp::detail
