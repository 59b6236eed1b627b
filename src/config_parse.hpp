// Parsing of configuration text that comes from the environment (UCX_TLS lists).
#pragma once

#include <string_view>

namespace btsp::detail {

/// True if a UCX_TLS-style list ("tcp,sysv", "^ib", "all", "") can select a shared-memory
/// transport; UCX rejects MM_ERROR_HANDLING=y when it cannot.
bool tls_list_allows_shm(std::string_view tls) noexcept;

}  // namespace btsp::detail
