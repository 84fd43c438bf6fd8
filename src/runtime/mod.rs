//! What the units' stages ([`crate::stages`]) and the operator's commands
//! ([`crate::commands`]) share: the error type and its exit statuses, durable writes,
//! the records kept per archive (marks), digests and sidecars, decompression, and the
//! status line.

pub mod compression;
pub mod digest;
pub mod durable;
pub mod marks;
pub mod notify;

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: io::Error },
    /// Who does not answer ("the Docker engine", "Podman"), and what its client said.
    #[error("{0} does not answer: {1}")]
    EngineUnreachable(&'static str, String),
    #[error("{what}: {message}")]
    Docker { what: String, message: String },
    #[error("{}: {source}{}", path.display(), disk_full_note(path, source))]
    Io { path: PathBuf, source: io::Error },
    #[error("reading the archive: {0}")]
    ReadArchive(io::Error),
    #[error("cannot load {}: {message}", path.display())]
    LoadFailed { path: PathBuf, message: String },
    /// The engine's own storage (`storage`, when it said where) is full: nothing wrong
    /// with the archive (retried).
    #[error("cannot load {}: {message}{}", path.display(), engine_full_note(storage.as_deref()))]
    EngineStorageFull {
        path: PathBuf,
        message: String,
        storage: Option<PathBuf>,
    },
    #[error(
        "{0} archive(s) could not be loaded (see above); nothing was deleted, they are tried again at the next start"
    )]
    LoadFailures(usize),
    #[error("{0}")]
    ImageMissing(String),
    /// An archive whose content is not what was recorded when it was staged.
    #[error(
        "{}: content does not match its recorded digest ({}): expected sha256:{expected}, actual sha256:{actual}; not loaded",
        path.display(),
        digest::sidecar_path(path).display()
    )]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    Label(String),
    #[error("{0}")]
    InstallFailed(String),
    #[error("state directory: {0}")]
    State(io::Error),
    #[error("{0}")]
    Usage(String),
    /// A file or directory that someone besides root can write (see [`crate::trust`]).
    #[error("{0}")]
    Untrusted(#[from] crate::trust::Untrusted),
    /// A system image that cannot be installed as it is (bad archive, template, config).
    #[error("{0}")]
    SystemImage(String),
    /// Anything else that went wrong installing a system container (retried).
    #[error("{0}")]
    System(String),
    #[error("{0} failed ({1})")]
    Systemctl(String, String),
    /// A source that could not be staged (download, save, digest, not an archive).
    #[error("{0}")]
    Fetch(String),
}

/// For a full disk, which file system is full and how big it is: "; the file system
/// holding /var/lib/containers/atomic ran out of space (0.0 MiB of 64.0 MiB free now)"
/// (what an engine or a cleanup freed since may show as free). Empty otherwise.
pub(crate) fn disk_full_note(path: &Path, e: &io::Error) -> String {
    let full = [rustix::io::Errno::NOSPC, rustix::io::Errno::DQUOT]
        .iter()
        .any(|n| e.raw_os_error() == Some(n.raw_os_error()));
    if !full {
        return String::new();
    }
    let Some((dir, st)) = path
        .ancestors()
        .find_map(|d| rustix::fs::statvfs(d).ok().map(|st| (d, st)))
    else {
        return "; its file system is full".into();
    };
    let mib = |blocks: u64| (blocks * st.f_frsize) as f64 / (1024.0 * 1024.0);
    format!(
        "; the file system holding {} ran out of space ({:.1} MiB of {:.1} MiB free now): free space there, and it is tried again at the next start",
        dir.display(),
        mib(st.f_bavail),
        mib(st.f_blocks)
    )
}

/// Whether an engine's error says its storage is full ("no space left on device", as
/// Docker and Podman pass the kernel's message on).
pub(crate) fn says_storage_full(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("no space left on device") || m.contains("disk quota exceeded")
}

/// [`disk_full_note`] for the engine's storage directory, or only that it is full.
fn engine_full_note(storage: Option<&Path>) -> String {
    let full = io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
    match storage {
        Some(dir) => disk_full_note(dir, &full),
        None => "; the engine's storage is full: free space there, and it is tried again at the next start".into(),
    }
}

/// `map_err` for a file operation on `path`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Exit status for problems a retry cannot fix (a corrupt archive, an image no archive
/// holds, an INSTALL label that cannot be split). Units whose main process runs the stage
/// (oneshots) set `RestartPreventExitStatus=` to it, so they fail at once instead of
/// retrying; for a container's unit it would apply to the container's own exit status.
pub const EXIT_PERMANENT: u8 = 65; // EX_DATAERR

impl RuntimeError {
    /// [`EXIT_PERMANENT`] or 1 (worth retrying: the engine may come back).
    pub fn exit_code(&self) -> u8 {
        match self {
            RuntimeError::LoadFailed { .. }
            | RuntimeError::LoadFailures(_)
            | RuntimeError::ImageMissing(_)
            | RuntimeError::DigestMismatch { .. }
            | RuntimeError::Label(_)
            | RuntimeError::Usage(_)
            | RuntimeError::Untrusted(_)
            | RuntimeError::SystemImage(_) => EXIT_PERMANENT,
            _ => 1,
        }
    }
}
