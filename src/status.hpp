// The one mapping from UCX status codes to RdmaResult.
#pragma once

#include <btsp/types.hpp>

#include <ucs/type/status.h>

namespace btsp::detail {

/// True for statuses that mean "the connection is gone" (refused, rejected, reset,
/// timed out at the transport level, unreachable).
bool is_connection_loss(ucs_status_t status) noexcept;

/// RdmaResult for a UCX status: OK → SUCCESS, connection loss → DISCONNECTED,
/// CANCELED → CANCELLED, everything else → FAILURE.
RdmaResult map_status(ucs_status_t status) noexcept;

}  // namespace btsp::detail
