#!/usr/bin/env python3
"""Turn scripts/bench-load.sh's measurements into JSON and a markdown table.

Inputs: a TSV of server, depth, generator, requests/s, generator CPU seconds,
wall seconds (closed-loop throughput), and a TSV of server, rate, tool,
achieved requests/s, p50 ms, p99 ms, max ms (open-loop latency); several rounds give several
lines each, and the tables show medians (every run is kept in the JSON).
"""
import argparse
import datetime
import json
import statistics

from bench_report import machine


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ["throughput", "latency", "json", "markdown", "command", "oha-version", "rates"]:
        p.add_argument(f"--{name}", required=True)
    for name in ["duration", "connections", "rounds", "server-cpu", "load-cpu"]:
        p.add_argument(f"--{name}", type=int, required=True)
    a = p.parse_args()

    throughput = []
    with open(a.throughput) as f:
        for line in f:
            server, depth, generator, rps, cpu, wall = line.rstrip("\n").split("\t")
            rps, cpu = float(rps), float(cpu)
            throughput.append({
                "server": server,
                "depth": int(depth),
                "generator": generator,
                "requests_per_second": round(rps),
                "generator_cpu_seconds": cpu,
                "generator_wall_seconds": float(wall),
                # CPU per request: the measured requests over the CPU the whole process used.
                "requests_per_generator_cpu_second": round(rps * a.duration / cpu) if cpu else None,
            })
    latency = []
    with open(a.latency) as f:
        for line in f:
            server, rate, tool, achieved, p50, p99, worst = line.rstrip("\n").split("\t")
            latency.append({
                "server": server,
                "rate": int(rate),
                "tool": tool,
                "achieved_requests_per_second": round(float(achieved)),
                "p50_ms": float(p50),
                "p99_ms": float(p99),
                "max_ms": float(worst),
            })

    def median(rows, key):
        values = [r[key] for r in rows if r[key] is not None]
        return statistics.median(values) if values else None

    closed = []
    for server in dict.fromkeys(r["server"] for r in throughput):
        for depth in (1, 16):
            row = {"server": server, "depth": depth}
            for generator in ("wrk", "millrace_load"):
                mine = [r for r in throughput
                        if r["server"] == server and r["depth"] == depth and r["generator"] == generator]
                row[generator] = {
                    "runs": len(mine),
                    "median_requests_per_second": round(median(mine, "requests_per_second") or 0),
                    "median_cpu_seconds": median(mine, "generator_cpu_seconds"),
                    "median_requests_per_cpu_second": round(median(mine, "requests_per_generator_cpu_second") or 0),
                }
            w, m = row["wrk"], row["millrace_load"]
            row["throughput_ratio"] = round(m["median_requests_per_second"] / w["median_requests_per_second"], 2) \
                if w["median_requests_per_second"] else None
            row["cpu_per_request_ratio"] = round(w["median_requests_per_cpu_second"] / m["median_requests_per_cpu_second"], 2) \
                if m["median_requests_per_cpu_second"] else None
            closed.append(row)

    opened = []
    for server in dict.fromkeys(r["server"] for r in latency):
        for rate in dict.fromkeys(r["rate"] for r in latency):
            row = {"server": server, "rate": rate}
            for tool in ("oha", "millrace_load"):
                mine = [r for r in latency if r["server"] == server and r["rate"] == rate and r["tool"] == tool]
                row[tool] = {
                    "runs": len(mine),
                    "median_achieved_requests_per_second": round(median(mine, "achieved_requests_per_second") or 0),
                    "median_p50_ms": median(mine, "p50_ms"),
                    "median_p99_ms": median(mine, "p99_ms"),
                }
            o, m = row["oha"], row["millrace_load"]
            for q in ("p50", "p99"):
                ours, theirs = m[f"median_{q}_ms"], o[f"median_{q}_ms"]
                row[f"{q}_ratio"] = round(ours / theirs, 2) if ours and theirs else None
            opened.append(row)

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": a.command,
        "machine": machine(),
        "method": {
            "connections": a.connections,
            "duration_seconds": a.duration,
            "rounds": a.rounds,
            "open_loop_rates": [int(r) for r in a.rates.split()],
            "server_cpu": a.server_cpu,
            "load_cpu": a.load_cpu,
            "wrk": "wrk -t1; scripts/pipeline.lua at depth 16, no script at depth 1; a 1 s run first",
            "millrace_load": "millrace load, one unpinned thread under taskset; a 1 s run first",
            "oha": f"{a.oha_version}, -q RATE --latency-correction",
            "cpu_accounting": "utime+stime of the generator process (/usr/bin/time), start-up included",
            "summary": "median over rounds; each round starts every server afresh, order rotating",
        },
        "closed_loop": closed,
        "open_loop": opened,
        "runs": {"throughput": throughput, "latency": latency},
    }
    with open(a.json, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    m = report["machine"]
    lines = [
        f"GET /plaintext, {a.connections} connections, {a.duration} s per run, medians of {a.rounds} rounds, "
        f"server on CPU {a.server_cpu} (one worker), generator on CPU {a.load_cpu} (one thread); "
        f"{m['cpu_model']}, {m['cpus']} CPUs, Linux {m['kernel']}.",
        f"Command: `{a.command}`",
        "",
        "Closed loop, as fast as the server answers:",
        "",
        "| server | depth | wrk req/s | millrace load req/s | load/wrk | wrk req per CPU-s | millrace load req per CPU-s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in closed:
        w, ml = r["wrk"], r["millrace_load"]
        lines.append(
            f"| {r['server']} | {r['depth']} | {w['median_requests_per_second']:,} | "
            f"{ml['median_requests_per_second']:,} | {r['throughput_ratio']}x | "
            f"{w['median_requests_per_cpu_second']:,} | {ml['median_requests_per_cpu_second']:,} |")
    lines += [
        "",
        "Open loop, latency corrected for coordinated omission (ratio: millrace load / oha):",
        "",
        "| server | rate | oha p50 ms | millrace load p50 ms | oha p99 ms | millrace load p99 ms | p50 ratio | p99 ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in opened:
        o, ml = r["oha"], r["millrace_load"]
        lines.append(
            f"| {r['server']} | {r['rate']:,} | {o['median_p50_ms']:.3f} | {ml['median_p50_ms']:.3f} | "
            f"{o['median_p99_ms']:.3f} | {ml['median_p99_ms']:.3f} | {r['p50_ratio']}x | {r['p99_ratio']}x |")
    with open(a.markdown, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
