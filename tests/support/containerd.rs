//! A private containerd: its own root, state and sockets in a temp dir (the CRI plugin
//! off, or on as on a Kubernetes node), started by the test and stopped by PID when the
//! struct goes, with `ctr events` recording every image event as the oracle for "loaded
//! once". Tests point `ctr` (ours and theirs) at it with `CONTAINERD_ADDRESS`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const CONTAINERD: &str = "/usr/bin/containerd";
pub const CTR: &str = "/usr/bin/ctr";
pub const NAMESPACE: &str = "k8s.io";

/// containerd tests need root and containerd (Debian's docker.io depends on it; CI has
/// it). Elsewhere, ATOMIC_PRELOAD_SKIP_CONTAINERD_TESTS=1 skips them on purpose.
pub fn containerd_available() -> bool {
    if std::env::var_os("ATOMIC_PRELOAD_SKIP_CONTAINERD_TESTS").is_some() {
        eprintln!("skipped: ATOMIC_PRELOAD_SKIP_CONTAINERD_TESTS is set");
        return false;
    }
    assert!(
        Path::new(CONTAINERD).exists() && Path::new(CTR).exists() && super::is_root(),
        "containerd tests need root and containerd (apt-get install containerd); or set ATOMIC_PRELOAD_SKIP_CONTAINERD_TESTS=1"
    );
    true
}

pub struct Containerd {
    pub dir: tempfile::TempDir,
    daemon: Option<Child>,
    events: Option<Child>,
}

impl Containerd {
    /// A containerd with its root at `root` (a fresh one in the temp dir when `None`).
    pub fn start(cri: bool, root: Option<&Path>) -> Containerd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let root = root.map_or_else(|| d.join("root"), Path::to_owned);
        let disabled = if cri {
            String::new()
        } else {
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n".into()
        };
        std::fs::write(
            d.join("config.toml"),
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\n{disabled}[grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}.ttrpc\"\n[debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
                root.display(),
                d.join("state").display(),
                d.join("containerd.sock").display(),
                d.join("containerd.sock").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let daemon = Command::new(CONTAINERD)
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut c = Containerd {
            dir,
            daemon: Some(daemon),
            events: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let events = std::fs::File::create(c.dir.path().join("events.log")).unwrap();
        c.events = Some(
            Command::new(CTR)
                .arg("--address")
                .arg(c.socket())
                .arg("events")
                .stdin(Stdio::null())
                .stdout(events)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The environment that points `ctr` (and `atomic-preload load`) at this containerd.
    pub fn env(&self) -> [(&'static str, PathBuf); 1] {
        [("CONTAINERD_ADDRESS", self.socket())]
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new(CTR)
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The namespace's images: name → labels column.
    pub fn images(&self) -> std::collections::BTreeMap<String, String> {
        let out = self.ctr(&["images", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                Some((cols.first()?.to_string(), cols.last()?.to_string()))
            })
            .collect()
    }

    /// How many times an image was created or updated (an import of it), from the events.
    pub fn imports(&self, image: &str) -> usize {
        // Events arrive asynchronously: give the last one a moment.
        std::thread::sleep(Duration::from_millis(300));
        std::fs::read_to_string(self.dir.path().join("events.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                (l.contains("/images/create") || l.contains("/images/update"))
                    && l.contains(&format!("\"{image}\""))
            })
            .count()
    }

    /// Stop it (and its event listener), waiting until it is gone.
    pub fn stop(&mut self) {
        for child in [self.events.take(), self.daemon.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_child(&child),
                rustix::process::Signal::TERM,
            );
            let _ = child.wait();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        // The snapshotter's mounts, if any were left, go before the directory does.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l",
                self.dir.path().display()
            ))
            .status();
    }
}
