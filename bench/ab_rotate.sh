#!/usr/bin/env bash
# Compares builds of btsp-perf on this noisy machine: runs each binary once per round, in
# an order rotated every round, plus one raw-UCP run per round (with the first binary) to
# tell quiet rounds from busy ones. Prints every round, then per binary the median of its
# per-round ratio against the first binary and how many rounds it was better in, over all
# rounds and split by regime, and each binary's best quartile of runs (the fast mode).
#
# Usage: bench/ab_rotate.sh [-t rate|lat] [-r ROUNDS] [-n N] [-q THRESHOLD] [-c] BASELINE OTHER...
#   -t rate  8 B stream, 64 in flight, 500 000 messages, M msg/s (higher is better; default)
#   -t lat   8 B ping-pong, 20 000 round trips, p50 half round trip in us (lower is better)
#   -n       messages (rate) or round trips (lat) per run. Short runs (-n 300000 / 5000)
#            and many rounds resolve smaller differences: the host's regime then rarely
#            changes inside a round
#   -q       raw result that separates quiet from busy rounds (default 14 M msg/s for rate,
#            0.3 us for lat)
#   -c       control: also run a copy of BASELINE (same options) as the last binary, so the
#            same rounds show how far two identical binaries differ (an A/A pair)
# Example: build the change into another build dir, then
#   bench/ab_rotate.sh -r 60 build-perf-base/bin/btsp-perf build-perf/bin/btsp-perf
# or, to compare two settings of one binary (options in the same word):
#   bench/ab_rotate.sh -t lat -n 5000 -r 150 "build-perf/bin/btsp-perf --recv-poll 0" build-perf/bin/btsp-perf
# Each "better in k/n" comes with a two-sided sign-test p value, but do not trust it alone:
# an A/A set (one binary against a copy of itself, -r 150 -n 300000) gave p = 0.0024. The
# fast-mode quartiles agreed within ~2 % between identical binaries; differences of a few
# percent need ~150 rounds and a second set (docs/performance.md, "The floor of this design").
set -euo pipefail

test=rate rounds=40 threshold= iters= control=0
while getopts "t:r:n:q:c" o; do
    case $o in
        c) control=1 ;;
        t) test=$OPTARG ;;
        r) rounds=$OPTARG ;;
        n) iters=$OPTARG ;;
        q) threshold=$OPTARG ;;
        *) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 2 ] || { awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 2; }
case $iters in ''|*[!0-9]*) [ -z "$iters" ] || { echo "-n wants a count" >&2; exit 2; } ;; esac
case $test in
    rate) threshold=${threshold:-14} iters=${iters:-500000} ;;
    lat) threshold=${threshold:-0.3} iters=${iters:-20000} ;;
    *) echo "-t rate or -t lat" >&2; exit 2 ;;
esac
# Each BASELINE/OTHER is a binary, optionally followed by its options in the same word
# ("build-perf/bin/btsp-perf --recv-poll 0"; paths without spaces).
bins=()
for spec in "$@"; do
    read -ra words <<<"$spec"
    b=${words[0]}
    [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }
    bins+=("$(cd "$(dirname "$b")" && pwd)/$(basename "$b")${words[1]:+ ${words[*]:1}}")
done
tmpdir=$(mktemp -d)
trap 'rm -rf "$tmpdir"' EXIT
if [ "$control" = 1 ]; then
    read -ra words <<<"${bins[0]}"
    cp "${words[0]}" "$tmpdir/control-copy"
    bins+=("$tmpdir/control-copy${words[1]:+ ${words[*]:1}}")
fi
n=${#bins[@]}

# One measurement: prints the number, or nothing if the run failed.
measure() {
    local out
    if [ "$test" = rate ]; then
        out=$(timeout 120 "$@" --loopback -t rate -s 8 -n "$iters" 2>/dev/null) || true
        awk '/ (btsp|raw) \|/ {print $NF}' <<<"$out"
    else
        out=$(timeout 120 "$@" --loopback -t lat -s 8 -n "$iters" 2>/dev/null) || true
        awk '/ (btsp|raw) \|/ {for (i = 1; i <= NF; i++) if ($i == "|") {print $(i + 1); exit}}' <<<"$out"
    fi
}

log=$tmpdir/log
: >"$log"
for ((round = 1; round <= rounds; round++)); do
    declare -a res=()
    for ((k = 0; k < n; k++)); do
        j=$(((k + round) % n))
        # shellcheck disable=SC2086  # a binary and its options
        res[j]=$(measure ${bins[j]})
    done
    # shellcheck disable=SC2086
    line="round $round raw=$(measure ${bins[0]%% *} --raw)"
    for ((k = 0; k < n; k++)); do line+=" b$k=${res[k]:-}"; done
    echo "$line" | tee -a "$log"
done

python3 - "$log" "$test" "$threshold" "${bins[@]}" <<'EOF'
import math, re, statistics as st, sys
log, test, thr, bins = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
higher = test == "rate"
rows = []
for line in open(log):
    d = dict(re.findall(r"(\S+)=([\d.]+)", line))
    if "raw" in d and all(f"b{k}" in d for k in range(len(bins))):
        rows.append({k: float(v) for k, v in d.items()})
print(f"\n{len(rows)} complete rounds; {'M msg/s' if higher else 'p50 us'}; ratio = binary / b0 per round")
for k, b in enumerate(bins):
    print(f"  b{k} = {b}")
def sign_test(k, n):
    # Two-sided exact binomial test of k successes in n against p = 1/2.
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)
def summary(rs, name):
    if not rs:
        return
    print(f"{name}: {len(rs)} rounds")
    for k in range(len(bins)):
        vals = [r[f"b{k}"] for r in rs]
        to_raw = st.median(r[f"b{k}"] / r["raw"] for r in rs)
        line = f"  b{k}: median {st.median(vals):.3f}, against raw {to_raw:.3f}"
        if k:
            ratios = [r[f"b{k}"] / r["b0"] for r in rs]
            better = sum((x > 1) if higher else (x < 1) for x in ratios)
            line += (f"; per-round ratio to b0: median {st.median(ratios):.3f}, better in {better}/{len(rs)}"
                     f" (sign test p = {sign_test(better, len(rs)):.2g})")
        print(line)
summary(rows, "all")
quiet = [r for r in rows if (r["raw"] > thr if higher else r["raw"] < thr)]
summary(quiet, f"quiet rounds (raw {'>' if higher else '<'} {thr:g})")
summary([r for r in rows if r not in quiet], "busy rounds")
# Runs are bimodal, and each run lands in its mode independently of the raw run of its
# round (docs/performance.md, "Noise"), so the split above misfiles many runs. The best
# quarter of each binary's runs estimates its speed in the fast mode.
def quartile(vals):
    vals = sorted(vals)
    q = 0.75 if higher else 0.25
    i = (len(vals) - 1) * q
    lo = int(i)
    return vals[lo] + (vals[min(lo + 1, len(vals) - 1)] - vals[lo]) * (i - lo)
if rows:
    raw_q = quartile([r["raw"] for r in rows])
    print(f"fast mode (each binary's {'upper' if higher else 'lower'} quartile over all rounds): raw {raw_q:.3f}")
    base_q = quartile([r["b0"] for r in rows])
    for k in range(len(bins)):
        q = quartile([r[f"b{k}"] for r in rows])
        print(f"  b{k}: {q:.3f}, against raw {q / raw_q:.3f}" + (f", against b0 {q / base_q:.3f}" if k else ""))
EOF
