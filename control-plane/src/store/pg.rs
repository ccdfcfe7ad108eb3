//! The PostgreSQL backend: several `tollgate serve` replicas append to one chain in one
//! database.
//!
//! # Contract, beyond the one in [`super`]
//!
//! - One total order: the head row (`tollgate_head`, one row) holds the chain's length, last
//!   hash, Merkle frontier, last `receivedAt` and checkpoint state. Every write locks it
//!   (`SELECT … FOR UPDATE`), assigns the next sequence numbers from it, inserts the records,
//!   their Merkle nodes and any checkpoint, advances it, and commits, all in one transaction.
//!   Replicas therefore take turns; none can fork the chain or leave a gap, and a transaction
//!   that fails leaves nothing behind.
//! - Group commit: each replica's writer task takes every append pending in that replica and
//!   writes them in one transaction; an append is answered only after `COMMIT` returned.
//! - `receivedAt` is the database's clock (`clock_timestamp()`) read under the head lock, so
//!   replicas with skewed clocks still write non-decreasing times; when it reads earlier than
//!   the last time written, a `controlPlane.clockBackwards` record says so, as on sled.
//! - Checkpoints: any replica may sign, in the same transaction as records it covers, when
//!   `checkpoint_every` records or `checkpoint_interval` (by the database's clock, kept in the
//!   head row) have passed since the last checkpoint of any replica. Every replica MUST sign
//!   with the same key: the first opener records its public key in `tollgate_meta`, and a
//!   replica with another key refuses to start.
//! - A failed transaction is answered with an error and retried with a fresh connection on the
//!   next append; unlike sled there is no uncertain half-written state to refuse appends over.
//!
//! # Schema (`tollgate store migrate`, or the first `serve` with the privilege)
//!
//! `tollgate_meta(key, value)`: `schema`, `origin`, `signing_key`. `tollgate_head`: see above.
//! `tollgate_records(seq, chain_hash, record)`. `tollgate_merkle(level, idx, hash)` for levels
//! >= [`STORED_LEVEL`]. `tollgate_checkpoints(number, note)`. `tollgate_state(space, key,
//! value)`: the approvals' and revocations' state.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::sequencer::{Committed, Driver, Message, Pending, Plan, Sequencer, Shared, Tip, Writer};
use super::{
    block_on, ChangeLock, Head, LockHeld, Opened, Options, Prepared, Reads, RecordIter, StoreError,
    StoredCheckpoint,
};
use crate::chain::{Hash, StoredRecord, GENESIS};
use crate::clock::Micros;
use crate::keys::{KeyDir, KeyError};
use crate::merkle::Frontier;
use crate::note::{self, NoteVerifier};

use super::Appended;

/// The schema this build writes; `tollgate_meta.schema`.
pub const SCHEMA_VERSION: &str = "1";

/// Appends waiting for this replica's writer; callers wait (backpressure) when it is full.
const QUEUE_CAPACITY: usize = 8192;
/// Records fetched per query when reading in order.
const PAGE: i64 = 2000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tollgate_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS tollgate_head (
    id int PRIMARY KEY CHECK (id = 1),
    len bigint NOT NULL,
    hash bytea NOT NULL,
    frontier bytea NOT NULL,
    last_time bigint NOT NULL,
    checkpoint_size bigint,
    checkpoint_number bigint NOT NULL,
    checkpoint_time bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS tollgate_records (
    seq bigint PRIMARY KEY,
    chain_hash bytea NOT NULL,
    record bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS tollgate_merkle (
    level smallint NOT NULL,
    idx bigint NOT NULL,
    hash bytea NOT NULL,
    PRIMARY KEY (level, idx)
);
CREATE TABLE IF NOT EXISTS tollgate_checkpoints (
    number bigint PRIMARY KEY,
    note text NOT NULL
);
CREATE TABLE IF NOT EXISTS tollgate_state (
    space text NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (space, key)
);
";

/// The advisory lock key for `name`: the first 8 bytes of `SHA-256("tollgate:" + name)`.
fn lock_key(name: &str) -> i64 {
    let digest = Sha256::digest(format!("tollgate:{name}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// The URL's connection settings, and the extra root certificates its `sslrootcert` names.
///
/// TLS follows `sslmode` as libpq does, except that every TLS connection verifies the server's
/// certificate and name (`require`, `verify-ca` and `verify-full` all mean `verify-full`):
/// `disable` never uses TLS, `prefer` (the default) uses it when the server offers it, the
/// others refuse a server without it. Trusted roots: the Mozilla roots (`webpki-roots`) and the
/// PEM certificates of `sslrootcert` (a managed database's own CA).
fn parse_url(url: &str) -> Result<(tokio_postgres::Config, Vec<String>), StoreError> {
    let invalid = |what: String| StoreError::Postgres(format!("invalid --store URL: {what}"));
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut roots = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslrootcert", path)) => roots.push(path.to_string()),
            Some(("sslmode", "verify-ca" | "verify-full")) => kept.push("sslmode=require".into()),
            _ => kept.push(pair.to_string()),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    // The driver's parse errors quote no password; ours name only the problem.
    let config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| invalid(e.to_string()))?;
    Ok((config, roots))
}

/// The TLS connector for `roots` (see [`parse_url`]).
fn tls(roots: &[String]) -> Result<MakeRustlsConnect, StoreError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut store = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for path in roots {
        let bad = |e: String| StoreError::Postgres(format!("sslrootcert {path}: {e}"));
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            store.add(cert).map_err(|e| bad(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("holds no PEM certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Postgres(format!("tls: {e}")))?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Connects, driving the connection on the current runtime. `role` becomes the session's
/// `application_name`, so that `pg_stat_activity` tells a replica's connections apart.
async fn connect_as(url: &str, role: &str) -> Result<Client, StoreError> {
    let (mut config, roots) = parse_url(url)?;
    config.application_name(format!("tollgate {role}"));
    let (client, connection) = config.connect(tls(&roots)?).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("tollgate: audit database connection ended: {e}");
        }
    });
    Ok(client)
}

async fn connect(url: &str) -> Result<Client, StoreError> {
    connect_as(url, "reads").await
}

fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Range(format!("{n} is out of range")))
}

fn to_u64(n: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Inconsistent(format!("{what} is negative")))
}

/// Creates or upgrades the schema; idempotent, and safe when several replicas start at once.
pub async fn migrate(url: &str) -> Result<(), StoreError> {
    let mut client = connect_as(url, "migrate").await?;
    let tx = client.transaction().await?;
    // Concurrent `CREATE TABLE IF NOT EXISTS` can collide in the catalog; take turns.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key("migrate")])
        .await?;
    tx.batch_execute(SCHEMA).await?;
    let empty = Frontier::new().encode();
    tx.execute(
        "INSERT INTO tollgate_head (id, len, hash, frontier, last_time, checkpoint_size, \
         checkpoint_number, checkpoint_time) VALUES (1, 0, $1, $2, 0, NULL, 0, 0) \
         ON CONFLICT (id) DO NOTHING",
        &[&&GENESIS[..], &empty],
    )
    .await?;
    tx.execute(
        "INSERT INTO tollgate_meta (key, value) VALUES ('schema', $1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&SCHEMA_VERSION],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The schema version recorded in the database, `None` when it has no Tollgate schema.
async fn schema_version(client: &Client) -> Result<Option<String>, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('tollgate_meta') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt("SELECT value FROM tollgate_meta WHERE key = 'schema'", &[])
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// A connection shared by concurrent queries, replaced by a new one once it is found closed
/// (a database restart or failover): the query that met the break fails, later ones reconnect.
pub struct Connection {
    url: String,
    current: Mutex<Arc<Client>>,
}

impl Connection {
    async fn open(url: &str) -> Result<Arc<Self>, StoreError> {
        let client = connect(url).await?;
        Ok(Arc::new(Self {
            url: url.to_string(),
            current: Mutex::new(Arc::new(client)),
        }))
    }

    async fn get(&self) -> Result<Arc<Client>, StoreError> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !current.is_closed() {
            return Ok(current);
        }
        let fresh = Arc::new(connect(&self.url).await?);
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        Ok(fresh)
    }
}

/// Read access (see [`Reads`]); blocking calls run on the runtime the reader was opened on.
pub struct Reader {
    client: Arc<Connection>,
    handle: tokio::runtime::Handle,
}

impl Reader {
    /// Opens an existing Tollgate database (it is not created by reading it).
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let client = Connection::open(url).await?;
        match schema_version(&*client.get().await?).await? {
            Some(version) if version == SCHEMA_VERSION => {}
            Some(version) => return Err(StoreError::Format(version)),
            None => {
                return Err(StoreError::Postgres(
                    "the database holds no tollgate audit log; run `tollgate store migrate`".into(),
                ))
            }
        }
        Ok(Self {
            client,
            handle: tokio::runtime::Handle::current(),
        })
    }

    async fn page(&self, from: u64, limit: i64) -> Result<Vec<StoredRecord>, StoreError> {
        let rows = self
            .client
            .get()
            .await?
            .query(
                "SELECT seq, chain_hash, record FROM tollgate_records WHERE seq >= $1 \
                 ORDER BY seq LIMIT $2",
                &[&to_i64(from)?, &limit],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredRecord {
                    seq: to_u64(row.get(0), "a sequence number")?,
                    chain_hash: hex::encode(row.get::<_, &[u8]>(1)),
                    canonical_json: row.get::<_, Vec<u8>>(2),
                })
            })
            .collect()
    }
}

/// Records in order, a page at a time.
struct Pages {
    client: Arc<Connection>,
    handle: tokio::runtime::Handle,
    next: u64,
    remaining: u64,
    buffer: VecDeque<StoredRecord>,
    done: bool,
}

impl Iterator for Pages {
    type Item = Result<StoredRecord, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        if self.buffer.is_empty() && !self.done {
            let limit = i64::try_from(self.remaining).unwrap_or(i64::MAX).min(PAGE);
            let reader = Reader {
                client: self.client.clone(),
                handle: self.handle.clone(),
            };
            match block_on(&self.handle, reader.page(self.next, limit)) {
                Ok(page) => {
                    self.done = i64::try_from(page.len()).unwrap_or(i64::MAX) < limit;
                    self.buffer.extend(page);
                }
                Err(e) => {
                    self.done = true;
                    self.remaining = 0;
                    return Some(Err(e));
                }
            }
        }
        let record = self.buffer.pop_front()?;
        self.next = record.seq + 1;
        self.remaining -= 1;
        Some(Ok(record))
    }
}

/// A `SELECT number, note FROM tollgate_checkpoints` row.
fn checkpoint_row(row: &tokio_postgres::Row) -> Result<StoredCheckpoint, StoreError> {
    Ok(StoredCheckpoint {
        number: to_u64(row.get(0), "a checkpoint number")?,
        note: row.get(1),
    })
}

impl Reads for Reader {
    fn records(&self, from_seq: u64, limit: u64) -> RecordIter {
        Box::new(Pages {
            client: self.client.clone(),
            handle: self.handle.clone(),
            next: from_seq,
            remaining: if limit == 0 { u64::MAX } else { limit },
            buffer: VecDeque::new(),
            done: false,
        })
    }

    fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        block_on(&self.handle, async {
            let row = self
                .client
                .get()
                .await?
                .query_opt(
                    "SELECT number, note FROM tollgate_checkpoints ORDER BY number DESC LIMIT 1",
                    &[],
                )
                .await?;
            row.as_ref().map(checkpoint_row).transpose()
        })
    }

    fn checkpoints_from(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let from =
            i64::try_from(from).map_err(|_| StoreError::Range("checkpoint number".into()))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        block_on(&self.handle, async {
            let rows = self
                .client
                .get()
                .await?
                .query(
                    "SELECT number, note FROM tollgate_checkpoints WHERE number >= $1 ORDER BY number LIMIT $2",
                    &[&from, &limit],
                )
                .await?;
            rows.iter().map(checkpoint_row).collect()
        })
    }

    fn origin(&self) -> Result<Option<String>, StoreError> {
        block_on(&self.handle, async {
            let row = self
                .client
                .get()
                .await?
                .query_opt("SELECT value FROM tollgate_meta WHERE key = 'origin'", &[])
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    /// One past the highest stored sequence number (not the head row: records are what a
    /// verifier checks).
    fn len(&self) -> Result<u64, StoreError> {
        block_on(&self.handle, async {
            let row = self
                .client
                .get()
                .await?
                .query_one(
                    "SELECT COALESCE(MAX(seq) + 1, 0) FROM tollgate_records",
                    &[],
                )
                .await?;
            to_u64(row.get(0), "the record count")
        })
    }

    fn stored_node(&self, level: u32, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let level = i16::try_from(level).map_err(|_| StoreError::Range("level".into()))?;
        let index = to_i64(index)?;
        block_on(&self.handle, async {
            let row = self
                .client
                .get()
                .await?
                .query_opt(
                    "SELECT hash FROM tollgate_merkle WHERE level = $1 AND idx = $2",
                    &[&level, &index],
                )
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
    }
}

/// Rows of `tollgate_state` in one space.
pub struct Table {
    client: Arc<Connection>,
    space: &'static str,
}

impl Table {
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self
            .client
            .get()
            .await?
            .query_opt(
                "SELECT value FROM tollgate_state WHERE space = $1 AND key = $2",
                &[&self.space, &key],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.client
            .get()
            .await?
            .execute(
                "INSERT INTO tollgate_state (space, key, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (space, key) DO UPDATE SET value = excluded.value",
                &[&self.space, &key, &value],
            )
            .await?;
        Ok(())
    }

    pub async fn remove(&self, key: &[u8]) -> Result<(), StoreError> {
        self.client
            .get()
            .await?
            .execute(
                "DELETE FROM tollgate_state WHERE space = $1 AND key = $2",
                &[&self.space, &key],
            )
            .await?;
        Ok(())
    }

    pub async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        // bytea has no LIKE; compare the leading bytes instead.
        let length = i32::try_from(prefix.len()).map_err(|_| StoreError::Range("prefix".into()))?;
        let rows = self
            .client
            .get()
            .await?
            .query(
                "SELECT key, value FROM tollgate_state \
                 WHERE space = $1 AND substring(key from 1 for $3) = $2 ORDER BY key",
                &[&self.space, &prefix, &length],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// A session-level advisory lock held on a connection of its own; unlocked when dropped.
pub struct AdvisoryLock {
    guard: Option<tokio::sync::OwnedMutexGuard<Option<Client>>>,
    key: i64,
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        let key = self.key;
        let unlock = async move {
            if let Some(client) = guard.as_ref() {
                if client
                    .execute("SELECT pg_advisory_unlock($1)", &[&key])
                    .await
                    .is_err()
                {
                    // Dropping the connection ends the session, which releases its locks.
                    *guard = None;
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(unlock);
            }
            // No runtime: the connection cannot be used any more; closing it unlocks.
            Err(_) => drop(unlock),
        }
    }
}

/// The PostgreSQL store of one replica: its writer task and its read connection.
pub struct Store {
    reader: Reader,
    url: String,
    queue: Mutex<Option<mpsc::Sender<Message>>>,
    writer: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    shared: Arc<Shared>,
    origin: String,
    keys: KeyDir,
    opened: Opened,
    /// Per lock name: this process's turn, and the connection holding the advisory lock.
    locks: Mutex<std::collections::HashMap<&'static str, Arc<tokio::sync::Mutex<Option<Client>>>>>,
}

impl Store {
    /// Connects, creates the schema if it is missing (or says to run `tollgate store migrate`
    /// when this role may not), checks the origin and the signing key against the database's,
    /// and starts this replica's writer.
    pub async fn open(url: &str, options: &Options) -> Result<Self, StoreError> {
        let client = connect(url).await?;
        match schema_version(&client).await? {
            Some(version) if version == SCHEMA_VERSION => {}
            Some(version) => return Err(StoreError::Format(version)),
            None => migrate(url).await.map_err(|e| {
                StoreError::Postgres(format!(
                    "cannot create the schema ({e}); run `tollgate store migrate` as a role \
                     that may create tables"
                ))
            })?,
        }
        let wanted = match &options.origin {
            Some(origin) => origin.clone(),
            None => {
                let id: [u8; 8] = rand::random();
                format!("tollgate.local/audit/{}", hex::encode(id))
            }
        };
        if !note::valid_key_name(&wanted) {
            return Err(StoreError::Range(format!(
                "origin {wanted:?} must be non-empty, without spaces or '+'"
            )));
        }
        let origin = claim_meta(&client, "origin", &wanted).await?;
        if options.origin.as_ref().is_some_and(|o| *o != origin) {
            return Err(StoreError::Range(format!(
                "this store's origin is {origin:?}, not {wanted:?}"
            )));
        }
        if !options.create_key && !options.keys.private_path().exists() {
            return Err(StoreError::Key(KeyError::Missing(
                options.keys.private_path(),
            )));
        }
        let signer = options.keys.signer(&origin)?;
        let mine = signer.verifier().encode();
        let logs = claim_meta(&client, "signing_key", &mine).await?;
        if logs != mine {
            return Err(StoreError::WrongKey {
                log: logs,
                replica: mine,
            });
        }
        let len: i64 = client
            .query_one("SELECT len FROM tollgate_head WHERE id = 1", &[])
            .await?
            .get(0);
        let len = to_u64(len, "the chain length")?;
        let reader = Reader {
            client: Arc::new(Connection {
                url: url.to_string(),
                current: Mutex::new(Arc::new(client)),
            }),
            handle: tokio::runtime::Handle::current(),
        };
        let shared = Arc::new(Shared {
            durable_len: AtomicU64::new(len),
            ..Shared::default()
        });
        let writer = Writer {
            driver: PgDriver {
                client: connect_as(url, "writer").await?,
                reconnect: false,
                statements: None,
                url: url.to_string(),
            },
            sequencer: Sequencer::new(
                signer,
                origin.clone(),
                options.checkpoint_every,
                options.checkpoint_interval,
            ),
            // Every replica must sign with the same key: rotation is not supported here yet.
            keys: None,
            interval: options.checkpoint_interval,
            shared: shared.clone(),
            answer_on: None,
        };
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let handle = tokio::spawn(writer.run(rx));
        Ok(Self {
            reader,
            url: url.to_string(),
            queue: Mutex::new(Some(tx)),
            writer: tokio::sync::Mutex::new(Some(handle)),
            shared,
            origin,
            keys: options.keys.clone(),
            opened: Opened {
                records: len,
                unclean: None,
                merkle_rebuilt: 0,
            },
            locks: Mutex::default(),
        })
    }

    pub fn opened(&self) -> &Opened {
        &self.opened
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn verifiers(&self) -> Result<Vec<NoteVerifier>, StoreError> {
        Ok(self.keys.verifiers()?)
    }

    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    pub fn table(&self, space: &'static str) -> Table {
        Table {
            client: self.reader.client.clone(),
            space,
        }
    }

    fn sender(&self) -> Result<mpsc::Sender<Message>, StoreError> {
        // A poisoned lock only means another caller panicked while cloning the sender.
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.clone().ok_or(StoreError::Closed)
    }

    pub(super) async fn append_prepared(&self, record: Prepared) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.sender()?
            .send(Message::Append(Pending {
                record,
                reply: Some(reply),
            }))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub(super) async fn append_with_checkpoint(
        &self,
        record: Prepared,
    ) -> Result<(Appended, StoredCheckpoint), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.sender()?
            .send(Message::AppendAndCheckpoint { record, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub async fn checkpoint(&self) -> Result<StoredCheckpoint, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.sender()?
            .send(Message::Checkpoint(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub fn durable_len(&self) -> u64 {
        self.shared.durable_len.load(Ordering::Acquire)
    }

    /// Whether the writer still takes appends (a failed transaction is retried on a new
    /// connection; only a closed store refuses).
    pub fn healthy(&self) -> bool {
        self.sender().is_ok()
    }

    /// Appends waiting for the writer plus those in the transaction being written.
    #[cfg(test)]
    fn pending(&self) -> u64 {
        let queued = self
            .sender()
            .map_or(0, |sender| QUEUE_CAPACITY - sender.capacity());
        queued as u64 + self.shared.in_flight.load(Ordering::Acquire)
    }

    pub fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::Acquire)
    }

    pub fn flush_time(&self) -> Duration {
        Duration::from_micros(self.shared.flush_micros.load(Ordering::Acquire))
    }

    pub fn checkpoints_signed(&self) -> u64 {
        self.shared.checkpoints.load(Ordering::Acquire)
    }

    /// Stops taking appends and waits for the writer to answer those queued.
    pub async fn close(&self) -> Result<(), StoreError> {
        drop(self.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(handle) = self.writer.lock().await.take() {
            handle.await.map_err(|e| StoreError::Task(e.to_string()))?;
        }
        Ok(())
    }

    /// This process's turn for `name`, then the database-wide advisory lock.
    pub(super) async fn lock(&self, name: &'static str) -> Result<ChangeLock, StoreError> {
        let slot = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(name).or_default().clone()
        };
        let mut guard = slot.lock_owned().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(connect_as(&self.url, &format!("lock {name}")).await?);
        }
        let key = lock_key(name);
        if let Some(client) = guard.as_ref() {
            if let Err(e) = client.execute("SELECT pg_advisory_lock($1)", &[&key]).await {
                *guard = None;
                return Err(e.into());
            }
        }
        Ok(ChangeLock::new(LockHeld::Remote {
            _lock: AdvisoryLock {
                guard: Some(guard),
                key,
            },
        }))
    }
}

/// Sets `tollgate_meta.key` to `value` unless it is set; returns what it holds.
async fn claim_meta(client: &Client, key: &str, value: &str) -> Result<String, StoreError> {
    client
        .execute(
            "INSERT INTO tollgate_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&key, &value],
        )
        .await?;
    Ok(client
        .query_one("SELECT value FROM tollgate_meta WHERE key = $1", &[&key])
        .await?
        .get(0))
}

/// The writer's statements, prepared once per connection: the head row is locked from the
/// first to the last, so each round trip saved shortens every replica's wait.
struct Statements {
    head: tokio_postgres::Statement,
    records: tokio_postgres::Statement,
    nodes: tokio_postgres::Statement,
    checkpoint: tokio_postgres::Statement,
    advance: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Self, StoreError> {
        Ok(Self {
            head: client
                .prepare(
                    "SELECT len, hash, frontier, last_time, checkpoint_size, checkpoint_number, \
                     checkpoint_time, (extract(epoch from clock_timestamp()) * 1000000)::bigint \
                     FROM tollgate_head WHERE id = 1 FOR UPDATE",
                )
                .await?,
            records: client
                .prepare(
                    "INSERT INTO tollgate_records (seq, chain_hash, record) \
                     SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[])",
                )
                .await?,
            nodes: client
                .prepare(
                    "INSERT INTO tollgate_merkle (level, idx, hash) \
                     SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])",
                )
                .await?,
            checkpoint: client
                .prepare("INSERT INTO tollgate_checkpoints (number, note) VALUES ($1, $2)")
                .await?,
            advance: client
                .prepare(
                    "UPDATE tollgate_head SET len = $1, hash = $2, frontier = $3, \
                     last_time = $4, checkpoint_size = $5, checkpoint_number = $6, \
                     checkpoint_time = $7 WHERE id = 1",
                )
                .await?,
        })
    }
}

/// PostgreSQL as the writer's driver: each write is one transaction that locks the head row,
/// reads the tip there (other replicas append too) and the database's clock, and commits what
/// the plan made of them.
struct PgDriver {
    client: Client,
    /// Set by a failed transaction: the next write starts on a new connection, whatever state
    /// the old one was left in.
    reconnect: bool,
    /// Prepared on `client`; `None` after a reconnect until prepared again.
    statements: Option<Statements>,
    url: String,
}

impl Driver for PgDriver {
    async fn write<'a>(&'a mut self, plan: Plan<'a>) -> Result<Committed, StoreError> {
        if self.reconnect || self.client.is_closed() {
            self.statements = None;
            self.client = connect_as(&self.url, "writer").await?;
            self.reconnect = false;
        }
        let statements = match self.statements.take() {
            Some(statements) => statements,
            None => match Statements::prepare(&self.client).await {
                Ok(statements) => statements,
                Err(e) => {
                    self.reconnect = true;
                    return Err(e);
                }
            },
        };
        let result = transact(&mut self.client, &statements, plan).await;
        self.statements = Some(statements);
        if result.is_err() {
            self.reconnect = true;
        }
        result
    }

    /// A failed transaction wrote nothing (or, cut during `COMMIT`, may have: the contract
    /// allows it); the next write tries again on a new connection.
    fn failure_is_final(&self) -> bool {
        false
    }
}

/// One transaction: the tip and the clock read under the head row's lock, the plan's write
/// stored, the head advanced.
async fn transact(
    client: &mut Client,
    statements: &Statements,
    plan: Plan<'_>,
) -> Result<Committed, StoreError> {
    let tx = client.transaction().await?;
    let row = tx.query_one(&statements.head, &[]).await?;
    let len = to_u64(row.get(0), "the chain length")?;
    let hash: Hash = row
        .get::<_, &[u8]>(1)
        .try_into()
        .map_err(|_| StoreError::Inconsistent("the head hash is malformed".into()))?;
    let frontier = Frontier::decode(row.get::<_, &[u8]>(2))
        .ok_or_else(|| StoreError::Inconsistent("the merkle frontier is malformed".into()))?;
    if frontier.size() != len {
        return Err(StoreError::Inconsistent(format!(
            "the merkle tree covers {} records but the head says {len}",
            frontier.size()
        )));
    }
    let last_time: Micros = to_u64(row.get(3), "the last time")?;
    let checkpoint_size = match row.get::<_, Option<i64>>(4) {
        Some(size) => Some(to_u64(size, "the checkpoint size")?),
        None => None,
    };
    let checkpoint_number = to_u64(row.get(5), "the checkpoint number")?;
    let checkpoint_time: Micros = to_u64(row.get(6), "the checkpoint time")?;
    let now: Micros = to_u64(row.get(7), "the database clock")?;
    let tip = Tip {
        head: Head { len, hash },
        frontier,
        last_time,
        checkpoint_size,
        checkpoint_number,
        // A new log's interval starts at its first write, as sled's starts when it opens.
        checkpoint_time: if checkpoint_time == 0 {
            now.max(last_time)
        } else {
            checkpoint_time
        },
    };
    let Some(write) = plan(&tip, now) else {
        // Nothing to write: the transaction rolls back when dropped.
        return Ok(Committed {
            write: None,
            durable: Duration::ZERO,
        });
    };
    if !write.records.is_empty() {
        // Each value is the chain hash (32 bytes) followed by the canonical record.
        let seqs = write
            .records
            .iter()
            .map(|(seq, _)| to_i64(*seq))
            .collect::<Result<Vec<i64>, _>>()?;
        let hashes: Vec<&[u8]> = write.records.iter().map(|(_, v)| &v[..32]).collect();
        let jsons: Vec<&[u8]> = write.records.iter().map(|(_, v)| &v[32..]).collect();
        tx.execute(&statements.records, &[&seqs, &hashes, &jsons])
            .await?;
    }
    if !write.nodes.is_empty() {
        let levels: Vec<i16> = write
            .nodes
            .iter()
            .map(|n| i16::try_from(n.0).unwrap_or(i16::MAX))
            .collect();
        let indexes = write
            .nodes
            .iter()
            .map(|n| to_i64(n.1))
            .collect::<Result<Vec<i64>, _>>()?;
        let hashes: Vec<&[u8]> = write.nodes.iter().map(|n| &n.2[..]).collect();
        tx.execute(&statements.nodes, &[&levels, &indexes, &hashes])
            .await?;
    }
    if let Some(checkpoint) = &write.checkpoint {
        tx.execute(
            &statements.checkpoint,
            &[&to_i64(checkpoint.number)?, &checkpoint.note],
        )
        .await?;
    }
    let next = &write.tip;
    let next_size = match next.checkpoint_size {
        Some(size) => Some(to_i64(size)?),
        None => None,
    };
    tx.execute(
        &statements.advance,
        &[
            &to_i64(next.head.len)?,
            &&next.head.hash[..],
            &next.frontier.encode(),
            &to_i64(next.last_time)?,
            &next_size,
            &to_i64(next.checkpoint_number)?,
            &to_i64(next.checkpoint_time)?,
        ],
    )
    .await?;
    let start = Instant::now();
    tx.commit().await?;
    Ok(Committed {
        write: Some(write),
        durable: start.elapsed(),
    })
}

#[cfg(test)]
mod tests;
