//! atomic's `rm_add_files_to_host`: the image's `/exports/hostfs/` copied onto the host.
//!
//! Every file and symlink under `hostfs/` goes to the same path on the host (after
//! `renameFiles`); files listed in `installedFilesTemplate` are rendered with the values.
//! An existing host file is never overwritten. What was created is recorded with its
//! checksum, and removed later (update, rollback, uninstall) only while unmodified.

use super::rootfs::Root;
use super::template;
use super::values::Values;
use crate::runtime::durable;
use rustix::fs::{self as rfs, AtFlags, FileType};
use sha2::Digest;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Host path (absolute, as seen by the host) → checksum when it was installed.
pub type Installed = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum HostFilesError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}")]
    Template(#[from] template::TemplateError),
    /// A renameFiles target that is not a plain absolute path.
    #[error("renameFiles maps /{src} to {dest:?}: a host path must be absolute, without \"..\"")]
    Rename { src: String, dest: String },
}

fn io_err(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> HostFilesError {
    let path = path.as_ref().display().to_string();
    move |source| HostFilesError::Io { path, source }
}

/// What a host path holds now, in the terms [`Installed`] records: a file's SHA-256, a
/// symlink's target, `dir` for a directory, `0` for nothing (atomic's value). A path that
/// cannot be read is an error, never "nothing": it must not be taken as free.
pub fn checksum(path: &Path) -> io::Result<String> {
    let m = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok("0".into()),
        other => other?,
    };
    Ok(if m.file_type().is_symlink() {
        format!("symlink:{}", fs::read_link(path)?.display())
    } else if m.is_dir() {
        "dir".into()
    } else {
        crate::runtime::digest::sha256_of(path)?
    })
}

/// A host path below `host_root`, the symlinks of its directories resolved inside it (see
/// [`crate::paths::under`]): with `--host-root` an image build's root, never the build
/// machine's files. The last component is not followed: it is what is created, checked
/// or removed (a link the install made is a link).
fn on_host(host_root: &Path, path: &str) -> Result<PathBuf, HostFilesError> {
    let path = Path::new(path);
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(host_root.to_owned());
    };
    let parent =
        crate::paths::under(host_root, &parent.display().to_string()).map_err(io_err(parent))?;
    Ok(parent.join(name))
}

/// The link among `links` (host paths the image installs as symlinks) that `dest` would be
/// written through, if any: a host file is never written through the image's own link
/// (`hostfs/etc/app -> /root` with `hostfs/etc/app/x`), only through the host's.
fn through_own_link<'a>(dest: &str, links: &'a [String]) -> Option<&'a String> {
    links.iter().find(|link| {
        dest.strip_prefix(link.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// atomic's `_do_rename_path`: each prefix of the path may be renamed by the map.
fn rename(path: &str, renames: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for part in path.split('/').skip(1) {
        out = format!("{out}/{part}");
        if let Some(to) = renames.get(&out) {
            out = to.clone();
        }
    }
    out
}

/// How an image's host files are made: its rootfs and the values, templates and renames
/// recorded in its deployment's `info`.
pub struct Source<'a> {
    pub rootfs: &'a Root,
    pub templates: &'a [String],
    pub renames: &'a BTreeMap<String, String>,
    pub values: &'a Values,
}

/// One thing under `exports/hostfs/` and the host path it goes to.
struct Candidate {
    /// Relative to `exports/hostfs`.
    src: PathBuf,
    dest: String,
    kind: FileType,
    mode: u32,
}

const HOSTFS: &str = "exports/hostfs";

impl Source<'_> {
    /// Everything under `exports/hostfs/`, each directory before what it holds.
    fn walk(&self) -> Result<Vec<Candidate>, HostFilesError> {
        let hostfs = Path::new(HOSTFS);
        let mut out = Vec::new();
        if self.rootfs.dir(hostfs).is_err() {
            return Ok(out);
        }
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let dir_fd = self
                .rootfs
                .dir(&hostfs.join(&rel))
                .map_err(io_err(hostfs.join(&rel)))?;
            for name in children(&dir_fd).map_err(io_err(&rel))? {
                let src = rel.join(&name);
                let st = rfs::statat(&dir_fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err(&src)(e.into()))?;
                let kind = FileType::from_raw_mode(st.st_mode);
                if kind == FileType::Directory {
                    stack.push(src.clone());
                }
                // Devices and the like never reach a checkout; nothing else to copy.
                if matches!(
                    kind,
                    FileType::Directory | FileType::Symlink | FileType::RegularFile
                ) {
                    let dest = rename(&format!("/{}", src.display()), self.renames);
                    let plain = dest.starts_with('/')
                        && Path::new(&dest)
                            .components()
                            .all(|c| !matches!(c, std::path::Component::ParentDir));
                    if !plain {
                        return Err(HostFilesError::Rename {
                            src: src.display().to_string(),
                            dest,
                        });
                    }
                    out.push(Candidate {
                        dest,
                        src,
                        kind,
                        mode: st.st_mode & 0o7777,
                    });
                }
            }
        }
        Ok(out)
    }

    /// What [`checksum`] will say of `c` once it is on the host, and a rendered
    /// template's bytes.
    fn expected(&self, c: &Candidate) -> Result<(String, Option<Vec<u8>>), HostFilesError> {
        let src = Path::new(HOSTFS).join(&c.src);
        Ok(match c.kind {
            FileType::Directory => ("dir".into(), None),
            FileType::Symlink => (
                format!("symlink:{}", self.link_target(&c.src)?.display()),
                None,
            ),
            _ if self.templates.contains(&c.dest) => {
                let bytes = self
                    .rootfs
                    .read(&src)
                    .map_err(io_err(&src))?
                    .unwrap_or_default();
                let text = String::from_utf8_lossy(&bytes);
                let rendered = template::substitute(&text, self.values, &c.dest)?.into_bytes();
                (
                    crate::runtime::digest::hex(&sha2::Sha256::digest(&rendered)),
                    Some(rendered),
                )
            }
            _ => {
                let file = self.rootfs.open_file(&src).map_err(io_err(&src))?;
                let mut reader = crate::runtime::digest::Hashing::new(io::BufReader::new(file));
                io::copy(&mut reader, &mut io::sink()).map_err(io_err(&src))?;
                (crate::runtime::digest::hex(&reader.hasher.finalize()), None)
            }
        })
    }

    fn link_target(&self, src: &Path) -> Result<PathBuf, HostFilesError> {
        let full = Path::new(HOSTFS).join(src);
        let (parent, name) = (
            full.parent().unwrap_or(Path::new("")),
            full.file_name().unwrap_or_default(),
        );
        let dir_fd = self.rootfs.dir(parent).map_err(io_err(parent))?;
        let target =
            rfs::readlinkat(&dir_fd, name, Vec::new()).map_err(|e| io_err(&full)(e.into()))?;
        Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
    }

    /// Whether a directory of `hostfs/` is empty in the image: only such a directory is
    /// recorded (and so removed later), since one that holds files may hold the admin's.
    fn is_empty_dir(&self, src: &Path) -> Result<bool, HostFilesError> {
        let dir = Path::new(HOSTFS).join(src);
        let fd = self.rootfs.dir(&dir).map_err(io_err(&dir))?;
        Ok(children(&fd).map_err(io_err(&dir))?.is_empty())
    }
}

fn children(dir_fd: &impl std::os::fd::AsFd) -> io::Result<Vec<std::ffi::OsString>> {
    let mut children = Vec::new();
    let mut entries = rfs::Dir::read_from(dir_fd)?;
    while let Some(entry) = entries.read() {
        let name = OsStr::from_bytes(entry?.file_name().to_bytes()).to_owned();
        if name != "." && name != ".." {
            children.push(name);
        }
    }
    children.sort();
    Ok(children)
}

/// Which host files a deployment will own, with the checksum each will have: every file
/// of `hostfs/` whose host path is free, or holds an unmodified file of the deployment
/// being replaced (`replaceable`, its record). An existing file of anyone else is never
/// taken (`File /etc/x already exists`). Changes nothing: the plan goes into the new
/// deployment's record before any host file is touched, so a run that is killed half
/// way and the run after it agree on what is ours.
pub fn plan(
    source: &Source<'_>,
    host_root: &Path,
    replaceable: &Installed,
) -> Result<Installed, HostFilesError> {
    let mut planned = Installed::new();
    let mut links = Vec::new();
    for c in source.walk()? {
        if let Some(link) = through_own_link(&c.dest, &links) {
            println!(
                "Will not write {} through {link}, a symlink of the image's own",
                c.dest
            );
            continue;
        }
        if c.kind == FileType::Symlink {
            links.push(c.dest.clone());
        }
        let host = on_host(host_root, &c.dest)?;
        let now = checksum(&host).map_err(io_err(&host))?;
        let free = now == "0" || replaceable.get(&c.dest) == Some(&now);
        if !free {
            if c.kind != FileType::Directory {
                println!("File {} already exists", c.dest);
            }
            continue;
        }
        if c.kind != FileType::Directory || source.is_empty_dir(&c.src)? {
            planned.insert(c.dest.clone(), source.expected(&c)?.0);
        }
    }
    Ok(planned)
}

/// Make the host agree with a plan: each planned path that is free (absent, or an
/// unmodified file of `old`, the record of the deployment being replaced) gets the
/// image's file, written to a temp name, fsynced and renamed into place with its mode;
/// a planned path already holding what the plan says is left as it is (a rerun after a
/// crash); what `old` created and the plan does not take over is removed while
/// unmodified. Running it twice changes nothing the second time.
pub fn apply(
    source: &Source<'_>,
    host_root: &Path,
    planned: &Installed,
    old: &Installed,
) -> Result<(), HostFilesError> {
    let leftover: Installed = old
        .iter()
        .filter(|(path, _)| !planned.contains_key(*path))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    remove(&leftover, host_root)?;
    let links: Vec<String> = source
        .walk()?
        .into_iter()
        .filter(|c| c.kind == FileType::Symlink)
        .map(|c| c.dest)
        .collect();
    for c in source.walk()? {
        if through_own_link(&c.dest, &links).is_some() {
            continue;
        }
        let host = on_host(host_root, &c.dest)?;
        let now = checksum(&host).map_err(io_err(&host))?;
        let Some(want) = planned.get(&c.dest) else {
            // Not ours, but a directory the files below it need.
            if c.kind == FileType::Directory && now == "0" {
                fs::create_dir_all(&host).map_err(io_err(&host))?;
            }
            continue;
        };
        if &now == want {
            continue;
        }
        if now != "0" && old.get(&c.dest) != Some(&now) {
            println!("Will not replace {} as it was manually modified.", c.dest);
            continue;
        }
        if let Some(parent) = host.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        match c.kind {
            FileType::Directory => fs::create_dir(&host).map_err(io_err(&host))?,
            FileType::Symlink => {
                durable::symlink(&source.link_target(&c.src)?, &host).map_err(io_err(&host))?
            }
            _ => match source.expected(&c)?.1 {
                Some(rendered) => {
                    durable::write(&host, &rendered, Some(c.mode)).map_err(io_err(&host))?
                }
                None => {
                    let src = Path::new(HOSTFS).join(&c.src);
                    let mut from = source.rootfs.open_file(&src).map_err(io_err(&src))?;
                    durable::write_with(&host, Some(c.mode), |to| io::copy(&mut from, to).map(drop))
                        .map_err(io_err(&host))?
                }
            },
        }
        println!("Created file {}", c.dest);
    }
    Ok(())
}

/// Remove what an earlier install created, unless it was changed since (then say so).
/// Deepest paths first, so directories are empty when their turn comes (one that is not,
/// holds someone's files: it stays, saying so). A file that cannot be read or removed is
/// an error, so the caller keeps its record and a later run tries again.
pub fn remove(installed: &Installed, host_root: &Path) -> Result<(), HostFilesError> {
    for (path, recorded) in installed.iter().rev() {
        let host = on_host(host_root, path)?;
        let now = checksum(&host).map_err(io_err(&host))?;
        if now == "0" {
            continue;
        }
        if &now != recorded {
            println!("Will not delete {path} as it was manually modified.");
            continue;
        }
        if recorded == "dir" {
            match fs::remove_dir(&host) {
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTEMPTY.raw_os_error()) => {
                    println!("Will not delete {path}: it holds files now.");
                }
                other => other.map_err(io_err(&host))?,
            }
        } else {
            durable::remove_file(&host).map_err(io_err(&host))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_apply_to_every_prefix() {
        let renames: BTreeMap<String, String> = [
            ("/etc/etcd".to_owned(), "/etc/etcd-main".to_owned()),
            (
                "/usr/bin/etcdctl".to_owned(),
                "/usr/local/bin/etcdctl".to_owned(),
            ),
        ]
        .into();
        assert_eq!(
            rename("/etc/etcd/etcd.conf", &renames),
            "/etc/etcd-main/etcd.conf"
        );
        assert_eq!(
            rename("/usr/bin/etcdctl", &renames),
            "/usr/local/bin/etcdctl"
        );
        assert_eq!(rename("/usr/bin/other", &renames), "/usr/bin/other");
    }
}
