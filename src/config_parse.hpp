// Configuration that comes from the environment: UCX_TLS lists, UCX variables that the
// library's own UCX defaults must not override.
#pragma once

#include <string_view>

namespace btsp::detail {

/// True if a UCX_TLS-style list ("tcp,sysv", "^ib", "all", "") can select a shared-memory
/// transport; UCX rejects MM_ERROR_HANDLING=y when it cannot.
bool tls_list_allows_shm(std::string_view tls) noexcept;

/// True if the environment sets the shared-memory FIFO depth itself (UCX_MM_FIFO_SIZE,
/// UCX_POSIX_FIFO_SIZE or UCX_SYSV_FIFO_SIZE); ManagerOptions::shm_fifo_size then yields.
bool shm_fifo_set_by_env() noexcept;

}  // namespace btsp::detail
