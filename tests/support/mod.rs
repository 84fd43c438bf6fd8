//! Test support: a private Docker engine and locally built images.
//!
//! Each `Engine` is its own `dockerd` (own data root, exec root, socket, containerd
//! namespace; `--bridge=none --iptables=false`, so containers get loopback only), stopped
//! by PID when dropped. Images are built from the busybox-static binary with
//! `docker import`, never pulled.
#![allow(dead_code)]

pub mod containerd;
pub mod podman;
pub mod sysimage;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BUSYBOX: &str = "/bin/busybox";

/// Docker tests need root, dockerd and busybox-static. CI has them (.ci/run installs
/// them); elsewhere, set ATOMIC_PRELOAD_SKIP_DOCKER_TESTS=1 to skip them on purpose.
pub fn docker_available() -> bool {
    if std::env::var_os("ATOMIC_PRELOAD_SKIP_DOCKER_TESTS").is_some() {
        eprintln!("skipped: ATOMIC_PRELOAD_SKIP_DOCKER_TESTS is set");
        return false;
    }
    let missing: Vec<&str> = [
        ("/usr/sbin/dockerd", "dockerd (docker.io)"),
        (BUSYBOX, "busybox-static"),
    ]
    .into_iter()
    .filter(|(p, _)| !Path::new(p).exists())
    .map(|(_, what)| what)
    .collect();
    let root = is_root();
    assert!(
        missing.is_empty() && root,
        "Docker tests need root and {missing:?}; run .ci/run's install step, or set ATOMIC_PRELOAD_SKIP_DOCKER_TESTS=1"
    );
    true
}

fn is_root() -> bool {
    // No libc dependency for one call: ask the shell.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

pub struct Engine {
    pub dir: tempfile::TempDir,
    pub host: String,
    daemon: Option<Child>,
}

impl Engine {
    pub fn start() -> Engine {
        let mut engine = Engine::stopped();
        engine.start_daemon();
        engine
    }

    /// The directory and socket address, no daemon yet (see `start_daemon`).
    pub fn stopped() -> Engine {
        // Short path: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("apd")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::create_dir_all(dir.path().join("sock")).unwrap();
        let host = format!("unix://{}/sock/docker.sock", dir.path().display());
        Engine {
            dir,
            host,
            daemon: None,
        }
    }

    /// The directory holding only the socket, to bind into a machine.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "dockerd already running");
        let d = self.dir.path();
        let ns = format!(
            "atomic-preload-test-{}",
            d.file_name().unwrap().to_string_lossy()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("dockerd.log"))
            .unwrap();
        let daemon = Command::new("/usr/sbin/dockerd")
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .arg(format!("--data-root={}/data", d.display()))
            .arg(format!("--exec-root={}/exec", d.display()))
            .arg(format!("--pidfile={}/dockerd.pid", d.display()))
            .arg(format!("--host={}", self.host))
            .arg(format!("--containerd-namespace={ns}"))
            .arg(format!("--containerd-plugins-namespace={ns}-plugins"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.daemon = Some(daemon);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self
            .docker(&["info", "--format", "{{.ID}}"])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within 60 s:\n{}",
                std::fs::read_to_string(d.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Remove every container, then stop the daemon by PID.
    pub fn stop_daemon(&mut self) {
        let Some(mut daemon) = self.daemon.take() else {
            return;
        };
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(daemon.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = daemon.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = daemon.kill();
        let _ = daemon.wait();
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", &self.host)
            .output()
            .expect("run docker")
    }

    /// `docker …` that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn image_id(&self, image: &str) -> Option<String> {
        let out = self.docker(&["image", "inspect", "--format", "{{.Id}}", image]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Image load events since `since` (a `date +%s.%N` value): the engine's own record of
    /// every archive it read, independent of anything our tool prints.
    pub fn load_events(&self, since: &str) -> usize {
        let until = self.now();
        let out = self.ok(&[
            "events",
            "--since",
            since,
            "--until",
            &until,
            "--filter",
            "type=image",
            "--filter",
            "event=load",
            "--format",
            "{{.Action}}",
        ]);
        out.lines().filter(|l| !l.is_empty()).count()
    }

    /// The engine's clock, for `docker events --since`.
    pub fn now(&self) -> String {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
    }

    /// Build an image from busybox with Dockerfile `changes` (LABEL, CMD) and a marker
    /// file whose content makes the image ID differ per `marker`; save it to `archive`.
    pub fn build_archive(&self, tag: &str, marker: &str, changes: &[String], archive: &Path) {
        self.build(tag, changes, &[("marker", marker.as_bytes())], archive);
    }

    /// Like `build_archive`, with `payload` added to the image as /payload (a large
    /// image, slow to load).
    pub fn build_archive_with_payload(
        &self,
        tag: &str,
        marker: &str,
        changes: &[String],
        payload: &[u8],
        archive: &Path,
    ) {
        self.build(
            tag,
            changes,
            &[("marker", marker.as_bytes()), ("payload", payload)],
            archive,
        );
    }

    /// Like `build_archive`, with `file`'s bytes added to the image as /payload.
    pub fn build_archive_with_file(&self, tag: &str, file: &Path, archive: &Path) {
        self.build(
            tag,
            &[],
            &[("payload", &std::fs::read(file).unwrap())],
            archive,
        );
    }

    fn build(&self, tag: &str, changes: &[String], files: &[(&str, &[u8])], archive: &Path) {
        let ctx = self
            .dir
            .path()
            .join(format!("rootfs-{}", tag.replace(['/', ':'], "_")));
        let _ = std::fs::remove_dir_all(&ctx);
        std::fs::create_dir_all(ctx.join("bin")).unwrap();
        std::fs::copy(BUSYBOX, ctx.join("bin/busybox")).unwrap();
        for applet in ["sh", "echo", "sleep", "cat", "printf", "true"] {
            std::os::unix::fs::symlink("busybox", ctx.join("bin").join(applet)).unwrap();
        }
        for (name, bytes) in files {
            std::fs::write(ctx.join(name), bytes).unwrap();
        }
        let tar = self.dir.path().join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&ctx)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        let mut args = vec!["import".to_owned()];
        for c in changes {
            args.extend(["-c".to_owned(), c.clone()]);
        }
        args.extend([tar.display().to_string(), tag.to_owned()]);
        self.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let plain = archive.with_extension("").with_extension("tar.tmp");
        self.ok(&["save", "-o", plain.to_str().unwrap(), tag]);
        self.ok(&["rmi", tag]);
        compress(&plain, archive);
    }
}

/// `plain` (a tar) → `archive`, compressed as its name says.
pub fn compress(plain: &Path, archive: &Path) {
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    let tool: Option<&[&str]> = [
        (".tar.gz", &["gzip", "-c"][..]),
        (".tgz", &["gzip", "-c"][..]),
        (".tar.xz", &["xz", "-c"][..]),
        (".tar.bz2", &["bzip2", "-c"][..]),
        (".tar.zst", &["zstd", "-q", "-c"][..]),
    ]
    .into_iter()
    .find(|(suffix, _)| name.ends_with(suffix))
    .map(|(_, tool)| tool);
    match tool {
        None => std::fs::rename(plain, archive).unwrap(),
        Some(tool) => {
            let out = Command::new(tool[0])
                .args(&tool[1..])
                .arg(plain)
                .output()
                .unwrap();
            assert!(out.status.success(), "{tool:?}");
            std::fs::write(archive, out.stdout).unwrap();
            std::fs::remove_file(plain).unwrap();
        }
    }
}

/// A Dockerfile `LABEL` instruction whose value reaches the image verbatim (Dockerfile
/// syntax would otherwise expand `$VAR` at build time).
pub fn label(key: &str, value: &str) -> String {
    format!(
        "LABEL {key}=\"{}\"",
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('$', "\\$")
    )
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_daemon();
    }
}

/// The helper binary under test.
pub fn helper() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_atomic-preload"))
}

/// `make install-anaconda-addon PREFIX=/usr DESTDIR=dest`, the add-on's helper path
/// baked in as this build's binary ([`helper`]); what make printed, and whether it ran.
pub fn install_anaconda_addon(dest: &Path) -> std::process::Output {
    Command::new("make")
        .args([
            "--no-print-directory",
            "install-anaconda-addon",
            "PREFIX=/usr",
        ])
        .arg(format!("DESTDIR={}", dest.display()))
        .arg(format!("BINDIR={}", helper().parent().unwrap().display()))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

/// Arguments systemd would otherwise expand, split or misread.
pub const HOSTILE_ARGS: &[&str] = &[
    "$HOME",
    "${HOME}",
    "%n",
    "100%",
    "say \"hi\"",
    "it's",
    "back\\slash",
    "trailing\\",
    "two words",
    "--flag=a b",
    ";",
    "ünïcødé ✓",
    "tab\there",
    "line\nbreak",
];

/// A YAML double-quoted scalar for any string (control characters as `\U` escapes).
pub fn yaml_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' || c == '\u{feff}' => {
                out.push_str(&format!("\\U{:08x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A YAML flow list of quoted strings.
pub fn yaml_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| yaml_quote(s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A fake root for `systemd-analyze verify --root`: the host's unit files (for the targets
/// our units name), our static units as `make install` fills them in, a `docker.service`
/// stand-in and stub executables. Units to check go into its runtime unit directory, which
/// is searched even with `--generators=no`.
pub struct VerifyRoot {
    dir: tempfile::TempDir,
}

impl VerifyRoot {
    pub fn new() -> VerifyRoot {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let host_units = Path::new("/usr/lib/systemd/system");
        assert!(
            host_units.is_dir(),
            "systemd is not installed on this machine"
        );
        let unit_dir = r.join("usr/lib/systemd/system");
        std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(host_units)
            .arg(&unit_dir)
            .status()
            .unwrap();
        assert!(status.success());
        for (name, text) in static_units() {
            std::fs::write(unit_dir.join(name), text).unwrap();
        }
        std::fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
        std::fs::write(
            r.join("etc/systemd/system/docker.service"),
            "[Unit]\nDescription=Docker stand-in\n[Service]\nExecStart=/usr/bin/dockerd\n",
        )
        .unwrap();
        // A Kubernetes node's: the containerd a unit requires, the kubelet it precedes.
        for (unit, exe) in [
            ("containerd.service", "/usr/bin/containerd"),
            ("kubelet.service", "/usr/bin/kubelet"),
        ] {
            std::fs::write(
                r.join("etc/systemd/system").join(unit),
                format!("[Unit]\nDescription={unit} stand-in\n[Service]\nExecStart={exe}\n"),
            )
            .unwrap();
        }
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        for exe in [
            "usr/bin/atomic-preload",
            "usr/bin/docker",
            "usr/bin/dockerd",
            "usr/bin/podman",
            "usr/bin/ctr",
            "usr/bin/containerd",
            "usr/bin/kubelet",
        ] {
            std::fs::write(r.join(exe), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(
                r.join(exe),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap();
        }
        VerifyRoot { dir }
    }

    /// Verify every `.service` in `tree` (a generator output tree, symlinks included) and
    /// our static units; the number of units checked, or what verify said.
    pub fn verify_tree(&self, tree: &Path) -> Result<usize, String> {
        let run_dir = self.dir.path().join("run/systemd/system");
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(run_dir.parent().unwrap()).unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(tree)
            .arg(&run_dir)
            .status()
            .unwrap();
        assert!(status.success());
        let mut units: Vec<String> = std::fs::read_dir(&run_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".service"))
            .collect();
        units.sort();
        units.extend(static_units().into_iter().map(|(n, _)| n));
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no", "--generators=no"])
            .arg(format!("--root={}", self.dir.path().display()))
            .args(&units)
            .env("SYSTEMD_LOG_COLOR", "0")
            .output()
            .expect("systemd-analyze");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() && text.trim().is_empty() {
            Ok(units.len())
        } else {
            Err(format!("{units:?}\n{text}"))
        }
    }
}

/// Our static units with the install-time paths filled in, as `make install` does.
pub fn static_units() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("units");
    let mut units: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let text = std::fs::read_to_string(&p)
                .unwrap()
                .replace("@BINDIR@", "/usr/bin");
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect();
    units.sort();
    units
}

/// A command's stdout and stderr, as one text.
#[allow(dead_code)]
pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The README holds `table` (a test's rows as markdown) exactly; `what` names its markers
/// in the failure, which prints the table to paste.
#[allow(dead_code)]
pub fn assert_readme_lists(what: &str, table: &str) {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(table),
        "README.md's {what} table is out of date; it should be:\n{table}"
    );
}
