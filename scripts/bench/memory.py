#!/usr/bin/env python3
"""One memory sample of a running Envoy, as one JSON line on stdout.

usage: memory.py ADMIN_PORT ENVOY_PID LABEL

- Envoy admin `/memory`: `allocated` (bytes the process's tcmalloc has handed out and not got
  back) and `heap_size`; process-wide, Envoy does not split them by worker.
- `VmRSS` of the process (/proc/PID/status): includes what tcmalloc does not see, such as the V8
  wasm VMs' linear memories.
- `/stats?filter=wasm`: Envoy 1.40 counts wasm VMs (`wasm.wasm_vm_count`,
  `wasm.envoy.wasm.runtime.v8.active`/`created`) but exposes no wasm memory figure.
- The wasm VMs' linear memories, read from /proc/PID/smaps: on x86-64, V8 reserves exactly 8 GiB
  of address space for each wasm memory and makes its first `memory.size` bytes read-write, so each
  linear memory is a read-write mapping directly followed by an inaccessible one, the two together
  exactly 8 GiB long. The sample lists each one's size (its `memory.size`, which only grows) and how
  much of it is resident. Their count is checked against Envoy's own VM count.
- `http.mcp.downstream_rq_completed`: requests this Envoy's listener finished.
"""
import json
import re
import sys
import urllib.request

RESERVATION = 8 << 30
WASM_PAGE = 64 * 1024


def admin(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.read().decode()


def stats(port, regex):
    out = {}
    for line in admin(port, f"/stats?filter={regex}").splitlines():
        name, _, value = line.partition(": ")
        try:
            out[name.strip()] = int(value)
        except ValueError:
            pass
    return out


def wasm_memories(pid):
    maps, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+)", line)
            if m:
                cur = {"start": int(m.group(1), 16), "end": int(m.group(2), 16),
                       "perm": m.group(3), "rss": 0}
                maps.append(cur)
            elif line.startswith("Rss:") and cur is not None:
                cur["rss"] = int(line.split()[1]) * 1024
    found = []
    for a, b in zip(maps, maps[1:]):
        if (a["perm"].startswith("rw") and b["perm"].startswith("---") and a["end"] == b["start"]
                and b["end"] - a["start"] == RESERVATION
                and (a["end"] - a["start"]) % WASM_PAGE == 0):
            found.append({"bytes": a["end"] - a["start"], "resident": a["rss"]})
    return found


def main():
    port, pid, label = sys.argv[1], sys.argv[2], sys.argv[3]
    mem = json.loads(admin(port, "/memory"))
    status = open(f"/proc/{pid}/status").read()
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024
    wasm = stats(port, "^wasm\\.")
    requests = stats(port, "^http\\.mcp\\.downstream_rq_completed$").get(
        "http.mcp.downstream_rq_completed", 0)
    memories = wasm_memories(pid)
    print(json.dumps({
        "label": label,
        "requests": requests,
        "allocated": int(mem["allocated"]),
        "heap_size": int(mem["heap_size"]),
        "rss": rss,
        "wasm_vm_count": wasm.get("wasm.wasm_vm_count"),
        "wasm_v8_active": wasm.get("wasm.envoy.wasm.runtime.v8.active"),
        "wasm_stats": sorted(wasm),
        "wasm_memories": memories,
    }))


if __name__ == "__main__":
    main()
