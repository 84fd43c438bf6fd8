//! Where things are. Install locations are fixed at build time by the Makefile
//! (`ATOMIC_PRELOAD_BINDIR=… cargo build`), so generated units name the real binaries.

use rustix::io::Errno;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::{fs, io};

const fn or(value: Option<&'static str>, default: &'static str) -> &'static str {
    match value {
        Some(v) => v,
        None => default,
    }
}

/// Directory holding the `atomic-preload` helper that generated units call.
pub const BINDIR: &str = or(option_env!("ATOMIC_PRELOAD_BINDIR"), "/usr/bin");
/// The Docker client the units run.
pub const DOCKER: &str = or(option_env!("ATOMIC_PRELOAD_DOCKER"), "/usr/bin/docker");
/// The Podman client the units of Podman entries run.
pub const PODMAN: &str = or(option_env!("ATOMIC_PRELOAD_PODMAN"), "/usr/bin/podman");
/// containerd's client (it ships with containerd), for `engine: containerd`.
pub const CTR: &str = or(option_env!("ATOMIC_PRELOAD_CTR"), "/usr/bin/ctr");
/// What says a machine is a Kubernetes node, for engine detection: kubelet, and the
/// CRI-O daemon (containerd's own client is [`CTR`]).
pub const KUBELET: &str = "/usr/bin/kubelet";
pub const CRIO: &str = "/usr/bin/crio";
/// The OCI runtime system containers run with (Debian ships runc in /usr/sbin).
pub const RUNTIME: &str = or(option_env!("ATOMIC_PRELOAD_RUNTIME"), "/usr/sbin/runc");
/// System containers' deployments, where atomic kept them.
pub const CHECKOUT_DIR: &str = "/var/lib/containers/atomic";
/// systemd's system unit directory, where our static units are installed.
pub const SYSTEM_UNIT_DIR: &str = or(
    option_env!("ATOMIC_PRELOAD_UNITDIR"),
    "/usr/lib/systemd/system",
);

/// The operator's directory: config.yaml, docker/ and ostree/ archives.
pub const PRELOAD_DIR: &str = "/var/lib/atomic/preload";
pub const CONFIG_FILE: &str = "/var/lib/atomic/preload/config.yaml";
/// What holds for one boot only (`/run` is emptied at every boot): Podman's image list.
pub const RUN_DIR: &str = "/run/atomic-preload";
/// Our own state (load-once and install-once marks); `StateDirectory=atomic-preload`.
pub const STATE_DIR: &str = "/var/lib/atomic-preload";

/// systemd's output directory for system generators (the "normal" one).
pub const GENERATOR_DIR: &str = "/run/systemd/generator";

/// Static units shipped in `units/`.
pub const TARGET: &str = "atomic-preload.target";
pub const REFRESH_SERVICE: &str = "atomic-preload-refresh.service";
pub const REFRESH_PATH: &str = "atomic-preload-refresh.path";
/// The unit that shows config problems no entry's own unit can show.
pub const CONFIG_ERROR_UNIT: &str = "atomic-preload-config.service";

/// `path` (absolute, as the booted image will see it) below `root`, an image root or a
/// test's fake root, with every symlink on the way resolved as the booted image will
/// resolve it: an absolute target starts again at `root` and `..` stops there, as
/// systemd's `--root` and `dnf --installroot` do. So an image whose `/var` is a link to
/// `/srv/var`, or whose `/etc/containers` points at `../../../etc`, is read and written
/// at `root/srv/var` and `root/etc`, never on the build machine. Components that do not
/// exist yet are kept as they are (to be created); a loop is `ELOOP` after 40 links.
///
/// The returned path has no symlink left in its existing part, so opening it follows
/// nothing out of `root` — unless the tree changes in between: image roots are built by
/// one process at a time, and what is guarded against is the image's content, not a
/// concurrent writer. The generator's and runtime's own paths on a live host (`root` is
/// `/`) resolve exactly as the kernel would.
pub fn under(root: &Path, path: &str) -> io::Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<OsString> = components(Path::new(path));
    pending.reverse();
    let mut links = 0;
    let mut missing = false;
    while let Some(component) = pending.pop() {
        if component == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&component);
        if !missing {
            match fs::symlink_metadata(root.join(&candidate)) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    links += 1;
                    if links > 40 {
                        return Err(Errno::LOOP.into());
                    }
                    let target = fs::read_link(root.join(&candidate))?;
                    if target.is_absolute() {
                        resolved = PathBuf::new();
                    }
                    let mut target = components(&target);
                    target.reverse();
                    pending.extend(target);
                    continue;
                }
                Ok(_) => {}
                // Not there (or below a file): the rest is created, or fails, as it is.
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) =>
                {
                    missing = true
                }
                Err(e) => return Err(e),
            }
        }
        resolved = candidate;
    }
    Ok(root.join(resolved))
}

/// A path's names and `..`s, without `/` and `.`.
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

pub fn helper() -> String {
    format!("{BINDIR}/atomic-preload")
}

/// `preload-<name>.service`; `name` is validated by `config::is_valid_name`.
pub fn container_unit(name: &str) -> String {
    format!("preload-{name}.service")
}

/// Whether a unit file name is one the generator writes (it writes nothing else but
/// symlinks): a container's unit or the config-problems unit.
pub fn is_generated_unit(name: &str) -> bool {
    (name.starts_with("preload-") && name.ends_with(".service")) || name == CONFIG_ERROR_UNIT
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_in_a_root_resolve_inside_it() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs::create_dir_all(r.join("srv/var/lib")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        symlink("/srv/var", r.join("var")).unwrap();
        symlink("../../../../etc", r.join("srv/var/lib/up")).unwrap();
        symlink(outside.path(), r.join("etc/out")).unwrap();
        symlink("/loop", r.join("loop")).unwrap();
        let cases = [
            ("/var/lib/atomic/preload", "srv/var/lib/atomic/preload"),
            ("/var/lib/up/containers", "etc/containers"),
            ("/var/../../../etc", "etc"),
            ("var/lib/./x", "srv/var/lib/x"),
        ];
        for (path, want) in cases {
            assert_eq!(under(r, path).unwrap(), r.join(want), "{path}");
        }
        // A host path as a link target is that path inside the root.
        let out = under(r, "/etc/out/x").unwrap();
        assert_eq!(
            out,
            r.join(outside.path().strip_prefix("/").unwrap()).join("x")
        );
        assert_eq!(
            under(r, "/loop/x").unwrap_err().raw_os_error(),
            Some(Errno::LOOP.raw_os_error())
        );
        // The host itself resolves as the kernel does.
        assert_eq!(
            under(Path::new("/"), "/proc/self/..").unwrap(),
            Path::new("/proc")
        );
    }
}
