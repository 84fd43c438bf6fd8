//! Digest sidecars (`NAME.sha256`) that are not what `stage` writes: the load stage and
//! `status --root` give one verdict (the same parser), neither blocks on a FIFO nor reads
//! a device, and nothing is loaded. One row per sidecar; the same table is in the README
//! (between the `hostile-sidecars` markers), and this test fails if the two differ.

mod support;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::podman::{Podman, podman_available};
use support::sysimage::{Image, Layer};
use support::{helper, text};

const DOCKER_DIR: &str = "var/lib/atomic/preload/docker";

struct Row {
    what: &'static str,
    /// Puts the sidecar of `docker/app.tar` in place.
    setup: fn(&Path),
    /// The load stage's message, `DIR` = the archive directory.
    says: &'static str,
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            what: "not a digest (`not-a-digest  app.tar`)",
            setup: |s| fs::write(s, "not-a-digest  app.tar\n").unwrap(),
            says: "DIR/app.tar.sha256 is not a SHA-256 digest (sha256sum format: HEX  NAME)",
        },
        Row {
            what: "a FIFO",
            setup: |s| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    s,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .unwrap()
            },
            says: "DIR/app.tar.sha256: not a regular file",
        },
        Row {
            what: "a link to `/dev/zero`",
            setup: |s| symlink("/dev/zero", s).unwrap(),
            says: "DIR/app.tar.sha256: not a regular file",
        },
        Row {
            what: "5,000 bytes",
            setup: |s| fs::write(s, "a".repeat(5000)).unwrap(),
            says: "DIR/app.tar.sha256: larger than 4096 bytes",
        },
    ]
}

/// Runs `command`, killing it after 20 s: a reader blocked on a FIFO fails the test
/// instead of hanging it.
fn bounded(command: &mut Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = Instant::now();
    let watchdog = std::thread::spawn(move || {
        while started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(100));
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return false;
            }
        }
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        true
    });
    let out = child.wait_with_output().unwrap();
    assert!(
        !watchdog.join().unwrap(),
        "{command:?} hung: killed after 20 s"
    );
    out
}

fn markdown(rows: &[Row]) -> String {
    let mut t = String::from(
        "| `app.tar.sha256` is | the load stage (exit 65, nothing loaded) and `status --root` say |\n|---|---|\n",
    );
    for row in rows {
        t.push_str(&format!("| {} | `{}` |\n", row.what, row.says));
    }
    t
}

#[test]
fn load_and_status_give_one_verdict_and_never_block() {
    if !podman_available() {
        return;
    }
    let podman = Podman::new();
    let src = tempfile::tempdir().unwrap();
    let app = src.path().join("app.tar");
    Image::new("test/sidecar:1", vec![Layer::new().busybox().bytes()]).save(&app);
    let mut wrong = Vec::new();
    for row in rows() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let dir = r.join(DOCKER_DIR);
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::create_dir_all(&dir).unwrap();
        fs::copy(&app, dir.join("app.tar")).unwrap();
        fs::write(
            r.join("var/lib/atomic/preload/config.yaml"),
            "- name: app\n  image: test/sidecar:1\n  engine: podman\n",
        )
        .unwrap();
        (row.setup)(&dir.join("app.tar.sha256"));
        let says = row.says.replace("DIR", &dir.display().to_string());

        let load = bounded(
            Command::new(helper())
                .args(["load", "--engine", "podman", "--image", "test/sidecar:1"])
                .arg("--preload-dir")
                .arg(r.join("var/lib/atomic/preload"))
                .arg("--state-dir")
                .arg(r.join("state"))
                .envs(podman.env()),
        );
        if load.status.code() != Some(65) || !text(&load).contains(&says) {
            wrong.push(format!(
                "{}: load wants exit 65 and {says:?}, got {:?}:\n{}",
                row.what,
                load.status.code(),
                text(&load)
            ));
        }
        let status = bounded(Command::new(helper()).args(["status", "--root"]).arg(r));
        let image_says = row.says.replace("DIR", &format!("/{DOCKER_DIR}"));
        let want = format!("app: {image_says}: its unit will fail");
        if status.status.code() != Some(1) || !text(&status).contains(&want) {
            wrong.push(format!(
                "{}: status --root wants exit 1 and {want:?}, got {:?}:\n{}",
                row.what,
                status.status.code(),
                text(&status)
            ));
        }
    }
    assert_eq!(podman.loads(), 0, "nothing was loaded");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn readme_lists_the_same_table() {
    support::assert_readme_lists("hostile-sidecars", &markdown(&rows()));
}
