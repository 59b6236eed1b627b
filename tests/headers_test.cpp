// Every public header compiles on its own: CMake generates one translation unit per
// header (tests/CMakeLists.txt, headers/<name>.cpp in the build tree) that includes it
// first — twice, to check the include guard — and registers its name here. This test
// checks that every header found under include/ was compiled that way.
#include "public_headers.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {
std::set<std::string>& registry() {
    static std::set<std::string> r;
    return r;
}
std::mutex& registry_mutex() {
    static std::mutex m;
    return m;
}
}  // namespace

// Called from the static initialisers of the generated translation units.
bool btsp_test_register_header(const char* name) {
    std::lock_guard<std::mutex> lock(registry_mutex());
    registry().insert(name);
    return true;
}

namespace {

std::vector<std::string> expected_headers() {
    std::vector<std::string> out;
    std::istringstream in(BTSP_TEST_PUBLIC_HEADERS);  // ';'-separated, from CMake
    std::string item;
    while (std::getline(in, item, ';'))
        if (!item.empty()) out.push_back(item);
    return out;
}

TEST(Headers, EveryPublicHeaderCompilesOnItsOwn) {
    const auto expected = expected_headers();
    ASSERT_FALSE(expected.empty());
    for (const char* must : {"btsp/btsp.hpp", "btsp/manager.hpp", "btsp/task.hpp",
                             "btsp/types.hpp", "btsp/options.hpp", "btsp/log.hpp",
                             "rpc/coroutine_rdma_manager.hpp"}) {
        EXPECT_NE(std::find(expected.begin(), expected.end(), must), expected.end()) << must;
    }
    std::lock_guard<std::mutex> lock(registry_mutex());
    for (const auto& h : expected) EXPECT_EQ(registry().count(h), 1u) << h << " not compiled alone";
}

}  // namespace
