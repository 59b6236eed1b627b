// btsp — umbrella header: the whole public API.
#pragma once

#include <btsp/batch.hpp>
#include <btsp/connection_pool.hpp>
#include <btsp/log.hpp>
#include <btsp/manager.hpp>
#include <btsp/memory_pool.hpp>
#include <btsp/metrics.hpp>
#include <btsp/metrics_server.hpp>
#include <btsp/monitor.hpp>
#include <btsp/options.hpp>
#include <btsp/task.hpp>
#include <btsp/timeout.hpp>
#include <btsp/types.hpp>
#include <btsp/when_all.hpp>
