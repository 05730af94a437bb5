#!/usr/bin/env python3
"""Turns the raw results of scripts/bench.sh into BENCHMARKS.md's table.

Reads the JSON lines bench.sh recorded (one per run: the row, the
repetition, the exact command, nudge-bench's or seed_txn.py's JSON line and
bench.sh's own measurements), the Go benchmark output and the machine's
description, and rewrites the section of BENCHMARKS.md between
<!-- bench:begin --> and <!-- bench:end --> (appended at the end when the
markers are missing). Every figure is the median of the repetitions with
[min..max]. Python standard library only.
"""
import argparse
import json
import re
import statistics
import sys
from collections import defaultdict

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
GETDECISION = "nudge.v1.DecisionService/GetDecision"


def med(xs):
    """Median [min..max] of xs as numbers, or None when empty."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return statistics.median(xs), min(xs), max(xs)


def fmt_num(v, digits=0):
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def fmt_range(m, unit="", digits=0, scale=1.0):
    """'**median unit** [min..max]' (one run: no range)."""
    if m is None:
        return "n/a"
    mid, lo, hi = (x * scale for x in m)
    s = f"**{fmt_num(mid, digits)}{unit}**"
    if lo != hi:
        s += f" [{fmt_num(lo, digits)}..{fmt_num(hi, digits)}]"
    return s


def result(data, name):
    """The workload result called name in a nudge-bench JSON line."""
    for r in (data or {}).get("results", []):
        if r.get("name") == name:
            return r
    return None


def hist_quantile(q, before, after, method=GETDECISION):
    """q-quantile in seconds of the histogram buckets' growth between two
    scrapes, interpolated linearly within a bucket as Prometheus's
    histogram_quantile does; None without observations."""
    def buckets(lines):
        acc = defaultdict(float)
        for line in lines:
            m = re.match(r'^\S+\{(.*)\}\s+(\S+)$', line)
            if not m or f'rpc_method="{method}"' not in m.group(1):
                continue
            le = re.search(r'le="([^"]+)"', m.group(1))
            if le:
                acc[float(le.group(1))] += float(m.group(2))
        return acc
    b0, b1 = buckets(before or []), buckets(after or [])
    bounds = sorted(b1)
    cum = [(le, b1[le] - b0.get(le, 0.0)) for le in bounds]
    if not cum or cum[-1][1] <= 0:
        return None
    total = cum[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in cum:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def gobench(lines):
    """name -> {ns/op: [...], B/op: [...], allocs/op: [...]} over the runs."""
    out = defaultdict(lambda: defaultdict(list))
    pkg = ""
    for line in lines:
        if line.startswith("pkg: "):
            pkg = line.split("/")[-1].strip()
            continue
        f = line.split()
        if not f or not f[0].startswith("Benchmark") or len(f) < 4:
            continue
        name = re.sub(r"-\d+$", "", f[0])
        for i in range(2, len(f) - 1, 2):
            out[(pkg, name)][f[i + 1]].append(float(f[i]))
    return out


def build(meta, recs, golines):
    rows = defaultdict(list)  # row -> records in rep order
    for r in recs:
        rows[r["row"]].append(r)
    cmds = {}
    for name, rs in rows.items():
        cmds[name] = rs[0]["cmd"]

    def vals(row, f):
        out = []
        for r in rows.get(row, []):
            try:
                out.append(f(r))
            except (KeyError, TypeError, ZeroDivisionError, AttributeError):
                pass
        return [v for v in out if v is not None]

    table = []  # (what, workload, figure, target, met)

    def add(what, workload, figure, target="—", met="—"):
        table.append((what, workload, figure, target, met))

    def eps(row, name):
        return vals(row, lambda r: result(r["data"], name)["events_per_sec"])

    zipf = med(eps("ingest-zipf", "ingest"))
    uni = med(eps("ingest-uniform", "ingest"))
    zipf_p99 = med(vals("ingest-zipf", lambda r: result(r["data"], "ingest")["latency_us"]["p99"]))
    add("Ingest, Zipf users (s=1.1), events/s", "`ingest-zipf`",
        fmt_range(zipf) + (f"; batch p99 {fmt_range(zipf_p99, ' ms', 1, 1e-3)}" if zipf_p99 else ""),
        "≥ 50,000 events/s", ("yes" if zipf and zipf[0] >= 50000 else "**no**") if zipf else "n/a")
    add("Ingest, uniform users, events/s", "`ingest-uniform`", fmt_range(uni))
    checks = vals("ingest-zipf", lambda r: r["data"]["ok"]) + vals("ingest-uniform", lambda r: r["data"]["ok"])
    nruns = len(rows.get("ingest-zipf", [])) + len(rows.get("ingest-uniform", []))
    add("Ingest exactly once (`--verify`: every event applied once, view totals in Redis grew by the events)",
        "`ingest-zipf`, `ingest-uniform`", f"{sum(1 for c in checks if c)} of {nruns} runs verified",
        "all", "yes" if nruns and sum(1 for c in checks if c) == nruns else "**no**")
    for dist in ("zipf", "uniform"):
        row = "ingest-" + dist
        bpp = med(vals(row, lambda r: (r["used_memory_after"] - r["used_memory_before"]) / r["profiles"]))
        nprof = med(vals(row, lambda r: r["profiles"]))
        add(f"Redis memory per profile after ingest ({dist}): `used_memory` growth / profile keys (outbox included)",
            f"`{row}`", fmt_range(bpp, " B") + (f" over {fmt_num(nprof[0])} profiles" if nprof else ""),
            "< 1 KiB", ("yes" if bpp[0] < 1024 else "**no**") if bpp else "n/a")
    for dist in ("zipf", "uniform"):
        row = "ingest-" + dist
        rss = med(vals(row, lambda r: r["nudged_vm_hwm_kb"] / 1024))
        add(f"nudged peak RSS during ingest ({dist}, VmHWM of a fresh nudged)", f"`{row}`", fmt_range(rss, " MiB", 1),
            "< 200 MiB", ("yes" if rss[0] < 200 else "**no**") if rss else "n/a")

    for row, label in (("seed-py-1", "Seed pattern in Python, 1 process"),
                       ("seed-py-2", "Seed pattern in Python, 2 processes"),
                       ("peer-watch-zipf", "Per-event WATCH in Go (go-redis), c=64, Zipf users"),
                       ("peer-watch-uniform", "Per-event WATCH in Go (go-redis), c=64, uniform users")):
        if row.startswith("seed"):
            v = med(vals(row, lambda r: r["data"]["events_per_sec"]))
            extra = ""
        else:
            v = med(eps(row, "peer-watch"))
            p99 = med(vals(row, lambda r: result(r["data"], "peer-watch")["latency_us"]["p99"]))
            retries = med(vals(row, lambda r: r["data"]["txn"]["retries"]))
            failed = med(vals(row, lambda r: r["data"]["txn"]["failed"]))
            ok = vals(row, lambda r: r["data"]["ok"])
            extra = (f"; p99 {fmt_range(p99, ' ms', 1, 1e-3)}, retries {fmt_range(retries)}, "
                     f"failed {fmt_range(failed)}, counts verified in {sum(ok)} of {len(rows.get(row, []))}")
        ratio = f"; nudge's Zipf ingest is **{zipf[0] / v[0]:.1f}×** this" if v and zipf and v[0] > 0 else ""
        add(label + ", events/s", f"`{row}`", fmt_range(v) + extra + ratio)

    def lat(row, name, q):
        return vals(row, lambda r: result(r["data"], name)["latency_us"][q])
    for q in ("p50", "p99"):
        d, f = med(lat("decide-floor", "decide", q)), med(lat("decide-floor", "floor", q))
        ratio = med(vals("decide-floor", lambda r: r["data"]["floor_ratio"][q]))
        met = ("yes" if ratio[0] <= 1.5 else "**no**") if ratio else "n/a"
        add(f"GetDecision {q} at 5,000/s vs floor (health check + one GET)", "`decide-floor`",
            f"decide {fmt_range(d, ' µs')}, floor {fmt_range(f, ' µs')}: ratio {fmt_range(ratio, '×', 2)}",
            "≤ 1.5×", met)
    srv = med(vals("decide-floor", lambda r: hist_quantile(0.99, r["metrics_before"], r["metrics_after"])))
    add("GetDecision p99 as the server measures it (`rpc_server_call_duration_seconds`, /metrics delta)",
        "`decide-floor`", fmt_range(srv, " µs", 0, 1e6),
        "< 1 ms", ("yes" if srv[0] < 1e-3 else "**no**") if srv else "n/a")
    deg = med(vals("decide-floor", lambda r: result(r["data"], "decide")["degraded"]))
    add("Degraded decisions during the decide phases", "`decide-floor`", fmt_range(deg))
    mx = med(vals("decide-max", lambda r: result(r["data"], "decide")["ops_per_sec"]))
    mx_p99 = med(vals("decide-max", lambda r: result(r["data"], "decide")["latency_us"]["p99"]))
    add("Max sustainable decisions/s (16 callers, closed loop)", "`decide-max`",
        fmt_range(mx) + (f"; p99 {fmt_range(mx_p99, ' ms', 2, 1e-3)}" if mx_p99 else ""))

    a50, a99 = med(lat("actions", "actions", "p50")), med(lat("actions", "actions", "p99"))
    a999, amax = med(lat("actions", "actions", "p999")), med(lat("actions", "actions", "max"))
    add("Event → action p50 (event sent to action at a subscriber), 10,000 events/s", "`actions`",
        fmt_range(a50, " ms", 1, 1e-3))
    add("Event → action p99", "`actions`",
        fmt_range(a99, " ms", 1, 1e-3) + f"; p999 {fmt_range(a999, ' ms', 1, 1e-3)}, max {fmt_range(amax, ' ms', 1, 1e-3)}",
        "< 20 ms", ("yes" if a99[0] < 20000 else "**no**") if a99 else "n/a")
    fired = vals("actions", lambda r: r["data"]["actions"]["fired"])
    recv = vals("actions", lambda r: r["data"]["actions"]["received"])
    blocks = vals("actions", lambda r: r["data"]["actions"]["blocks"])
    allok = bool(fired) and all(r == f == b for r, f, b in zip(recv, fired, blocks))
    add("Actions delivered (received / fired / built to fire), per run", "`actions`",
        ", ".join(f"{r:,}/{f:,}/{b:,}" for r, f, b in zip(recv, fired, blocks)) or "n/a",
        "all", "yes" if allok else "**no**")

    t50, t99 = med(lat("timers", "timer-lateness", "p50")), med(lat("timers", "timer-lateness", "p99"))
    add("Journey timers: lateness p50 (fired minus due), 10,000 due/s while ingesting 5,000 views/s", "`timers`",
        fmt_range(t50, " ms", 1, 1e-3))
    add("Journey timers: lateness p99", "`timers`", fmt_range(t99, " ms", 1, 1e-3),
        "< 1 s", ("yes" if t99[0] < 1e6 else "**no**") if t99 else "n/a")
    trate = med(vals("timers", lambda r: r["data"]["timers"]["fire_rate"]))
    tfired = vals("timers", lambda r: r["data"]["timers"]["fired"])
    tsched = vals("timers", lambda r: r["data"]["timers"]["scheduled"])
    tall = vals("timers", lambda r: r["data"]["timers"]["timers"])
    tok = bool(tfired) and all(f == s == a for f, s, a in zip(tfired, tsched, tall))
    add("Journey timers fired/s (fired / scheduled / sent, per run)", "`timers`",
        fmt_range(trate) + "; " + (", ".join(f"{f:,}/{s:,}/{a:,}" for f, s, a in zip(tfired, tsched, tall)) or "n/a"),
        "≥ 10,000/s due, all fired", "yes" if tok and trate and trate[0] >= 9500 else "**no**")
    tbytes = med(vals("timers", lambda r: r["data"]["timers"].get("bytes_per_timer", 0)))
    tpend = med(vals("timers", lambda r: r["data"]["timers"].get("pending_users", 0)))
    add(f"Redis bytes per pending timer at {fmt_num(tpend[0]) if tpend else 'n/a'} pending "
        "(due index + profile share; 14-byte user and event ids; fewer pending cost more each)", "`timers`",
        fmt_range(tbytes, " B", 1), "≤ 100 B", ("yes" if tbytes[0] <= 100 else "**no**") if tbytes else "n/a")

    gb = gobench(golines)
    for (pkg, name), m in sorted(gb.items()):
        fig = ", ".join(x for x in (
            fmt_range(med(m.get("ns/op", [])), " ns/op") if m.get("ns/op") else "",
            fmt_range(med(m.get("B/op", [])), " B/op") if m.get("B/op") else "",
            fmt_range(med(m.get("allocs/op", [])), " allocs/op") if m.get("allocs/op") else "") if x)
        add(f"`{name}` ({pkg}, pure)", "`go-bench`", fig)

    other = {}
    for name, rs in rows.items():
        xs = [r["other_cores"] for r in rs if isinstance(r.get("other_cores"), (int, float))]
        if xs:
            other[name] = max(xs)
    return table, cmds, other


def render(meta, table, cmds, other):
    label = " (QUICK run: 1 repetition, short runs; not the standard figures)" if meta.get("quick") else ""
    out = [BEGIN, "",
           f"## Standard set (`make bench`), {meta['date'][:10]}{label}", "",
           "Generated by `make bench` (scripts/bench.sh, scripts/benchtable.py); do not edit by hand. "
           f"Medians of {meta['reps']} run(s) with [min..max]. nudged, redis-server "
           "(`--save '' --appendonly no`, loopback) and the load generator share the machine; "
           "runs are sequential; Redis is flushed and nudged restarted before each ingest and actions run.", "",
           f"- Machine: {meta['nproc']} cores, {meta['cpu']}, {meta['kernel']}",
           f"- Versions: {meta['go']}; {meta['redis']}",
           f"- Code: `{meta['git_describe']}` (commit {meta['git_commit']})",
           f"- Run: {meta['date']} to {meta['end']}",
           "- Other load (CPU used by anything but nudged, redis-server and the load generators, "
           "in cores, the worst run of each workload): "
           + (", ".join(f"{k} {v:.2f}" for k, v in other.items()) or "not measured"), "",
           "Commands (`$NUDGED`, `$REDIS`: the loopback addresses of the nudged and redis-server the script starts):", "",
           "```sh"]
    for name, cmd in cmds.items():
        out.append(f"# {name}" + (": writes the profiles decide-floor and decide-max read" if name == "seed" else ""))
        out.append(cmd)
    out += ["```", "",
            "| what | workload | figure (median [min..max]) | target | met? |",
            "| --- | --- | --- | --- | --- |"]
    for row in table:
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    out += ["", END]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meta", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--gobench", required=True)
    ap.add_argument("--out", required=True, help="the Markdown file to rewrite (its section only)")
    args = ap.parse_args()
    meta = json.load(open(args.meta))
    recs = [json.loads(l) for l in open(args.results) if l.strip()]
    golines = open(args.gobench).read().splitlines()
    table, cmds, other = build(meta, recs, golines)
    section = render(meta, table, cmds, other)
    doc = open(args.out).read()
    i, j = doc.find(BEGIN), doc.find(END)
    if i >= 0 and j > i:
        doc = doc[:i] + section + doc[j + len(END):].lstrip("\n")
    else:
        doc = doc.rstrip("\n") + "\n\n" + section
    open(args.out, "w").write(doc)
    sys.stdout.write(section)


if __name__ == "__main__":
    main()
