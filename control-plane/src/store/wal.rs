//! The sled store's write-ahead log: the durability point of an append.
//!
//! sled's `flush` hands every group to its I/O threads and back, and was the largest single
//! cost of a call in `make profile` (BENCHMARKS.md). So the writer appends each group to a file
//! of its own and `fdatasync`s it on its own thread; the group then goes into sled without a
//! flush, and sled is flushed once per full file, on a thread of its own, before that file is
//! deleted. Opening the store puts back into sled every group it lost (see
//! `sled_backend::replay`).
//!
//! # Files
//!
//! `<store>/wal/<generation>.wal`, generations counting up. Each file is made full of zeros and
//! synced before it is used (the next one made while the current one is half full), so that an
//! append overwrites blocks that already exist and `fdatasync` has no file size or extent to
//! journal: 116 µs of wall time and 46 of CPU per 2.5 KB append against 185 and 74 for a growing
//! file on this machine's ext4. An entry is
//!
//! ```text
//! length u32 LE | crc32 u32 LE (of the length's 4 bytes, then the payload) | payload
//! ```
//!
//! and a length of 0 (the zeros after the last entry) ends the file. A torn last entry fails
//! its crc and ends the file too: it was never acknowledged. The payload is one group:
//! records (sequence number, stored value), Merkle nodes, the frontier after the group, and
//! the checkpoint signed with it, if any.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::chain::Hash;

/// Size of a log file; a group that does not fit gets a file of its own size.
pub(crate) const FILE_SIZE: u64 = 4 << 20;
const HEADER: usize = 8;
const SUFFIX: &str = ".wal";
const SPARE_PREFIX: &str = "spare-";

/// One group as the log holds it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Group {
    pub records: Vec<(u64, Vec<u8>)>,
    pub nodes: Vec<(u32, u64, Hash)>,
    pub frontier: Vec<u8>,
    pub checkpoint: Option<(u64, String)>,
}

/// Appends `group`'s entry (header and payload) to `out`.
pub(crate) fn encode(
    records: &[(u64, Vec<u8>)],
    nodes: &[(u32, u64, Hash)],
    frontier: &[u8],
    checkpoint: Option<(u64, &str)>,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    put_u32(out, records.len());
    for (seq, value) in records {
        out.extend_from_slice(&seq.to_le_bytes());
        put_bytes(out, value);
    }
    put_u32(out, nodes.len());
    for (level, index, hash) in nodes {
        out.extend_from_slice(&level.to_le_bytes());
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(hash);
    }
    put_bytes(out, frontier);
    match checkpoint {
        Some((number, note)) => {
            out.push(1);
            out.extend_from_slice(&number.to_le_bytes());
            put_bytes(out, note.as_bytes());
        }
        None => out.push(0),
    }
    let length = u32::try_from(out.len() - start - HEADER).unwrap_or(u32::MAX);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&length.to_le_bytes());
    crc.update(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.finalize().to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// How a file's entries ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The zeros after the last entry, or the file's end.
    Clean,
    /// An entry that fails its checksum or runs past the file: a write the crash cut short.
    Torn { offset: usize },
}

/// The groups of one file's bytes, in order, and how they ended.
pub(crate) fn decode(bytes: &[u8]) -> (Vec<Group>, End) {
    let mut groups = Vec::new();
    let mut at = 0;
    while at + HEADER <= bytes.len() {
        let length = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(bytes[at + 4..at + HEADER].try_into().unwrap_or_default());
        if length == 0 && crc == 0 {
            return (groups, End::Clean);
        }
        let end = at + HEADER + length as usize;
        let Some(payload) = bytes.get(at + HEADER..end) else {
            return (groups, End::Torn { offset: at });
        };
        let mut check = crc32fast::Hasher::new();
        check.update(&length.to_le_bytes());
        check.update(payload);
        match (check.finalize() == crc).then(|| parse(payload)).flatten() {
            Some(group) => groups.push(group),
            None => return (groups, End::Torn { offset: at }),
        }
        at = end;
    }
    (groups, End::Clean)
}

fn parse(payload: &[u8]) -> Option<Group> {
    let mut input = Input(payload);
    let mut group = Group::default();
    for _ in 0..input.u32()? {
        let seq = input.u64()?;
        group.records.push((seq, input.bytes()?.to_vec()));
    }
    for _ in 0..input.u32()? {
        let level = input.u32()?;
        let index = input.u64()?;
        group
            .nodes
            .push((level, index, input.take(32)?.try_into().ok()?));
    }
    group.frontier = input.bytes()?.to_vec();
    group.checkpoint = match input.take(1)?[0] {
        0 => None,
        1 => {
            let number = input.u64()?;
            Some((number, String::from_utf8(input.bytes()?.to_vec()).ok()?))
        }
        _ => return None,
    };
    input.0.is_empty().then_some(group)
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// What `dir` holds, each with its file name (none when there is no `dir`).
fn entries(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    entries
        .map(|entry| {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            Ok((name.to_owned(), path))
        })
        .collect()
}

/// The log files in `dir`, oldest first, with their generations.
pub(crate) fn files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files: Vec<_> = entries(dir)?
        .into_iter()
        .filter_map(|(name, path)| {
            let generation = name.strip_suffix(SUFFIX)?.parse::<u64>().ok()?;
            Some((generation, path))
        })
        .collect();
    files.sort_unstable();
    Ok(files)
}

/// Reads a whole log file.
pub(crate) fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Removes every log file and spare in `dir`: their groups are all in a flushed sled.
pub(crate) fn remove_all(dir: &Path) -> io::Result<()> {
    remove_where(dir, |name| {
        name.ends_with(SUFFIX) || name.starts_with(SPARE_PREFIX)
    })
}

fn remove_where(dir: &Path, doomed: impl Fn(&str) -> bool) -> io::Result<()> {
    for (name, path) in entries(dir)? {
        if doomed(&name) {
            remove(&path)?;
        }
    }
    Ok(())
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A file of `size` zeros, on disk: appends into it change no metadata.
fn zeroed(path: &Path, size: u64) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// What the writer hands to the flusher.
enum Job {
    /// The open file is half full: make the next one ready.
    Spare,
    /// A full file: flush sled, then delete it.
    Retire(PathBuf),
}

/// The writer's end of the log: the open file, and the flusher thread that retires full files
/// and makes spares.
pub(crate) struct Log {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    generation: u64,
    offset: u64,
    size: u64,
    /// Whether the flusher was asked for the next file while this one filled.
    spare_asked: bool,
    buffer: Vec<u8>,
    spares: mpsc::Receiver<(PathBuf, File)>,
    jobs: Option<mpsc::Sender<Job>>,
    flusher: Option<JoinHandle<()>>,
}

impl Log {
    /// Starts a new log in `dir` after generation `last` (the files before it were replayed
    /// and removed); `flush` makes everything written to the store so far durable.
    pub fn start(
        dir: &Path,
        last: Option<u64>,
        flush: impl Fn() -> Result<(), String> + Send + 'static,
    ) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        remove_where(dir, |name| name.starts_with(SPARE_PREFIX))?;
        let generation = last.map_or(0, |g| g + 1);
        let path = dir.join(format!("{generation:020}{SUFFIX}"));
        let file = zeroed(&path, FILE_SIZE)?;
        sync_dir(dir)?;
        let (jobs, job_queue) = mpsc::channel();
        let (spare_tx, spares) = mpsc::sync_channel(1);
        let flusher_dir = dir.to_path_buf();
        let flusher = std::thread::Builder::new()
            .name("audit-wal".into())
            .spawn(move || flusher(&flusher_dir, &job_queue, &spare_tx, &flush))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            path,
            generation,
            offset: 0,
            size: FILE_SIZE,
            spare_asked: false,
            buffer: Vec::with_capacity(64 << 10),
            spares,
            jobs: Some(jobs),
            flusher: Some(flusher),
        })
    }

    /// Appends one group and returns once it is on disk (`fdatasync`).
    pub fn append(
        &mut self,
        records: &[(u64, Vec<u8>)],
        nodes: &[(u32, u64, Hash)],
        frontier: &[u8],
        checkpoint: Option<(u64, &str)>,
    ) -> io::Result<()> {
        self.buffer.clear();
        encode(records, nodes, frontier, checkpoint, &mut self.buffer);
        let length = self.buffer.len() as u64;
        // The zeros after an entry end the file: keep a header's worth free.
        if self.offset + length + HEADER as u64 > self.size {
            self.rotate(length + HEADER as u64)?;
        }
        write_all_at(&self.file, &self.buffer, self.offset)?;
        self.file.sync_data()?;
        self.offset += length;
        if !self.spare_asked && self.offset > self.size / 2 {
            self.spare_asked = true;
            self.send(Job::Spare);
        }
        Ok(())
    }

    /// Moves to the next file (a spare if one is ready) and hands the full one to the flusher.
    fn rotate(&mut self, needed: u64) -> io::Result<()> {
        let generation = self.generation + 1;
        let path = self.dir.join(format!("{generation:020}{SUFFIX}"));
        let size = FILE_SIZE.max(needed);
        let file = match self.spares.try_recv() {
            Ok((spare, file)) if size == FILE_SIZE => {
                fs::rename(&spare, &path)?;
                file
            }
            Ok((spare, _)) => {
                remove(&spare)?;
                zeroed(&path, size)?
            }
            Err(_) => zeroed(&path, size)?,
        };
        // The name must be durable before an acknowledged group is in the file.
        sync_dir(&self.dir)?;
        let full = std::mem::replace(&mut self.path, path);
        self.file = file;
        self.generation = generation;
        self.offset = 0;
        self.size = size;
        self.spare_asked = false;
        self.send(Job::Retire(full));
        Ok(())
    }

    fn send(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            // A flusher that is gone leaves full files for the next open to replay.
            let _ = jobs.send(job);
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

/// Makes the next file when asked (ahead of need: a store that never fills its first file
/// never writes a second) and retires full files: sled is flushed, so every group of the file
/// is durable there, and the file goes. A flush that fails keeps the file for the next open.
fn flusher(
    dir: &Path,
    jobs: &mpsc::Receiver<Job>,
    spares: &mpsc::SyncSender<(PathBuf, File)>,
    flush: &dyn Fn() -> Result<(), String>,
) {
    let mut made = 0u64;
    let mut make_spare = || {
        let path = dir.join(format!("{SPARE_PREFIX}{made}"));
        made += 1;
        match zeroed(&path, FILE_SIZE) {
            Ok(file) => {
                if let Err(mpsc::TrySendError::Full((path, _))) = spares.try_send((path, file)) {
                    let _ = remove(&path);
                }
            }
            Err(e) => eprintln!("tollgate: could not make a write-ahead log file: {e}"),
        }
    };
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Spare => make_spare(),
            Job::Retire(path) => match flush() {
                Ok(()) => {
                    if let Err(e) = remove(&path) {
                        eprintln!("tollgate: could not remove {}: {e}", path.display());
                    }
                }
                Err(e) => eprintln!(
                    "tollgate: flushing the audit store failed ({e}); {} stays for the next \
                         open to replay",
                    path.display()
                ),
            },
        }
    }
}

#[cfg(unix)]
fn write_all_at(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(first: u64, n: u64, checkpoint: bool) -> Group {
        Group {
            records: (first..first + n)
                .map(|seq| (seq, format!("record {seq}").into_bytes()))
                .collect(),
            nodes: vec![(4, first, [7; 32])],
            frontier: vec![1, 2, 3],
            checkpoint: checkpoint.then(|| (first, format!("note {first}\n"))),
        }
    }

    fn entry(group: &Group, out: &mut Vec<u8>) {
        encode(
            &group.records,
            &group.nodes,
            &group.frontier,
            group
                .checkpoint
                .as_ref()
                .map(|(n, note)| (*n, note.as_str())),
            out,
        );
    }

    #[test]
    fn groups_round_trip_and_zeros_end_the_file() {
        let groups = [group(0, 3, false), group(3, 1, true), group(4, 0, true)];
        let mut bytes = Vec::new();
        for g in &groups {
            entry(g, &mut bytes);
        }
        bytes.extend_from_slice(&[0; 64]);
        let (read, end) = decode(&bytes);
        assert_eq!(read, groups);
        assert_eq!(end, End::Clean);
    }

    #[test]
    fn a_torn_or_changed_last_entry_ends_the_file_there() {
        let mut bytes = Vec::new();
        entry(&group(0, 2, false), &mut bytes);
        let first = bytes.len();
        entry(&group(2, 2, true), &mut bytes);
        let whole = bytes.clone();
        // Cut short: the crash came in the middle of the write.
        bytes.truncate(whole.len() - 5);
        bytes.extend_from_slice(&[0; 5]);
        let (read, end) = decode(&bytes);
        assert_eq!(read, vec![group(0, 2, false)]);
        assert_eq!(end, End::Torn { offset: first });
        // One byte changed.
        let mut changed = whole.clone();
        changed[first + HEADER + 3] ^= 1;
        assert_eq!(decode(&changed).1, End::Torn { offset: first });
        // A header alone, its payload beyond the end of the file.
        assert_eq!(
            decode(&whole[..first + HEADER]).1,
            End::Torn { offset: first }
        );
    }

    #[test]
    fn appends_survive_in_files_that_rotate_and_retire_after_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        let flushes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = flushes.clone();
        let mut log = Log::start(&wal, Some(6), move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert_eq!(files(&wal).unwrap()[0].0, 7);
        // Three groups of 1.5 MiB fill more than one 4 MiB file.
        let big = vec![b'x'; 3 << 19];
        for seq in 0..3u64 {
            log.append(&[(seq, big.clone())], &[], &[9], None).unwrap();
        }
        log.append(&[(3, b"last".to_vec())], &[], &[9], Some((0, "n")))
            .unwrap();
        drop(log);
        // The full file is gone once sled was flushed: only the open one stays.
        assert_eq!(flushes.load(std::sync::atomic::Ordering::SeqCst), 1);
        let left = files(&wal).unwrap();
        assert_eq!(left.iter().map(|f| f.0).collect::<Vec<_>>(), [8]);
        let (groups, end) = decode(&read(&left[0].1).unwrap());
        assert_eq!(end, End::Clean);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].records[0], (2, big));
        assert_eq!(groups[1].checkpoint, Some((0, "n".to_string())));
        remove_all(&wal).unwrap();
        assert_eq!(
            fs::read_dir(&wal).unwrap().count(),
            0,
            "no file or spare left"
        );
    }

    #[test]
    fn a_failed_flush_keeps_full_files_and_a_big_group_gets_a_file_of_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        let mut log = Log::start(&wal, None, || Err("disk full".into())).unwrap();
        let huge = vec![b'y'; (FILE_SIZE + 10) as usize];
        log.append(&[(0, b"first".to_vec())], &[], &[], None)
            .unwrap();
        log.append(&[(1, huge.clone())], &[], &[], None).unwrap();
        log.append(&[(2, b"after".to_vec())], &[], &[], None)
            .unwrap();
        drop(log);
        let left = files(&wal).unwrap();
        assert_eq!(left.iter().map(|f| f.0).collect::<Vec<_>>(), [0, 1, 2]);
        let (groups, end) = decode(&read(&left[1].1).unwrap());
        assert_eq!((groups.len(), end), (1, End::Clean));
        assert_eq!(groups[0].records[0], (1, huge));
    }
}
