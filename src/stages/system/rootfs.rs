//! The one owner of file operations inside a container's root file system.
//!
//! Every path below a [`Root`] is resolved by the kernel with `openat2(RESOLVE_IN_ROOT)`:
//! `..` stops at the root and symlinks, absolute or relative, resolve as if the root were
//! `/`. So a hostile layer can aim a symlink at `/etc` or `../../..` and the next member
//! written "through" it still lands inside the root. The last component of a path is
//! never followed: it is created, replaced, linked or removed with `*at` calls on the
//! confined parent directory. Nothing else in the crate touches a rootfs by path.
//!
//! Why openat2 rather than cap-std: it is one system call the kernel enforces (Linux ≥
//! 5.6; every distribution with runc ≥ 1.1 has it), needs no userspace path walk to get
//! right, and rustix is already the thinnest safe wrapper of it. On an older kernel the
//! checkout fails with ENOSYS, saying so — it never falls back to an unconfined walk.

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// A directory every operation is confined to.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// A member path made relative and free of `.` and `..`: `./usr//bin/` → `usr/bin`. A
/// `..` is refused rather than resolved: no layer writer emits one, so it is an attack
/// or a broken archive either way. The root itself (`./`) is the empty path.
pub fn clean(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(c) => out.push(c),
            Component::ParentDir => {
                return Err(format!("member {:?} has a \"..\" component", path));
            }
            Component::Prefix(_) => return Err(format!("member {path:?} is not a Unix path")),
        }
    }
    Ok(out)
}

/// Split a cleaned, non-empty path into its parent and its last component.
fn split(rel: &Path) -> io::Result<(&Path, &OsStr)> {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the root itself has no parent",
        )),
    }
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);

impl Root {
    /// Open an existing directory as a root.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rfs::open(path, DIR_FLAGS, Mode::empty()).map_err(io_err)?;
        Ok(Root {
            fd,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `openat2(root, rel, RESOLVE_IN_ROOT)`. An empty `rel` is the root.
    fn open_in_root(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let rel: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        rfs::openat2(
            &self.fd,
            rel,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(io_err)
    }

    /// An existing directory inside the root.
    pub fn dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.open_in_root(rel, DIR_FLAGS)
    }

    /// An existing file inside the root, for reading.
    pub fn open_file(&self, rel: &Path) -> io::Result<std::fs::File> {
        let fd = self.open_in_root(rel, OFlags::RDONLY)?;
        let file = std::fs::File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(file)
    }

    /// Read a whole file inside the root, or `None` when it does not exist.
    pub fn read(&self, rel: &Path) -> io::Result<Option<Vec<u8>>> {
        match self.open_file(rel) {
            Ok(mut file) => {
                let mut bytes = Vec::new();
                io::Read::read_to_end(&mut file, &mut bytes)?;
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A directory inside the root, created (0755, owned by us) with any missing parents.
    /// A dangling symlink on the way (`lib -> usr/lib` before usr/lib exists) is followed
    /// the way the kernel would follow it inside the root, and its target created.
    pub fn ensure_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.ensure_dir_hops(rel, 0)
    }

    fn ensure_dir_hops(&self, rel: &Path, hops: u32) -> io::Result<OwnedFd> {
        match self.dir(rel) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && !rel.as_os_str().is_empty() => {
                let (parent, name) = split(rel)?;
                let parent_fd = self.ensure_dir_hops(parent, hops)?;
                match rfs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) => return self.dir(rel),
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(io_err(e)),
                }
                // Something is there and does not resolve: a dangling symlink.
                if kind_at(&parent_fd, name)? != Some(FileType::Symlink) || hops >= 40 {
                    return self.dir(rel);
                }
                let target = rfs::readlinkat(&parent_fd, name, Vec::new()).map_err(io_err)?;
                let target = Path::new(OsStr::from_bytes(target.as_bytes()));
                let mut resolved = if target.is_absolute() {
                    PathBuf::new()
                } else {
                    parent.to_owned()
                };
                for component in target.components() {
                    match component {
                        Component::Normal(c) => resolved.push(c),
                        // `..` stops at the root, as RESOLVE_IN_ROOT does.
                        Component::ParentDir => {
                            resolved.pop();
                        }
                        _ => {}
                    }
                }
                self.ensure_dir_hops(&resolved, hops + 1)?;
                self.dir(rel)
            }
            other => other,
        }
    }

    /// The directory that holds `rel` (created if missing) and `rel`'s last component.
    pub fn parent(&self, rel: &Path) -> io::Result<(OwnedFd, OsString)> {
        let (parent, name) = split(rel)?;
        Ok((self.ensure_dir(parent)?, name.to_owned()))
    }
}

/// The type of `name` in `dir`, not following it; `None` when nothing is there.
pub fn kind_at(dir: impl AsFd, name: &OsStr) -> io::Result<Option<FileType>> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(io_err(e)),
    }
}

/// Remove `name` in `dir` and, for a directory, everything below it. Symlinks are
/// removed, never followed; nothing outside `dir` is touched.
pub fn remove_all_at(dir: impl AsFd, name: &OsStr) -> io::Result<()> {
    let dir = dir.as_fd();
    match kind_at(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            let sub = rfs::openat(dir, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
                .map_err(io_err)?;
            clear_dir(&sub, |_| true)?;
            rfs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(io_err)
        }
        Some(_) => rfs::unlinkat(dir, name, AtFlags::empty()).map_err(io_err),
    }
}

/// Remove every entry of `dir` for which `remove(name)` says so.
pub fn clear_dir(dir: &OwnedFd, mut remove: impl FnMut(&OsStr) -> bool) -> io::Result<()> {
    let mut names = Vec::new();
    let mut entries = rfs::Dir::read_from(dir).map_err(io_err)?;
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(io_err)?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_owned();
        if name != "." && name != ".." && remove(&name) {
            names.push(name);
        }
    }
    for name in names {
        remove_all_at(dir, &name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn clean_strips_dots_and_refuses_parent_components() {
        assert_eq!(
            clean(Path::new("./usr//bin/")).unwrap(),
            Path::new("usr/bin")
        );
        assert_eq!(
            clean(Path::new("/etc/passwd")).unwrap(),
            Path::new("etc/passwd")
        );
        assert_eq!(clean(Path::new("./")).unwrap(), Path::new(""));
        assert!(clean(Path::new("a/../../etc")).is_err());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let root_dir = tempfile::tempdir().unwrap();
        let r = root_dir.path();
        symlink("/", r.join("abs")).unwrap();
        symlink("../../../../..", r.join("rel")).unwrap();
        symlink(outside.path(), r.join("out")).unwrap();
        let root = Root::open(r).unwrap();
        for via in ["abs", "rel", "out"] {
            let (dir, name) = root.parent(&Path::new(via).join("x/file")).unwrap();
            rfs::openat(
                &dir,
                name.as_os_str(),
                OFlags::CREATE | OFlags::WRONLY,
                Mode::from_raw_mode(0o600),
            )
            .unwrap();
        }
        assert!(r.join("x/file").exists());
        // "out" points at a host path: inside the root that path is created instead.
        assert!(
            r.join(outside.path().strip_prefix("/").unwrap())
                .join("x/file")
                .exists()
        );
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn remove_all_does_not_follow_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep"), "x").unwrap();
        let root_dir = tempfile::tempdir().unwrap();
        let r = root_dir.path();
        fs::create_dir_all(r.join("d/e")).unwrap();
        symlink(outside.path(), r.join("d/link")).unwrap();
        let root = Root::open(r).unwrap();
        remove_all_at(root.fd(), OsStr::new("d")).unwrap();
        assert!(!r.join("d").exists());
        assert!(outside.path().join("keep").exists());
    }
}
