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
use crate::runtime::digest;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Which of a member's metadata calls its descriptor still needs: a file this walk just
/// created may already have its owner (ours) and mode (created with it); a directory's
/// mtime waits for the end of the layer.
struct Needs {
    owner: bool,
    mode: bool,
    mtime: bool,
}

/// Owner, then mode (after chown, which clears setuid), then the capability xattr, then
/// mtime, on an open file or directory, as far as `needs` says.
fn apply_meta(fd: &OwnedFd, meta: &Meta, needs: Needs) -> io::Result<()> {
    if needs.owner {
        rfs::fchown(
            fd,
            Some(rfs::Uid::from_raw(id(meta.uid))),
            Some(rfs::Gid::from_raw(id(meta.gid))),
        )
        .map_err(errno)?;
    }
    if needs.mode {
        rfs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777)).map_err(errno)?;
    }
    if let Some(value) = &meta.capability {
        rfs::fsetxattr(fd, CAPABILITY_XATTR, value, XattrFlags::empty()).map_err(errno)?;
    }
    if needs.mtime {
        rfs::futimens(fd, &timestamps(meta.mtime)).map_err(errno)?;
    }
    Ok(())
}

/// A layer's bytes whose SHA-256 is computed by someone else as they pass (another
/// thread): `finish` reads to the end of the stream and returns its hex digest.
pub trait HashedStream: Read {
    fn finish(&mut self) -> io::Result<String>;
}

/// Apply one layer read as a stream (a decompressor, a spooled file). The stream is read
/// ahead and hashed on another thread, so the SHA-256 (and any decompression) runs on
/// another core while this one writes.
pub fn apply<R: Read + Send>(root: &Root, reader: R) -> Result<LayerStats, LayerError> {
    std::thread::scope(|scope| {
        let (chunks, hashed) = digest::read_ahead_hashing_scoped(scope, reader);
        let mut stream = ReadAhead {
            chunks,
            hashed: Some(hashed),
        };
        apply_hashed(root, &mut stream)
    })
}

struct ReadAhead<'scope> {
    chunks: digest::Chunks,
    hashed: Option<std::thread::ScopedJoinHandle<'scope, io::Result<String>>>,
}

impl Read for ReadAhead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.chunks.read(buf)
    }
}

impl HashedStream for ReadAhead<'_> {
    fn finish(&mut self) -> io::Result<String> {
        io::copy(&mut self.chunks, &mut io::sink())?;
        match self.hashed.take().map(|h| h.join()) {
            Some(Ok(digest)) => digest,
            _ => Err(io::Error::other("the hashing thread failed")),
        }
    }
}

/// Apply one layer from a stream hashed elsewhere; the stream is read to its end (the
/// end-of-archive blocks and any padding are part of the diff_id).
pub fn apply_hashed(root: &Root, stream: &mut impl HashedStream) -> Result<LayerStats, LayerError> {
    let mut walk = Walk::new(root);
    {
        let mut archive = tar::Archive::new(&mut *stream);
        walk.entries(&mut archive, None)?;
    }
    let digest = stream.finish().map_err(LayerError::Read)?;
    walk.finish(digest)
}

/// Apply one layer that is an uncompressed tar lying at `offset` in `file` (a member of an
/// uncompressed outer archive), read in place: headers through a small window, file
/// contents copied by the kernel (`copy_file_range`), the range hashed on another thread.
pub fn apply_in_place(
    root: &Root,
    file: &File,
    offset: u64,
    len: u64,
) -> Result<LayerStats, LayerError> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let hashed = scope.spawn(|| digest::sha256_of_range(file, offset, len, &stop));
        let mut walk = Walk::new(root);
        let mut window = Window::new(file, offset, len);
        let walked = {
            let mut archive = tar::Archive::new(&mut window);
            let source = InPlace { file, offset, len };
            walk.entries_seekable(&mut archive, &source)
        };
        let walked = walked.and_then(|()| {
            if window.overrun {
                Err(LayerError::Read(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the layer ends inside a member",
                )))
            } else {
                Ok(())
            }
        });
        if walked.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let digest = hashed
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("hash thread")));
        walked?;
        walk.finish(digest.map_err(LayerError::Read)?)
    })
}

/// Where an in-place layer's bytes are.
struct InPlace<'f> {
    file: &'f File,
    offset: u64,
    len: u64,
}

/// The layer's range of the file as a seekable reader: reads go through a 64 KiB buffer
/// (most headers of small files come from one read), seeks are free. A seek past the end
/// is remembered: the walk then fails as a truncated stream would.
struct Window<'f> {
    file: &'f File,
    start: u64,
    len: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_at: u64,
    buf_len: usize,
    overrun: bool,
}

impl<'f> Window<'f> {
    fn new(file: &'f File, start: u64, len: u64) -> Self {
        Window {
            file,
            start,
            len,
            pos: 0,
            buf: vec![0; 64 << 10],
            buf_at: 0,
            buf_len: 0,
            overrun: false,
        }
    }
}

impl Read for Window<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if self.pos >= self.len {
            return Ok(0);
        }
        let in_buf = self.pos >= self.buf_at && self.pos < self.buf_at + self.buf_len as u64;
        if !in_buf {
            let want = usize::try_from(self.len - self.pos)
                .map_or(self.buf.len(), |n| n.min(self.buf.len()));
            self.buf_len = self
                .file
                .read_at(&mut self.buf[..want], self.start + self.pos)?;
            self.buf_at = self.pos;
            if self.buf_len == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ends before the layer does",
                ));
            }
        }
        let from = usize::try_from(self.pos - self.buf_at).unwrap_or(0);
        let n = out.len().min(self.buf_len - from);
        out[..n].copy_from_slice(&self.buf[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        if target > self.len {
            self.overrun = true;
        }
        self.pos = target;
        Ok(target)
    }
}

/// Which side of a copy failed: reading the layer is the image's problem, writing the
/// checkout the host's (a full disk is retried, and says so).
enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn eof() -> CopyError {
    CopyError::Read(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the file ends before the layer does",
    ))
}

/// Copy `len` bytes at `offset` of `from` to the end of `to`, in the kernel; plain reads
/// and writes where the file systems cannot (`EXDEV`, `EINVAL`, `ENOSYS`, `EOPNOTSUPP`).
/// A failing `copy_file_range` counts as the write's: the source is a file the index
/// just read, the destination the disk that fills up.
fn copy_range(
    from: &File,
    offset: u64,
    len: u64,
    to: &mut File,
    buf: &mut Vec<u8>,
) -> Result<(), CopyError> {
    use std::os::unix::fs::FileExt;
    let mut off = offset;
    let end = offset + len;
    while off < end {
        let want = usize::try_from(end - off)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rfs::copy_file_range(from, Some(&mut off), &*to, None, want) {
            Ok(0) => return Err(eof()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::INVAL
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP,
            ) => {
                buf.resize(COPY_BUF, 0);
                while off < end {
                    let want = usize::try_from(end - off).map_or(buf.len(), |n| n.min(buf.len()));
                    let n = from
                        .read_at(&mut buf[..want], off)
                        .map_err(CopyError::Read)?;
                    if n == 0 {
                        return Err(eof());
                    }
                    to.write_all(&buf[..n]).map_err(CopyError::Write)?;
                    off += n as u64;
                }
            }
            Err(e) => return Err(CopyError::Write(errno(e))),
        }
    }
    Ok(())
}

/// The copy buffer for streamed contents.
const COPY_BUF: usize = 256 << 10;

/// A layer being applied: what it made so far and what it has open.
struct Walk<'r> {
    root: &'r Root,
    /// The paths this layer wrote, so whiteouts spare them.
    created: HashSet<PathBuf>,
    dir_mtimes: Vec<(PathBuf, u64)>,
    stats: LayerStats,
    /// The last parent directory resolved, reused while members land in it (see
    /// [`Walk::member`] for why that is safe); the next member elsewhere resolves its
    /// parent from the root again.
    parent: Option<Parent>,
    buf: Vec<u8>,
    /// Our own IDs and umask: a file created by us already has them, so its owner and
    /// mode need no call of their own when the header says the same.
    euid: u32,
    egid: u32,
    umask: u32,
}

struct Parent {
    path: PathBuf,
    fd: OwnedFd,
    /// A setgid directory gives its group to what is created in it.
    setgid: bool,
}

impl<'r> Walk<'r> {
    fn new(root: &'r Root) -> Self {
        // umask is only readable by setting it; put it straight back.
        let umask = rustix::process::umask(Mode::empty());
        rustix::process::umask(umask);
        Walk {
            root,
            created: HashSet::new(),
            dir_mtimes: Vec::new(),
            stats: LayerStats::default(),
            parent: None,
            buf: Vec::new(),
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
            umask: umask.bits(),
        }
    }

    fn entries<R: Read>(
        &mut self,
        archive: &mut tar::Archive<R>,
        source: Option<&InPlace<'_>>,
    ) -> Result<(), LayerError> {
        let entries = archive.entries().map_err(LayerError::Read)?;
        for (n, entry) in entries.enumerate() {
            let mut entry = entry.map_err(|e| first_header_err(n, e))?;
            self.member(&mut entry, source)?;
        }
        Ok(())
    }

    fn entries_seekable<R: Read + Seek>(
        &mut self,
        archive: &mut tar::Archive<R>,
        source: &InPlace<'_>,
    ) -> Result<(), LayerError> {
        let entries = archive.entries_with_seek().map_err(LayerError::Read)?;
        for (n, entry) in entries.enumerate() {
            let mut entry = entry.map_err(|e| first_header_err(n, e))?;
            self.member(&mut entry, Some(source))?;
        }
        Ok(())
    }

    /// Directories' mtimes, last (their children changed them), and the stats.
    fn finish(mut self, digest: String) -> Result<LayerStats, LayerError> {
        self.parent = None;
        for (path, mtime) in self.dir_mtimes.iter().rev() {
            // A later member may have replaced the directory; confined either way.
            if let Ok(fd) = self.root.dir(path) {
                let _ = rfs::futimens(&fd, &timestamps(*mtime));
            }
        }
        self.stats.diff_id = format!("sha256:{digest}");
        Ok(self.stats)
    }

    /// The confined parent directory of `path` and its last component, from the cache
    /// when it is the same directory.
    fn parent_of(&mut self, path: &Path) -> io::Result<(BorrowedFd<'_>, bool, OsString)> {
        let dir_path = path.parent().unwrap_or(Path::new(""));
        let name = path.file_name().unwrap_or_default().to_owned();
        if self.parent.as_ref().is_none_or(|p| p.path != dir_path) {
            self.parent = None;
            let (fd, _) = self.root.parent(path)?;
            let st = rfs::fstat(&fd).map_err(errno)?;
            self.parent = Some(Parent {
                path: dir_path.to_owned(),
                fd,
                setgid: st.st_mode & 0o2000 != 0,
            });
        }
        let parent = self.parent.as_ref().expect("just set");
        Ok((parent.fd.as_fd(), parent.setgid, name))
    }

    fn member<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        source: Option<&InPlace<'_>>,
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
        // The cache holds the parent of the previous member. A member in that same
        // directory changes only an entry of it, never the directory or what leads to it;
        // a member elsewhere resolves its own parent. Dropped anyway when a member's path
        // is the cached directory or above it, and for whiteouts: cheap, and it keeps that
        // reasoning from being the only guard.
        if self
            .parent
            .as_ref()
            .is_some_and(|p| p.path.starts_with(&path))
        {
            self.parent = None;
        }
        let name = path.file_name().unwrap_or_default().as_bytes();

        if name.starts_with(WHITEOUT.as_bytes()) {
            self.parent = None;
        }
        if whiteout(self.root, &path, name, &member, &self.created)? {
            self.stats.whiteouts += 1;
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
                self.stats.skipped += 1;
                return Ok(());
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => return Ok(()),
            _ => {}
        }

        match kind {
            tar::EntryType::Directory => {
                let (dir, _, file_name) = self.parent_of(&path).map_err(write_err)?;
                let existing = kind_at(dir, &file_name).map_err(write_err)?;
                if existing != Some(FileType::Directory) {
                    remove_all_at(dir, &file_name).map_err(write_err)?;
                    rfs::mkdirat(dir, file_name.as_os_str(), Mode::from_raw_mode(0o700))
                        .map_err(|e| write_err(errno(e)))?;
                }
                let fd = rfs::openat(
                    dir,
                    file_name.as_os_str(),
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| write_err(errno(e)))?;
                let needs = Needs {
                    owner: true,
                    mode: true,
                    mtime: false,
                };
                apply_meta(&fd, &meta, needs).map_err(write_err)?;
                self.dir_mtimes.push((path.clone(), meta.mtime));
                self.stats.dirs += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                // In place when the member's bytes are one run of the file (not sparse).
                let in_place = source
                    .filter(|_| kind != tar::EntryType::GNUSparse)
                    .map(|s| (s, entry.raw_file_position(), entry.size()));
                if let Some((s, at, size)) = in_place
                    && at.checked_add(size).is_none_or(|end| end > s.len)
                {
                    return Err(LayerError::Read(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{member}: the layer ends inside it"),
                    )));
                }
                let (euid, egid, umask) = (self.euid, self.egid, self.umask);
                let mut buf = std::mem::take(&mut self.buf);
                let (dir, setgid, file_name) = self.parent_of(&path).map_err(write_err)?;
                // Created with its final permissions when nothing would change them
                // later: chown clears setuid/setgid, the umask clears what it masks.
                let perms = meta.mode & 0o777;
                let create_mode = if meta.mode & 0o7000 == 0 && perms & umask == 0 {
                    perms
                } else {
                    0o600
                };
                let fd = create_excl(dir, &file_name, create_mode).map_err(write_err)?;
                let mut file = File::from(fd);
                let copied = match in_place {
                    Some((s, at, size)) => {
                        copy_range(s.file, s.offset + at, size, &mut file, &mut buf)
                    }
                    None => copy_stream(entry, &mut file, &mut buf),
                };
                let same_owner = id(meta.uid) == euid && id(meta.gid) == egid && !setgid;
                self.buf = buf;
                copied.map_err(|e| match e {
                    CopyError::Read(e) => LayerError::Read(e),
                    CopyError::Write(e) => write_err(e),
                })?;
                let fd = OwnedFd::from(file);
                let needs = Needs {
                    owner: !same_owner,
                    mode: create_mode != perms,
                    mtime: true,
                };
                apply_meta(&fd, &meta, needs).map_err(write_err)?;
                self.stats.files += 1;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(LayerError::Read)?
                    .ok_or_else(|| {
                        LayerError::Refused(format!("symlink {member:?} has no target"))
                    })?;
                let (dir, _, file_name) = self.parent_of(&path).map_err(write_err)?;
                symlink(dir, &file_name, &target, &meta).map_err(write_err)?;
                self.stats.symlinks += 1;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(LayerError::Read)?
                    .ok_or_else(|| {
                        LayerError::Refused(format!("hard link {member:?} has no target"))
                    })?;
                let root = self.root;
                let (dir, _, file_name) = self.parent_of(&path).map_err(write_err)?;
                if !hard_link(root, &target, &path, dir, &file_name, &member)? {
                    return Ok(());
                }
                self.stats.hardlinks += 1;
            }
            other => {
                return Err(LayerError::Refused(format!(
                    "member {member:?} has an unsupported type ({other:?})"
                )));
            }
        }
        self.created.insert(path);
        Ok(())
    }
}

/// tar's own message for a bad first header quotes the garbage it read; say what it means.
fn first_header_err(n: usize, e: io::Error) -> LayerError {
    match n {
        0 if e.kind() == io::ErrorKind::Other || e.kind() == io::ErrorKind::InvalidData => {
            LayerError::Read(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a tar archive (its first header is invalid)",
            ))
        }
        _ => LayerError::Read(e),
    }
}

/// A new file `name` in `dir`, never through a link: `O_EXCL` first, and whatever is in
/// the way (a file, a symlink, a directory tree) removed only when something is.
fn create_excl(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<OwnedFd> {
    let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rfs::openat(dir, name, flags, Mode::from_raw_mode(mode)) {
        Err(rustix::io::Errno::EXIST) => {
            remove_all_at(dir, name)?;
            rfs::openat(dir, name, flags, Mode::from_raw_mode(mode)).map_err(errno)
        }
        other => other.map_err(errno),
    }
}

/// A streamed member's contents into `to`, through one reused buffer.
fn copy_stream(from: &mut impl Read, to: &mut File, buf: &mut Vec<u8>) -> Result<(), CopyError> {
    buf.resize(COPY_BUF, 0);
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
}

/// A symlink member made, owned and timed as the layer says. The target is stored as
/// written: it is only ever resolved inside the root.
fn symlink(dir: BorrowedFd<'_>, file_name: &OsStr, target: &Path, meta: &Meta) -> io::Result<()> {
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
    dir: BorrowedFd<'_>,
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
