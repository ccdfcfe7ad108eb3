//! What an export costs the control plane in memory, as the log grows: the peak resident size
//! (`VmHWM`) of a real `tollgate serve` after exporting everything, for logs of growing size.
//! A streamed export keeps it flat; one built in memory grows with the bundle.
//! `cargo test -p tollgate-control-plane --release --test export_memory -- --ignored --nocapture`

mod common;

use common::{tollgate, Server};
use serde_json::json;
use tollgate_proto::pb;

/// Peak and current resident size of `pid`, in MiB.
fn resident_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .unwrap()
            / 1024.0
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn export_memory_stays_flat_as_the_log_grows() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path());
    let mut client = server.client().await;
    let pid = server.child.id();
    let padding = "x".repeat(1000);
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    println!("records  bundle MiB  server peak RSS before export  after export (MiB)");
    let mut appended = 0;
    for target in [5_000, 10_000, 20_000, 40_000] {
        while appended < target {
            let record = json!({"event": "test.bulk", "n": appended, "padding": padding});
            client
                .append(pb::AppendRequest {
                    record_json: record.to_string().into_bytes(),
                    session: None,
                })
                .await
                .unwrap();
            appended += 1;
        }
        let (before, _) = resident_mib(pid);
        let out = dir.path().join(format!("bundle-{target}.json"));
        let export = tollgate(
            home.path(),
            &[
                "audit",
                "export",
                "--server",
                &url,
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(export.status.success(), "{export:?}");
        let (after, _) = resident_mib(pid);
        let bundle = std::fs::metadata(&out).unwrap().len() as f64 / (1 << 20) as f64;
        println!("{target:>7}  {bundle:>10.1}  {before:>29.1}  {after:>18.1}");
        std::fs::remove_file(&out).unwrap();
    }
}
