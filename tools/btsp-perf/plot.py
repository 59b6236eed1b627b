#!/usr/bin/env python3
"""Turn `btsp-perf --csv` output into PNG plots: btsp (ours) vs raw UCP.

    btsp-perf --loopback --compare -t lat,bw --sweep 8:16M --csv > sweep.csv
    btsp-perf --loopback --compare -t rate --windows 1,4,16,64,256,1024 --csv > rate.csv
    python3 tools/btsp-perf/plot.py sweep.csv rate.csv -o docs/img

Writes, for the data present: lat_vs_size.png (half round trip p50 and p99 against
message size), bw_vs_size.png (MiB/s against size), rate_vs_window.png (M msg/s
against operations in flight); each with the btsp/raw ratio underneath.
Needs matplotlib (Debian: apt-get install python3-matplotlib).
"""
import argparse
import csv
import os
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:  # pragma: no cover
    sys.exit("plot.py needs matplotlib (apt-get install python3-matplotlib)")

STYLE = {"btsp": dict(color="tab:blue", marker="o", label="btsp (coroutines)"),
         "raw": dict(color="tab:gray", marker="s", label="raw UCP")}


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def load(paths):
    rows = []
    for p in paths:
        with open(p, newline="") as f:
            lines = [l for l in f if l.strip() and not l.startswith("#")]
        rows += list(csv.DictReader(lines))
    return rows


def series(rows, test, impl, x, y, extra=None):
    pts = []
    for r in rows:
        if r["test"] != test or r["impl"] != impl:
            continue
        if extra and any(r[k] != v for k, v in extra.items()):
            continue
        xv, yv = num(r[x]), num(r[y])
        if xv is not None and yv is not None:
            pts.append((xv, yv))
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts]


def size_label(v, _pos=None):
    v = int(v)
    for unit, div in (("M", 1 << 20), ("K", 1 << 10)):
        if v >= div and v % div == 0:
            return f"{v // div}{unit}"
    return str(v)


def ratio(xa, ya, xb, yb):
    b = dict(zip(xb, yb))
    xs, rs = [], []
    for x, y in zip(xa, ya):
        if x in b and b[x]:
            xs.append(x)
            rs.append(y / b[x])
    return xs, rs


def figure(title, xlabel, ylabel, curves, ratio_label, ratio_target, out, xsize=True, logy=True):
    fig, (ax, axr) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1.2]})
    for impl, xs, ys, ls, lab in curves:
        st = dict(STYLE[impl])
        st["label"] = st["label"] + lab
        ax.plot(xs, ys, linestyle=ls, **st)
    ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    main = [c for c in curves if c[3] == "-"]
    ours = [c for c in main if c[0] == "btsp"]
    raw = [c for c in main if c[0] == "raw"]
    if ours and raw:
        xs, rs = ratio(ours[0][1], ours[0][2], raw[0][1], raw[0][2])
        axr.plot(xs, rs, color="tab:blue", marker="o")
        axr.axhline(1.0, color="black", linewidth=0.8)
        if ratio_target:
            axr.axhline(ratio_target, color="tab:red", linestyle="--", linewidth=0.8,
                        label=f"target {ratio_target}")
            axr.legend(loc="best", fontsize=8)
    axr.set_ylabel(ratio_label)
    axr.set_xlabel(xlabel)
    axr.grid(True, which="both", alpha=0.3)
    if xsize:
        axr.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(size_label))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print("wrote", out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", nargs="+", help="btsp-perf --csv output file(s)")
    ap.add_argument("-o", "--outdir", default=".", help="directory for the PNG files")
    ap.add_argument("--title", default="", help="suffix for the plot titles (e.g. the host)")
    a = ap.parse_args()
    rows = load(a.csv)
    os.makedirs(a.outdir, exist_ok=True)
    suffix = f" — {a.title}" if a.title else ""
    made = 0

    if any(r["test"] == "lat" for r in rows):
        curves = []
        for impl in ("btsp", "raw"):
            xs, ys = series(rows, "lat", impl, "size", "p50_us")
            if xs:
                curves.append((impl, xs, ys, "-", " p50"))
            xs, ys = series(rows, "lat", impl, "size", "p99_us")
            if xs:
                curves.append((impl, xs, ys, ":", " p99"))
        if curves:
            figure("Tag ping-pong latency (half round trip)" + suffix, "message size (bytes)",
                   "latency (µs)", curves, "btsp / raw\n(p50)", 1.15,
                   os.path.join(a.outdir, "lat_vs_size.png"))
            made += 1

    if any(r["test"] == "bw" for r in rows):
        curves = []
        for impl in ("btsp", "raw"):
            xs, ys = series(rows, "bw", impl, "size", "MiBps")
            if xs:
                curves.append((impl, xs, ys, "-", ""))
        if curves:
            figure("Streaming bandwidth" + suffix, "message size (bytes)", "MiB/s", curves,
                   "btsp / raw", 0.95, os.path.join(a.outdir, "bw_vs_size.png"))
            made += 1

    rate = [r for r in rows if r["test"] == "rate"]
    if rate and len({r["window"] for r in rate}) > 1:
        curves = []
        for impl in ("btsp", "raw"):
            xs, ys = series(rows, "rate", impl, "window", "Mmsgps")
            if xs:
                curves.append((impl, xs, ys, "-", ""))
        if curves:
            figure("Message rate (8 B) against operations in flight" + suffix,
                   "coroutines / operations in flight", "M messages/s", curves, "btsp / raw", 0.75,
                   os.path.join(a.outdir, "rate_vs_window.png"), xsize=False, logy=False)
            made += 1

    if not made:
        sys.exit("no lat/bw/rate data found in " + ", ".join(a.csv))


if __name__ == "__main__":
    main()
