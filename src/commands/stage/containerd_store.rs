//! `stage --containerd-store`: the images go into containerd's own store in the image
//! root (`ROOT/var/lib/containerd`, kubelet's `k8s.io` namespace), imported and pinned at
//! build time by a private containerd (the CRI plugin off, its sockets and state in a
//! temporary directory), which is stopped before stage commits. The node's containerd
//! finds them at its first start: the load stage then only asks (nothing is imported).
//!
//! Checked with Debian's containerd 1.6.20: a store made this way opens in a containerd
//! started on it later, the CRI plugin on, with the images and their pin label. What must
//! match between the build machine's containerd and the node's: the snapshotter (the
//! default, overlayfs, on both; the store keeps snapshots per snapshotter) and a version
//! that reads the store's metadata (the same minor version, or a newer node).

use super::{Staged, TempDir, Undo, in_root, release_store_mount, tempfile_dir, usage};
use crate::cli::StageArgs;
use crate::engines::containerd::{DEFAULT_NAMESPACE, PIN_LABEL};
use crate::runtime::{RuntimeError, io_err};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// containerd's root on a node.
pub const CONTAINERD_STORE: &str = "/var/lib/containerd";

/// A private containerd on `root`, stopped (and its mounts released) when dropped.
struct Private {
    child: Child,
    socket: PathBuf,
    root: PathBuf,
    ctr: PathBuf,
    _dir: TempDir,
}

impl Private {
    fn start(containerd: &Path, ctr: &Path, root: &Path) -> Result<Private, RuntimeError> {
        let dir = tempfile_dir()?;
        let socket = dir.0.join("containerd.sock");
        let config = dir.0.join("config.toml");
        let ttrpc = format!("{}.ttrpc", socket.display());
        fs::write(
            &config,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {socket:?}\n[ttrpc]\n  address = \"{ttrpc}\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
                root = root.display().to_string(),
                state = dir.0.join("state").display().to_string(),
                socket = socket.display().to_string(),
            ),
        )
        .map_err(io_err(&config))?;
        let log = dir.0.join("containerd.log");
        let out = File::create(&log).map_err(io_err(&log))?;
        let child = Command::new(containerd)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(io_err(&log))?)
            .stderr(out)
            .spawn()
            .map_err(|source| RuntimeError::Spawn {
                program: containerd.display().to_string(),
                source,
            })?;
        let private = Private {
            child,
            socket,
            root: root.to_owned(),
            ctr: ctr.to_owned(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !private.ctr(&["version"])?.status.success() {
            if Instant::now() > deadline {
                let said = fs::read_to_string(&log).unwrap_or_default();
                return Err(RuntimeError::Fetch(format!(
                    "a containerd on {} did not start within 30 s; nothing staged:\n{}",
                    root.display(),
                    said.lines().rev().take(5).collect::<Vec<_>>().join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(private)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", DEFAULT_NAMESPACE]);
        cmd
    }

    fn ctr(&self, args: &[&str]) -> Result<std::process::Output, RuntimeError> {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RuntimeError::Spawn {
                program: self.ctr.display().to_string(),
                source,
            })
    }

    /// One archive imported (decompressed here: `ctr` reads plain tar only) and pinned.
    fn import(&self, s: &Staged) -> Result<(), RuntimeError> {
        let fail = |why: String| {
            RuntimeError::Fetch(format!(
                "{}: ctr images import into {}: {why}; nothing staged",
                s.name,
                self.root.display()
            ))
        };
        let mut import = self.command();
        import.args(["images", "import", "-"]);
        let (out, copied) = super::stream_into(&mut import, s)?;
        if !out.status.success() {
            return Err(fail(crate::engines::last_line(&out.stderr)));
        }
        copied.map_err(|e| fail(e.to_string()))?;
        for image in &s.images {
            let full = crate::engines::full_reference(image);
            let out = self.ctr(&["images", "label", &full, PIN_LABEL])?;
            if !out.status.success() {
                return Err(fail(crate::engines::last_line(&out.stderr)));
            }
        }
        Ok(())
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Snapshot mounts it did not undo (none when it stops cleanly) stay out of the root.
        release_store_mount(&self.root);
    }
}

/// Import every staged archive into ROOT's containerd store; all of them, or (for a
/// store this run created) nothing.
pub(super) fn fill(
    args: &StageArgs,
    staged: &[&Staged],
    undo: &Undo,
) -> Result<PathBuf, RuntimeError> {
    let store = in_root(&args.root, CONTAINERD_STORE)?;
    if let Some(s) = staged.iter().find(|s| s.images.is_empty()) {
        return Err(usage(format!(
            "{}: holds no tagged image, and containerd imports nothing from an untagged one; nothing staged",
            s.name
        )));
    }
    if !store.exists() {
        undo.create_dir_all(&store).map_err(io_err(&store))?;
        undo.tree(store.clone());
    }
    let private = Private::start(&args.containerd, &args.ctr, &store)?;
    for s in staged {
        private.import(s)?;
    }
    // Stopped cleanly before anything is committed: the store is whole on disk.
    drop(private);
    Ok(store)
}
