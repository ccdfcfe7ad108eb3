//! Envoy metrics from the filter (names in [`crate::metrics`]). Each name is defined once per VM
//! and its id kept; Envoy shares a stat of the same name across workers.

use std::cell::RefCell;
use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

thread_local! {
    static IDS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
}

fn id(kind: MetricType, name: &str) -> Option<u32> {
    IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if let Some(id) = ids.get(name) {
            return Some(*id);
        }
        // A metric the host refuses is skipped: counting must never cost a request.
        let id = hostcalls::define_metric(kind, name).ok()?;
        ids.insert(name.to_owned(), id);
        Some(id)
    })
}

pub fn count(name: &str, n: u64) {
    if let Some(id) = id(MetricType::Counter, name) {
        let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }
}

pub fn gauge_add(name: &str, delta: i64) {
    if let Some(id) = id(MetricType::Gauge, name) {
        let _ = hostcalls::increment_metric(id, delta);
    }
}

pub fn record(name: &str, value: u64) {
    if let Some(id) = id(MetricType::Histogram, name) {
        let _ = hostcalls::record_metric(id, value);
    }
}
