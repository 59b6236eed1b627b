#!/usr/bin/env bash
# Instructions per 8-byte message, btsp against raw UCP, counted by valgrind (callgrind):
# a measure of the library's per-operation cost that this noisy, shared machine cannot
# blur (wall-clock ratios move 3x between minutes here; instruction counts do not).
#
# One side of a `btsp-perf -t rate` stream (the sender or the receiver) is counted by
# callgrind. Each measurement runs N1 and N2 messages and reports
# (I(N2) - I(N1)) / (N2 - N1), which cancels start-up, connection set-up and teardown.
# The counted side must never wait for its peer (waiting is progress calls on an empty
# FIFO, which would count as instructions), and must take the path it takes natively:
# - senders, and the raw and bare receivers, run against a native peer: instrumented,
#   they are ~50x slower than it and never wait. The raw and bare receivers re-post all
#   their receives before each progress call, so they match posted receives, as natively.
#   Their servers busy-poll while they wait for a command, for as long as the client
#   takes to start and finish, which varies by 100+ instructions per message between
#   runs; so only what runs inside their stream function is counted (--toggle-collect).
#   The btsp server sleeps while it waits and is counted whole.
# - the btsp receiver runs against a peer under callgrind too (its counts are thrown
#   away). Against a native sender two thirds of its messages would arrive before their
#   receive is posted (UCX's unexpected path, where the receive completes inside its own
#   co_await), which a native run almost never does; with both sides instrumented, >99 %
#   of its receives are posted first, as natively, and it is still the slower side.
#
# Columns: btsp; raw UCP; for the receiver also "bare", raw UCP whose receives are awaited
# by bare coroutines (btsp-perf --raw-coro: the floor of a coroutine per message).
#
# Usage: bench/instructions_per_message.sh [BTSP_PERF_BINARY]   (default build/bin/btsp-perf)
# Needs valgrind. Takes about four minutes (BTSP_INSTR_REPS=2 runs per point).
set -euo pipefail

BIN=${1:-build/bin/btsp-perf}
N1=${BTSP_INSTR_N1:-20000}
N2=${BTSP_INSTR_N2:-100000}
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

# instructions SIDE IMPL N -> total Ir of the instrumented process (IMPL: lib, raw, bare)
instructions() {
    local side=$1 impl=$2 n=$3 cli=() srv=()
    case $impl in
        raw) cli=(--raw) srv=(--raw) ;;
        bare) cli=(--raw) srv=(--raw --raw-coro) ;;
    esac
    run=$((run + 1))
    local port=$((port_base + run)) out="$work/cg.$run"
    local counted=(valgrind --tool=callgrind --callgrind-out-file="$out")
    case $side/$impl in
        receiver/raw) counted+=(--toggle-collect='*RawServer::serve_stream(*') ;;
        receiver/bare) counted+=(--toggle-collect='*RawServer::serve_stream_bare(*') ;;
    esac
    local peer=()  # the other side runs natively, except against the btsp receiver (above)
    [ "$side/$impl" = receiver/lib ] && peer=(valgrind --tool=callgrind --callgrind-out-file="$work/peer.$run")
    local server_vg=("${peer[@]}") client_vg=("${counted[@]}")
    if [ "$side" = receiver ]; then server_vg=("${counted[@]}") client_vg=("${peer[@]}"); fi
    timeout 900 "${server_vg[@]}" "$BIN" "${srv[@]}" -p "$port" >"$work/server.log" 2>&1 &
    server_pid=$!
    sleep 1  # the client retries refused connects for 10 s while valgrind starts the server
    timeout 900 "${client_vg[@]}" "$BIN" "${cli[@]}" 127.0.0.1 -p "$port" -t rate -s 8 -n "$n" --warmup 1000 \
        --no-pin >"$work/client.log" 2>&1
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    grep -q "Mmsg/s" "$work/client.log" || { echo "run failed:" >&2; cat "$work/client.log" >&2; exit 1; }
    awk '/^summary:/ {print $2}' "$out"
}

# Waiting (a progress loop spinning while start-up or the peer is slow) only adds
# instructions: take the least of REPS runs at each length.
REPS=${BTSP_INSTR_REPS:-2}
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
printf "%-9s %8s %8s %8s %9s\n" side btsp raw bare "btsp-raw"
for side in sender receiver; do
    l=$(per_message "$side" lib)
    r=$(per_message "$side" raw)
    b=-
    [ "$side" = receiver ] && b=$(per_message "$side" bare)
    printf "%-9s %8d %8d %8s %9d\n" "$side" "$l" "$r" "$b" $((l - r))
done
