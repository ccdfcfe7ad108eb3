//! One sequencer over small storage drivers: the part of appending that is the same whatever
//! holds the log.
//!
//! The [`Sequencer`] turns a group of prepared records into one [`Write`]: it stamps them
//! (`receivedAt`, never before the last time written; a `controlPlane.clockBackwards` record the
//! first time the clock is seen behind), chains them, extends the Merkle tree, and signs a
//! checkpoint when one is due (every `checkpoint_every` records, every `checkpoint_interval`) or
//! asked for. It is pure: it gets the log's [`Tip`] and the time, and returns what to store.
//!
//! The [`Writer`] is the group-commit loop: it takes the appends waiting in its queue as one
//! group, has its [`Driver`] make the group's write durable, then answers every append of the
//! group. Checkpoints on request, with a record, idle, at close, and key rotations go through
//! it too.
//!
//! A [`Driver`] is what differs between stores: where the tip comes from and what "durable"
//! means. sled keeps the tip in memory and flushes; PostgreSQL reads the tip from its head row
//! in the transaction (other replicas append too) and commits. Tests put a driver between the
//! writer and the real one to fail writes, hold them, or move the clock (`Faulty`): no test hook
//! lives in the loop.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::{
    clock_backwards_event, Appended, Head, Prepared, StoreError, StoredCheckpoint, MAX_GROUP,
};
use crate::chain::Hash;
use crate::clock::{self, Micros};
use crate::keys::KeyDir;
use crate::merkle::Frontier;
use crate::note::{Checkpoint, NoteSigner, NoteVerifier};

/// The end of the log as its last durable write left it.
#[derive(Debug, Clone)]
pub(crate) struct Tip {
    pub head: Head,
    pub frontier: Frontier,
    /// The last time written into a record or a checkpoint.
    pub last_time: Micros,
    /// The size the last checkpoint signed, if any.
    pub checkpoint_size: Option<u64>,
    /// The number the next checkpoint gets.
    pub checkpoint_number: u64,
    /// When the checkpoint interval started: the last checkpoint's time (or the log's first
    /// write, or this process's open).
    pub checkpoint_time: Micros,
}

/// What one durable write stores, all or nothing.
pub(crate) struct Write {
    /// Sequence number and stored value: the chain hash, then the canonical record.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Merkle nodes completed at [`super::STORED_LEVEL`] or above: level, index, hash.
    pub nodes: Vec<(u32, u64, Hash)>,
    pub checkpoint: Option<StoredCheckpoint>,
    /// The tip after this write; its frontier is stored with it.
    pub tip: Tip,
}

/// Whether a write signs a checkpoint besides any that is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sign {
    WhenDue,
    Always,
    /// Unless the last checkpoint already covers every record (closing).
    IfUncovered,
}

/// Sequencing state that is not in the log: the signing key, the cadence, and whether the clock
/// was already reported behind.
pub(crate) struct Sequencer {
    signer: NoteSigner,
    origin: String,
    every: u64,
    interval: Micros,
    clock_behind: bool,
}

impl Sequencer {
    pub fn new(signer: NoteSigner, origin: String, every: u64, interval: Duration) -> Self {
        Self {
            signer,
            origin,
            every: every.max(1),
            interval: u64::try_from(interval.as_micros()).unwrap_or(u64::MAX),
            clock_behind: false,
        }
    }

    /// `records` chained onto `tip` at `now`, with a checkpoint when due or asked for; their
    /// acknowledgements go to `appended`. `None`: nothing to write (no record, no checkpoint).
    pub fn sequence(
        &mut self,
        tip: &Tip,
        now: Micros,
        records: Vec<Prepared>,
        sign: Sign,
        appended: &mut Vec<Appended>,
    ) -> Option<Write> {
        let (time, clock_event) = if now >= tip.last_time {
            self.clock_behind = false;
            (now, None)
        } else if self.clock_behind || records.is_empty() {
            // A checkpoint alone leaves a clock found behind for the next record to report.
            (tip.last_time, None)
        } else {
            self.clock_behind = true;
            (tip.last_time, clock_backwards_event(now, tip.last_time))
        };
        let uncovered = tip.checkpoint_size != Some(tip.head.len);
        let since_checkpoint = tip.head.len - tip.checkpoint_size.unwrap_or(0);
        let due = match sign {
            Sign::Always => true,
            Sign::IfUncovered => uncovered || !records.is_empty(),
            Sign::WhenDue => false,
        } || since_checkpoint + records.len() as u64 >= self.every
            || time.saturating_sub(tip.checkpoint_time) >= self.interval;
        if records.is_empty() && !due {
            return None;
        }
        let mut head = tip.head;
        let mut frontier = tip.frontier.clone();
        let mut rows = Vec::with_capacity(records.len() + 1);
        let mut nodes = Vec::new();
        let mut push = |record: Prepared, head: &mut Head, frontier: &mut Frontier| {
            let (value, ack) = record.write(time, head, frontier, |level, index, node| {
                nodes.push((level, index, *node));
            });
            rows.push((ack.seq, value));
            ack
        };
        if let Some(event) = clock_event {
            push(event, &mut head, &mut frontier);
        }
        for record in records {
            appended.push(push(record, &mut head, &mut frontier));
        }
        let mut next = Tip {
            head,
            frontier,
            last_time: time.max(tip.last_time),
            ..tip.clone()
        };
        let checkpoint = due.then(|| {
            let text = Checkpoint {
                origin: self.origin.clone(),
                size: head.len,
                root: next.frontier.root(),
                chain_head: head.hash,
                time: clock::format(time),
            }
            .text();
            let stored = StoredCheckpoint {
                number: tip.checkpoint_number,
                note: self.signer.sign(&text),
            };
            next.checkpoint_size = Some(head.len);
            next.checkpoint_number = tip.checkpoint_number + 1;
            next.checkpoint_time = time;
            stored
        });
        Some(Write {
            records: rows,
            nodes,
            checkpoint,
            tip: next,
        })
    }
}

/// What a driver's write did: what it stored, and how long making it durable took.
pub(crate) struct Committed {
    pub write: Option<Write>,
    pub durable: Duration,
}

/// A plan for one write: given the tip and the time, what to store (see [`Sequencer::sequence`]).
pub(crate) type Plan<'a> = Box<dyn FnOnce(&Tip, Micros) -> Option<Write> + Send + 'a>;

/// Where the log is kept.
pub(crate) trait Driver: Send + 'static {
    /// Reads the tip and the time of this write, runs `plan` on them, and makes what it returns
    /// durable, all or nothing, before returning it.
    fn write<'a>(
        &'a mut self,
        plan: Plan<'a>,
    ) -> impl Future<Output = Result<Committed, StoreError>> + Send + 'a;

    /// After a failed write: whether every later write must be refused (the store cannot tell
    /// what reached the disk), or the next may try again (a transaction is all or nothing).
    fn failure_is_final(&self) -> bool;
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One append waiting for the writer.
pub(crate) struct Pending {
    pub record: Prepared,
    pub reply: Option<Reply<Appended>>,
}

pub(crate) enum Message {
    Append(Pending),
    /// Sign a checkpoint now.
    Checkpoint(Reply<StoredCheckpoint>),
    /// Record `record`, then sign a checkpoint right after it, before anything else is written:
    /// the checkpoint's last leaf is this record (an export's).
    AppendAndCheckpoint {
        record: Prepared,
        reply: Reply<(Appended, StoredCheckpoint)>,
    },
    /// Switch to a new signing key: record `event` (fields of the rotation record), then sign a
    /// checkpoint with the new key.
    Rotate {
        event: Map<String, Value>,
        reply: Reply<(Appended, NoteVerifier)>,
    },
}

/// What the store handle reads of its writer.
#[derive(Default)]
pub(crate) struct Shared {
    /// Set by a final failure: every later append is refused.
    pub failed: AtomicBool,
    /// The chain's length after this process's latest durable write (raised before the write's
    /// appends are answered).
    pub durable_len: AtomicU64,
    pub flushes: AtomicU64,
    /// Time spent making writes durable, for the stop record and the benchmark.
    pub flush_micros: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Appends in the write under way.
    pub in_flight: AtomicU64,
}

/// The group-commit loop over one driver.
pub(crate) struct Writer<D> {
    pub driver: D,
    pub sequencer: Sequencer,
    /// Where rotated keys go; `None`: this store does not rotate.
    pub keys: Option<KeyDir>,
    pub interval: Duration,
    pub shared: Arc<Shared>,
    /// The runtime the appenders wait on, when the writer runs on a thread of its own: one task
    /// there answers a whole group with cheap local wakes, instead of one futex wake per task
    /// from this thread (measured: a quarter of the writer's time at 64 writers).
    pub answer_on: Option<tokio::runtime::Handle>,
}

impl<D: Driver> Writer<D> {
    /// Serves the queue until every sender is gone, then signs a last checkpoint over what this
    /// process wrote.
    pub async fn run(mut self, mut queue: mpsc::Receiver<Message>) {
        let mut carried: Option<Message> = None;
        loop {
            let message = match carried.take() {
                Some(message) => message,
                None => match tokio::time::timeout(self.interval, queue.recv()).await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(_) => {
                        // Idle: a checkpoint shows the log is alive and unchanged. A failure is
                        // already reported.
                        let _ = self.write(Vec::new(), Sign::WhenDue).await;
                        continue;
                    }
                },
            };
            match message {
                Message::Append(first) => {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match queue.try_recv() {
                            Ok(Message::Append(pending)) => group.push(pending),
                            Ok(other) => {
                                carried = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit(group).await;
                }
                Message::Checkpoint(reply) => {
                    let result =
                        self.write(Vec::new(), Sign::Always)
                            .await
                            .and_then(|(checkpoint, _)| {
                                checkpoint.ok_or_else(|| {
                                    StoreError::Task("no checkpoint was signed".into())
                                })
                            });
                    let _ = reply.send(result);
                }
                Message::AppendAndCheckpoint { record, reply } => {
                    let result = self.write(vec![record], Sign::Always).await.and_then(
                        |(checkpoint, appended)| match (appended.into_iter().next(), checkpoint) {
                            (Some(appended), Some(checkpoint)) => Ok((appended, checkpoint)),
                            _ => Err(StoreError::Task("no checkpoint was signed".into())),
                        },
                    );
                    let _ = reply.send(result);
                }
                Message::Rotate { event, reply } => {
                    let _ = reply.send(self.rotate(event).await);
                }
            }
        }
        // Closing: a last checkpoint covers everything written (the stop record included).
        let _ = self.write(Vec::new(), Sign::IfUncovered).await;
    }

    /// Writes a group of appends and answers each.
    async fn commit(&mut self, group: Vec<Pending>) {
        let (records, replies): (Vec<_>, Vec<_>) =
            group.into_iter().map(|p| (p.record, p.reply)).unzip();
        self.shared
            .in_flight
            .store(records.len() as u64, Ordering::Release);
        let result = self.write(records, Sign::WhenDue).await;
        self.shared.in_flight.store(0, Ordering::Release);
        match result {
            Ok((_, appended)) => self.answer(replies.into_iter().zip(appended).collect()),
            Err(e) => {
                let message = e.to_string();
                for reply in replies.into_iter().flatten() {
                    let error = match e {
                        StoreError::Failed => StoreError::Failed,
                        _ => StoreError::WriteFailed(message.clone()),
                    };
                    let _ = reply.send(Err(error));
                }
            }
        }
    }

    /// Writes `records` (and a checkpoint as `sign` says) through the driver. Returns the
    /// checkpoint signed, if any, and the records' acknowledgements.
    pub async fn write(
        &mut self,
        records: Vec<Prepared>,
        sign: Sign,
    ) -> Result<(Option<StoredCheckpoint>, Vec<Appended>), StoreError> {
        if self.shared.failed.load(Ordering::Acquire) {
            // Nothing more is written or signed once the store cannot tell what is durable.
            return Err(StoreError::Failed);
        }
        let mut appended = Vec::with_capacity(records.len());
        let sequencer = &mut self.sequencer;
        let acks = &mut appended;
        let plan: Plan<'_> =
            Box::new(move |tip, now| sequencer.sequence(tip, now, records, sign, acks));
        match self.driver.write(plan).await {
            Ok(Committed { write, durable }) => {
                let Some(write) = write else {
                    return Ok((None, appended));
                };
                let micros = u64::try_from(durable.as_micros()).unwrap_or(u64::MAX);
                self.shared.flush_micros.fetch_add(micros, Ordering::AcqRel);
                self.shared.flushes.fetch_add(1, Ordering::AcqRel);
                self.shared
                    .durable_len
                    .fetch_max(write.tip.head.len, Ordering::AcqRel);
                if write.checkpoint.is_some() {
                    self.shared.checkpoints.fetch_add(1, Ordering::AcqRel);
                }
                Ok((write.checkpoint, appended))
            }
            Err(e) if self.driver.failure_is_final() => {
                self.shared.failed.store(true, Ordering::Release);
                eprintln!("tollgate: audit store write failed, refusing further appends: {e}");
                Err(StoreError::Failed)
            }
            Err(e) => {
                eprintln!("tollgate: audit store write failed (the next one tries again): {e}");
                Err(e)
            }
        }
    }

    async fn rotate(
        &mut self,
        mut event: Map<String, Value>,
    ) -> Result<(Appended, NoteVerifier), StoreError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed);
        }
        let Some(keys) = &self.keys else {
            return Err(StoreError::Unsupported(
                "this store does not rotate its signing key".into(),
            ));
        };
        let old = self.sequencer.signer.verifier();
        let signer = keys.rotate(&self.sequencer.origin)?;
        let new = signer.verifier();
        self.sequencer.signer = signer;
        event.insert("event".into(), "controlPlane.keyRotated".into());
        event.insert("previousKey".into(), old.encode().into());
        event.insert("newKey".into(), new.encode().into());
        let record = Prepared::new(&event)?;
        let (_, appended) = self.write(vec![record], Sign::Always).await?;
        let appended = appended.into_iter().next().ok_or(StoreError::Closed)?;
        Ok((appended, new))
    }

    fn answer(&self, replies: Vec<(Option<Reply<Appended>>, Appended)>) {
        fn send_all(replies: Vec<(Option<Reply<Appended>>, Appended)>) {
            for (reply, appended) in replies {
                // A caller that went away still has its record stored; nothing to undo.
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(appended));
                }
            }
        }
        match &self.answer_on {
            // A lone reply costs one wake either way.
            Some(runtime) if replies.len() > 1 => {
                runtime.spawn(async move { send_all(replies) });
            }
            _ => send_all(replies),
        }
    }
}

/// Faults put between a writer and its driver, for tests: a write that fails, a write held
/// until released, a clock set back.
#[cfg(test)]
pub(crate) mod faults {
    use super::*;

    #[derive(Default)]
    pub(crate) struct Faults {
        /// The next write fails after the driver made it durable (the store cannot tell).
        pub fail_next: AtomicBool,
        /// Microseconds the clock reads behind the real one.
        pub clock_back: AtomicU64,
        /// Held by a test to keep writes from starting.
        pub gate: std::sync::Mutex<()>,
    }

    pub(crate) struct Faulty<D> {
        pub inner: D,
        pub faults: Arc<Faults>,
    }

    impl<D: Driver> Driver for Faulty<D> {
        async fn write<'a>(&'a mut self, plan: Plan<'a>) -> Result<Committed, StoreError> {
            drop(self.faults.gate.lock().unwrap_or_else(|e| e.into_inner()));
            let back = self.faults.clock_back.load(Ordering::Acquire);
            let committed = self
                .inner
                .write(Box::new(move |tip, now| {
                    plan(tip, now.saturating_sub(back))
                }))
                .await?;
            if self.faults.fail_next.swap(false, Ordering::AcqRel) {
                return Err(StoreError::Io(sled::Error::Io(std::io::Error::other(
                    "injected write failure",
                ))));
            }
            Ok(committed)
        }

        fn failure_is_final(&self) -> bool {
            self.inner.failure_is_final()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain;
    use crate::note::open_checkpoint;

    fn tip() -> Tip {
        Tip {
            head: Head {
                len: 0,
                hash: chain::GENESIS,
            },
            frontier: Frontier::new(),
            last_time: 1_000,
            checkpoint_size: None,
            checkpoint_number: 0,
            checkpoint_time: 1_000,
        }
    }

    fn record(n: u64) -> Prepared {
        let mut object = Map::new();
        object.insert("n".into(), n.into());
        Prepared::new(&object).unwrap()
    }

    fn sequencer(every: u64) -> Sequencer {
        Sequencer::new(
            NoteSigner::generate("log.test").unwrap(),
            "log.test".into(),
            every,
            Duration::from_secs(10),
        )
    }

    #[test]
    fn a_group_is_chained_stamped_once_and_checkpointed_when_due() {
        let mut sequencer = sequencer(3);
        let verifier = sequencer.signer.verifier();
        let mut acks = Vec::new();
        let write = sequencer
            .sequence(
                &tip(),
                2_000,
                vec![record(0), record(1)],
                Sign::WhenDue,
                &mut acks,
            )
            .unwrap();
        assert_eq!(acks.iter().map(|a| a.seq).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(write.records.len(), 2);
        assert!(write.checkpoint.is_none(), "2 of 3 records");
        assert_eq!(write.tip.last_time, 2_000);
        let second = write.records[1].1.clone();
        let mut previous = [0u8; 32];
        previous.copy_from_slice(&write.records[0].1[..32]);
        assert_eq!(&second[..32], &chain::chain(&previous, &second[32..])[..]);
        assert!(String::from_utf8_lossy(&second).contains("1970-01-01T00:00:00.002000Z"));

        let mut acks = Vec::new();
        let write = sequencer
            .sequence(&write.tip, 3_000, vec![record(2)], Sign::WhenDue, &mut acks)
            .unwrap();
        let checkpoint = write.checkpoint.unwrap();
        let opened = open_checkpoint(&checkpoint.note, &[verifier]).unwrap();
        assert_eq!(opened.checkpoint.size, 3);
        assert_eq!(opened.checkpoint.root, write.tip.frontier.root());
        assert_eq!(write.tip.checkpoint_number, 1);
        assert!(sequencer
            .sequence(&write.tip, 4_000, Vec::new(), Sign::IfUncovered, &mut acks)
            .is_none());
    }

    #[test]
    fn a_clock_behind_is_reported_once_and_time_never_goes_back() {
        let mut sequencer = sequencer(1000);
        let mut acks = Vec::new();
        let write = sequencer
            .sequence(&tip(), 500, vec![record(0)], Sign::WhenDue, &mut acks)
            .unwrap();
        assert_eq!(write.records.len(), 2, "the clock record, then the record");
        assert!(String::from_utf8_lossy(&write.records[0].1).contains("clockBackwards"));
        assert_eq!(acks[0].seq, 1);
        assert_eq!(write.tip.last_time, 1_000);
        let write = sequencer
            .sequence(&write.tip, 600, vec![record(1)], Sign::WhenDue, &mut acks)
            .unwrap();
        assert_eq!(write.records.len(), 1, "reported once");
        let write = sequencer
            .sequence(&write.tip, 20_000_000, Vec::new(), Sign::WhenDue, &mut acks)
            .unwrap();
        assert!(write.checkpoint.is_some(), "the interval passed");
        assert!(write.records.is_empty());
    }
}
