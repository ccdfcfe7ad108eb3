//! Throughput of the masking engine on the corpus (`tests/corpus/`), in MB/s, native.
//!
//! `cargo bench -p tollgate-engine --bench mask` (release profile). A plain harness: each case runs
//! for about a second over the corpus file repeated to at least 4 MiB; the best of five rounds is
//! printed. `MASK_BENCH_SECS` changes the time per round, `MASK_BENCH_FILTER` picks cases by name.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tollgate_engine::mask::{MaskReport, Masker, StreamMasker};

fn corpus(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/corpus")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `body` repeated to at least `min` bytes, for text (joined by newlines).
fn repeat_text(body: &[u8], min: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(min + body.len());
    while v.len() < min {
        v.extend_from_slice(body);
        v.push(b'\n');
    }
    v
}

/// A JSON array of `body` repeated to at least `min` bytes.
fn repeat_json(body: &[u8], min: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(min + body.len());
    v.push(b'[');
    while v.len() < min {
        if v.len() > 1 {
            v.push(b',');
        }
        v.extend_from_slice(body);
    }
    v.push(b']');
    v
}

fn measure(name: &str, bytes: usize, secs: f64, mut f: impl FnMut() -> u64) {
    if std::env::var("MASK_BENCH_FILTER").is_ok_and(|w| !name.contains(&w)) {
        return;
    }
    let mut best = f64::MAX;
    let mut found = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs_f64(secs / 5.0) || n == 0 {
            found = f();
            n += 1;
        }
        best = best.min(start.elapsed().as_secs_f64() / n as f64);
    }
    let mbps = bytes as f64 / best / 1e6;
    println!(
        "{name:<44} {:>8.2} MiB {:>10.1} MB/s {:>8} masked/iter",
        bytes as f64 / (1 << 20) as f64,
        mbps,
        found
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs: f64 = std::env::var("MASK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let m = Masker::default();
    let min = 4 << 20;
    println!(
        "{:<44} {:>12} {:>15} {:>19}",
        "case", "input", "throughput", ""
    );

    let prose = repeat_text(&corpus("prose.txt"), min);
    measure(
        "prose, text (no card-like digit runs)",
        prose.len(),
        secs,
        || {
            let mut r = MaskReport::default();
            black_box(m.mask_body(black_box(&prose), &mut r));
            r.total()
        },
    );
    measure("prose, mask_content text/plain", prose.len(), secs, || {
        let mut r = MaskReport::default();
        black_box(m.mask_content(Some("text/plain"), black_box(&prose), &mut r));
        r.total()
    });

    let txns = repeat_json(&corpus("transactions.json"), min);
    measure("transactions, JSON (digit-heavy)", txns.len(), secs, || {
        let mut r = MaskReport::default();
        black_box(m.mask_json(black_box(&txns), &mut r).ok());
        r.total()
    });
    measure("transactions, as text", txns.len(), secs, || {
        let mut r = MaskReport::default();
        black_box(m.mask_body(black_box(&txns), &mut r));
        r.total()
    });

    let customers = repeat_json(&corpus("customers.json"), min);
    measure(
        "customers, JSON (nested JSON text, many cards)",
        customers.len(),
        secs,
        || {
            let mut r = MaskReport::default();
            black_box(m.mask_json(black_box(&customers), &mut r).ok());
            r.total()
        },
    );

    let log = repeat_text(&corpus("app.log"), min);
    measure("logs, text", log.len(), secs, || {
        let mut r = MaskReport::default();
        black_box(m.mask_body(black_box(&log), &mut r));
        r.total()
    });

    let sse = repeat_text(&corpus("stream.sse"), min);
    measure("event stream, 16 KiB chunks", sse.len(), secs, || {
        let mut r = MaskReport::default();
        let mut s = StreamMasker::default();
        for c in sse.chunks(16 << 10) {
            black_box(s.push(&m, c, &mut r));
        }
        black_box(s.finish(&m, &mut r));
        r.total()
    });

    // 64 KiB JSON responses, as in the Envoy benchmark: digit-heavy records with a few cards,
    // and the worst case of a card-dense customer list inside a text content item.
    let txn: serde_json::Value =
        serde_json::from_slice(&corpus("transactions.json")).unwrap_or_default();
    let mut records = Vec::new();
    let mut size = 0;
    for r in txn["result"]["structuredContent"]["transactions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if size >= 64 << 10 {
            break;
        }
        size += r.to_string().len() + 1;
        records.push(r.clone());
    }
    let txn64 = serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"structuredContent": {"transactions": records}}}).to_string();
    measure(
        "64 KiB JSON response, transactions",
        txn64.len(),
        secs,
        || {
            let mut r = MaskReport::default();
            black_box(m.mask_content(
                Some("application/json"),
                black_box(txn64.as_bytes()),
                &mut r,
            ));
            r.total()
        },
    );
    // The card-dense one.
    let resp: Vec<u8> = corpus("customers.json")
        .into_iter()
        .take(64 << 10)
        .collect();
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let cut = resp.rfind("\n  },").unwrap_or(resp.len());
    let resp = format!(
        "{{\"x\":{}}}",
        serde_json::to_string(&resp[..cut]).unwrap_or_default()
    );
    measure(
        "64 KiB JSON response, 240 cards in text content",
        resp.len(),
        secs,
        || {
            let mut r = MaskReport::default();
            black_box(m.mask_content(Some("application/json"), black_box(resp.as_bytes()), &mut r));
            r.total()
        },
    );
}
