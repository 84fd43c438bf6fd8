//! Writes that survive a power cut: what a later run trusts (marks, indexes, a
//! deployment's `info`, units and tmpfiles we install, the `NAME` link, host files) is
//! written to a temp name in the same directory, fsynced, renamed over the final name,
//! and then the directory is fsynced, so after a crash the final name holds either the
//! old content or the complete new one — never a prefix, never an empty file.
//! `tests/faults.rs` traces every writer's system calls and checks that order.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The temp name `path` is written under: a dot-file beside it (readers skip dot-files).
/// It is the same for every run, so the run after a crash writes over the temp file the
/// crashed one left, and renames it away. Writers of one name hold a lock (an archive's load
/// lock, a system container's lock); the one exception, the index of an archive two system
/// containers read at once, is written with the same bytes by both.
pub fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.tmp"))
}

/// fsync a directory, so a rename or unlink in it is on disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Rename `from` over `to` and fsync the directory of `to` (and of `from` when it is
/// another one).
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_dir(parent(to))?;
    if parent(from) != parent(to) {
        sync_dir(parent(from))?;
    }
    Ok(())
}

/// Remove a file if it is there; fsync its directory when something was removed.
pub fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(parent(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Write `bytes` to `path` durably, with `mode` when given (set before the rename, so
/// the final name never has the wrong mode). The directory must exist.
pub fn write(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    write_with(path, mode, |f| f.write_all(bytes))
}

/// [`write`] with the content produced by `fill` (a stream copy, say).
pub fn write_with(
    path: &Path,
    mode: Option<u32>,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = temp_name(path);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        fill(&mut file)?;
        if let Some(mode) = mode {
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        file.sync_all()?;
        drop(file);
        rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A symlink at `path` pointing at `target`, replacing whatever is there atomically.
pub fn symlink(target: &Path, path: &Path) -> io::Result<()> {
    let tmp = temp_name(path);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_replace_whole_files_with_their_mode_and_leave_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        write(&path, b"one", None).unwrap();
        write(&path, b"two", Some(0o755)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o755);
        symlink(Path::new("x"), &dir.path().join("l")).unwrap();
        symlink(Path::new("y"), &dir.path().join("l")).unwrap();
        assert_eq!(fs::read_link(dir.path().join("l")).unwrap(), Path::new("y"));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A failed fill leaves the old content and no temp file.
        let err = write_with(&path, None, |_| Err(io::Error::other("full")));
        assert!(err.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
        remove_file(&path).unwrap();
        remove_file(&path).unwrap();
    }
}
