#!/usr/bin/env bash
# The quick start: install what is missing, build (RelWithDebInfo) and run the loopback
# demo. Extra arguments go to btsp_demo, e.g. ./scripts/demo.sh --mode polling
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD_DIR="${BUILD_DIR:-build}"
JOBS="${JOBS:-2}"

echo "==> dependencies"
"$ROOT/scripts/deps.sh"

echo "==> configure + build ($BUILD_DIR, RelWithDebInfo)"
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j"$JOBS" --target btsp_demo

echo "==> $BUILD_DIR/bin/btsp_demo $*"
exec "$BUILD_DIR/bin/btsp_demo" "$@"
