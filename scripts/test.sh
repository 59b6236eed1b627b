#!/usr/bin/env bash
# The whole suite:
#   1. dependencies (installs what is missing)
#   2. RelWithDebInfo build in build/ with -Werror, ctest
#   3. example programs (smoke runs, two processes on loopback)
#   4. install / package consumers (find_package and add_subdirectory)
#   5. ASan + UBSan build in build-asan/, ctest and the examples again
#   6. ThreadSanitizer build in build-tsan/, ctest
#   7. libFuzzer (clang) over every network/environment parser, 30 s on the corpus
# Exit code 0 only if every step passed. Environment: JOBS (default 2), SKIP_ASAN=1 /
# SKIP_TSAN=1 / SKIP_FUZZ=1 to skip steps, FUZZ_SECONDS (default 30), BUILD_DIR /
# ASAN_BUILD_DIR / TSAN_BUILD_DIR to build elsewhere. Sanitizer builds skip the tests
# labelled "faults" (long fault-injection runs; they run in step 2).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
JOBS="${JOBS:-2}"
BUILD_DIR="${BUILD_DIR:-build}"
ASAN_BUILD_DIR="${ASAN_BUILD_DIR:-build-asan}"
TSAN_BUILD_DIR="${TSAN_BUILD_DIR:-build-tsan}"
FUZZ_BUILD_DIR="${FUZZ_BUILD_DIR:-build-fuzz}"
FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
EXAMPLES="simple_coroutine_test coroutine_tag_matching_example coroutine_rdma_example btsp_demo"
START=$SECONDS
FAILED=()
PASSED=()
CTEST_LOGS="$(mktemp -d "${TMPDIR:-/tmp}/btsp-ctest.XXXXXX")"

section() { printf '\n==================== %s  [t+%ss] ====================\n' "$*" "$((SECONDS - START))"; }
pass() { PASSED+=("$1"); echo "---- PASS: $1"; }
fail() { FAILED+=("$1"); echo "---- FAIL: $1"; }
# Runs a command with a time limit; a hang counts as a failure.
limited() { local secs=$1; shift; timeout --kill-after=5 "$secs" "$@"; }
# ctest in build dir $1, logged as $2 (its summary and failures are repeated at the end).
run_ctest() {
  local dir=$1 name=$2 secs=$3; shift 3
  (cd "$dir" && limited "$secs" ctest --output-on-failure -j2 "$@") 2>&1 | tee "$CTEST_LOGS/$name.log"
}

# A free TCP port on 127.0.0.1 (for examples that take --port).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}

# ---- examples smoke: run every example once against the build in $1 ----------------
run_examples() {
  local bin="$1/bin" tag="$2" ok=1 port
  port="$(free_port)"
  echo "-- simple_coroutine_test receiver + sender (port $port)"
  limited 40 "$bin/simple_coroutine_test" receiver --port "$port" --timeout 30 & local rpid=$!
  limited 40 "$bin/simple_coroutine_test" sender --port "$port" || ok=0
  wait "$rpid" || ok=0
  echo "-- coroutine_tag_matching_example"
  limited 60 "$bin/coroutine_tag_matching_example" || ok=0
  echo "-- coroutine_rdma_example"
  limited 90 "$bin/coroutine_rdma_example" || ok=0
  echo "-- btsp_demo --iters 2000"
  limited 90 "$bin/btsp_demo" --iters 2000 || ok=0
  if [ "$ok" = 1 ]; then pass "examples ($tag)"; else fail "examples ($tag)"; fi
}

# ---- 1. dependencies ----------------------------------------------------------------
section "1. dependencies"
if "$ROOT/scripts/deps.sh"; then pass "dependencies"; else fail "dependencies"; echo "cannot continue"; exit 1; fi

# ---- 2. release build + ctest -------------------------------------------------------
section "2. build in $BUILD_DIR (RelWithDebInfo, -Werror) and ctest"
BUILD_OK=0
if cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBTSP_WERROR=ON \
      -DBTSP_BUILD_TESTS=ON -DBTSP_BUILD_EXAMPLES=ON \
   && cmake --build "$BUILD_DIR" -j"$JOBS"; then
  BUILD_OK=1; pass "build"
else
  fail "build"
fi
if [ "$BUILD_OK" = 1 ]; then
  if run_ctest "$BUILD_DIR" ctest 900; then pass "ctest"; else fail "ctest"; fi
fi

# ---- 3. examples --------------------------------------------------------------------
section "3. examples"
# Built on their own too, so a broken test target does not hide the examples' result.
if cmake --build "$BUILD_DIR" -j"$JOBS" --target $EXAMPLES; then
  run_examples "$BUILD_DIR" release
else
  fail "examples (build)"
fi

# ---- 4. install / package consumers ---------------------------------------------------
section "4. install + consumers (find_package, add_subdirectory)"
# `cmake --install` needs every installed target (library, tools) built.
if [ "$BUILD_OK" = 1 ]; then
  TMP="$(mktemp -d "${TMPDIR:-/tmp}/btsp-install.XXXXXX")"
  trap 'rm -rf "$TMP"' EXIT
  ok=1
  echo "-- cmake --install $BUILD_DIR --prefix $TMP/prefix"
  cmake --install "$BUILD_DIR" --prefix "$TMP/prefix" >/dev/null || ok=0
  echo "-- consumer 1: find_package(btsp CONFIG REQUIRED)"
  if [ "$ok" = 1 ] \
     && cmake -S tests/install -B "$TMP/find_package" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
          -DCMAKE_PREFIX_PATH="$TMP/prefix" >/dev/null \
     && cmake --build "$TMP/find_package" -j"$JOBS" \
     && limited 60 "$TMP/find_package/btsp_install_consumer" "$(free_port)"; then
    echo "consumer 1 OK"
  else
    ok=0; echo "consumer 1 FAILED"
  fi
  echo "-- consumer 2: add_subdirectory(<repo>)"
  if cmake -S tests/install/subdirectory -B "$TMP/subdirectory" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
          -DBTSP_SOURCE_DIR="$ROOT" >/dev/null \
     && cmake --build "$TMP/subdirectory" -j"$JOBS" \
     && limited 60 "$TMP/subdirectory/btsp_subdirectory_consumer" "$(free_port)"; then
    echo "consumer 2 OK"
  else
    ok=0; echo "consumer 2 FAILED"
  fi
  if [ "$ok" = 1 ]; then pass "install + consumers"; else fail "install + consumers"; fi
else
  fail "install + consumers (the build failed)"
fi

# ---- 5. ASan + UBSan ------------------------------------------------------------------
if [ "${SKIP_ASAN:-0}" != 1 ]; then
  section "5. ASan + UBSan build in $ASAN_BUILD_DIR, ctest, examples"
  # UCX's memory hooks and the sanitizers' allocator do not mix: UCX_MEM_EVENTS=no.
  export UCX_MEM_EVENTS=no
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=0"
  export LSAN_OPTIONS="suppressions=$ROOT/scripts/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  ASAN_OK=0
  if cmake -S "$ROOT" -B "$ASAN_BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBTSP_SANITIZE=address,undefined \
        -DBTSP_BUILD_TESTS=ON -DBTSP_BUILD_EXAMPLES=ON -DBTSP_BUILD_BENCH=OFF \
     && cmake --build "$ASAN_BUILD_DIR" -j"$JOBS"; then
    ASAN_OK=1; pass "asan build"
  else
    fail "asan build"
  fi
  if [ "$ASAN_OK" = 1 ]; then
    if run_ctest "$ASAN_BUILD_DIR" "asan ctest" 1200 -LE faults; then pass "asan ctest"; else fail "asan ctest"; fi
  fi
  if cmake --build "$ASAN_BUILD_DIR" -j"$JOBS" --target $EXAMPLES; then
    run_examples "$ASAN_BUILD_DIR" asan
  else
    fail "examples (asan build)"
  fi
fi

# ---- 6. ThreadSanitizer ------------------------------------------------------------------
if [ "${SKIP_TSAN:-0}" != 1 ]; then
  section "6. ThreadSanitizer build in $TSAN_BUILD_DIR, ctest"
  # UCX's memory hooks crash every process under TSan (field notes): UCX_MEM_EVENTS=no.
  # scripts/tsan.supp lists (and explains) the suppressions: all in UCX, libstdc++, asio.
  TSAN_OK=0
  if cmake -S "$ROOT" -B "$TSAN_BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBTSP_SANITIZE=thread \
        -DBTSP_BUILD_TESTS=ON -DBTSP_BUILD_EXAMPLES=ON -DBTSP_BUILD_BENCH=OFF \
     && cmake --build "$TSAN_BUILD_DIR" -j"$JOBS"; then
    TSAN_OK=1; pass "tsan build"
  else
    fail "tsan build"
  fi
  if [ "$TSAN_OK" = 1 ]; then
    if UCX_MEM_EVENTS=no TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$ROOT/scripts/tsan.supp" \
          run_ctest "$TSAN_BUILD_DIR" "tsan ctest" 1200 -LE faults; then
      pass "tsan ctest"
    else
      fail "tsan ctest"
    fi
  fi
fi

# ---- 7. fuzzing ---------------------------------------------------------------------------
if [ "${SKIP_FUZZ:-0}" != 1 ]; then
  section "7. libFuzzer over the parsers (${FUZZ_SECONDS} s)"
  if CXX=clang++ cmake -S "$ROOT" -B "$FUZZ_BUILD_DIR" -DBTSP_BUILD_FUZZ=ON -DBTSP_BUILD_TESTS=OFF \
        -DBTSP_BUILD_EXAMPLES=OFF -DBTSP_BUILD_BENCH=OFF >/dev/null \
     && cmake --build "$FUZZ_BUILD_DIR" -j"$JOBS" --target btsp_fuzz_parsers; then
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/btsp-fuzz.XXXXXX")"
    cp "$ROOT"/fuzz/corpus/parsers/* "$WORK"/
    if limited $((FUZZ_SECONDS + 60)) "$FUZZ_BUILD_DIR/bin/btsp_fuzz_parsers" "$WORK" \
          -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 2>&1 | tail -4; then
      pass "fuzz"
    else
      fail "fuzz"
    fi
    rm -rf "$WORK"
  else
    fail "fuzz build"
  fi
fi

# ---- summary ----------------------------------------------------------------------------
section "summary ($((SECONDS - START)) s)"
for p in "${PASSED[@]}"; do echo "  PASS  $p"; done
for f in "${FAILED[@]+"${FAILED[@]}"}"; do echo "  FAIL  $f"; done
# Each ctest's summary line, and the tests that failed (their output is above).
for log in "$CTEST_LOGS"/*.log; do
  [ -e "$log" ] || continue
  echo "  $(basename "$log" .log): $(grep -E 'tests passed|No tests were found' "$log" | tail -1)"
  sed -n '/The following tests FAILED/,/^Errors/p' "$log" | grep -E '^\s+[0-9]+ - ' | sed 's/^\s*/      failed: /'
done
rm -rf "$CTEST_LOGS"
if [ ${#FAILED[@]} -ne 0 ]; then
  echo "RESULT: FAILED (${#FAILED[@]} step(s))"
  exit 1
fi
echo "RESULT: all steps passed"
