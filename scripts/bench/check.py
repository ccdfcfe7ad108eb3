#!/usr/bin/env python3
"""Checks, before a benchmark cell, that one request gets the answer the cell is meant to measure.

usage: check.py NAME PLAIN_URL TOLLGATE_URL TOKEN BODY_FILE EXPECTED_PANS

Sends BODY_FILE once through plain Envoy and once through Envoy + Tollgate. Both must answer 200
with a JSON or SSE body; plain Envoy's must hold EXPECTED_PANS card numbers in clear, Tollgate's
none in clear and the same number masked. Prints one line; exits 1 if anything differs.
"""
import re
import sys
import urllib.request


def luhn_ok(digits):
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def count_pans(text):
    """(card numbers in clear, masked card numbers). Separators between digits or mask stars are
    dropped first, so '4111 1111 1111 1111' and '**** **** **** 1111' count once each."""
    joined = re.sub(r"(?<=[0-9*])[ -](?=[0-9*])", "", text)
    clear = sum(1 for m in re.finditer(r"(?<![0-9*])[0-9]{13,19}(?![0-9])", joined)
                if luhn_ok(m.group()))
    masked = len(re.findall(r"(?<![0-9*])\*{6,}[0-9]{4}(?![0-9])", joined))
    return clear, masked


def fetch(url, token, body):
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {token}",
    })
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get("content-type", ""), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read()


def main():
    name, plain_url, tollgate_url, token, body_file, expected = sys.argv[1:7]
    expected = int(expected)
    body = open(body_file, "rb").read()
    problems = []
    summary = []
    for gateway, url, want_clear, want_masked in (
        ("plain", plain_url, expected, 0),
        ("tollgate", tollgate_url, 0, expected),
    ):
        status, ctype, data = fetch(url, token, body)
        text = data.decode("utf-8", "replace")
        clear, masked = count_pans(text)
        summary.append(f"{gateway}: {status} {ctype.split(';')[0]} {len(data)} B, "
                       f"{clear} PANs in clear, {masked} masked")
        if status != 200:
            problems.append(f"{gateway} answered {status}: {text[:300]}")
        elif '"error"' in text[:200] or '"isError":true' in text:
            problems.append(f"{gateway} answered an error: {text[:300]}")
        elif (clear, masked) != (want_clear, want_masked):
            problems.append(f"{gateway}: expected {want_clear} in clear and {want_masked} masked, "
                            f"got {clear} and {masked}")
    print(f"  check {name:<14} " + "; ".join(summary))
    for p in problems:
        print(f"  CHECK FAILED {name}: {p}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
