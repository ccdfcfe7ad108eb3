//! Precision and recall of the masking engine on the labelled corpus in `tests/corpus/`
//! (regenerate with `python3 tests/corpus/generate.py`). Recall must be 100% (no labelled card
//! number readable in any view of the output, and the independent checker finds none); every
//! labelled hard negative must come out byte for byte.
//!
//! `cargo test -p tollgate-engine --release --test mask_corpus -- --nocapture` prints the table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "mask_support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::path::PathBuf;

use serde_json::Value;
use support::{find_normalised, normalise};
use tollgate_engine::mask::{MaskReport, Masker};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus")
}

/// Every way a reader can see the output: the bytes, and each decoded JSON string (JSON inside
/// strings included), for JSON bodies and for each SSE event's data.
fn views(out: &str, views: &mut Vec<String>) {
    views.push(out.to_string());
    let push_json = |text: &str, views: &mut Vec<String>| {
        if let Ok(v) = serde_json::from_str::<Value>(text) {
            let mut stack = vec![v];
            while let Some(x) = stack.pop() {
                match x {
                    Value::String(s) => {
                        if let Ok(inner) = serde_json::from_str::<Value>(&s) {
                            stack.push(inner);
                        }
                        views.push(s);
                    }
                    Value::Array(a) => stack.extend(a),
                    Value::Object(o) => {
                        for (k, v) in o {
                            views.push(k);
                            stack.push(v);
                        }
                    }
                    _ => {}
                }
            }
        }
    };
    push_json(out, views);
    for block in out.split("\n\n") {
        let data: Vec<&str> = block
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect();
        if !data.is_empty() {
            push_json(&data.join("\n"), views);
        }
    }
}

/// The labelled numbers whose digits are readable in `text` (normalised), separators ignored.
fn readable<'a>(text: &str, pans: &HashSet<&'a str>, found: &mut HashSet<&'a str>) {
    let collapsed: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.'))
        .collect();
    let lens: HashSet<usize> = pans.iter().map(|p| p.len()).collect();
    let b = collapsed.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        for s in start..i {
            for &l in &lens {
                if let Some(p) = collapsed
                    .get(s..s + l)
                    .filter(|_| s + l <= i)
                    .and_then(|w| pans.get(w))
                {
                    found.insert(p);
                }
            }
        }
    }
}

#[derive(Default)]
struct Row {
    bytes: usize,
    labelled: u64,
    tp: u64,
    fn_: u64,
    fp: u64,
    checker_hits: usize,
    negatives: usize,
    negatives_kept: usize,
}

#[test]
fn mask_corpus_precision_recall() {
    let labels: Value =
        serde_json::from_str(&std::fs::read_to_string(corpus_dir().join("labels.json")).unwrap())
            .unwrap();
    let masker = Masker::default();
    let mut total = Row::default();
    println!(
        "\n{:<24} {:>9} {:>6} {:>6} {:>4} {:>4} {:>9} {:>10} {:>8}",
        "file", "bytes", "cards", "TP", "FN", "FP", "negatives", "precision", "recall"
    );
    for (name, meta) in labels.as_object().unwrap() {
        let body = std::fs::read(corpus_dir().join(name)).unwrap();
        let ct = meta["contentType"].as_str();
        let pans: Vec<&str> = meta["pans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let negatives: Vec<&str> = meta["negatives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mut report = MaskReport::default();
        let out = masker.mask_content(ct, &body, &mut report);
        if let Ok(dir) = std::env::var("MASK_CORPUS_OUT") {
            // For checking with the independent checker: `python3 shared/smoke/pan.py < dir/file`.
            std::fs::write(PathBuf::from(dir).join(name), &out).unwrap();
        }
        let out = String::from_utf8(out).expect("masked output is UTF-8");
        if ct == Some("application/json") {
            serde_json::from_str::<Value>(&out).expect("masked JSON parses");
        }
        let mut vs = Vec::new();
        views(&out, &mut vs);
        let vs: Vec<String> = vs.iter().map(|v| normalise(v)).collect();
        let checker_hits: usize = vs.iter().map(|v| find_normalised(v).len()).sum();
        let mut row = Row {
            bytes: body.len(),
            labelled: pans.len() as u64,
            checker_hits,
            negatives: negatives.len(),
            ..Row::default()
        };
        let set: HashSet<&str> = pans.iter().copied().collect();
        let mut visible = HashSet::new();
        for v in &vs {
            readable(v, &set, &mut visible);
        }
        for p in &pans {
            if visible.contains(p) {
                row.fn_ += 1;
                println!("  NOT MASKED in {name}: {}…{}", &p[..6], &p[p.len() - 4..]);
            } else {
                row.tp += 1;
            }
        }
        row.fp = report.total().saturating_sub(row.tp);
        // Each negative is searched in the whole output: thousands of searches, slow unoptimised,
        // so a debug build checks every 16th (a release build, as `make bench` runs, all).
        let step = if cfg!(debug_assertions) { 16 } else { 1 };
        let checked: Vec<&&str> = negatives.iter().step_by(step).collect();
        row.negatives = checked.len();
        row.negatives_kept = checked.iter().filter(|n| out.contains(**n)).count();
        for n in checked.iter().filter(|n| !out.contains(**n)) {
            println!("  NEGATIVE CHANGED in {name}: {n}");
        }
        print_row(name, &row);
        total.bytes += row.bytes;
        total.labelled += row.labelled;
        total.tp += row.tp;
        total.fn_ += row.fn_;
        total.fp += row.fp;
        total.checker_hits += row.checker_hits;
        total.negatives += row.negatives;
        total.negatives_kept += row.negatives_kept;
    }
    print_row("TOTAL", &total);
    assert_eq!(total.fn_, 0, "recall below 100%");
    assert_eq!(
        total.checker_hits, 0,
        "the independent checker still finds card numbers"
    );
    assert_eq!(
        total.negatives_kept, total.negatives,
        "hard negatives changed"
    );
    assert!(total.fp * 100 <= total.tp, "precision below 99%");
}

fn print_row(name: &str, r: &Row) {
    let precision = if r.tp + r.fp == 0 {
        1.0
    } else {
        r.tp as f64 / (r.tp + r.fp) as f64
    };
    let recall = if r.labelled == 0 {
        1.0
    } else {
        r.tp as f64 / r.labelled as f64
    };
    println!(
        "{:<24} {:>9} {:>6} {:>6} {:>4} {:>4} {:>4}/{:<4} {:>9.2}% {:>7.2}%",
        name,
        r.bytes,
        r.labelled,
        r.tp,
        r.fn_,
        r.fp,
        r.negatives_kept,
        r.negatives,
        precision * 100.0,
        recall * 100.0
    );
}
