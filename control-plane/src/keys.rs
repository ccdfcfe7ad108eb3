//! The checkpoint signing keys under `<home>/keys/`.
//!
//! - `checkpoint.key`: the active private key (signed-note text), mode 0600, in a 0700
//!   directory. Generated on first start.
//! - `checkpoint.vkeys`: every verifier (public) key this log has signed with, one per line,
//!   oldest first. Rotation appends to it and never removes a line, so checkpoints signed before
//!   a rotation stay verifiable. Hand this file (or a line of it) to auditors.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::note::{NoteError, NoteSigner, NoteVerifier};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: NoteError },
    #[error("{0} is readable by others (mode {1:o}); make it 0600")]
    Permissions(PathBuf, u32),
    #[error("the signing key {0} is named {1:?}, but this log's origin is {2:?}")]
    WrongName(PathBuf, String, String),
    #[error("no signing key at {0}")]
    Missing(PathBuf),
    #[error("no verifier keys in {0}")]
    NoVerifiers(PathBuf),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> KeyError + 'a {
    move |source| KeyError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a private key file, refused when others may read it.
pub fn read_private(path: &Path) -> Result<String, KeyError> {
    let mode = std::fs::metadata(path)
        .map_err(io("cannot stat", path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions(path.to_path_buf(), mode & 0o777));
    }
    std::fs::read_to_string(path).map_err(io("cannot read", path))
}

/// Writes `text` to a new private key file (mode 0600) and syncs it; never replaces a file.
pub fn create_private(path: &Path, text: &str) -> Result<(), KeyError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("cannot create", path))?;
    writeln!(file, "{text}").map_err(io("cannot write", path))?;
    file.sync_all().map_err(io("cannot sync", path))
}

/// The key files of one home directory.
#[derive(Debug, Clone)]
pub struct KeyDir {
    pub dir: PathBuf,
}

impl KeyDir {
    pub fn at(home: &Path) -> Self {
        Self {
            dir: home.join("keys"),
        }
    }

    pub fn private_path(&self) -> PathBuf {
        self.dir.join("checkpoint.key")
    }

    pub fn verifiers_path(&self) -> PathBuf {
        self.dir.join("checkpoint.vkeys")
    }

    /// The active signer, generated (named `name`) when there is none yet.
    pub fn signer(&self, name: &str) -> Result<NoteSigner, KeyError> {
        let path = self.private_path();
        if !path.exists() {
            let signer = NoteSigner::generate(name).map_err(|source| KeyError::Parse {
                path: path.clone(),
                source,
            })?;
            self.install(&signer)?;
            return Ok(signer);
        }
        let text = read_private(&path)?;
        let signer = NoteSigner::parse(&text).map_err(|source| KeyError::Parse {
            path: path.clone(),
            source,
        })?;
        let verifier = signer.verifier();
        if verifier.name != name {
            return Err(KeyError::WrongName(path, verifier.name, name.to_string()));
        }
        // A key file restored without its public half still gets it listed.
        if !self.verifiers().unwrap_or_default().contains(&verifier) {
            self.append_verifier(&verifier)?;
        }
        Ok(signer)
    }

    /// Generates a new signer named `name`, lists its public key and makes it the active one.
    /// The old private key is removed (a rotated-out key should sign nothing more); its public
    /// key stays listed.
    pub fn rotate(&self, name: &str) -> Result<NoteSigner, KeyError> {
        let signer = NoteSigner::generate(name).map_err(|source| KeyError::Parse {
            path: self.private_path(),
            source,
        })?;
        self.install(&signer)?;
        Ok(signer)
    }

    fn install(&self, signer: &NoteSigner) -> Result<(), KeyError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io("cannot create", &self.dir))?;
        // List the public key first: a crash in between leaves an unused public key, never a
        // signing key whose checkpoints nobody can verify.
        self.append_verifier(&signer.verifier())?;
        let path = self.private_path();
        let temporary = self.dir.join("checkpoint.key.new");
        let _ = std::fs::remove_file(&temporary);
        create_private(&temporary, &signer.encode_private())?;
        std::fs::rename(&temporary, &path).map_err(io("cannot replace", &path))?;
        sync_dir(&self.dir)
    }

    fn append_verifier(&self, verifier: &NoteVerifier) -> Result<(), KeyError> {
        let path = self.verifiers_path();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        writeln!(file, "{}", verifier.encode()).map_err(io("cannot write", &path))?;
        file.sync_all().map_err(io("cannot sync", &path))
    }

    /// Every verifier key listed, oldest first.
    pub fn verifiers(&self) -> Result<Vec<NoteVerifier>, KeyError> {
        read_verifiers(&self.verifiers_path())
    }
}

/// Reads verifier keys, one per line (blank lines and `#` comments skipped).
pub fn read_verifiers(path: &Path) -> Result<Vec<NoteVerifier>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(io("cannot read", path))?;
    let keys = crate::note::parse_verifier_list(&text).map_err(|source| KeyError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    if keys.is_empty() {
        return Err(KeyError::NoVerifiers(path.to_path_buf()));
    }
    Ok(keys)
}

fn sync_dir(dir: &Path) -> Result<(), KeyError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_with_private_mode_and_rotation_keeps_old_public_keys() {
        let home = tempfile::tempdir().unwrap();
        let keys = KeyDir::at(home.path());
        let first = keys.signer("log.test").unwrap();
        let mode = std::fs::metadata(keys.private_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&keys.dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(
            keys.signer("log.test").unwrap().verifier(),
            first.verifier()
        );
        let second = keys.rotate("log.test").unwrap();
        assert_ne!(second.verifier(), first.verifier());
        assert_eq!(
            keys.signer("log.test").unwrap().verifier(),
            second.verifier()
        );
        assert_eq!(
            keys.verifiers().unwrap(),
            vec![first.verifier(), second.verifier()]
        );
        assert!(matches!(
            keys.signer("other.name"),
            Err(KeyError::WrongName(..))
        ));
        std::fs::set_permissions(keys.private_path(), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        assert!(matches!(
            keys.signer("log.test"),
            Err(KeyError::Permissions(..))
        ));
    }
}
