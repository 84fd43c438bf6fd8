//! Applying one image layer (a tar stream) onto a root file system, safely as root.
//!
//! The walk is ours, on top of the `tar` crate's header parsing (`Archive::unpack` neither
//! confines paths nor knows whiteouts). Per member, in order:
//! * the path is cleaned ([`rootfs::clean`]: `..` refused) and its parent resolved inside
//!   the root, created if missing;
//! * `.wh.NAME` removes NAME and `.wh..wh..opq` empties its directory, but only of what
//!   lower layers put there (OCI image spec: a whiteout never hides its own layer);
//! * whatever is in the way of a new member is replaced, except a directory by a
//!   directory (its content stays, its metadata is updated);
//! * files are created `O_EXCL|O_NOFOLLOW` and set up through their descriptor: owner,
//!   then mode (after chown, which clears setuid), then `security.capability`, then mtime;
//!   directories' mtimes are set when the layer is done (their children change them);
//! * hard links point only at an existing non-directory inside the root;
//! * device nodes, FIFOs and sockets are skipped and counted, as skopeo did for atomic.
//!
//! The stream is hashed as it is read, to the end of its padding, and compared with the
//! image config's `diff_id` by the caller.

use super::rootfs::{self, Root, clear_dir, kind_at, remove_all_at};
use crate::runtime::digest::{Hashing, hex};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use sha2::Digest;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What a layer did, for the unit's journal.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LayerStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub whiteouts: u64,
    /// Device nodes, FIFOs and sockets: never created in a checkout.
    pub skipped: u64,
    /// `sha256:<hex>` of the uncompressed stream: the layer's diff_id.
    pub diff_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("reading the layer: {0}")]
    Read(io::Error),
    #[error("{0}")]
    Refused(String),
    #[error("{member}: {source}")]
    Write { member: String, source: io::Error },
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// The only extended attribute kept: file capabilities (ping, newuidmap...).
const CAPABILITY_XATTR: &str = "security.capability";

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

/// Metadata from a member's header.
struct Meta {
    uid: u64,
    gid: u64,
    mode: u32,
    mtime: u64,
    capability: Option<Vec<u8>>,
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn id(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX - 1)
}

/// Owner, then mode, then the capability xattr, then mtime, on an open file or directory.
fn apply_meta(fd: &OwnedFd, meta: &Meta, with_mtime: bool) -> io::Result<()> {
    rfs::fchown(
        fd,
        Some(rfs::Uid::from_raw(id(meta.uid))),
        Some(rfs::Gid::from_raw(id(meta.gid))),
    )
    .map_err(errno)?;
    rfs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777)).map_err(errno)?;
    if let Some(value) = &meta.capability {
        rfs::fsetxattr(fd, CAPABILITY_XATTR, value, XattrFlags::empty()).map_err(errno)?;
    }
    if with_mtime {
        rfs::futimens(fd, &timestamps(meta.mtime)).map_err(errno)?;
    }
    Ok(())
}

/// Apply one layer. `created` collects the paths this layer wrote, so whiteouts spare them.
pub fn apply(root: &Root, reader: impl Read) -> Result<LayerStats, LayerError> {
    let mut hashing = Hashing::new(reader);
    let mut stats = LayerStats::default();
    let mut created: HashSet<PathBuf> = HashSet::new();
    let mut dir_mtimes: Vec<(PathBuf, u64)> = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut hashing);
        for (n, entry) in archive.entries().map_err(LayerError::Read)?.enumerate() {
            let mut entry = entry.map_err(|e| match n {
                // tar's own message quotes the garbage it read; say what it means.
                0 if e.kind() == io::ErrorKind::Other || e.kind() == io::ErrorKind::InvalidData => {
                    LayerError::Read(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "not a tar archive (its first header is invalid)",
                    ))
                }
                _ => LayerError::Read(e),
            })?;
            apply_member(root, &mut entry, &mut created, &mut dir_mtimes, &mut stats)?;
        }
    }
    // The end-of-archive blocks and any padding are part of the diff_id.
    io::copy(&mut hashing, &mut io::sink()).map_err(LayerError::Read)?;
    for (path, mtime) in dir_mtimes.iter().rev() {
        // A later member may have replaced the directory; confined either way.
        if let Ok(fd) = root.dir(path) {
            let _ = rfs::futimens(&fd, &timestamps(*mtime));
        }
    }
    stats.diff_id = format!("sha256:{}", hex(&hashing.hasher.finalize()));
    Ok(stats)
}

fn apply_member<R: Read>(
    root: &Root,
    entry: &mut tar::Entry<'_, R>,
    created: &mut HashSet<PathBuf>,
    dir_mtimes: &mut Vec<(PathBuf, u64)>,
    stats: &mut LayerStats,
) -> Result<(), LayerError> {
    let raw_path = entry.path().map_err(LayerError::Read)?.into_owned();
    let member = raw_path.display().to_string();
    let path = rootfs::clean(&raw_path).map_err(LayerError::Refused)?;
    let kind = entry.header().entry_type();
    let write_err = |source: io::Error| LayerError::Write {
        member: member.clone(),
        source,
    };
    if path.as_os_str().is_empty() {
        // "./": the root directory itself keeps the checkout's own metadata.
        return Ok(());
    }
    let name = path.file_name().unwrap_or_default().as_bytes();

    if whiteout(root, &path, name, &member, created)? {
        stats.whiteouts += 1;
        return Ok(());
    }

    let capability = entry.pax_extensions().ok().flatten().and_then(|exts| {
        exts.filter_map(Result::ok)
            .find(|e| e.key_bytes() == format!("SCHILY.xattr.{CAPABILITY_XATTR}").as_bytes())
            .map(|e| e.value_bytes().to_vec())
    });
    let header = entry.header();
    let meta = Meta {
        uid: header.uid().map_err(LayerError::Read)?,
        gid: header.gid().map_err(LayerError::Read)?,
        mode: header.mode().map_err(LayerError::Read)?,
        mtime: header.mtime().map_err(LayerError::Read)?,
        capability,
    };

    match kind {
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            stats.skipped += 1;
            return Ok(());
        }
        tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => return Ok(()),
        _ => {}
    }

    let (dir, file_name) = root.parent(&path).map_err(write_err)?;
    let existing = kind_at(&dir, &file_name).map_err(write_err)?;
    match kind {
        tar::EntryType::Directory => {
            if existing != Some(FileType::Directory) {
                remove_all_at(&dir, &file_name).map_err(write_err)?;
                rfs::mkdirat(&dir, file_name.as_os_str(), Mode::from_raw_mode(0o700))
                    .map_err(|e| write_err(errno(e)))?;
            }
            let fd = rfs::openat(
                &dir,
                file_name.as_os_str(),
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| write_err(errno(e)))?;
            apply_meta(&fd, &meta, false).map_err(write_err)?;
            dir_mtimes.push((path.clone(), meta.mtime));
            stats.dirs += 1;
        }
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            remove_all_at(&dir, &file_name).map_err(write_err)?;
            let fd = rfs::openat(
                &dir,
                file_name.as_os_str(),
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| write_err(errno(e)))?;
            let mut file = std::fs::File::from(fd);
            io::copy(entry, &mut file).map_err(LayerError::Read)?;
            let fd = OwnedFd::from(file);
            apply_meta(&fd, &meta, true).map_err(write_err)?;
            stats.files += 1;
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name()
                .map_err(LayerError::Read)?
                .ok_or_else(|| LayerError::Refused(format!("symlink {member:?} has no target")))?;
            symlink(&dir, &file_name, &target, &meta).map_err(write_err)?;
            stats.symlinks += 1;
        }
        tar::EntryType::Link => {
            let target = entry
                .link_name()
                .map_err(LayerError::Read)?
                .ok_or_else(|| {
                    LayerError::Refused(format!("hard link {member:?} has no target"))
                })?;
            if !hard_link(root, &target, &path, &dir, &file_name, &member)? {
                return Ok(());
            }
            stats.hardlinks += 1;
        }
        other => {
            return Err(LayerError::Refused(format!(
                "member {member:?} has an unsupported type ({other:?})"
            )));
        }
    }
    created.insert(path);
    Ok(())
}

/// A symlink member made, owned and timed as the layer says. The target is stored as
/// written: it is only ever resolved inside the root.
fn symlink(dir: &OwnedFd, file_name: &OsStr, target: &Path, meta: &Meta) -> io::Result<()> {
    remove_all_at(dir, file_name)?;
    rfs::symlinkat(target.as_os_str(), dir, file_name).map_err(errno)?;
    rfs::chownat(
        dir,
        file_name,
        Some(rfs::Uid::from_raw(id(meta.uid))),
        Some(rfs::Gid::from_raw(id(meta.gid))),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(errno)?;
    let _ = rfs::utimensat(
        dir,
        file_name,
        &timestamps(meta.mtime),
        AtFlags::SYMLINK_NOFOLLOW,
    );
    Ok(())
}

/// A whiteout member (`.wh..wh..opq`, `.wh.NAME`) applied: what it hides from lower
/// layers is removed (never what this layer made, never outside the root); `false` when
/// `name` is no whiteout.
fn whiteout(
    root: &Root,
    path: &Path,
    name: &[u8],
    member: &str,
    created: &HashSet<PathBuf>,
) -> Result<bool, LayerError> {
    let write_err = |source: io::Error| LayerError::Write {
        member: member.to_owned(),
        source,
    };
    if name == OPAQUE.as_bytes() {
        let dir_path = path.parent().unwrap_or(Path::new(""));
        let dir = root.ensure_dir(dir_path).map_err(write_err)?;
        clear_dir(&dir, |child| !created.contains(&dir_path.join(child))).map_err(write_err)?;
        return Ok(true);
    }
    let Some(hidden) = name.strip_prefix(WHITEOUT.as_bytes()) else {
        return Ok(false);
    };
    let target = path.with_file_name(OsStr::from_bytes(hidden));
    if hidden.is_empty() || hidden == b"." || hidden == b".." {
        return Err(LayerError::Refused(format!(
            "member {member:?} is not a valid whiteout"
        )));
    }
    if !created.contains(&target) {
        // Nothing to hide when the directory is not there: never create it for that.
        let parent = target.parent().unwrap_or(Path::new(""));
        match root.dir(parent) {
            Ok(dir) => remove_all_at(&dir, OsStr::from_bytes(hidden)).map_err(write_err)?,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) => {}
            Err(e) => return Err(write_err(e)),
        }
    }
    Ok(true)
}

/// A hard link member made, its target checked to be a non-directory this image already
/// has (resolved inside the root); `false` for a link to itself (nothing to make).
fn hard_link(
    root: &Root,
    target: &Path,
    path: &Path,
    dir: &OwnedFd,
    file_name: &OsStr,
    member: &str,
) -> Result<bool, LayerError> {
    let write_err = |source: io::Error| LayerError::Write {
        member: member.to_owned(),
        source,
    };
    let target_path = rootfs::clean(target)
        .map_err(|e| LayerError::Refused(format!("hard link {member:?} to {target:?}: {e}")))?;
    if target_path.as_os_str().is_empty() {
        return Err(LayerError::Refused(format!(
            "hard link {member:?} points at the root directory"
        )));
    }
    if target_path == path {
        return Ok(false);
    }
    let (target_dir, target_name) = root.parent(&target_path).map_err(write_err)?;
    match kind_at(&target_dir, &target_name).map_err(write_err)? {
        None => {
            return Err(LayerError::Refused(format!(
                "hard link {member:?} points at {target:?}, which is not in the image"
            )));
        }
        Some(FileType::Directory) => {
            return Err(LayerError::Refused(format!(
                "hard link {member:?} points at the directory {target:?}"
            )));
        }
        Some(_) => {}
    }
    remove_all_at(dir, file_name).map_err(write_err)?;
    rfs::linkat(
        &target_dir,
        target_name.as_os_str(),
        dir,
        file_name,
        AtFlags::empty(),
    )
    .map_err(|e| write_err(errno(e)))?;
    Ok(true)
}
