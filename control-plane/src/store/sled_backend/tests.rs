use super::*;
use crate::canonical;
use crate::chain::Verifier;
use crate::note::open_checkpoint;
use crate::store::sequencer::faults::{Faults, Faulty};
use crate::store::{Reads, RECEIVED_AT};

fn options(dir: &Path) -> Options {
    Options::new(dir)
}

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("audit.sled"), &options(dir.path())).unwrap();
    (dir, store)
}

/// A store whose writer's driver takes `faults`.
fn faulty_store(path: &Path, faults: &Arc<Faults>) -> Store {
    let dir = path.parent().unwrap();
    Store::open_with(path, &options(dir), |inner| Faulty {
        inner,
        faults: faults.clone(),
    })
    .unwrap()
}

fn verify(store: &Store) -> (u64, Hash) {
    let mut verifier = Verifier::new();
    for record in store.records(0, 0) {
        verifier.check(&record.unwrap()).unwrap();
    }
    (verifier.count(), verifier.head())
}

fn records_json(store: &Store) -> Vec<Value> {
    store
        .records(0, 0)
        .map(|r| serde_json::from_slice(&r.unwrap().canonical_json).unwrap())
        .collect()
}

/// Every stored checkpoint, opened with the log's keys.
fn checkpoints(store: &Store) -> Vec<Checkpoint> {
    let keys = store.verifiers().unwrap();
    store
        .reader
        .checkpoints()
        .unwrap()
        .iter()
        .map(|c| open_checkpoint(&c.note, &keys).unwrap().checkpoint)
        .collect()
}

fn leaves(store: &Store) -> Vec<Hash> {
    store
        .records(0, 0)
        .map(|r| merkle::leaf_hash(&r.unwrap().canonical_json))
        .collect()
}

fn root_of(leaves: &[Hash]) -> Hash {
    let mut frontier = Frontier::new();
    for leaf in leaves {
        frontier.push(*leaf, |_, _, _| {});
    }
    frontier.root()
}

#[tokio::test]
async fn appends_get_dense_sequence_numbers_and_a_verifiable_chain() {
    let (_dir, store) = temp_store();
    let mut previous = GENESIS;
    for n in 0..5u64 {
        let ack = store
            .append(format!(r#"{{"n":{n},"event":"test"}}"#).as_bytes())
            .await
            .unwrap();
        assert_eq!(ack.seq, n);
        let stored = store.records(n, 1).next().unwrap().unwrap();
        assert_eq!(
            ack.chain_hash,
            chain::chain(&previous, &stored.canonical_json)
        );
        previous = ack.chain_hash;
    }
    assert_eq!(verify(&store), (5, previous));
}

#[tokio::test]
async fn stored_record_is_canonical_and_carries_received_at() {
    let (_dir, store) = temp_store();
    store
        .append(br#"{ "z": 1.50, "a": "x", "r": {"receivedAt": "nested is fine"} }"#)
        .await
        .unwrap();
    let stored = store.records(0, 0).next().unwrap().unwrap();
    let text = String::from_utf8(stored.canonical_json.clone()).unwrap();
    let object: Value = serde_json::from_str(&text).unwrap();
    let received = object[RECEIVED_AT].as_str().unwrap();
    humantime::parse_rfc3339(received).unwrap();
    assert_eq!(received.len(), "2025-01-31T12:00:00.123456Z".len());
    assert!(received.ends_with('Z'));
    assert_eq!(
        text,
        format!(
            r#"{{"a":"x","r":{{"receivedAt":"nested is fine"}},"receivedAt":"{received}","z":1.5}}"#
        )
    );
    assert!(canonical::is_canonical_object(&stored.canonical_json));
    assert_eq!(
        serde_jcs::to_vec(&object).unwrap(),
        stored.canonical_json,
        "same bytes as the reference canonicaliser"
    );
}

#[tokio::test]
async fn rejects_bad_bodies_without_storing_or_quoting_them() {
    let (_dir, store) = temp_store();
    for body in [
        &b"[1,2]"[..],
        b"\"4111111111111111\"",
        b"{\"pan\":\"4111111111111111\"",
        b"",
        b"\xff",
    ] {
        let err = store.append(body).await.unwrap_err();
        assert!(matches!(err, StoreError::Record(_)), "{err}");
        assert!(!err.to_string().contains("4111"));
    }
    let err = store
        .append(br#"{"receivedAt":"yesterday"}"#)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ReservedField));
    let err = store
        .append(br#"{"event":"controlPlane.start"}"#)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ReservedEvent));
    for forged in [
        &br#"{"event":"approval.decided"}"#[..],
        br#"{"event":"revocation.lifted"}"#,
        br#"{"event":"serviceAccount.ownerSet"}"#,
    ] {
        let err = store.append(forged).await.unwrap_err();
        assert!(matches!(err, StoreError::ReservedEvent));
    }
    assert_eq!(store.records(0, 0).count(), 0);
    assert_eq!(store.append(b"{}").await.unwrap().seq, 0);
    let mut event = Map::new();
    event.insert("event".into(), "controlPlane.test".into());
    assert_eq!(store.append_event(&event).await.unwrap().seq, 1);
}

#[tokio::test]
async fn reopening_recovers_the_head_and_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.sled");
    let last = {
        let store = Store::open(&path, &options(dir.path())).unwrap();
        for _ in 0..3 {
            store.append(b"{}").await.unwrap();
        }
        store.append(b"{}").await.unwrap()
    };
    let store = Store::open(&path, &options(dir.path())).unwrap();
    assert_eq!(store.opened().unclean, None, "closed cleanly");
    assert_eq!(store.durable_len(), 4);
    let next = store.append(b"{}").await.unwrap();
    assert_eq!(next.seq, 4);
    let stored = store.records(4, 1).next().unwrap().unwrap();
    assert_eq!(
        next.chain_hash,
        chain::chain(&last.chain_hash, &stored.canonical_json)
    );
    assert_eq!(verify(&store).0, 5);
    // Closing signed a checkpoint over the first four.
    let sizes: Vec<u64> = checkpoints(&store).iter().map(|c| c.size).collect();
    assert_eq!(sizes, vec![4]);
}

#[tokio::test]
async fn an_unclean_shutdown_is_recorded_on_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.sled");
    {
        let store = Store::open(&path, &options(dir.path())).unwrap();
        store.append(b"{}").await.unwrap();
        store.close().unwrap();
        // What a killed process leaves behind: its run marker.
        store
            .reader
            .meta
            .insert(
                RUN_KEY,
                &br#"{"pid":1,"openedAt":"2025-01-31T12:00:00.000000Z"}"#[..],
            )
            .unwrap();
        store.reader.db.flush().unwrap();
    }
    let store = Store::open(&path, &options(dir.path())).unwrap();
    assert_eq!(store.opened().unclean.as_ref().unwrap()["pid"], 1);
    let records = records_json(&store);
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["event"], "controlPlane.recovery");
    assert_eq!(records[1]["previousRun"]["pid"], 1);
    assert_eq!(records[1]["records"], 1);
    // The recovery record is covered by a checkpoint right away.
    assert_eq!(checkpoints(&store).last().unwrap().size, 2);
    drop(store);
    let store = Store::open(&path, &options(dir.path())).unwrap();
    assert_eq!(store.opened().unclean, None);
    assert_eq!(store.records(0, 0).count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_one_flush() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let store = Arc::new(faulty_store(&dir.path().join("audit.sled"), &faults));
    const N: usize = 64;
    let flushes_before = store.flushes();
    let gate = faults.gate.lock().unwrap();
    let tasks: Vec<_> = (0..N)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.append(format!(r#"{{"n":{n}}}"#).as_bytes()).await })
        })
        .collect();
    // The writer takes one append, then waits at the gate; the rest queue up behind it.
    while store.pending() < N as u64 {
        // A blocking wait: the appends run on the runtime's workers, not on this thread.
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(gate);
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap().unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..N as u64).collect::<Vec<_>>());
    // The group the writer had taken when the gate closed (perhaps none yet), then every one
    // that queued behind it, in one flush.
    let flushes = store.flushes() - flushes_before;
    assert!(flushes <= 2, "{flushes} flushes for {N} appends");
    assert_eq!(verify(&store).0, N as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_are_durable_before_the_answer() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let ack = store.append(b"{}").await.unwrap();
                // durable_len is only raised after flush returned, before any answer.
                assert!(store.durable_len() > ack.seq);
                ack.seq
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.durable_len(), 200);
    assert!(store.flushes() <= 200);
}

#[tokio::test]
async fn a_failed_flush_is_not_acknowledged_fails_the_store_and_loses_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.sled");
    let mut acked = Vec::new();
    {
        let faults = Arc::new(Faults::default());
        let store = faulty_store(&path, &faults);
        for n in 0..50 {
            acked.push(
                store
                    .append(format!(r#"{{"n":{n}}}"#).as_bytes())
                    .await
                    .unwrap(),
            );
        }
        faults.fail_next.store(true, Ordering::Release);
        assert!(matches!(store.append(b"{}").await, Err(StoreError::Failed)));
        assert_eq!(
            store.durable_len(),
            50,
            "a failed write is not counted durable"
        );
        assert!(matches!(store.append(b"{}").await, Err(StoreError::Failed)));
        assert!(matches!(store.checkpoint().await, Err(StoreError::Failed)));
    }
    // A restart: every acknowledged record is there, the chain and the Merkle tree hold, and
    // the failed run counts as unclean.
    let store = Store::open(&path, &options(dir.path())).unwrap();
    assert!(store.opened().unclean.is_some());
    let stored: Vec<StoredRecord> = store.records(0, 0).map(Result::unwrap).collect();
    for ack in &acked {
        assert_eq!(
            stored[ack.seq as usize].chain_hash,
            hex::encode(ack.chain_hash)
        );
    }
    verify(&store);
    let latest = checkpoints(&store).pop().unwrap();
    assert_eq!(
        latest.root,
        root_of(&leaves(&store)[..latest.size as usize])
    );
}

#[tokio::test]
async fn closing_answers_queued_appends_and_refuses_new_ones() {
    let (_dir, store) = temp_store();
    store.append(b"{}").await.unwrap();
    store.close().unwrap();
    store.close().unwrap();
    assert!(matches!(store.append(b"{}").await, Err(StoreError::Closed)));
}

#[tokio::test]
async fn checkpoints_every_n_records_and_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path());
    options.checkpoint_every = 10;
    options.checkpoint_interval = Duration::from_millis(100);
    let store = Store::open(&dir.path().join("audit.sled"), &options).unwrap();
    for n in 0..25 {
        store
            .append(format!(r#"{{"n":{n}}}"#).as_bytes())
            .await
            .unwrap();
    }
    let sizes: Vec<u64> = checkpoints(&store).iter().map(|c| c.size).collect();
    // At least every 10 records; on a loaded machine the 100 ms timer may sign one in between,
    // which restarts the count.
    assert!(sizes.len() >= 2 && sizes[0] <= 10, "{sizes:?}");
    assert!(sizes.windows(2).all(|w| w[1] - w[0] <= 10), "{sizes:?}");
    assert!(25 - sizes.last().unwrap() < 10, "{sizes:?}");
    // Idle: time-based checkpoints keep coming with the same size and a later time.
    let before = store.checkpoints_signed();
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(store.checkpoints_signed() >= before + 2);
    let all = checkpoints(&store);
    let idle: Vec<&Checkpoint> = all.iter().filter(|c| c.size == 25).collect();
    assert!(idle.len() >= 2);
    assert!(idle
        .windows(2)
        .all(|w| w[0].time < w[1].time && w[0].root == w[1].root));
    let leaves = leaves(&store);
    for checkpoint in &all {
        let size = checkpoint.size as usize;
        assert_eq!(checkpoint.root, root_of(&leaves[..size]));
        assert_eq!(checkpoint.origin, store.origin());
        let record = store
            .records(checkpoint.size - 1, 1)
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(hex::encode(checkpoint.chain_head), record.chain_hash);
    }
}

#[tokio::test]
async fn proofs_from_the_store_verify_against_checkpoints() {
    let (_dir, store) = temp_store();
    for n in 0..77 {
        store
            .append(format!(r#"{{"n":{n}}}"#).as_bytes())
            .await
            .unwrap();
    }
    let first = store.checkpoint().await.unwrap();
    for n in 0..40 {
        store
            .append(format!(r#"{{"m":{n}}}"#).as_bytes())
            .await
            .unwrap();
    }
    let second = store.checkpoint().await.unwrap();
    let keys = store.verifiers().unwrap();
    let old = open_checkpoint(&first.note, &keys).unwrap().checkpoint;
    let new = open_checkpoint(&second.note, &keys).unwrap().checkpoint;
    assert_eq!((old.size, new.size), (77, 117));
    let leaves = leaves(&store);
    for seq in [0, 1, 15, 16, 63, 64, 76, 100, 116] {
        let proof = store.reader.inclusion_proof(seq, new.size).unwrap();
        assert!(merkle::verify_inclusion(
            &leaves[seq as usize],
            seq,
            new.size,
            &proof,
            &new.root
        ));
    }
    let proof = store.reader.consistency_proof(old.size, new.size).unwrap();
    assert!(merkle::verify_consistency(
        old.size, new.size, &old.root, &new.root, &proof
    ));
    assert!(store.reader.inclusion_proof(117, 117).is_err());
    assert!(store.reader.consistency_proof(1, 118).is_err());
}

#[tokio::test]
async fn a_lagging_merkle_tree_is_rebuilt_and_a_longer_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.sled");
    {
        let store = Store::open(&path, &options(dir.path())).unwrap();
        for n in 0..40 {
            store
                .append(format!(r#"{{"n":{n}}}"#).as_bytes())
                .await
                .unwrap();
        }
        store.close().unwrap();
        // As if the Merkle batch of the last group never reached the disk.
        let nodes = store.reader.merkle.clone();
        for (key, _) in nodes.iter().map(Result::unwrap) {
            nodes.remove(key).unwrap();
        }
        let mut partial = Frontier::new();
        for leaf in &leaves(&store)[..3] {
            partial.push(*leaf, |_, _, _| {});
        }
        nodes.insert(FRONTIER_KEY, partial.encode()).unwrap();
        store.reader.db.flush().unwrap();
    }
    let store = Store::open(&path, &options(dir.path())).unwrap();
    assert_eq!(store.opened().merkle_rebuilt, 37);
    let root = store.reader.root(40).unwrap();
    assert_eq!(root, root_of(&leaves(&store)));
    store.close().unwrap();
    // Records removed behind the Merkle tree's back: refused.
    store
        .reader
        .records
        .remove(store.durable_len().saturating_sub(1).to_be_bytes())
        .unwrap();
    store.reader.db.flush().unwrap();
    drop(store);
    let err = Store::open(&path, &options(dir.path())).err().unwrap();
    assert!(matches!(err, StoreError::Inconsistent(_)), "{err}");
}

#[tokio::test]
async fn a_clock_that_goes_back_is_recorded_and_received_at_never_decreases() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let store = faulty_store(&dir.path().join("audit.sled"), &faults);
    store.append(br#"{"n":0}"#).await.unwrap();
    faults.clock_back.store(60_000_000, Ordering::Release);
    store.append(br#"{"n":1}"#).await.unwrap();
    store.append(br#"{"n":2}"#).await.unwrap();
    faults.clock_back.store(0, Ordering::Release);
    store.append(br#"{"n":3}"#).await.unwrap();
    let records = records_json(&store);
    let events: Vec<&str> = records
        .iter()
        .map(|r| r["event"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        events,
        vec!["-", "controlPlane.clockBackwards", "-", "-", "-"],
        "one event per step back"
    );
    assert!(records[1]["backwardsMicros"].as_u64().unwrap() >= 59_000_000);
    let times: Vec<&str> = records
        .iter()
        .map(|r| r[RECEIVED_AT].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(times[0], times[2], "held at the last good time");
    assert!(times[4] > times[3]);
}

#[tokio::test]
async fn rotation_keeps_old_checkpoints_verifiable() {
    let (_dir, store) = temp_store();
    store.append(b"{}").await.unwrap();
    let before = store.checkpoint().await.unwrap();
    let old_key = store.verifiers().unwrap()[0].clone();
    let mut event = Map::new();
    event.insert("operator".into(), json!({"name": "alice"}));
    let (appended, new_key) = store.rotate_key(event).await.unwrap();
    assert_ne!(new_key, old_key);
    let keys = store.verifiers().unwrap();
    assert_eq!(keys, vec![old_key.clone(), new_key.clone()]);
    let all = store.reader.checkpoints().unwrap();
    let first = open_checkpoint(&before.note, &keys).unwrap();
    assert_eq!(first.signer, old_key);
    let latest = open_checkpoint(&all.last().unwrap().note, &keys).unwrap();
    assert_eq!(latest.signer, new_key);
    assert_eq!(latest.checkpoint.size, appended.seq + 1);
    let record = &records_json(&store)[appended.seq as usize];
    assert_eq!(record["event"], "controlPlane.keyRotated");
    assert_eq!(record["newKey"], new_key.encode());
    assert_eq!(record["operator"]["name"], "alice");
    // The old checkpoint does not open with the new key alone.
    assert!(open_checkpoint(&before.note, &[new_key]).is_err());
}

#[tokio::test]
async fn reader_returns_malformed_values_for_the_verifier_to_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.sled");
    {
        let store = Store::open(&path, &options(dir.path())).unwrap();
        for _ in 0..3 {
            store.append(b"{}").await.unwrap();
        }
        // Tamper through sled itself, as someone with access to the files could.
        store
            .reader
            .records
            .insert(1u64.to_be_bytes(), &b"short"[..])
            .unwrap();
    }
    let reader = Reader::open(&path).unwrap();
    let mut verifier = Verifier::new();
    let broken = reader
        .records(0, 0)
        .map(|r| verifier.check(&r.unwrap()))
        .find_map(Result::err)
        .unwrap();
    assert_eq!(broken.seq, 1);
    assert!(Reader::open(&dir.path().join("missing")).is_err());
}

#[tokio::test]
async fn tampering_in_sled_is_detected() {
    let (_dir, store) = temp_store();
    for n in 0..6 {
        store
            .append(format!(r#"{{"sub":"alice","n":{n}}}"#).as_bytes())
            .await
            .unwrap();
    }
    let tree = store.reader.records.clone();
    let first_break = |tree: &sled::Tree| {
        let mut verifier = Verifier::new();
        tree.iter()
            .map(|e| {
                let (k, v) = e.unwrap();
                decode(&Dictionaries::default(), &k, &v).unwrap()
            })
            .map(|r| verifier.check(&r))
            .find_map(Result::err)
            .map(|b| b.seq)
    };
    assert_eq!(first_break(&tree), None);
    let key = |n: u64| n.to_be_bytes();
    let original: Vec<_> = (0..6).map(|n| tree.get(key(n)).unwrap().unwrap()).collect();

    // A changed byte in a record.
    let mut changed = original[2].to_vec();
    let pos = changed.windows(5).position(|w| w == b"alice").unwrap();
    changed[pos] = b'A';
    tree.insert(key(2), changed).unwrap();
    assert_eq!(first_break(&tree), Some(2));
    tree.insert(key(2), original[2].clone()).unwrap();

    // A deleted record.
    tree.remove(key(3)).unwrap();
    assert_eq!(first_break(&tree), Some(3));
    tree.insert(key(3), original[3].clone()).unwrap();

    // Two swapped records.
    tree.insert(key(4), original[1].clone()).unwrap();
    tree.insert(key(1), original[4].clone()).unwrap();
    assert_eq!(first_break(&tree), Some(1));
    tree.insert(key(1), original[1].clone()).unwrap();
    tree.insert(key(4), original[4].clone()).unwrap();

    assert_eq!(first_break(&tree), None);
}

/// The store alone, without gRPC: durable appends per second from concurrent tasks, and the
/// process CPU per append. A measurement, not a check; run with `cargo test --release -p
/// tollgate-control-plane store_only_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn store_only_throughput() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let body = br#"{"decision":"allow","event":"mcp.request","httpMethod":"POST","identity":{"groups":["payments"],"iss":"https://dev.tollgate.local","jti":"abc"},"messages":[{"arguments":{"customerId":"cus_0001"},"id":1,"kind":"request","method":"tools/call","target":"get_customer"}],"outcome":"forwarded","route":"/mcp","session":"session-1","source":"127.0.0.1:50000","sub":"writer1@example.com","time":"2025-01-31T12:00:00.000001Z","upstream":"payments"}"#;
    let cpu = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let fields: Vec<f64> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0.0))
            .collect();
        (fields[11] + fields[12]) / 100.0
    };
    println!("tasks  appends/s  cpu µs/append  records/flush");
    for tasks in [1usize, 16, 64, 256] {
        let (cpu0, flushes0, len0) = (cpu(), store.flushes(), store.durable_len());
        let start = Instant::now();
        let run = Duration::from_secs(3);
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    while start.elapsed() < run {
                        store.append(body).await.unwrap();
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
        let n = (store.durable_len() - len0) as f64;
        println!(
            "{tasks:>5}  {:>9.0}  {:>13.1}  {:>13.1}",
            n / start.elapsed().as_secs_f64(),
            (cpu() - cpu0) * 1e6 / n,
            n / (store.flushes() - flushes0) as f64
        );
    }
    // Verify speed over the records just written, reading sled directly.
    let start = Instant::now();
    let mut check = crate::verify::LogCheck::new(&[]);
    for record in store.records(0, 0) {
        assert!(check.check(&record.unwrap()));
    }
    let summary = check.finish();
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "verify: {} records in {seconds:.2} s = {:.0} records/s",
        summary.records,
        summary.records as f64 / seconds
    );
}

#[tokio::test]
async fn checkpoints_are_read_a_page_at_a_time() {
    let (_dir, store) = temp_store();
    let mut numbers = Vec::new();
    for n in 0..5u64 {
        store
            .append(format!(r#"{{"n":{n},"event":"test"}}"#).as_bytes())
            .await
            .unwrap();
        numbers.push(store.checkpoint().await.unwrap().number);
    }
    let page = |from, limit| -> Vec<u64> {
        store
            .reader()
            .checkpoints_from(from, limit)
            .unwrap()
            .iter()
            .map(|c| c.number)
            .collect()
    };
    assert_eq!(page(numbers[1], 2), numbers[1..3]);
    assert_eq!(page(numbers[4] + 1, 10), Vec::<u64>::new());
    let all: Vec<u64> = store
        .reader()
        .checkpoints()
        .unwrap()
        .iter()
        .map(|c| c.number)
        .collect();
    assert!(all.ends_with(&numbers), "{all:?}");
    let latest = store.reader().latest_checkpoint().unwrap().unwrap();
    assert_eq!(Some(&latest.number), all.last());
}

#[tokio::test]
async fn the_last_time_is_read_from_a_record_holding_an_integer_beyond_2_pow_53() {
    // Records chained before appends were read as I-JSON may hold one (rounded, in canonical
    // form), which `chain::parse_object` now refuses; the clock guard still reads their time.
    let (_dir, store) = temp_store();
    let mut event = Map::new();
    event.insert("client".into(), json!(12_345_678_901_234_567_890u64));
    store.append_event(&event).await.unwrap();
    let stored = store.records(0, 0).last().unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&stored.canonical_json).contains("12345678901234567000"),
        "rounded as before"
    );
    let time = records_json(&store)[0][RECEIVED_AT]
        .as_str()
        .and_then(clock::parse);
    assert!(time.is_some());
    assert_eq!(store.reader.last_received_at().unwrap(), time);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_cut_short_is_finished_at_the_next_open_keeping_what_must_stay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.sled");
    let mut options = options(dir.path());
    options.checkpoint_every = 40;
    let store = Store::open(&path, &options).unwrap();
    for n in 0..100 {
        store
            .append(format!(r#"{{"event":"mcp.request","n":{n}}}"#).as_bytes())
            .await
            .unwrap();
    }
    let mut revocation = Map::new();
    revocation.insert("event".into(), "revocation.added".into());
    let state_change = store.append_event(&revocation).await.unwrap().seq;
    for n in 0..60 {
        store
            .append(format!(r#"{{"event":"mcp.request","n":{n}}}"#).as_bytes())
            .await
            .unwrap();
    }
    let before: Vec<StoredRecord> = store.records(0, 0).map(Result::unwrap).collect();
    let cut = 128;
    let anchor = ArchiveCut {
        cut,
        chain_hash: hex::decode(&before[cut as usize - 1].chain_hash)
            .unwrap()
            .try_into()
            .unwrap(),
    };
    let keep = retained_blocks(store.reader(), 0, cut).unwrap();
    assert!(keep.contains(&(state_change >> STORED_LEVEL)), "{keep:?}");
    assert!(
        keep.contains(&(39 >> STORED_LEVEL)),
        "a checkpoint's end: {keep:?}"
    );
    // The process dies right after marking the prune: nothing removed yet.
    store
        .reader
        .meta
        .insert(PRUNING_KEY, anchor.to_json().to_string().as_bytes())
        .unwrap();
    store.close().unwrap();
    drop(store);

    let store = Store::open(&path, &options).unwrap();
    assert_eq!(store.reader().archive().unwrap(), Some(anchor));
    let after: Vec<u64> = store.records(0, 0).map(|r| r.unwrap().seq).collect();
    let below: Vec<u64> = after.iter().copied().filter(|s| *s < cut).collect();
    let expected: Vec<u64> = keep
        .iter()
        .flat_map(|b| (b << STORED_LEVEL)..((b + 1) << STORED_LEVEL))
        .collect();
    assert_eq!(below, expected);
    assert!(after.contains(&state_change));
    assert!((cut..before.len() as u64).all(|s| after.contains(&s)));
    // The tree and every checkpoint still answer: proofs and roots from the kept nodes.
    let len = store.reader().len().unwrap();
    for checkpoint in checkpoints(&store) {
        assert_eq!(
            store.reader().root(checkpoint.size).unwrap(),
            checkpoint.root
        );
    }
    let proof = store.reader().inclusion_proof(state_change, len).unwrap();
    let root = store.reader().root(len).unwrap();
    let leaf = merkle::leaf_hash(&before[state_change as usize].canonical_json);
    assert!(merkle::verify_inclusion(
        &leaf,
        state_change,
        len,
        &proof,
        &root
    ));
}

/// Copies the directory tree at `from` to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

async fn append_n(store: &Store, from: u64, n: u64) -> Vec<Appended> {
    let mut acked = Vec::new();
    for k in from..from + n {
        // One at a time: each record is a group, an entry of the log, of its own.
        acked.push(
            store
                .append(format!(r#"{{"n":{k}}}"#).as_bytes())
                .await
                .unwrap(),
        );
    }
    acked
}

/// A crash after the log's sync but before sled wrote anything, made exactly: a copy of the
/// store taken while it was closed, then the log of the run after it, copied while that run
/// was still open (so sled in the copy never saw those groups).
#[tokio::test]
async fn acknowledged_groups_only_the_write_ahead_log_holds_are_put_back_on_open() {
    let live = tempfile::tempdir().unwrap();
    let path = live.path().join("audit.sled");
    let store = Store::open(&path, &options(live.path())).unwrap();
    append_n(&store, 0, 5).await;
    store.close().unwrap();
    drop(store);
    let crashed = tempfile::tempdir().unwrap();
    copy_tree(live.path(), crashed.path());

    let store = Store::open(&path, &options(live.path())).unwrap();
    let acked = append_n(&store, 5, 8).await;
    let checkpoint = store.checkpoint().await.unwrap();
    copy_tree(
        &path.join(WAL_DIR),
        &crashed.path().join("audit.sled").join(WAL_DIR),
    );
    let expected: Vec<StoredRecord> = store.records(0, 0).map(Result::unwrap).collect();
    store.close().unwrap();
    drop(store);

    // The last entry torn, as a crash in the middle of its write leaves it: its record was
    // never acknowledged, and the rest comes back.
    let torn_dir = tempfile::tempdir().unwrap();
    let torn = torn_dir.path();
    copy_tree(crashed.path(), torn);
    {
        let wal = torn.join("audit.sled").join(WAL_DIR);
        let (_, file) = wal::files(&wal).unwrap().pop().unwrap();
        let mut bytes = wal::read(&file).unwrap();
        let end = bytes.len() - bytes.iter().rev().position(|b| *b != 0).unwrap();
        bytes[end - 1] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
    }

    // The same damage in a file that a later one follows: only the last write of the last file
    // can be cut short, so this one was acknowledged, and the store refuses to open.
    let damaged_dir = tempfile::tempdir().unwrap();
    let damaged = damaged_dir.path();
    copy_tree(torn, damaged);
    {
        let wal = damaged.join("audit.sled").join(WAL_DIR);
        let (generation, file) = wal::files(&wal).unwrap().pop().unwrap();
        std::fs::copy(&file, wal.join(format!("{:020}.wal", generation + 1))).unwrap();
    }

    let store = Store::open(&crashed.path().join("audit.sled"), &options(crashed.path())).unwrap();
    let stored: Vec<StoredRecord> = store.records(0, 0).map(Result::unwrap).collect();
    assert_eq!(stored.len(), expected.len(), "every logged record is back");
    for (stored, expected) in stored.iter().zip(&expected) {
        assert_eq!(stored.chain_hash, expected.chain_hash);
        assert_eq!(stored.canonical_json, expected.canonical_json);
    }
    for ack in &acked {
        assert_eq!(
            stored[ack.seq as usize].chain_hash,
            hex::encode(ack.chain_hash)
        );
    }
    assert_eq!(verify(&store).0, expected.len() as u64);
    let latest = store.reader.latest_checkpoint().unwrap().unwrap();
    assert_eq!(latest, checkpoint, "the checkpoint logged with its group");
    assert_eq!(
        store.reader.root(13).unwrap(),
        root_of(&leaves(&store)[..13])
    );
    assert!(
        wal::files(&store.reader.wal_dir()).unwrap().len() == 1,
        "the replayed log is removed, a new one started"
    );
    // The chain goes on from the replayed head.
    let next = store.append(b"{}").await.unwrap();
    assert_eq!(next.seq, expected.len() as u64);
    drop(store);

    // The checkpoint alone was the last entry: it is lost with it, every record stays.
    let store = Store::open(&torn.join("audit.sled"), &options(torn)).unwrap();
    assert_eq!(store.records(0, 0).count(), expected.len());
    assert!(store.reader.latest_checkpoint().unwrap().unwrap().number < checkpoint.number);
    verify(&store);
    drop(store);

    let err = Store::open(&damaged.join("audit.sled"), &options(damaged))
        .err()
        .unwrap();
    assert!(err.to_string().contains("before later files"), "{err}");
}

#[tokio::test]
async fn a_write_ahead_log_that_would_leave_a_gap_is_refused() {
    let live = tempfile::tempdir().unwrap();
    let path = live.path().join("audit.sled");
    let store = Store::open(&path, &options(live.path())).unwrap();
    append_n(&store, 0, 3).await;
    drop(store);
    let crashed = tempfile::tempdir().unwrap();
    copy_tree(live.path(), crashed.path());
    // Two more runs: the log copied is the second's, so the first's records are nowhere.
    let store = Store::open(&path, &options(live.path())).unwrap();
    append_n(&store, 3, 3).await;
    drop(store);
    let store = Store::open(&path, &options(live.path())).unwrap();
    append_n(&store, 6, 3).await;
    copy_tree(
        &path.join(WAL_DIR),
        &crashed.path().join("audit.sled").join(WAL_DIR),
    );
    drop(store);
    let err = Store::open(&crashed.path().join("audit.sled"), &options(crashed.path()))
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("neither in sled nor in its write-ahead log"),
        "{err}"
    );
}

#[tokio::test]
async fn a_record_sled_lost_below_its_last_is_put_back_from_the_write_ahead_log() {
    let live = tempfile::tempdir().unwrap();
    let path = live.path().join("audit.sled");
    let store = Store::open(&path, &options(live.path())).unwrap();
    append_n(&store, 0, 4).await;
    store.close().unwrap();
    drop(store);
    let store = Store::open(&path, &options(live.path())).unwrap();
    append_n(&store, 4, 6).await;
    let logged = tempfile::tempdir().unwrap();
    copy_tree(&path.join(WAL_DIR), logged.path());
    let expected: Vec<StoredRecord> = store.records(0, 0).map(Result::unwrap).collect();
    store.close().unwrap();
    drop(store);

    // The writer inserts a group's records one by one: sled keeping a later one and not an
    // earlier is not assumed impossible.
    let crashed = tempfile::tempdir().unwrap();
    copy_tree(live.path(), crashed.path());
    let crashed_path = crashed.path().join("audit.sled");
    {
        let reader = Reader::open_or_create(&crashed_path).unwrap();
        assert!(reader.records.remove(7u64.to_be_bytes()).unwrap().is_some());
        reader.db.flush().unwrap();
    }
    copy_tree(logged.path(), &crashed_path.join(WAL_DIR));

    let store = Store::open(&crashed_path, &options(crashed.path())).unwrap();
    let stored: Vec<StoredRecord> = store.records(0, 0).map(Result::unwrap).collect();
    assert_eq!(stored.len(), expected.len());
    assert_eq!(stored[7].chain_hash, expected[7].chain_hash);
    assert_eq!(verify(&store).0, expected.len() as u64);
}

/// The dictionary ids of the stored frames, in record order (0: packed without one).
fn frame_dictionaries(reader: &Reader) -> Vec<u32> {
    reader
        .records
        .iter()
        .map(|entry| {
            let (_, value) = entry.unwrap();
            assert_eq!(value[32..36], [0x28, 0xb5, 0x2f, 0xfd], "a packed record");
            zstd::zstd_safe::get_dict_id_from_frame(&value[32..])
        })
        .collect()
}

async fn append_calls(store: &Store, from: u64, n: u64) {
    for k in from..from + n {
        let record = format!(
            r#"{{"event":"mcp.request","decision":"allow","sub":"user{}@example.com","route":"/mcp","requestId":"req-{k:08}","tool":"tool{}"}}"#,
            k % 7,
            k % 3
        );
        store.append(record.as_bytes()).await.unwrap();
    }
}

#[tokio::test]
async fn records_are_packed_with_a_dictionary_trained_on_the_first_and_stored_before_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.sled");
    let options = Options {
        dictionary_after: 100,
        ..options(dir.path())
    };
    let store = Store::open(&path, &options).unwrap();
    append_calls(&store, 0, 100).await;
    // Training runs beside the writer; the writer packs with the dictionary once it is stored.
    let mut n = 100;
    while store.reader.meta.get(DICTIONARY_KEY).unwrap().is_none() || n < 150 {
        append_calls(&store, n, 10).await;
        n += 10;
        assert!(n < 5000, "no dictionary was trained");
    }
    append_calls(&store, n, 50).await;
    let ids = frame_dictionaries(&store.reader);
    let trained = *ids.last().unwrap();
    assert_ne!(trained, 0);
    assert!(
        ids[..100].iter().all(|id| *id == 0),
        "the samples packed without"
    );
    let first = ids.iter().position(|id| *id == trained).unwrap();
    assert!(ids[first..].iter().all(|id| *id == trained));
    let sizes: Vec<usize> = store
        .reader
        .records
        .iter()
        .map(|e| e.unwrap().1.len())
        .collect();
    let mean = |s: &[usize]| s.iter().sum::<usize>() / s.len();
    eprintln!(
        "packed record: {} bytes with the dictionary, {} without",
        mean(&sizes[first..]),
        mean(&sizes[..first])
    );
    assert!(
        mean(&sizes[first..]) * 2 < mean(&sizes[..first]),
        "with the dictionary {} bytes a record, without {}",
        mean(&sizes[first..]),
        mean(&sizes[..first])
    );
    let expected = records_json(&store);
    assert_eq!(verify(&store).0, expected.len() as u64);
    store.close().unwrap();
    drop(store);

    // Reopened: read back whole, and the writer packs with the stored dictionary at once.
    let store = Store::open(&path, &options).unwrap();
    assert_eq!(records_json(&store)[..expected.len()], expected[..]);
    let len = expected.len() as u64;
    append_calls(&store, len, 1).await;
    assert_eq!(*frame_dictionaries(&store.reader).last().unwrap(), trained);
    verify(&store);
    store.close().unwrap();
    drop(store);

    // The dictionary removed: every record packed with it no longer reads as it was chained,
    // and the chain breaks at the first of them.
    {
        let reader = Reader::open_or_create(&path).unwrap();
        let key = [DICTIONARY_PREFIX, &trained.to_be_bytes()].concat();
        assert!(reader.meta.remove(key).unwrap().is_some());
        reader.db.flush().unwrap();
    }
    let reader = Reader::open(&path).unwrap();
    let mut verifier = Verifier::new();
    let broken = reader
        .records(0, 0)
        .map(|r| verifier.check(&r.unwrap()))
        .find_map(Result::err)
        .expect("the chain breaks");
    assert_eq!(broken.seq, first as u64);
}

#[tokio::test]
async fn a_store_created_with_sled_s_compression_keeps_it_and_plain_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.sled");
    // As every store was created before records were packed.
    drop(
        sled::Config::new()
            .path(&path)
            .use_compression(true)
            .open()
            .unwrap(),
    );
    let store = Store::open(&path, &options(dir.path())).unwrap();
    append_calls(&store, 0, 20).await;
    let value = store
        .reader
        .records
        .get(5u64.to_be_bytes())
        .unwrap()
        .unwrap();
    assert_eq!(value[32], b'{', "stored as canonical JSON");
    assert_eq!(verify(&store).0, 20);
    store.close().unwrap();
    drop(store);
    let store = Store::open(&path, &options(dir.path())).unwrap();
    assert_eq!(verify(&store).0, 20);
}
