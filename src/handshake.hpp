// Control messages of the btsp connection handshake (worker-address exchange).
//
// Between two btsp peers the sockaddr endpoint only carries this handshake; data moves
// to endpoints created from each other's worker address (the lanes ucx_perftest -e
// gets: shared memory on one host, the fastest transports elsewhere). A plain UCP peer
// never answers, and the connection stays on the sockaddr endpoint.
//
//   server → client  OFFER  {token, server worker address}   on the sockaddr endpoint
//   client → server  ACCEPT {token, client worker address}   on the sockaddr endpoint
//   either → other   BYE    {token}                          on the worker-address endpoint
//   either → other   PING   {token}   every heartbeat_interval on the worker-address endpoint
//
// BYE exists because closing a worker-address endpoint tells the peer nothing (only
// sockaddr endpoints carry a disconnect): it is sent before a connection is closed.
// PING exists because a silent network cut or a frozen peer is invisible to UCX on tcp
// (its own keepalive traffic keeps TCP's keepalive from ever starting): a peer not heard
// from within peer_timeout is declared gone.
//
// Both are UCX tag messages with reserved tags (kTagOffer, kTagAccept). Layout, all
// integers little-endian: magic u32 'BTSP', version u16, type u16, token u64,
// address length u32, address bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace btsp::detail {

inline constexpr std::uint64_t kReservedTagPrefix = 0xB75FC0DE00000000ull;
inline constexpr std::uint64_t kReservedTagMask = 0xFFFFFFFF00000000ull;
inline constexpr std::uint64_t kTagOffer = kReservedTagPrefix | 1;
inline constexpr std::uint64_t kTagAccept = kReservedTagPrefix | 2;
inline constexpr std::uint64_t kTagBye = kReservedTagPrefix | 3;
inline constexpr std::uint64_t kTagPing = kReservedTagPrefix | 4;

inline constexpr std::uint32_t kCtrlMagic = 0x50535442;  // "BTSP"
inline constexpr std::uint16_t kCtrlVersion = 1;
inline constexpr std::size_t kCtrlHeaderSize = 4 + 2 + 2 + 8 + 4;
/// Largest worker address we accept (UCX addresses are hundreds of bytes to a few KiB).
inline constexpr std::size_t kMaxWorkerAddress = 60 * 1024;
/// Receive buffer size for a control message.
inline constexpr std::size_t kCtrlBufferSize = kCtrlHeaderSize + kMaxWorkerAddress;

enum class CtrlType : std::uint16_t { OFFER = 1, ACCEPT = 2, BYE = 3, PING = 4 };

/// True for the control messages that carry a worker address.
constexpr bool carries_address(CtrlType t) noexcept { return t == CtrlType::OFFER || t == CtrlType::ACCEPT; }

struct CtrlMessage {
    CtrlType type = CtrlType::OFFER;
    std::uint64_t token = 0;
    const std::uint8_t* address = nullptr;  // points into the parsed buffer
    std::size_t address_length = 0;
};

/// Serialises a control message (BYE carries no address). Returns false if the address
/// is too large.
bool encode_ctrl(CtrlType type, std::uint64_t token, const void* address, std::size_t length,
                 std::vector<std::uint8_t>& out);

/// Parses bytes received from the network. Returns false for anything malformed
/// (short, wrong magic/version/type, length mismatch); never reads past `size`.
bool decode_ctrl(const std::uint8_t* data, std::size_t size, CtrlMessage& out) noexcept;

/// True for tags the library reserves for itself.
constexpr bool is_reserved_tag(std::uint64_t tag) noexcept {
    return (tag & kReservedTagMask) == kReservedTagPrefix;
}

}  // namespace btsp::detail
