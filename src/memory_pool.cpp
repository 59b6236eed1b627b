#include <btsp/log.hpp>
#include <btsp/manager.hpp>
#include <btsp/memory_pool.hpp>

#include <ucp/api/ucp.h>

#include <sys/mman.h>

#include <bit>

namespace btsp {

RdmaMemoryPool::RdmaMemoryPool() : RdmaMemoryPool(MemoryPoolOptions{}) {}

RdmaMemoryPool::RdmaMemoryPool(const MemoryPoolOptions& options) : opts_(options) {
    opts_.min_block = std::bit_ceil(std::max<std::size_t>(opts_.min_block, 64));
    opts_.max_block = std::bit_ceil(std::max(opts_.max_block, opts_.min_block));
}

RdmaMemoryPool::RdmaMemoryPool(CoroutineRdmaManager& manager, const MemoryPoolOptions& options)
    : RdmaMemoryPool(options) {
    context_ = manager.ucx_context_shared();
    if (context_ == nullptr) BTSP_LOG_WARN("RdmaMemoryPool: manager not initialized; memory is not registered");
}

RdmaMemoryPool::~RdmaMemoryPool() { release_all(); }

int RdmaMemoryPool::class_of(std::size_t size) const noexcept {
    if (size == 0 || size > opts_.max_block) return -1;
    const std::size_t block = std::max(std::bit_ceil(size), opts_.min_block);
    const int cls = std::countr_zero(block) - std::countr_zero(opts_.min_block);
    return cls < kMaxClasses ? cls : -1;
}

// Maps one slab for `cls` (with UCX when there is a context: one registration for all its
// blocks) and puts its blocks on the free list. Called with the class lock held.
bool RdmaMemoryPool::grow(int cls) {
    const std::size_t block = opts_.min_block << cls;
    const std::size_t bytes = std::max(block, opts_.slab_bytes);
    {
        std::lock_guard<std::mutex> lock(index_mutex_);
        if (stats_.reserved_bytes + bytes > opts_.max_total_bytes) return false;
    }
    Slab slab;
    slab.bytes = bytes;
    if (context_ != nullptr) {
        ucp_mem_map_params_t mp{};
        mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS;
        mp.length = bytes;
        mp.flags = UCP_MEM_MAP_ALLOCATE;  // UCX allocates: best memory for its transports
        if (ucp_mem_map(context_.get(), &mp, &slab.memh) == UCS_OK) {
            ucp_mem_attr_t attr{};
            attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
            if (ucp_mem_query(slab.memh, &attr) == UCS_OK) {
                slab.base = static_cast<char*>(attr.address);
                slab.mapped_by_ucx = true;
            } else {
                ucp_mem_unmap(context_.get(), slab.memh);
                slab.memh = nullptr;
            }
        }
        if (!slab.mapped_by_ucx) BTSP_LOG_WARN("RdmaMemoryPool: ucp_mem_map of %zu bytes failed; using plain memory", bytes);
    }
    if (slab.base == nullptr) {
        void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return false;
        slab.base = static_cast<char*>(p);
    }
    std::lock_guard<std::mutex> lock(index_mutex_);
    const auto slab_index = static_cast<std::uint32_t>(slabs_.size());
    slabs_.push_back(slab);
    stats_.reserved_bytes += bytes;
    if (slab.mapped_by_ucx) ++stats_.registrations;
    std::vector<char*>& free = classes_[static_cast<std::size_t>(cls)].free;
    for (std::size_t off = 0; off + block <= bytes; off += block) {
        char* b = slab.base + off;
        blocks_.emplace(b, BlockInfo{static_cast<std::uint16_t>(cls), slab_index});
        free.push_back(b);
    }
    return true;
}

char* RdmaMemoryPool::allocate(std::size_t size) {
    const int cls = class_of(size);
    if (cls < 0) {
        std::lock_guard<std::mutex> lock(index_mutex_);
        ++stats_.failures;
        return nullptr;
    }
    SizeClass& sc = classes_[static_cast<std::size_t>(cls)];
    char* block = nullptr;
    bool reused = true;
    {
        std::lock_guard<std::mutex> lock(sc.mutex);
        if (sc.free.empty()) {
            reused = false;
            try {
                if (!grow(cls)) sc.free.clear();
            } catch (...) {
                sc.free.clear();
            }
        }
        if (!sc.free.empty()) {
            block = sc.free.back();
            sc.free.pop_back();
        }
    }
    std::lock_guard<std::mutex> lock(index_mutex_);
    if (block == nullptr) {
        ++stats_.failures;
        return nullptr;
    }
    ++stats_.allocations;
    if (reused) ++stats_.reuses;
    stats_.in_use_bytes += opts_.min_block << cls;
    return block;
}

void RdmaMemoryPool::deallocate(char* ptr) {
    if (ptr == nullptr) return;
    int cls = -1;
    {
        std::lock_guard<std::mutex> lock(index_mutex_);
        auto it = blocks_.find(ptr);
        if (it == blocks_.end()) {
            BTSP_LOG_WARN("RdmaMemoryPool::deallocate: %p is not a block of this pool; ignored", static_cast<void*>(ptr));
            return;
        }
        cls = it->second.size_class;
        stats_.in_use_bytes -= opts_.min_block << cls;
    }
    SizeClass& sc = classes_[static_cast<std::size_t>(cls)];
    std::lock_guard<std::mutex> lock(sc.mutex);
    sc.free.push_back(ptr);
}

std::size_t RdmaMemoryPool::block_size(const void* ptr) const {
    std::lock_guard<std::mutex> lock(index_mutex_);
    auto it = blocks_.find(ptr);
    return it == blocks_.end() ? 0 : opts_.min_block << it->second.size_class;
}

ucp_mem_h RdmaMemoryPool::memh(const void* ptr) const {
    std::lock_guard<std::mutex> lock(index_mutex_);
    auto it = blocks_.find(ptr);
    return it == blocks_.end() ? nullptr : slabs_[it->second.slab].memh;
}

MemoryPoolStats RdmaMemoryPool::stats() const {
    std::lock_guard<std::mutex> lock(index_mutex_);
    return stats_;
}

void RdmaMemoryPool::release_all() noexcept {
    std::lock_guard<std::mutex> lock(index_mutex_);
    if (stats_.in_use_bytes != 0)
        BTSP_LOG_WARN("RdmaMemoryPool destroyed with %zu bytes still in use", stats_.in_use_bytes);
    for (Slab& s : slabs_) {
        if (s.mapped_by_ucx) {
            ucp_mem_unmap(context_.get(), s.memh);
        } else {
            ::munmap(s.base, s.bytes);
        }
    }
    slabs_.clear();
    blocks_.clear();
}

}  // namespace btsp
