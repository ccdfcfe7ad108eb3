use super::*;
use serde_json::Map;

#[allow(dead_code)] // the harness's other helpers serve the integration tests
#[path = "../../../tests/common/pg.rs"]
mod cluster;

/// The contract's group commit, on PostgreSQL: appends that arrive while a transaction waits
/// go into the next one together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_on_one_replica_share_one_transaction() {
    let pg = cluster::Postgres::start();
    let url = pg.database("tollgate");
    let home = tempfile::tempdir().unwrap();
    let mut options = Options::new(home.path());
    // No idle checkpoint transaction may take the writer's turn during the test.
    options.checkpoint_interval = Duration::from_secs(3600);
    let store = Arc::new(Store::open(&url, &options).await.unwrap());

    // Another session holds the head row, so the writer's first transaction waits on it
    // while the other appends queue behind it.
    let mut gate = connect(&url).await.unwrap();
    let held = gate.transaction().await.unwrap();
    held.query_one("SELECT len FROM tollgate_head WHERE id = 1 FOR UPDATE", &[])
        .await
        .unwrap();
    const N: u64 = 64;
    let flushes_before = store.flushes();
    let tasks: Vec<_> = (0..N)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut record = Map::new();
                record.insert("n".into(), n.into());
                store
                    .append_prepared(Prepared::new(&record).unwrap())
                    .await
                    .unwrap()
                    .seq
            })
        })
        .collect();
    while store.pending() < N {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    held.rollback().await.unwrap();
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..N).collect::<Vec<_>>());
    // The group the writer had taken, then everything that queued meanwhile.
    assert!(store.flushes() - flushes_before <= 2, "{}", store.flushes());
    assert_eq!(store.reader().len().unwrap(), N);
    store.close().await.unwrap();
}

/// A cut writer connection: an append that meets it is refused and not stored, the writer goes
/// on with a fresh connection, and the chain stays dense.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_reconnects_and_an_unacknowledged_append_is_not_stored() {
    let pg = cluster::Postgres::start();
    let url = pg.database("tollgate");
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(&url, &Options::new(home.path())).await.unwrap();
    let first = store
        .append_prepared(Prepared::new(&Map::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(first.seq, 0);
    // The writer's connection is cut, as a database restart or failover would.
    pg.psql(
        "tollgate",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'tollgate writer'",
    );
    let mut acknowledged = Vec::new();
    for _ in 0..3 {
        if let Ok(ack) = store
            .append_prepared(Prepared::new(&Map::new()).unwrap())
            .await
        {
            acknowledged.push(ack.seq);
        }
    }
    // The append that met the cut connection may fail; the writer then reconnects.
    assert!(acknowledged.len() >= 2, "{acknowledged:?}");
    let stored: Vec<u64> = tokio::task::block_in_place(|| {
        store
            .reader()
            .records(0, 0)
            .map(|r| r.unwrap().seq)
            .collect()
    });
    assert_eq!(stored, (0..stored.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        stored.len(),
        1 + acknowledged.len(),
        "only acknowledged appends"
    );
    for seq in acknowledged {
        assert!(stored.contains(&seq));
    }
    store.close().await.unwrap();
}

/// A cut read connection (the approvals', revocations' and readers'): the read that meets it
/// may fail, the next one reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_reconnect_after_the_connection_is_cut() {
    let pg = cluster::Postgres::start();
    let url = pg.database("tollgate");
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(&url, &Options::new(home.path())).await.unwrap();
    let state = store.table("test");
    state.insert(b"k", b"v").await.unwrap();
    pg.psql(
        "tollgate",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'tollgate reads'",
    );
    // The reads that meet the cut connection fail until the driver sees it closed; then one
    // reconnects. Bounded, so that a connection that never comes back fails the test.
    let mut read = None;
    for _ in 0..200 {
        if let Ok(value) = state.get(b"k").await {
            read = Some(value);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(read.flatten().as_deref(), Some(&b"v"[..]));
    let len = tokio::task::block_in_place(|| store.reader().len()).unwrap();
    assert_eq!(len, 0);
    store.close().await.unwrap();
}
