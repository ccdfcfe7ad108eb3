#!/usr/bin/env python3
"""Prints the `make bench` report (Markdown) from what scripts/bench.sh measured in STATE.

usage: report.py STATE_DIR
Every number printed comes from the files of this run: results/*.json (wrk), memory.jsonl and
memory-plain.json (scripts/bench/memory.py), audit-verify.json, meta.json.
"""
import json
import os
import platform
import sys

WORKLOADS = [
    ("1k", "`tools/call`, 1 KiB result, 1 PAN (JSON)"),
    ("64k", "`tools/call`, 64 KiB result, 50 PANs (JSON)"),
    ("sse", "`tools/call` SSE stream, {n} events, {p} PANs"),
    ("session", "`tools/call`, 1 KiB result, 1 PAN, in one of {s} MCP sessions (SSE)"),
    ("1k50", "`tools/call`, 1 KiB result, 1 PAN, upstream takes 50 ms (JSON)"),
]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"error": f"no result ({e.__class__.__name__})"}


def errors(r):
    return sum(v for k, v in r.items() if k.startswith("err_"))


def ms(us):
    return f"{us / 1000:.2f}"


def mib(b):
    return f"{b / (1 << 20):.1f} MiB"


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def row(label, conc, gateway, r, base):
    if "error" in r:
        return f"| {label} | {conc} | {gateway} | not measured: {r['error']} | | | | | | | |"
    errs = errors(r)
    note = "" if errs == 0 else " ⚠"
    if base is None:
        ratio = p50 = p99 = "—"
    elif "error" in base:
        ratio = p50 = p99 = "no baseline"
    else:
        ratio = f"{r['rps'] / base['rps']:.2f}×" if base["rps"] else "—"
        p50 = f"{(r['p50_us'] - base['p50_us']) / 1000:+.2f}"
        p99 = f"{(r['p99_us'] - base['p99_us']) / 1000:+.2f}"
    cpu = r.get("cpu_us_per_req")
    cpu = (f"{cpu['envoy']:.0f} / {cpu['control_plane']:.0f} / {cpu['upstream']:.0f}" if cpu else "—")
    return (f"| {label} | {conc} | {gateway} | {r['rps']:.0f} | {ms(r['p50_us'])} | {ms(r['p99_us'])} "
            f"| {ratio} | {p50} | {p99} | {cpu} | {errs}{note} |")


def main():
    state = sys.argv[1]
    meta = load(os.path.join(state, "meta.json"))
    res = lambda name: load(os.path.join(state, "results", name + ".json"))
    out = []
    p = out.append
    sse_n = meta.get("sse_count", 0)

    p(f"### Tollgate vs plain Envoy, {meta.get('started', '?')}")
    p("")
    p(f"- machine: {os.cpu_count()} CPUs, {cpu_model()}; load average (1/5/15 min) before the run "
      f"{meta.get('load_before')}, after the table {meta.get('load_after_table')}, at the end "
      f"{meta.get('load_end')}")
    p(f"- source: {meta.get('source')}; the filter as `make wasm` built it, `tollgate` and the "
      "payments server as `cargo build --release` built them")
    p(f"- {meta.get('envoy_version')}, {meta.get('workers')} workers per Envoy; "
      f"{meta.get('wrk_version')}; {meta.get('duration')} s per cell after "
      f"{meta.get('warmup')} s of warm-up; whole run {meta.get('seconds')} s")
    p("- plain Envoy = the same bootstrap rendered `--plain` (jwt_authn on, no Tollgate filter); "
      "Envoy + Tollgate = identity, policy (the demo policy plus a last rule allowing the bench "
      "tools), audit appended durably to `tollgate serve` on sled before forwarding, PAN masking")
    p("- upstream: the demo payments server (release), `--stateless --json-response` for JSON rows, "
      "`--stateless` for the SSE row (`slow_stream`, interval 0)")
    p("")
    p("| workload | conns | gateway | req/s | p50 ms | p99 ms | req/s vs plain | p50 added ms "
      "| p99 added ms | CPU µs/req: Envoy / control plane / upstream | errors |")
    p("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    workloads = meta.get("workloads", {})
    for key, label in WORKLOADS:
        label = label.format(n=2 * sse_n + 1, p=2 * sse_n + 1, s=meta.get("sessions"))
        for c in workloads.get(key, []):
            plain = res(f"{key}-c{c}-plain")
            tg = res(f"{key}-c{c}-tollgate")
            p(row(label, c, "plain Envoy", plain, None))
            p(row(label, c, "Envoy + Tollgate", tg, plain))
    for c in workloads.get("pipelined", []):
        p(row("1 KiB result, answer released once its record is sent (`responseRecord: pipelined`)",
              c, "Envoy + Tollgate", res(f"pipelined-c{c}"), res(f"1k-c{c}-plain")))
    for c in meta.get("policy_concurrency", []):
        plain = res(f"1k-c{c}-plain")
        p(row("1 KiB result, policy of 1 rule", c, "Envoy + Tollgate", res(f"policy1-c{c}"), plain))
        p(row("1 KiB result, policy of 200 rules", c, "Envoy + Tollgate", res(f"policy200-c{c}"), plain))
    p("")
    p("Ratios and added ms are against the plain Envoy row of the same workload and connection count "
      "(the policy rows against plain Envoy's 1 KiB row). The policy rows are "
      f"{meta.get('policy_rounds')} alternating rounds of {meta.get('policy_round')} s per policy: "
      "req/s over all rounds, p50 and p99 the median of the rounds'. CPU µs/req: user + system CPU "
      "time that the cell's Envoy, the control plane and the payments server spent during the "
      "measured run, divided by the requests (wrk itself, on the same 2 cores, not counted). "
      "errors: wrk's connect/read/write/timeout errors and non-2xx answers (⚠ marks a cell that had "
      "any).")
    p("")

    # Policy cost
    lines = []
    for c in meta.get("policy_concurrency", []):
        a, b = res(f"policy1-c{c}"), res(f"policy200-c{c}")
        if "error" in a or "error" in b:
            lines.append(f"{c} conns: not measured")
        else:
            rounds = lambda r: ", ".join(ms(x) for x in r.get("round_p99_us", []))
            lines.append(f"{c} conns: p99 {ms(a['p99_us'])} → {ms(b['p99_us'])} ms "
                         f"({(b['p99_us'] - a['p99_us']) / 1000:+.2f} ms; rounds {rounds(a)} vs "
                         f"{rounds(b)}), p50 {ms(a['p50_us'])} → {ms(b['p50_us'])} ms "
                         f"({(b['p50_us'] - a['p50_us']) / 1000:+.2f} ms), req/s {a['rps']:.0f} → "
                         f"{b['rps']:.0f}")
    p("**Policy evaluation, 200 rules vs 1 rule** (every call tested against all 200): " + "; ".join(lines))
    p("")

    # The hop to the control plane: mutual TLS against h2c
    lines = []
    for c in meta.get("policy_concurrency", []):
        a, b = res(f"cp-h2c-c{c}"), res(f"cp-mtls-c{c}")
        if "error" in a or "error" in b:
            lines.append(f"{c} conns: not measured")
        else:
            lines.append(f"{c} conns: req/s {a['rps']:.0f} → {b['rps']:.0f} ({b['rps'] / a['rps']:.2f}×), "
                         f"p50 {ms(a['p50_us'])} → {ms(b['p50_us'])} ms "
                         f"({(b['p50_us'] - a['p50_us']) / 1000:+.2f} ms), p99 {ms(a['p99_us'])} → "
                         f"{ms(b['p99_us'])} ms ({(b['p99_us'] - a['p99_us']) / 1000:+.2f} ms)")
    p("**The hop to the control plane, h2c → mutual TLS** (Envoy + Tollgate, 1 KiB result; the same "
      "Envoy configuration against a second control plane run `--insecure-plaintext`; alternating "
      f"rounds as for the policy): " + "; ".join(lines))
    p("")

    # The goals of issue 19, each against plain Envoy in this run.
    def goal(name, value, aim, ok):
        return f"| {name} | {value} | {aim} | {'met' if ok else 'not met'} |"
    p("**Goals** (issue 19; ratios and differences against plain Envoy in this run):")
    p("")
    p("| measure | this run | goal | |")
    p("|---|---:|---:|---|")
    for key in ("1k", "64k", "session"):
        plain, tg = res(f"{key}-c16-plain"), res(f"{key}-c16-tollgate")
        if "error" in plain or "error" in tg:
            p(f"| {key}, 16 connections | not measured | | |")
            continue
        ratio = tg["rps"] / plain["rps"]
        added = (tg["p99_us"] - plain["p99_us"]) / 1000
        p(goal(f"req/s vs plain, {key}, 16 connections", f"{ratio:.2f}×", "≥ 0.60×", ratio >= 0.6))
        p(goal(f"added p99, {key}, 16 connections", f"{added:+.2f} ms", "≤ 2 ms", added <= 2))
        cpu_p, cpu_t = plain.get("cpu_us_per_req"), tg.get("cpu_us_per_req")
        if cpu_p and cpu_t and cpu_p["envoy"]:
            x = cpu_t["envoy"] / cpu_p["envoy"]
            p(goal(f"Envoy CPU per request vs plain, {key}, 16 connections", f"{x:.1f}×", "≤ 1.5×", x <= 1.5))
    for key, name in (("1k", "durable"), ("pipelined", "pipelined")):
        plain = res("1k-c1-plain")
        tg = res("1k-c1-tollgate" if key == "1k" else "pipelined-c1")
        if "error" not in plain and "error" not in tg:
            added = (tg["p50_us"] - plain["p50_us"]) / 1000
            p(goal(f"added p50, 1k, 1 connection, {name} response record", f"{added:+.2f} ms",
                   "≤ 0.5 ms", added <= 0.5))
    audit = load(os.path.join(state, "audit-verify.json"))
    records, reqs = audit.get("records") or 0, meta.get("filter_requests") or 0
    size = meta.get("audit_store_bytes") or 0
    if records and reqs:
        per_call = size / reqs
        p(goal("bytes on disk per call (sled)", f"{per_call:,.0f} B", "≤ 1 KB", per_call <= 1024))
    p("")
    p("Durable appends per second with 64 writers are measured by `make bench-store` (below); "
      "the goals not met are set against the architecture's floor on the same machine, with and "
      "without a durable store, by `make bench-floor` (the next part of `make bench`).")
    p("")

    # Memory
    samples = []
    try:
        with open(os.path.join(state, "memory.jsonl")) as f:
            samples = [json.loads(line) for line in f if line.strip()]
    except OSError:
        pass
    workers = meta.get("workers", 1)
    p(f"**Memory** of a fresh Envoy + Tollgate ({workers} workers) while "
      f"{meta.get('mem_requests')} requests go through the filter (5 s bursts at 16 connections, "
      "alternately the 1 KiB and the 64 KiB / 50-PAN call):")
    p("")
    p("| sample | requests | Envoy allocated | per worker (÷ {w}) | Envoy heap | process RSS "
      "| wasm VMs | wasm linear memory per VM | resident |".format(w=workers))
    p("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for s in samples:
        mems = s.get("wasm_memories", [])
        vms = s.get("wasm_vm_count")
        if mems and len(mems) == vms:
            sizes = ", ".join(f"{m['bytes'] // 1024} KiB" for m in mems)
            resident = ", ".join(f"{m['resident'] // 1024} KiB" for m in mems)
        else:
            sizes = resident = f"not identified ({len(mems)} found for {vms} VMs)"
        p(f"| {s['label']} | {s['requests']} | {mib(s['allocated'])} | {mib(s['allocated'] / workers)} "
          f"| {mib(s['heap_size'])} | {mib(s['rss'])} | {vms} | {sizes} | {resident} |")
    p("")
    loaded = [s for s in samples if s["requests"] > 0]
    if len(loaded) >= 2:
        first, last = loaded[0], loaded[-1]
        def total(s):
            return sum(m["bytes"] for m in s.get("wasm_memories", []))
        p(f"From the first sample under load ({first['requests']} requests) to the last "
          f"({last['requests']}): Envoy allocated {mib(first['allocated'])} → {mib(last['allocated'])} "
          f"({(last['allocated'] - first['allocated']) / first['allocated'] * 100:+.1f}%), RSS "
          f"{mib(first['rss'])} → {mib(last['rss'])}, wasm linear memory of all VMs "
          f"{total(first) // 1024} KiB → {total(last) // 1024} KiB.")
        sizes = lambda s: [m["bytes"] for m in s.get("wasm_memories", [])]
        grew = [i for i in range(1, len(samples)) if sizes(samples[i]) != sizes(samples[i - 1])]
        if grew:
            i = grew[-1]
            p(f"The wasm linear memories last grew between {samples[i - 1]['requests']} and "
              f"{samples[i]['requests']} requests ({len(grew)} sample(s) with growth in all) and were "
              f"unchanged over the last {last['requests'] - samples[i]['requests']} requests "
              "(a wasm memory never shrinks, so flat means no growth).")
        else:
            p("The wasm linear memories never grew during the run.")
        if last["requests"] < meta.get("mem_requests", 0):
            p(f"**Only {last['requests']} requests** were reached within the time cap.")
    plain = load(os.path.join(state, "memory-plain.json"))
    if "error" not in plain:
        p(f"Plain Envoy for comparison, after its cells of the table ({plain['requests']} requests): "
          f"allocated {mib(plain['allocated'])} ({mib(plain['allocated'] / workers)} per worker), "
          f"heap {mib(plain['heap_size'])}, RSS {mib(plain['rss'])}.")
    p("")
    p("Envoy 1.40's `/stats?filter=wasm` has no memory figure for a wasm VM (only "
      + ", ".join(f"`{n}`" for n in (samples[-1]["wasm_stats"] if samples else []))
      + "). The wasm linear memories above are read from the Envoy process's /proc/PID/smaps (each is "
      "the read-write start of a V8 8 GiB reservation; their count matches `wasm.wasm_vm_count`); "
      "Envoy allocated/heap come from admin `/memory` and are process-wide, so per worker is the "
      "total divided by the worker count.")
    p("")

    audit = load(os.path.join(state, "audit-verify.json"))
    if "error" in audit:
        p(f"**Audit chain**: verify gave no result (see target/bench/logs/audit-verify.log); "
          f"{meta.get('filter_requests')} requests went through the filter.")
    else:
        records, reqs = audit.get("records") or 0, meta.get("filter_requests") or 0
        size = meta.get("audit_store_bytes") or 0
        p(f"**Audit chain** after the run: {records} records, intact: "
          f"{'yes' if audit.get('intact') else 'NO'}; requests through the filter in this run (all "
          f"Tollgate Envoys, warm-ups and checks included): {reqs}, so "
          f"{records / reqs if reqs else 0:.2f} records per request; sled store on disk "
          f"{mib(size)}, {size / records if records else 0:.0f} bytes per record.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
