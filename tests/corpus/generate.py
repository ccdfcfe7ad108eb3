#!/usr/bin/env python3
"""Regenerates the labelled masking corpus (deterministic: fixed seed).

Realistic MCP tool results with card numbers in the shapes upstreams produce, hard negatives that
must pass byte for byte, and digit-heavy noise. Every card number inserted is labelled; every record
is checked with the independent checker (shared/smoke/pan.py's rules, copied below) so that no
unlabelled card number appears by accident.

    python3 tests/corpus/generate.py   # writes *.json, *.log, *.txt, *.sse and labels.json here
"""
import json, os, random, re, unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
R = random.Random(20260401)

# --- the checker's rules (shared/smoke/pan.py) -------------------------------------------------
RANGES = [
    (4, 4, 1, (13, 16, 19)), (51, 55, 2, (16,)), (2221, 2720, 4, (16,)), (34, 34, 2, (15,)),
    (37, 37, 2, (15,)), (6011, 6011, 4, range(16, 20)), (644, 649, 3, range(16, 20)),
    (65, 65, 2, range(16, 20)), (3528, 3589, 4, range(16, 20)), (300, 305, 3, range(14, 20)),
    (36, 36, 2, range(14, 20)), (38, 39, 2, range(16, 20)), (62, 62, 2, range(16, 20)),
    (2200, 2204, 4, range(16, 20)), (50, 50, 2, range(12, 20)), (56, 58, 2, range(12, 20)),
    (67, 67, 2, range(12, 20)), (60, 60, 2, range(16, 20)), (81, 82, 2, range(16, 20)),
    (508, 508, 3, range(16, 20)), (6521, 6522, 4, (16,)),
]

def luhn(d):
    s, alt = 0, False
    for ch in reversed(d):
        n = ord(ch) - 48
        if alt:
            n *= 2
            if n > 9:
                n -= 9
        s += n
        alt = not alt
    return s % 10 == 0

def in_range(d):
    return any(len(d) in L and lo <= int(d[:n]) <= hi for lo, hi, n, L in RANGES)

def normalise(text):
    text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)
    out = []
    for ch in text:
        if ch.isdigit() and not ("0" <= ch <= "9"):
            out.append(str(unicodedata.digit(ch, 0)))
        elif ch in "\u00a0\u2007\u202f":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)

RUN = re.compile(r"(?<![0-9A-Za-z])[0-9]+(?:[ .\-][0-9]+)*(?![0-9A-Za-z])")

def find(text):
    text = normalise(text)
    hits = []
    for m in RUN.finditer(text):
        groups = re.split(r"[ .\-]", m.group(0))
        for i in range(len(groups)):
            for j in range(i, len(groups)):
                cand = "".join(groups[i:j + 1])
                if len(cand) > 19:
                    break
                if len(cand) >= 13 and luhn(cand) and in_range(cand):
                    hits.append(cand)
    return hits

def all_views(s):
    """The raw text and, when it is JSON, every decoded string in it (recursively)."""
    views = [s]
    try:
        v = json.loads(s)
    except ValueError:
        return views
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            stack.extend(x.values())
            views.extend(x.keys())
        elif isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, str):
            views.extend(all_views(x))
    return views

def hits_in(s):
    return {h for v in all_views(s) for h in find(v)}

# --- generators ----------------------------------------------------------------------------------
BRANDS = [  # (name, prefixes, lengths)
    ("visa", ["4"], [16, 16, 16, 13, 19]), ("mastercard", ["51", "52", "53", "54", "55", "2221", "2720", "2300"], [16]),
    ("amex", ["34", "37"], [15]), ("discover", ["6011", "65", "644", "649"], [16, 19]),
    ("jcb", ["3528", "3530", "3566", "3589"], [16]), ("diners", ["36", "300", "305", "38"], [14, 16]),
    ("unionpay", ["62", "6212", "6250"], [16, 17, 18, 19]), ("mir", ["2200", "2204"], [16]),
    ("maestro", ["5018", "5020", "5893", "6759", "6761"], [13, 16, 19]), ("rupay", ["6521", "6522", "508"], [16]),
]

def digits(n):
    return "".join(R.choice("0123456789") for _ in range(n))

def with_check(body):
    for c in "0123456789":
        if luhn(body + c):
            return body + c

def pan():
    name, prefixes, lengths = R.choice(BRANDS)
    while True:
        p = R.choice(prefixes)
        n = R.choice(lengths)
        d = with_check(p + digits(n - len(p) - 1))
        if in_range(d):
            return d

FULLWIDTH = {str(i): chr(0xFF10 + i) for i in range(10)}

def shape(d, how):
    """`d` written as an upstream might write it (text, before any JSON encoding)."""
    if how == "plain":
        return d
    if how in ("space", "dash", "dot", "nbsp", "nnbsp"):
        sep = {"space": " ", "dash": "-", "dot": ".", "nbsp": "\u00a0", "nnbsp": "\u202f"}[how]
        if len(d) == 15:
            parts = [d[:4], d[4:10], d[10:]]
        elif len(d) == 14:
            parts = [d[:4], d[4:10], d[10:]]
        else:
            parts = [d[i:i + 4] for i in range(0, len(d), 4)]
        return sep.join(parts)
    if how == "fullwidth":
        return "".join(FULLWIDTH[c] for c in d)
    if how == "arabic":
        return "".join(chr(0x0660 + int(c)) for c in d)
    raise ValueError(how)

SHAPES = ["plain", "plain", "space", "space", "dash", "dot", "nbsp", "nnbsp", "fullwidth", "arabic"]

FIRST = ["Ana", "Ben", "Chloé", "Dmitri", "Eun-ji", "Farah", "Gustav", "Hiro", "Ines", "Jamal", "Katarzyna", "Luis", "Mei", "Noah", "Olu"]
LAST = ["García", "Okafor", "Müller", "Ivanova", "Kim", "Haddad", "Lindqvist", "Tanaka", "Rossi", "Nasser", "Nowak", "Silva", "Chen", "Brown"]
CITIES = ["Lisbon", "Lagos", "Berlin", "Kazan", "Seoul", "Beirut", "Malmö", "Osaka", "Milan", "Cairo", "Kraków", "São Paulo", "Taipei", "Leeds"]

def uuid():
    h = "".join(R.choice("0123456789abcdef") for _ in range(32))
    h = R.choice("abcdef") + h[1:12] + "4" + h[13:]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"

def sha256():
    return "".join(R.choice("0123456789abcdef") for _ in range(64))

def imei():
    return with_check(R.choice(["35", "01", "86", "99"]) + digits(12))

def iccid():
    return with_check("89" + R.choice(["44", "01", "49", "33"]) + digits(14))

def order_no():
    while True:
        d = with_check(R.choice(["7", "1", "90", "93", "88"]) + digits(R.randint(11, 17)))
        if not in_range(d):
            return d

def epoch_ms():
    return str(R.randint(1_600_000_000_000, 1_800_000_000_000))

def phone():
    return R.choice([
        lambda: f"+1 {digits(3)}-{digits(3)}-{digits(4)}",
        lambda: f"+44 20 {digits(4)} {digits(4)}",
        lambda: f"+49 30 {digits(8)}",
        lambda: f"+86 1{digits(2)} {digits(4)} {digits(4)}",
        lambda: f"({digits(3)}) {digits(3)}-{digits(4)}",
    ])()

def iban():
    while True:
        s = R.choice([f"DE{digits(2)}{digits(18)}", f"GB{digits(2)}NWBK{digits(14)}",
                      f"FR{digits(2)} {digits(4)} {digits(4)} {digits(4)} {digits(4)} {digits(4)} {digits(3)}"])
        if not find(s):
            return s

NEGATIVES = [("imei", imei), ("iccid", iccid), ("order", order_no), ("ts", epoch_ms), ("phone", phone),
             ("uuid", uuid), ("sha256", sha256), ("iban", iban)]

def amount():
    return f"{R.randint(1, 99999)}.{R.randint(0, 99):02d}"

def date():
    return f"2026-{R.randint(1, 12):02d}-{R.randint(1, 28):02d}T{R.randint(0, 23):02d}:{R.randint(0, 59):02d}:{R.randint(0, 59):02d}Z"

class Labels:
    def __init__(self):
        self.pans, self.negatives = [], []

def checked(make, labels):
    """Builds a record with `make(pans, negs)` until the checker finds exactly the pans put in."""
    for _ in range(1000):
        pans, negs = [], []
        rec = make(pans, negs)
        s = rec if isinstance(rec, str) else json.dumps(rec, ensure_ascii=False)
        if hits_in(s) == set(pans) and all(not find(n) for n in negs):
            labels.pans.extend(pans)
            labels.negatives.extend(negs)
            return rec
    raise RuntimeError("could not build a clean record")

# --- files ---------------------------------------------------------------------------------------
def customers(labels):
    def make(pans, negs):
        p = pan(); pans.append(p)
        how = R.choice(SHAPES)
        c = {
            "id": f"cus_{uuid()}",
            "name": f"{R.choice(FIRST)} {R.choice(LAST)}",
            "email": f"user{R.randint(1, 99999)}@example.com",
            "phone": phone(),
            "city": R.choice(CITIES),
            "createdAt": date(),
            "card": {"number": shape(p, how), "brandHint": how, "expMonth": R.randint(1, 12), "expYear": R.randint(2026, 2032)},
            "lifetimeValue": float(amount()),
            "orders": R.randint(0, 500),
        }
        negs.append(c["phone"])
        if R.random() < 0.3:
            q = pan(); pans.append(q)
            c["notes"] = f"Customer asked to replace card {shape(q, R.choice(SHAPES))} after travel; ticket {order_no()}."
        if R.random() < 0.3:
            q = pan(); pans.append(q)
            c["fallbackPan"] = int(q)  # a number token
        if R.random() < 0.2:
            d = R.choice([("imei", imei()), ("iccid", iccid()), ("iban", iban())])
            c[d[0]] = d[1]; negs.append(d[1])
        return c
    items = [checked(make, labels) for _ in range(120)]
    labels.pans *= 2  # the records appear twice: as text content and as structured content
    structured = {"customers": items, "page": 1, "total": len(items)}
    return json.dumps({"jsonrpc": "2.0", "id": 7, "result": {
        "content": [{"type": "text", "text": json.dumps(structured, ensure_ascii=False)}],
        "structuredContent": structured, "isError": False}}, ensure_ascii=False, indent=1)

def customers_escaped(labels):
    """The same kind of result written by an upstream that escapes everything non-ASCII."""
    inner = Labels()
    body = customers(inner)
    labels.pans.extend(inner.pans * 1)
    labels.negatives.extend(n for n in inner.negatives if n.isascii())
    return json.dumps(json.loads(body), ensure_ascii=True)

def transactions(labels):
    def make(pans, negs):
        t = {
            "txnId": order_no(), "ts": int(epoch_ms()), "amount": float(amount()), "currency": R.choice(["EUR", "USD", "GBP", "JPY"]),
            "merchantId": R.randint(100000, 999999), "terminal": R.randint(10000000, 99999999), "mcc": R.choice([5411, 5812, 4111, 5999]),
            "authCode": digits(6), "rrn": digits(12), "stan": digits(6), "batch": R.randint(1, 999), "settledAt": date(),
            "device": {"imei": imei(), "lat": round(R.uniform(-80, 80), 6), "lon": round(R.uniform(-170, 170), 6)},
            "fees": [float(amount()) for _ in range(R.randint(1, 4))],
            "pan": "************" + digits(4),
        }
        negs.extend([t["txnId"], t["device"]["imei"]])
        if R.random() < 0.08:
            p = pan(); pans.append(p)
            t["pan"] = shape(p, R.choice(["plain", "space", "dash"]))
        if R.random() < 0.03:
            p = pan(); pans.append(p)
            t["rawTrack2"] = f";{p}={R.randint(26, 32)}{R.randint(1, 12):02d}101{digits(12)}?"
        return t
    items = [checked(make, labels) for _ in range(1500)]
    return json.dumps({"jsonrpc": "2.0", "id": 3, "result": {"structuredContent": {"transactions": items},
                       "content": [{"type": "text", "text": f"{len(items)} transactions"}]}})

LEVELS = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"]

def logs(labels):
    def make(pans, negs):
        ts = date()
        kind = R.random()
        if kind < 0.04:
            p = pan(); pans.append(p)
            return f"{ts} ERROR payment-svc charge failed card={shape(p, R.choice(SHAPES))} amount={amount()} reason=do_not_honor req={uuid()}"
        if kind < 0.06:
            p = pan(); pans.append(p)
            return f'{ts} WARN  gateway upstream body: {{"pan":"{shape(p, "plain")}","cvv":"{digits(3)}","exp":"12/29"}}'
        n = R.choice(NEGATIVES)[1]()
        negs.append(n)
        return R.choice([
            f"{ts} INFO  api GET /v1/orders/{order_no()} 200 {R.randint(1, 900)}ms trace={sha256()[:32]} ref={n}",
            f"{ts} DEBUG device registered value={n} session={uuid()}",
            f"{ts} INFO  sms sent to {phone()} id={n} cost={amount()}",
            f"{ts} {R.choice(LEVELS)} worker-{R.randint(1, 64)} processed batch {R.randint(1, 99999)} of {R.randint(1, 999)} items key={n}",
        ])
    return "\n".join(checked(make, labels) for _ in range(3000)) + "\n"

WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an they you were "
         "her she there been one all we their has would when if so no out up said what its about into than them can only other new "
         "some could time these two may then do first any my now such like our over man me even most made after also did many "
         "before must through back years where much your way well down should because each just those people how too little "
         "state good very make world still own see men work long get here between both life being under never day same another "
         "know while last might us great old year off come since against go came right used take three gateway agent payment "
         "merchant settlement refund dispute ledger audit approval customer invoice").split()

def prose(labels):
    paras = []
    for _ in range(400):
        sents = []
        for _ in range(R.randint(3, 8)):
            w = [R.choice(WORDS) for _ in range(R.randint(6, 22))]
            if R.random() < 0.15:
                w.insert(R.randint(0, len(w)), str(R.choice([2024, 2025, 2026, 3, 12, 40, 150])))
            if R.random() < 0.05:
                w.insert(R.randint(0, len(w)), R.choice(["naïve", "café", "Zürich", "coöperate", "—", "“quoted”", "résumé"]))
            sents.append(" ".join(w).capitalize() + ".")
        paras.append(" ".join(sents))
    return "\n\n".join(paras) + "\n"

def prose_with_cards(labels):
    def make(pans, negs):
        s = " ".join(R.choice(WORDS) for _ in range(R.randint(8, 20))).capitalize()
        if R.random() < 0.25:
            p = pan(); pans.append(p)
            s += R.choice([f", paid with {shape(p, R.choice(SHAPES))}", f" (card {shape(p, R.choice(SHAPES))})",
                           f": Kartennummer {shape(p, R.choice(SHAPES))}", f" カード番号：{shape(p, 'fullwidth')}"])
        return s + "."
    return "\n".join(checked(make, labels) for _ in range(600)) + "\n"

def stream(labels):
    events = []
    for i in range(40):
        events.append(f'event: message\ndata: {json.dumps({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": i, "progress": i * 10, "total": 400}})}\n\n')
    inner = Labels()
    body = json.loads(customers(inner))
    labels.pans.extend(inner.pans)
    labels.negatives.extend(n for n in inner.negatives if n.isascii())
    events.append("event: message\nid: 41\ndata: " + json.dumps(body, ensure_ascii=False) + "\n\n")
    return "".join(events)

# --- letters next to digits ---------------------------------------------------------------------
# The engine masks card numbers glued to letters (`PAN4111…`, `…1111abc`, track 2 equivalent data
# with its `D` separator) except inside hex tokens of 24+ characters, UUIDs and IBANs (the hash
# rule, filter/engine/src/mask/scan.rs). The checker above still requires no letter on either side, so
# these records are built by hand: look-alikes plant a Luhn-valid run in an issuer range where the
# hash rule must keep it, positives glue one to letters where it must not. Its own random source,
# so the files above stay as they were.
G = random.Random(20260402)
HEX = "0123456789abcdef"

def g_pan(lengths=(13, 14, 15, 16, 17, 18, 19)):
    while True:
        name, prefixes, lens = G.choice(BRANDS)
        n = G.choice(lens)
        if n not in lengths:
            continue
        p = G.choice(prefixes)
        body = p + "".join(G.choice("0123456789") for _ in range(n - len(p) - 1))
        d = with_check(body)
        if in_range(d):
            return d

def g_hex(n, upper=False):
    h = "".join(G.choice(HEX) for _ in range(n))
    return h.upper() if upper else h

def g_letter(upper=False):
    c = G.choice("abcdef")
    return c.upper() if upper else c

def planted_hash(total):
    """A hex token of `total` characters with a card-like run between hex letters."""
    upper = G.random() < 0.2
    p = g_pan(lengths=tuple(n for n in (13, 14, 15, 16, 17, 18, 19) if n <= total - 2))
    at = G.randint(1, total - len(p) - 1)
    left = g_hex(at - 1, upper) + g_letter(upper)
    right = g_letter(upper) + g_hex(total - at - len(p) - 1, upper)
    return left + p + right

def planted_uuid():
    """A UUID whose glued first field starts a card-like window across the next fields."""
    while True:
        k = G.randint(1, 4)
        first = "".join(G.choice("abcdef") for _ in range(8 - k))
        digits = "".join(G.choice("0123456789") for _ in range(k + 11))
        cand = with_check(digits)
        if not in_range(cand):
            continue
        a, b, c, d = cand[:k], cand[k:k + 4], cand[k + 4:k + 8], cand[k + 8:]
        if len(d) != 4:
            continue
        u = f"{first}{a}-{b}-{c}-{d}-{g_letter()}{g_hex(11)}"
        if not find(u):
            return u

def iban_gb():
    while True:
        acct = g_pan(lengths=(14,))
        bban = G.choice(["NWBK", "BARC", "MIDL", "LOYD"]) + acct
        n = int("".join(str(int(c, 36)) for c in bban + "GB00"))
        return f"GB{98 - n % 97:02d}{bban}"

def track2_emv(p):
    yymm = f"{G.randint(26, 32)}{G.randint(1, 12):02d}"
    rest = "".join(G.choice("0123456789") for _ in range(G.randint(10, 16)))
    pad = "F" if (len(p) + 1 + 4 + 3 + len(rest)) % 2 else ""
    return f"{p}{G.choice('Dd')}{yymm}{G.choice(['101', '201', '121'])}{rest}{pad}"

GLUED = [  # (before, after): hex letters next to the digits stay few
    ("PAN", ""), ("card:", "X"), ("ref=", "abc"), ("x", "y"), ("Nr", " ok"), ("id ", "b"),
    ("KARTE", "."), ("pan_", "Z"), ("(", "EUR)"), ("", "USD"), ("cardno", "/exp"),
]

def lookalikes(labels):
    lines = []
    for i in range(600):
        ts = date()
        kind = G.random()
        if kind < 0.12:
            p = g_pan()
            before, after = G.choice(GLUED)
            labels.pans.append(p)
            lines.append(f"{ts} WARN upstream echoed {before}{shape(p, G.choice(['plain', 'plain', 'space', 'dash']))}{after} in a tool result")
        elif kind < 0.16:
            p = g_pan(lengths=(16, 19))
            labels.pans.append(p)
            t = track2_emv(p)
            lines.append(f"{ts} DEBUG emv tag57={t} aid=A0000000031010")
        elif kind < 0.18:
            p = g_pan(lengths=(16,))
            labels.pans.append(p)
            lines.append(f"{ts} DEBUG swipe raw=;{p}={G.randint(26, 32)}{G.randint(1, 12):02d}101{digits(12)}?")
        else:
            what, n = G.choice([
                ("sha256", lambda: planted_hash(64)), ("sha1", lambda: planted_hash(40)),
                ("md5", lambda: planted_hash(32)), ("objectId", lambda: planted_hash(24)),
                ("uuid", planted_uuid), ("iban", iban_gb),
            ])
            n = n()
            labels.negatives.append(n)
            lines.append(G.choice([
                f"{ts} INFO stored {what}={n} size={G.randint(1, 99999)}",
                f"{ts} DEBUG {what} {n} cached",
                f'{ts} INFO {{"{what}":"{n}","ok":true}}',
            ]))
    return "\n".join(lines) + "\n"

FILES = [
    ("customers.json", "application/json", customers),
    ("customers_escaped.json", "application/json", customers_escaped),
    ("transactions.json", "application/json", transactions),
    ("app.log", "text/plain", logs),
    ("prose.txt", "text/plain", prose),
    ("prose_cards.txt", "text/plain", prose_with_cards),
    ("stream.sse", "text/event-stream", stream),
    ("lookalikes.log", "text/plain", lookalikes),
]

def main():
    meta = {}
    for name, ctype, gen in FILES:
        labels = Labels()
        body = gen(labels)
        with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
            f.write(body)
        meta[name] = {"contentType": ctype, "pans": labels.pans, "negatives": sorted(set(labels.negatives))}
        print(f"{name}: {len(body)} bytes, {len(labels.pans)} card numbers, {len(set(labels.negatives))} negatives")
    with open(os.path.join(HERE, "labels.json"), "w") as f:
        json.dump(meta, f, indent=1)

if __name__ == "__main__":
    main()
