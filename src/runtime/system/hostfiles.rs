//! atomic's `rm_add_files_to_host`: the image's `/exports/hostfs/` copied onto the host.
//!
//! Every file and symlink under `hostfs/` goes to the same path on the host (after
//! `renameFiles`); files listed in `installedFilesTemplate` are rendered with the values.
//! An existing host file is never overwritten. What was created is recorded with its
//! checksum, and removed later (update, rollback, uninstall) only while unmodified.

use super::rootfs::Root;
use super::template;
use super::values::Values;
use rustix::fs::{self as rfs, AtFlags, FileType};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Host path (absolute, as seen by the host) → checksum when it was installed.
pub type Installed = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum HostFilesError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}")]
    Template(#[from] template::TemplateError),
}

fn io_err(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> HostFilesError {
    let path = path.as_ref().display().to_string();
    move |source| HostFilesError::Io { path, source }
}

/// What a host path holds now, in the terms [`Installed`] records: a file's SHA-256, a
/// symlink's target, `dir` for a directory, `0` for nothing (atomic's value).
pub fn checksum(path: &Path) -> String {
    match fs::symlink_metadata(path) {
        Err(_) => "0".into(),
        Ok(m) if m.file_type().is_symlink() => match fs::read_link(path) {
            Ok(t) => format!("symlink:{}", t.display()),
            Err(_) => "0".into(),
        },
        Ok(m) if m.is_dir() => "dir".into(),
        Ok(_) => crate::runtime::digest::sha256_of(path).unwrap_or_else(|_| "0".into()),
    }
}

fn on_host(host_root: &Path, path: &str) -> PathBuf {
    host_root.join(path.trim_start_matches('/'))
}

/// Remove what an earlier install created, unless it was changed since (then say so).
/// Deepest paths first, so directories are empty when their turn comes.
pub fn remove(installed: &Installed, host_root: &Path) {
    for (path, recorded) in installed.iter().rev() {
        let host = on_host(host_root, path);
        let now = checksum(&host);
        if now == "0" {
            continue;
        }
        if &now != recorded {
            println!("Will not delete {path} as it was manually modified.");
            continue;
        }
        let removed = if recorded == "dir" {
            fs::remove_dir(&host)
        } else {
            fs::remove_file(&host)
        };
        if let Err(e) = removed {
            println!("Could not delete {path}: {e}");
        }
    }
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

/// Copy `exports/hostfs/` of `rootfs` onto the host. Returns what was created.
pub fn add(
    rootfs: &Root,
    host_root: &Path,
    templates: &BTreeSet<String>,
    renames: &BTreeMap<String, String>,
    values: &Values,
) -> Result<Installed, HostFilesError> {
    let mut installed = Installed::new();
    let hostfs = Path::new("exports/hostfs");
    if rootfs.dir(hostfs).is_err() {
        return Ok(installed);
    }
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir_fd = rootfs
            .dir(&hostfs.join(&rel))
            .map_err(io_err(hostfs.join(&rel)))?;
        let mut children = Vec::new();
        let mut entries = rfs::Dir::read_from(&dir_fd).map_err(|e| io_err(&rel)(e.into()))?;
        while let Some(entry) = entries.read() {
            let entry = entry.map_err(|e| io_err(&rel)(e.into()))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_owned();
            if name != "." && name != ".." {
                children.push(name);
            }
        }
        children.sort();
        for name in children {
            let src_rel = rel.join(&name);
            let st = rfs::statat(&dir_fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_err(&src_rel)(e.into()))?;
            let kind = FileType::from_raw_mode(st.st_mode);
            let dest = rename(&format!("/{}", src_rel.display()), renames);
            let host = on_host(host_root, &dest);
            if kind == FileType::Directory {
                stack.push(src_rel.clone());
            }
            if fs::symlink_metadata(&host).is_ok() {
                if kind != FileType::Directory {
                    println!("File {dest} already exists");
                }
                continue;
            }
            if let Some(parent) = host.parent() {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            match kind {
                FileType::Directory => {
                    fs::create_dir(&host).map_err(io_err(&host))?;
                }
                FileType::Symlink => {
                    let target = rfs::readlinkat(&dir_fd, name.as_os_str(), Vec::new())
                        .map_err(|e| io_err(&src_rel)(e.into()))?;
                    std::os::unix::fs::symlink(OsStr::from_bytes(target.as_bytes()), &host)
                        .map_err(io_err(&host))?;
                }
                FileType::RegularFile => {
                    let src = hostfs.join(&src_rel);
                    let mode = st.st_mode & 0o7777;
                    if templates.contains(&dest) {
                        let bytes = rootfs.read(&src).map_err(io_err(&src))?.unwrap_or_default();
                        let text = String::from_utf8_lossy(&bytes);
                        let rendered = template::substitute(&text, values, &dest)?;
                        fs::write(&host, rendered).map_err(io_err(&host))?;
                    } else {
                        let mut from = rootfs.open_file(&src).map_err(io_err(&src))?;
                        let mut to = fs::File::create(&host).map_err(io_err(&host))?;
                        io::copy(&mut from, &mut to).map_err(io_err(&host))?;
                    }
                    fs::set_permissions(&host, fs::Permissions::from_mode(mode))
                        .map_err(io_err(&host))?;
                }
                // Devices and the like never reach a checkout; nothing else to copy.
                _ => continue,
            }
            // A directory is recorded (and so removed later) only when it came empty:
            // one that holds files may hold the admin's files too.
            if kind != FileType::Directory || source_is_empty(rootfs, &hostfs.join(&src_rel)) {
                installed.insert(dest.clone(), checksum(&host));
            }
            println!("Created file {dest}");
        }
    }
    Ok(installed)
}

fn source_is_empty(rootfs: &Root, dir: &Path) -> bool {
    let Ok(fd) = rootfs.dir(dir) else {
        return false;
    };
    let Ok(mut entries) = rfs::Dir::read_from(&fd) else {
        return false;
    };
    while let Some(Ok(entry)) = entries.read() {
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            return false;
        }
    }
    true
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
