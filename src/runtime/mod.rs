//! The stages generated units run (`atomic-preload load`, `atomic-preload install`).
//! They talk to the Docker engine and keep small marks in the state directory; their
//! output goes to the unit's journal.

pub mod docker;
pub mod install;
pub mod load;
pub mod marks;
pub mod refresh;

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("the Docker engine does not answer: {0}")]
    EngineUnreachable(String),
    #[error("{what}: {message}")]
    Docker { what: String, message: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("reading the archive: {0}")]
    ReadArchive(io::Error),
    #[error("cannot load {}: {message}", path.display())]
    LoadFailed { path: PathBuf, message: String },
    #[error(
        "{0} archive(s) could not be loaded (see above); nothing was deleted, they are tried again at the next start"
    )]
    LoadFailures(usize),
    #[error("{0}")]
    ImageMissing(String),
    #[error("{0}")]
    Label(String),
    #[error("{0}")]
    InstallFailed(String),
    #[error("state directory: {0}")]
    State(io::Error),
    #[error("{0}")]
    Usage(String),
    #[error("{0} failed ({1})")]
    Systemctl(String, String),
}
