// btsp — pools of memory registered with UCX once (the spec's RdmaMemoryPool / RdmaBufferPool).
#pragma once

#include <ucp/api/ucp_def.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace btsp {

class CoroutineRdmaManager;

/// Options of a memory pool.
struct MemoryPoolOptions {
    std::size_t min_block = 4096;             ///< smallest size class (power of two)
    std::size_t max_block = 64u << 20;        ///< largest size class; larger requests fail
    std::size_t slab_bytes = 4u << 20;        ///< memory mapped at once for small classes
    std::size_t max_total_bytes = 1u << 30;   ///< growth bound over all classes
};

/// Statistics of a pool.
struct MemoryPoolStats {
    std::size_t reserved_bytes = 0;    ///< mapped so far
    std::size_t in_use_bytes = 0;      ///< handed out now (block sizes)
    std::uint64_t allocations = 0;     ///< successful allocate() calls
    std::uint64_t reuses = 0;          ///< of which served from a free list
    std::uint64_t failures = 0;        ///< refused: too large or over max_total_bytes
    std::uint64_t registrations = 0;   ///< ucp_mem_map calls (one per slab)
};

/// Memory for transfers, registered with a manager's UCX context once per slab (never per
/// operation) and reused. Requests are rounded up to a power-of-two size class; allocate()
/// and deallocate() are O(1) and thread-safe (a lock per size class). Growth is bounded
/// by max_total_bytes. Constructed without a manager (the spec's default constructor) it
/// pools plain page-aligned memory. Pass memh(ptr) to an operation with
/// RdmaAwaitable::memory() so UCX uses the existing registration.
class RdmaMemoryPool {
public:
    RdmaMemoryPool();
    explicit RdmaMemoryPool(const MemoryPoolOptions& options);
    /// `manager` must be initialized; the pool keeps its UCX context alive (it may outlive
    /// the manager and its shutdown()).
    explicit RdmaMemoryPool(CoroutineRdmaManager& manager, const MemoryPoolOptions& options = {});
    ~RdmaMemoryPool();
    RdmaMemoryPool(const RdmaMemoryPool&) = delete;
    RdmaMemoryPool& operator=(const RdmaMemoryPool&) = delete;

    /// A block of at least `size` bytes, or nullptr (size 0, too large, or pool full).
    char* allocate(std::size_t size);
    /// Returns a block from allocate(); nullptr and foreign pointers are ignored (logged).
    void deallocate(char* ptr);
    /// Usable size of a block from allocate() (its size class), 0 if unknown.
    [[nodiscard]] std::size_t block_size(const void* ptr) const;
    /// UCX memory handle covering `ptr` (a block from allocate()), or nullptr.
    [[nodiscard]] ucp_mem_h memh(const void* ptr) const;
    [[nodiscard]] MemoryPoolStats stats() const;
    [[nodiscard]] const MemoryPoolOptions& options() const noexcept { return opts_; }

private:
    struct Slab {
        char* base = nullptr;
        std::size_t bytes = 0;
        ucp_mem_h memh = nullptr;
        bool mapped_by_ucx = false;
    };
    struct BlockInfo {
        std::uint16_t size_class;
        std::uint32_t slab;
    };
    struct SizeClass {
        std::mutex mutex;
        std::vector<char*> free;  // LIFO: warm blocks first
    };
    static constexpr int kMaxClasses = 40;

    int class_of(std::size_t size) const noexcept;
    bool grow(int cls);
    void release_all() noexcept;

    MemoryPoolOptions opts_;
    std::shared_ptr<ucp_context> context_;  // kept alive while the pool has registrations
    std::array<SizeClass, kMaxClasses> classes_;
    mutable std::mutex index_mutex_;           // slabs_, blocks_, counters
    std::vector<Slab> slabs_;
    std::unordered_map<const void*, BlockInfo> blocks_;
    MemoryPoolStats stats_;
};

/// The spec's RdmaBufferPool (预分配缓冲区): get_buffer(size) from a pool, release_buffer()
/// to give it back. A thin face over RdmaMemoryPool.
class RdmaBufferPool {
public:
    RdmaBufferPool() = default;
    explicit RdmaBufferPool(CoroutineRdmaManager& manager, const MemoryPoolOptions& options = {})
        : pool_(manager, options) {}
    /// A buffer of at least `size` bytes, or nullptr.
    char* get_buffer(std::size_t size) { return pool_.allocate(size); }
    void release_buffer(char* buffer) { pool_.deallocate(buffer); }
    RdmaMemoryPool& pool() noexcept { return pool_; }

private:
    RdmaMemoryPool pool_;
};

}  // namespace btsp
