#!/usr/bin/env python3
"""Turn scripts/bench-http.sh's measurements into JSON and a markdown table.

Input: a TSV of server, depth, requests/s, server CPU ticks, error notes, one
line per run; several rounds give several lines per server and depth, and the
table shows their medians (every run is kept in the JSON).
"""
import argparse
import datetime
import json
import os
import platform
import statistics


def machine() -> dict:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "host": platform.node(),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ["results", "json", "markdown", "command"]:
        p.add_argument(f"--{name}", required=True)
    for name in ["duration", "connections", "rounds", "server-cpu", "load-cpu", "clk-tck",
                 "idle-connections", "rss-before-kib", "rss-after-kib"]:
        p.add_argument(f"--{name}", type=int, required=True)
    a = p.parse_args()

    runs = []
    with open(a.results) as f:
        for line in f:
            server, depth, rps, ticks, errors = (line.rstrip("\n").split("\t") + [""])[:5]
            cpu_seconds = int(ticks) / a.clk_tck
            rps = float(rps)
            requests = rps * a.duration
            runs.append({
                "server": server,
                "depth": int(depth),
                "requests_per_second": round(rps),
                "server_cpu_seconds": cpu_seconds,
                "requests_per_cpu_second": round(requests / cpu_seconds) if cpu_seconds else None,
                "errors": errors.strip(),
            })

    summary = []
    for server in dict.fromkeys(r["server"] for r in runs):
        for depth in (1, 16):
            mine = [r for r in runs if r["server"] == server and r["depth"] == depth]
            if not mine:
                continue
            per_cpu = [r["requests_per_cpu_second"] for r in mine if r["requests_per_cpu_second"]]
            summary.append({
                "server": server,
                "depth": depth,
                "runs": len(mine),
                "median_requests_per_second": round(statistics.median(r["requests_per_second"] for r in mine)),
                "median_server_cpu_seconds": statistics.median(r["server_cpu_seconds"] for r in mine),
                "median_requests_per_cpu_second": round(statistics.median(per_cpu)) if per_cpu else None,
                "min_requests_per_cpu_second": min(per_cpu, default=None),
                "max_requests_per_cpu_second": max(per_cpu, default=None),
                "errors": " ".join(sorted({r["errors"] for r in mine if r["errors"]})),
            })

    def figure(server: str, depth: int, key: str):
        return next((s[key] for s in summary if s["server"] == server and s["depth"] == depth), None)

    ratios = {}
    for depth in (1, 16):
        ours = figure("millrace", depth, "median_requests_per_cpu_second")
        for peer in ("may_minihttp", "nginx"):
            theirs = figure(peer, depth, "median_requests_per_cpu_second")
            if ours and theirs:
                ratios[f"millrace/{peer} req per CPU-s, depth {depth}"] = round(ours / theirs, 2)

    # The same ratio taken within each round (the servers ran back to back),
    # so that a slow minute on the machine weighs on both sides of it.
    round_ratios = {}
    for depth in (1, 16):
        ours = [r["requests_per_cpu_second"] for r in runs if r["server"] == "millrace" and r["depth"] == depth]
        theirs = [r["requests_per_cpu_second"] for r in runs if r["server"] == "may_minihttp" and r["depth"] == depth]
        pairs = [o / t for o, t in zip(ours, theirs) if o and t]
        if pairs:
            round_ratios[f"millrace/may_minihttp req per CPU-s within each round, depth {depth}"] = {
                "median": round(statistics.median(pairs), 2),
                "min": round(min(pairs), 2),
                "max": round(max(pairs), 2),
                "rounds": [round(x, 2) for x in pairs],
            }

    idle_mib = (a.rss_after_kib - a.rss_before_kib) / 1024
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": a.command,
        "machine": machine(),
        "method": {
            "load_generator": "wrk -t1, pipelining Lua script",
            "connections": a.connections,
            "duration_seconds": a.duration,
            "rounds": a.rounds,
            "summary": "median over rounds; each round starts every server afresh, order rotating",
            "server_cpu": a.server_cpu,
            "load_cpu": a.load_cpu,
            "cpu_accounting": "utime+stime of the server's processes from /proc over the measured window",
        },
        "summary": summary,
        "runs": runs,
        "ratios": ratios,
        "round_ratios": round_ratios,
        "idle_connections": {
            "connections": a.idle_connections,
            "rss_before_kib": a.rss_before_kib,
            "rss_after_kib": a.rss_after_kib,
            "added_mib": round(idle_mib, 1),
        },
    }
    with open(a.json, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    m = report["machine"]
    lines = [
        f"GET /plaintext, {a.connections} connections, {a.duration} s per run, medians of {a.rounds} rounds, "
        f"server on CPU {a.server_cpu}, wrk on CPU {a.load_cpu}; {m['cpu_model']}, {m['cpus']} CPUs, "
        f"Linux {m['kernel']}.",
        f"Command: `{a.command}`",
        "",
        "| server | depth | requests/s | server CPU-s | requests per CPU-second (min to max) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in summary:
        per_cpu = (f"{r['median_requests_per_cpu_second']:,} ({r['min_requests_per_cpu_second']:,} to "
                   f"{r['max_requests_per_cpu_second']:,})" if r["median_requests_per_cpu_second"] else "n/a")
        note = f" ({r['errors']})" if r["errors"] else ""
        lines.append(f"| {r['server']}{note} | {r['depth']} | {r['median_requests_per_second']:,} | "
                     f"{r['median_server_cpu_seconds']:.2f} | {per_cpu} |")
    lines.append("")
    for name, ratio in ratios.items():
        lines.append(f"- {name}: **{ratio}x**")
    for name, r in round_ratios.items():
        lines.append(f"- {name}: median {r['median']:.2f}x ({r['min']:.2f}x to {r['max']:.2f}x)")
    lines.append(f"- {a.idle_connections:,} idle keep-alive connections on one executor added "
                 f"**{idle_mib:.1f} MiB** RSS ({a.rss_before_kib:,} KiB -> {a.rss_after_kib:,} KiB)")
    with open(a.markdown, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
