//! Only root says what runs as root. The config becomes units that run as root, and the
//! stages load archives and run their images' labels as root: like sshd's `StrictModes`,
//! a file is acted on only when it, and every directory above it up to `/` (or up to an
//! image root), is owned by root and writable by nobody else. Otherwise whoever can write
//! there could make the next boot run their container as root.
//!
//! Symlinks are resolved, never refused: the link's own directories and every directory
//! of where it leads must meet the rule. A world-writable directory with the sticky bit
//! owned by root (`/tmp`) is accepted, as the kernel's `protected_*` rules and systemd's
//! tmpfiles do: nobody else can rename or remove what root owns inside it.
//!
//! Run by hand (`--dry-run` as a developer), the running user counts as root too: their
//! own files can only make them run things as themselves.

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A file or directory the rule refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    pub path: PathBuf,
    pub uid: u32,
    pub mode: u32,
    /// The fix, a command an operator can paste.
    pub fix: String,
    why: &'static str,
}

impl std::error::Error for Untrusted {}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {} (owner uid {}, mode {:04o}): only root may say what runs as root, so nothing in it is used; fix: {}",
            self.path.display(),
            self.why,
            self.uid,
            self.mode & 0o7777,
            self.fix
        )
    }
}

/// Whether `uid` may decide what runs: root, or whoever runs this (root under systemd).
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

fn judge(path: &Path, meta: &std::fs::Metadata) -> Result<(), Untrusted> {
    // A device, FIFO or socket where a file should be is refused by every reader ("not a
    // regular file"), which says more than its mode would (`/dev/zero` is 0666).
    if !meta.is_file() && !meta.is_dir() {
        return Ok(());
    }
    let (uid, mode) = (meta.uid(), meta.mode());
    let untrusted = |why, fix: String| Untrusted {
        path: path.to_owned(),
        uid,
        mode,
        fix,
        why,
    };
    if !trusted_owner(uid) {
        return Err(untrusted(
            "not owned by root",
            format!("chown root: {}", path.display()),
        ));
    }
    let sticky_dir = meta.is_dir() && mode & 0o1000 != 0 && uid == 0;
    if mode & 0o022 != 0 && !sticky_dir {
        return Err(untrusted(
            "writable by group or others",
            format!("chmod go-w {}", path.display()),
        ));
    }
    Ok(())
}

/// Check `path` (when it exists) and every directory above it up to `/`, or up to
/// `root` when it is below one (an image root: its own owner is the builder's business).
/// Both the path as written and, through its symlinks, the path it resolves to.
pub fn check(path: &Path, root: Option<&Path>) -> Result<(), Untrusted> {
    let stop = root.unwrap_or(Path::new("/"));
    let mut seen = Vec::new();
    let mut walk = |start: &Path| -> Result<(), Untrusted> {
        for p in start.ancestors() {
            if !p.starts_with(stop) || p.as_os_str().is_empty() {
                break;
            }
            if seen.iter().any(|s: &PathBuf| s == p) {
                continue;
            }
            seen.push(p.to_owned());
            match std::fs::metadata(p) {
                Ok(meta) => judge(p, &meta)?,
                // Not there (yet): nothing in it can be used either.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Unreadable: whoever reads it next says why.
                Err(_) => {}
            }
            if p == stop {
                break;
            }
        }
        Ok(())
    };
    walk(path)?;
    if let Ok(real) = std::fs::canonicalize(path) {
        walk(&real)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, chown, symlink};

    fn mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn group_or_world_writable_and_foreign_owners_are_refused() {
        if !rustix::process::geteuid().is_root() {
            return; // chown needs root; CI runs as root
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("preload")).unwrap();
        let config = d.join("preload/config.yaml");
        fs::write(&config, "").unwrap();
        mode(&config, 0o644);
        assert_eq!(check(&config, None), Ok(()));

        mode(&config, 0o666);
        let e = check(&config, None).unwrap_err();
        assert_eq!(e.path, config);
        assert_eq!(
            e.to_string(),
            format!(
                "{} is writable by group or others (owner uid 0, mode 0666): only root may say what runs as root, so nothing in it is used; fix: chmod go-w {}",
                config.display(),
                config.display()
            )
        );
        mode(&config, 0o644);

        chown(&config, Some(65534), None).unwrap();
        let e = check(&config, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("is not owned by root (owner uid 65534"),
            "{e}"
        );
        chown(&config, Some(0), None).unwrap();

        // A directory above it.
        mode(&d.join("preload"), 0o777);
        assert_eq!(check(&config, None).unwrap_err().path, d.join("preload"));
        // Sticky and owned by root, like /tmp: accepted.
        mode(&d.join("preload"), 0o1777);
        assert_eq!(check(&config, None), Ok(()));
        mode(&d.join("preload"), 0o755);

        // A link is followed: where it leads must meet the rule too.
        let elsewhere = d.join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::write(elsewhere.join("real.yaml"), "").unwrap();
        mode(&elsewhere, 0o777);
        let link = d.join("preload/link.yaml");
        symlink(elsewhere.join("real.yaml"), &link).unwrap();
        assert_eq!(check(&link, None).unwrap_err().path, elsewhere);

        // Below an image root, its parents are not judged.
        mode(d, 0o777);
        assert_eq!(check(&config, Some(d)).unwrap_err().path, d);
        assert_eq!(check(&config, Some(&d.join("preload"))), Ok(()));
        mode(d, 0o700);
        // A missing file is no problem of trust.
        assert_eq!(check(&d.join("preload/none.yaml"), None), Ok(()));
    }
}
