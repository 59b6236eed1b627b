// btsp — when_all: await several tasks/awaitables that run concurrently.
#pragma once

#include <btsp/task.hpp>

#include <exception>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace btsp {

namespace detail {
template <typename A>
using when_all_value_t = std::conditional_t<std::is_void_v<await_result_t<A>>, std::monostate,
                                            std::remove_cvref_t<await_result_t<A>>>;

// Starts awaiting `a` right away (RdmaTask is eager), so that several of these run at once.
template <typename A>
RdmaTask<when_all_value_t<A>> start_one(A a) {
    if constexpr (std::is_void_v<await_result_t<A>>) {
        co_await std::move(a);
        co_return std::monostate{};
    } else {
        co_return co_await std::move(a);
    }
}
// Awaits the (already running) tasks of a tuple in order, storing their values.
template <std::size_t I, typename Tasks, typename Results>
RdmaTask<void> await_from(Tasks& tasks, Results& results, std::exception_ptr& first_error) {
    if constexpr (I < std::tuple_size_v<Tasks>) {
        try {
            std::get<I>(results) = co_await std::move(std::get<I>(tasks));
        } catch (...) {
            if (!first_error) first_error = std::current_exception();
        }
        co_await await_from<I + 1>(tasks, results, first_error);
    }
}
}  // namespace detail

/// Awaits every element of `awaitables` concurrently: all are started before any is
/// awaited (manager operations are posted together), and the result lists their values in
/// order (void results become std::monostate). If some throw, all still run to completion
/// and the first exception (in order) is rethrown.
template <typename A>
RdmaTask<std::vector<detail::when_all_value_t<A>>> when_all(std::vector<A> awaitables) {
    using V = detail::when_all_value_t<A>;
    std::vector<RdmaTask<V>> tasks;
    tasks.reserve(awaitables.size());
    for (auto& a : awaitables) tasks.push_back(detail::start_one<A>(std::move(a)));
    std::vector<V> results;
    results.reserve(tasks.size());
    std::exception_ptr first_error;
    for (auto& t : tasks) {
        try {
            results.push_back(co_await std::move(t));
        } catch (...) {
            if (!first_error) first_error = std::current_exception();
            results.emplace_back();
        }
    }
    if (first_error) std::rethrow_exception(first_error);
    co_return results;
}

/// Variadic form: `auto [r, s] = co_await when_all(m.tag_recv(...), m.tag_send(...));`
/// Same rules as the vector form; value types must be default-constructible.
template <typename... As>
RdmaTask<std::tuple<detail::when_all_value_t<As>...>> when_all(As... awaitables) {
    auto tasks = std::make_tuple(detail::start_one<As>(std::move(awaitables))...);
    std::tuple<detail::when_all_value_t<As>...> results;
    std::exception_ptr first_error;
    co_await detail::await_from<0>(tasks, results, first_error);
    if (first_error) std::rethrow_exception(first_error);
    co_return results;
}

}  // namespace btsp
