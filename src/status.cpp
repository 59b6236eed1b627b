#include "status.hpp"

namespace btsp::detail {

bool is_connection_loss(ucs_status_t status) noexcept {
    switch (status) {
        case UCS_ERR_NOT_CONNECTED:
        case UCS_ERR_REJECTED:
        case UCS_ERR_CONNECTION_RESET:
        case UCS_ERR_ENDPOINT_TIMEOUT:
        case UCS_ERR_UNREACHABLE:
        case UCS_ERR_TIMED_OUT:
        case UCS_ERR_IO_ERROR:
            return true;
        default:
            return false;
    }
}

RdmaResult map_status(ucs_status_t status) noexcept {
    if (status == UCS_OK) return RdmaResult::SUCCESS;
    if (status == UCS_ERR_CANCELED) return RdmaResult::CANCELLED;
    if (is_connection_loss(status)) return RdmaResult::DISCONNECTED;
    return RdmaResult::FAILURE;
}

}  // namespace btsp::detail
