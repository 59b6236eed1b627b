#!/bin/bash
# ucx_perftest reference numbers for docs/performance.md: PEER error handling with shared
# memory (UCX_MM_ERROR_HANDLING=y, -e), two processes pinned to cores 0 and 1, loopback.
# Endpoints come from exchanged worker addresses (what btsp does between btsp peers).
#   tools/btsp-perf/perftest_baseline.sh [REPEAT]      (default 5)
# Prints the median of REPEAT runs for: tag_lat 8 B (typical half round trip, us),
# tag_bw 1 MiB (MiB/s), tag_bw 8 B (M msg/s).
# The shared-memory FIFO gets btsp's default depth (ManagerOptions::shm_fifo_size, 256),
# as btsp-perf's raw baseline does; SHM_FIFO=64 (UCX's default) or any power of two
# overrides it. A UCX_MM_FIFO_SIZE already in the environment is kept.
set -u
REPEAT=${1:-5}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
export UCX_MM_ERROR_HANDLING=y
export UCX_MM_FIFO_SIZE=${UCX_MM_FIFO_SIZE:-${SHM_FIFO:-256}}

run() {  # test size iters -> "Final:" line of the client
    local port=$((20000 + RANDOM % 20000))
    timeout 120 taskset -c "$SERVER_CPU" ucx_perftest -p "$port" -e >/dev/null 2>&1 &
    local spid=$!
    sleep 0.5
    timeout 120 taskset -c "$CLIENT_CPU" ucx_perftest 127.0.0.1 -p "$port" -e -t "$1" -s "$2" -n "$3" 2>/dev/null |
        awk '/^Final:/ {print}'
    wait "$spid" 2>/dev/null
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

lat=(); bw=(); rate=()
for i in $(seq "$REPEAT"); do
    lat+=("$(run tag_lat 8 100000 | awk '{print $3}')")
    bw+=("$(run tag_bw 1048576 5000 | awk '{print $7}')")
    rate+=("$(run tag_bw 8 2000000 | awk '{printf "%.3f\n", $9/1e6}')")
done
echo "ucx_perftest -e, UCX_MM_ERROR_HANDLING=y, UCX_MM_FIFO_SIZE=$UCX_MM_FIFO_SIZE, cpus $SERVER_CPU/$CLIENT_CPU, median of $REPEAT runs"
echo "tag_lat 8 B typical half round trip (us): $(printf '%s\n' "${lat[@]}" | median)   runs: ${lat[*]}"
echo "tag_bw 1 MiB (MiB/s):                     $(printf '%s\n' "${bw[@]}" | median)   runs: ${bw[*]}"
echo "tag_bw 8 B message rate (M msg/s):        $(printf '%s\n' "${rate[@]}" | median)   runs: ${rate[*]}"
