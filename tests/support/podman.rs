//! A private Podman: its own storage (graph root and run root in a temp dir, vfs driver,
//! which works everywhere), its own containers.conf and events log, selected for every
//! `podman` process a test starts through `CONTAINERS_STORAGE_CONF` / `CONTAINERS_CONF`.
//! Podman has no daemon, so there is nothing to stop; the directory goes with the struct.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PODMAN: &str = "/usr/bin/podman";

/// Podman tests need root, podman and busybox-static. CI has them (.ci/run installs
/// them); elsewhere, set ATOMIC_PRELOAD_SKIP_PODMAN_TESTS=1 to skip them on purpose.
pub fn podman_available() -> bool {
    if std::env::var_os("ATOMIC_PRELOAD_SKIP_PODMAN_TESTS").is_some() {
        eprintln!("skipped: ATOMIC_PRELOAD_SKIP_PODMAN_TESTS is set");
        return false;
    }
    let missing: Vec<&str> = [(PODMAN, "podman"), (super::BUSYBOX, "busybox-static")]
        .into_iter()
        .filter(|(p, _)| !Path::new(p).exists())
        .map(|(_, what)| what)
        .collect();
    assert!(
        missing.is_empty() && super::is_root(),
        "Podman tests need root and {missing:?}; run .ci/run's install step, or set ATOMIC_PRELOAD_SKIP_PODMAN_TESTS=1"
    );
    true
}

pub struct Podman {
    pub dir: tempfile::TempDir,
}

impl Podman {
    pub fn new() -> Podman {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                d.join("run").display(),
                d.join("root").display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{}\"\n",
                d.join("events.log").display()
            ),
        )
        .unwrap();
        Podman { dir }
    }

    /// The environment that points a `podman` process at this storage.
    pub fn env(&self) -> [(&'static str, PathBuf); 2] {
        [
            (
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            ),
            ("CONTAINERS_CONF", self.dir.path().join("containers.conf")),
        ]
    }

    pub fn podman(&self, args: &[&str]) -> Output {
        Command::new(PODMAN)
            .args(args)
            .envs(self.env())
            .output()
            .unwrap()
    }

    /// `podman ARGS` that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn image_id(&self, image: &str) -> Option<String> {
        let out = self.podman(&["image", "inspect", "--format", "{{.Id}}", image]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// How many archives Podman has loaded so far (its events log).
    pub fn loads(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("events.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"Status\":\"loadfromarchive\""))
            .count()
    }
}
