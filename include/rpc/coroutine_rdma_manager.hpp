// The spec's include path. Everything lives in namespace btsp; see <btsp/btsp.hpp>.
#pragma once

#include <btsp/btsp.hpp>
