#!/usr/bin/env python3
"""Writes the Tollgate plugin configurations and JSON-RPC bodies that `make bench` uses.

usage: configs.py DEMO_POLICY OUT_DIR SSE_COUNT

OUT_DIR/config-main.json    the demo policy (envoy/policy/payments.json) plus one last rule that
                            allows the benchmark tools: every call walks the whole demo policy
OUT_DIR/config-pipelined.json  the same, answers released once their record is sent
OUT_DIR/config-1rule.json   one rule, which allows the call
OUT_DIR/config-200rule.json 199 rules that do not match the call (tool globs, argument equality,
                            caller groups, argument regexes), then the rule that allows it: every
                            call is tested against all 200
OUT_DIR/body-*.json         the tools/call bodies
"""
import json
import os
import sys

BENCH_TOOLS = ["fixed_result", "slow_stream"]
ALLOW = {"id": "bench-allow", "match": {"tool": BENCH_TOOLS}, "action": "allow"}


def filler_rule(i):
    kind = i % 4
    rule = {"id": f"bench-filler-{i:03d}", "action": "deny", "reason": f"filler rule {i}"}
    if kind == 0:  # a tool glob that does not match
        rule["match"] = {"tool": f"bench_tool_{i}_*"}
    elif kind == 1:  # the tool matches, an argument equality does not
        rule["match"] = {"tool": "fixed_result", "arguments": f"/bytes == {10_000_000 + i}"}
    elif kind == 2:  # the tool glob matches, the caller is not in the group
        rule["match"] = {"tool": "fixed_*", "caller": {"groups": f"bench-group-{i}"}}
    else:  # the tool matches, a regex on an argument the call does not send fails
        rule["match"] = {"tool": BENCH_TOOLS, "arguments": f"/note =~ ^bench-{i}-[a-z]+$"}
        rule["action"] = "approve"
        rule["approverGroup"] = "payments-approvers"
    return rule


def write(path, value):
    with open(path, "w") as f:
        json.dump(value, f, separators=(",", ":"))


def main():
    demo_policy, out, sse_count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(demo_policy) as f:
        demo = json.load(f)
    demo.setdefault("rules", []).append(ALLOW)
    write(os.path.join(out, "config-main.json"), {"policy": demo})
    write(os.path.join(out, "config-pipelined.json"), {"policy": demo, "responseRecord": "pipelined"})

    base = {"defaultAction": {"action": "deny", "reason": "no policy rule allows this call"}}
    write(os.path.join(out, "config-1rule.json"), {"policy": dict(base, rules=[ALLOW])})
    rules = [filler_rule(i) for i in range(1, 200)] + [ALLOW]
    assert len(rules) == 200
    write(os.path.join(out, "config-200rule.json"), {"policy": dict(base, rules=rules)})

    def call(name, arguments, meta=None):
        params = {"name": name, "arguments": arguments}
        if meta:
            params["_meta"] = meta
        return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}

    write(os.path.join(out, "body-1k.json"), call("fixed_result", {"bytes": 1024, "pans": 1}))
    write(os.path.join(out, "body-1k50.json"),
          call("fixed_result", {"bytes": 1024, "pans": 1, "delay_ms": 50}))
    write(os.path.join(out, "body-64k.json"), call("fixed_result", {"bytes": 65536, "pans": 50}))
    write(os.path.join(out, "body-sse.json"),
          call("slow_stream", {"count": sse_count, "interval_ms": 0}, {"progressToken": "bench"}))


if __name__ == "__main__":
    main()
