//! Witnesses (C2SP tlog-witness). [`server`] is `tollgate witness serve`: a process of its own,
//! with its own key, that cosigns a log's checkpoint only when a consistency proof shows it
//! extends the last one it cosigned. [`client`] is the control plane's side: each new
//! checkpoint goes to the witnesses of `serve --witness-policy`, and is published (a file,
//! and `GET /checkpoint` on the metrics listener) once the policy's quorum has cosigned it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub mod client;
pub mod server;

pub use client::Witnesses;

/// The newest published checkpoint: a C2SP checkpoint note with the log's signature and, with
/// a witness policy, the cosignatures that met its quorum. Anyone may read it: it lets
/// monitors follow the log without access to the store.
pub struct Published {
    latest: RwLock<Option<String>>,
    file: PathBuf,
}

impl Published {
    pub fn new(file: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            latest: RwLock::new(None),
            file,
        })
    }

    /// The newest published checkpoint note, if one was published this run.
    pub fn latest(&self) -> Option<String> {
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serves `note` from now on and replaces the file with it.
    pub async fn publish(&self, note: String) -> std::io::Result<()> {
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) = Some(note.clone());
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || write_atomically(&file, note.as_bytes(), 0o644))
            .await
            .map_err(std::io::Error::other)?
    }

    pub fn file(&self) -> &Path {
        &self.file
    }
}

/// Writes `bytes` to `path` so that readers, and a crash, find the old content or the new, never
/// a part: a temporary file beside it is written and flushed, renamed over `path`, and the
/// directory flushed so that the rename itself is durable.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(".new");
    let temporary = dir.join(temporary_name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint");
        write_atomically(&path, b"first, and longer\n", 0o644).unwrap();
        write_atomically(&path, b"second\n", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second\n");
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
