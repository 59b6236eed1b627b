#!/usr/bin/env bash
# Instructions per 8-byte message, btsp against raw UCP, counted by valgrind (callgrind):
# a measure of the library's per-operation cost that this noisy, shared machine cannot
# blur (wall-clock ratios move 3x between minutes here; instruction counts do not).
#
# One side of a `btsp-perf -t rate` stream (the sender or the receiver) runs under
# callgrind, the other natively. The instrumented side is ~50x slower than its peer, so it
# never waits for it: every instruction it executes is work for messages. Each
# measurement runs N1 and N2 messages and reports (I(N2) - I(N1)) / (N2 - N1), which
# cancels start-up, connection set-up and teardown. What remains variable: how often the
# receiver finds a message already there (UCX's unexpected path costs more than a match
# against a posted receive), so compare btsp and raw from the same run.
#
# Usage: bench/instructions_per_message.sh [BTSP_PERF_BINARY]   (default build/bin/btsp-perf)
# Needs valgrind. Takes about two minutes (BTSP_INSTR_REPS=3 runs per point).
set -euo pipefail

BIN=${1:-build/bin/btsp-perf}
N1=${BTSP_INSTR_N1:-20000}
N2=${BTSP_INSTR_N2:-120000}
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
[ -x "$BIN" ] || { echo "no btsp-perf at $BIN (build first)" >&2; exit 2; }

work=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port_base=$((20000 + $$ % 20000))
run=0

# instructions SIDE IMPL N -> total Ir of the instrumented process
instructions() {
    local side=$1 impl=$2 n=$3 raw=()
    [ "$impl" = raw ] && raw=(--raw)
    run=$((run + 1))
    local port=$((port_base + run)) out="$work/cg.$run"
    local vg=(valgrind --tool=callgrind --callgrind-out-file="$out")
    if [ "$side" = sender ]; then
        "$BIN" "${raw[@]}" -p "$port" >"$work/server.log" 2>&1 &
        server_pid=$!
        sleep 0.5
        timeout 600 "${vg[@]}" "$BIN" "${raw[@]}" 127.0.0.1 -p "$port" -t rate -s 8 -n "$n" --warmup 1000 \
            --no-pin >"$work/client.log" 2>&1
        wait "$server_pid" 2>/dev/null || true
    else
        timeout 600 "${vg[@]}" "$BIN" "${raw[@]}" -p "$port" >"$work/server.log" 2>&1 &
        server_pid=$!
        sleep 1  # the client retries refused connects for 10 s while valgrind starts the server
        "$BIN" "${raw[@]}" 127.0.0.1 -p "$port" -t rate -s 8 -n "$n" --warmup 1000 --no-pin \
            >"$work/client.log" 2>&1
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=
    grep -q "Mmsg/s" "$work/client.log" || { echo "run failed:" >&2; cat "$work/client.log" >&2; exit 1; }
    awk '/^summary:/ {print $2}' "$out"
}

# Waiting (a progress loop spinning while start-up or the peer is slow) only adds
# instructions: take the least of REPS runs at each length.
REPS=${BTSP_INSTR_REPS:-3}
least() {
    local best= v i
    for ((i = 0; i < REPS; i++)); do
        v=$(instructions "$@")
        if [ -z "$best" ] || [ "$v" -lt "$best" ]; then best=$v; fi
    done
    echo "$best"
}

per_message() {
    local a b
    a=$(least "$1" "$2" "$N1")
    b=$(least "$1" "$2" "$N2")
    echo $(((b - a) / (N2 - N1)))
}

printf "# instructions per 8 B message (callgrind), %s\n" "$BIN"
printf "%-9s %8s %8s %8s\n" side btsp raw "btsp-raw"
for side in sender receiver; do
    l=$(per_message "$side" lib)
    r=$(per_message "$side" raw)
    printf "%-9s %8d %8d %8d\n" "$side" "$l" "$r" $((l - r))
done
