//! Where things are. Install locations are fixed at build time by the Makefile
//! (`ATOMIC_PRELOAD_BINDIR=… cargo build`), so generated units name the real binaries.

use std::path::{Path, PathBuf};

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

/// `path` (absolute, as the host sees it) below `root`: an image root, a test's fake root.
pub fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
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
