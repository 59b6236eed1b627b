// btsp — batch_send (the spec's 批量操作优化), sending concurrently as its comment says.
#pragma once

#include <btsp/manager.hpp>
#include <btsp/when_all.hpp>

#include <cstdint>
#include <utility>
#include <vector>

namespace btsp {

/// Sends data_list[i] with tag base_tag + i, all at once (every send is posted before any
/// is awaited), and returns one RdmaOpResult per message, in order. The buffers must stay
/// valid until the returned task completes.
inline RdmaTask<std::vector<RdmaOpResult>> batch_send(CoroutineRdmaManager& manager,
                                                      const std::vector<std::pair<void*, std::size_t>>& data_list,
                                                      std::uint64_t base_tag) {
    std::vector<RdmaAwaitable> sends;
    sends.reserve(data_list.size());
    for (std::size_t i = 0; i < data_list.size(); ++i)
        sends.push_back(manager.tag_send(data_list[i].first, data_list[i].second, base_tag + i));
    co_return co_await when_all(std::move(sends));
}

/// The receiving side: posts every receive at once (buffer i for tag base_tag + i).
inline RdmaTask<std::vector<RdmaOpResult>> batch_recv(CoroutineRdmaManager& manager,
                                                      const std::vector<std::pair<void*, std::size_t>>& buffers,
                                                      std::uint64_t base_tag) {
    std::vector<RdmaAwaitable> recvs;
    recvs.reserve(buffers.size());
    for (std::size_t i = 0; i < buffers.size(); ++i)
        recvs.push_back(manager.tag_recv(buffers[i].first, buffers[i].second, base_tag + i));
    co_return co_await when_all(std::move(recvs));
}

}  // namespace btsp
