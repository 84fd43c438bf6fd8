//! Boot truth: a real systemd boots a Debian root (systemd-nspawn) with atomic-preload
//! installed from its Debian package (`make deb`, then `dpkg --root=ROOT --install`),
//! talking to a real Docker engine on this machine through its socket. Each test is one scenario an operator cares about.
//!
//! Harness: `debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm`
//! cached in /var/cache/atomic-preload-tests (made on first use, ~40 s; a second one with
//! Debian's podman for the Podman scenario, ~40 s more); per scenario a copy
//! of it, our release build installed into it, Debian's docker client, a `docker.service`
//! stand-in that is up only while the engine answers, and the engine's socket directory
//! bound at /run/dockerhost (/run/docker.sock points there). The engine is started with
//! `--bridge=none --iptables=false`; everything started is stopped by PID at the end.
//! Scenarios run one at a time. Needs root, debootstrap, systemd-container and the Docker
//! test dependencies (.ci/install-deps); ATOMIC_PRELOAD_SKIP_BOOT_TESTS=1 skips them.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::Engine;
use support::sysimage::{Image, Layer};

const CACHE: &str = "/var/cache/atomic-preload-tests";
/// Cached roots: (directory, debootstrap --include).
const BASE: (&str, &str) = ("bookworm-minbase", "systemd,systemd-sysv,dbus");
/// With Podman (netavark provides the container-network-stack it depends on).
const BASE_PODMAN: (&str, &str) = (
    "bookworm-minbase-podman",
    "systemd,systemd-sysv,dbus,podman,netavark",
);
const PRELOAD: &str = "var/lib/atomic/preload";

/// One scenario at a time: each boots a machine and runs an engine.
static SERIAL: Mutex<()> = Mutex::new(());

fn boot_tests_enabled() -> bool {
    if std::env::var_os("ATOMIC_PRELOAD_SKIP_BOOT_TESTS").is_some() {
        eprintln!("skipped: ATOMIC_PRELOAD_SKIP_BOOT_TESTS is set");
        return false;
    }
    let missing: Vec<&str> = [
        "/usr/bin/systemd-nspawn",
        "/usr/sbin/debootstrap",
        "/usr/bin/nsenter",
    ]
    .into_iter()
    .filter(|p| !Path::new(p).exists())
    .collect();
    assert!(
        missing.is_empty(),
        "boot tests need {missing:?}: run .ci/install-deps, or set ATOMIC_PRELOAD_SKIP_BOOT_TESTS=1"
    );
    support::docker_available()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A cached minimal Debian root, made once.
fn base_root((name, include): (&str, &str)) -> PathBuf {
    let base = Path::new(CACHE).join(name);
    if base.join("usr/lib/systemd/systemd").exists() {
        return base;
    }
    fs::create_dir_all(CACHE).unwrap();
    let tmp = Path::new(CACHE).join(format!("{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    eprintln!("debootstrap into {} (cached for later runs)", tmp.display());
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={include}"),
            "bookworm",
        ])
        .arg(&tmp)
        .arg("http://deb.debian.org/debian"));
    fs::rename(&tmp, &base).unwrap();
    base
}

/// The Debian package of this tree (`make deb`), built once per test run.
fn package() -> PathBuf {
    static DEB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DEB.get_or_init(|| {
        let out = run(Command::new("make")
            .arg("--no-print-directory")
            .arg("deb")
            .current_dir(env!("CARGO_MANIFEST_DIR")));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let deb = stdout.lines().last().unwrap_or("").trim();
        assert!(deb.ends_with(".deb"), "make deb printed: {stdout}");
        Path::new(env!("CARGO_MANIFEST_DIR")).join(deb)
    })
    .clone()
}

/// A fresh root for one scenario: the base, our install, a docker client and stand-ins.
fn prepare_root() -> tempfile::TempDir {
    prepare_root_from(BASE)
}

fn prepare_root_from(base: (&str, &str)) -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("ap-boot")
        .tempdir_in("/var/tmp")
        .unwrap();
    let r = root.path();
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", base_root(base).display()))
        .arg(r));
    // Installed as an operator would: the Debian package `make deb` builds.
    run(Command::new("dpkg")
        .arg(format!("--root={}", r.display()))
        .arg("--install")
        .arg(package()));
    fs::copy("/usr/bin/docker", r.join("usr/bin/docker")).unwrap();
    fs::write(
        r.join("etc/systemd/system/docker.service"),
        "[Unit]\nDescription=Docker stand-in: up while the engine answers\nStartLimitIntervalSec=0\n\
         [Service]\nType=exec\nExecStartPre=/usr/bin/docker version --format {{.Server.Version}}\n\
         ExecStart=/bin/sh -c 'while /usr/bin/docker version >/dev/null 2>&1; do sleep 1; done; exit 1'\n\
         Restart=always\nRestartSec=1s\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/docker.service",
        r.join("etc/systemd/system/multi-user.target.wants/docker.service"),
    )
    .unwrap();
    fs::write(
        r.join("etc/tmpfiles.d/dockerhost.conf"),
        "L /run/docker.sock - - - - /run/dockerhost/docker.sock\n",
    )
    .unwrap();
    fs::create_dir_all(r.join(PRELOAD).join("docker")).unwrap();
    fs::create_dir_all(r.join(PRELOAD).join("ostree")).unwrap();
    install_runc(r);
    root
}

/// Debian's runc at its path in the guest, behind a test-only wrapper that adds
/// `--no-new-keyring` to `run`/`create` (nspawn refuses new session keyrings).
fn install_runc(r: &Path) {
    let real = r.join("usr/lib/atomic-preload-test/runc");
    fs::create_dir_all(real.parent().unwrap()).unwrap();
    fs::copy("/usr/sbin/runc", &real).unwrap();
    let wrapper = r.join("usr/sbin/runc");
    fs::write(
        &wrapper,
        "#!/bin/sh\n# Test only: add --no-new-keyring after the first run/create.\n\
         for a do\n  shift\n  if [ -z \"$seen\" ] && { [ \"$a\" = run ] || [ \"$a\" = create ]; }; then\n\
             set -- \"$@\" \"$a\" --no-new-keyring; seen=1\n  else\n    set -- \"$@\" \"$a\"\n  fi\ndone\n\
         exec /usr/lib/atomic-preload-test/runc \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Take out what `prepare_root` put in for Docker: client, docker.service, socket link.
fn remove_docker(r: &Path) {
    for p in [
        "usr/bin/docker",
        "etc/systemd/system/docker.service",
        "etc/systemd/system/multi-user.target.wants/docker.service",
        "etc/tmpfiles.d/dockerhost.conf",
    ] {
        fs::remove_file(r.join(p)).unwrap();
    }
}

/// A root with no container engine at all: no docker client, no docker.service.
fn prepare_root_without_docker() -> tempfile::TempDir {
    let root = prepare_root();
    let r = root.path();
    remove_docker(r);
    root
}

/// A Podman host: Debian's podman (no docker client, no docker.service), with test-only
/// settings for this sandbox in /etc/containers/containers.conf: runc (behind the
/// --no-new-keyring wrapper; crun raises RLIMIT_MEMLOCK, which the sandbox refuses), no
/// pids limit (nspawn's guest has no cgroup controllers), ulimits within the sandbox's,
/// and no network namespace setup (loopback only, as Docker scenarios have).
fn prepare_root_with_podman() -> tempfile::TempDir {
    let root = prepare_root_from(BASE_PODMAN);
    let r = root.path();
    remove_docker(r);
    fs::create_dir_all(r.join("etc/containers")).unwrap();
    fs::write(
        r.join("etc/containers/containers.conf"),
        "# Test only: fits podman to the test sandbox (see tests/boot.rs).
[containers]
         default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]
         pids_limit = 0
netns = \"none\"
[engine]
runtime = \"runc\"
",
    )
    .unwrap();
    root
}

/// A booted machine; powered off (or killed) when dropped.
struct Machine {
    nspawn: Child,
    init: u32,
}

impl Machine {
    fn boot(root: &Path, engine: &Engine) -> Machine {
        let log = fs::File::create(engine.dir.path().join("console.log")).unwrap();
        let name = format!("ap-{}", std::process::id());
        // runc inside the guest (system containers) needs the unified cgroup hierarchy,
        // no seccomp filter of nspawn's and every capability; Docker scenarios do not mind.
        let nspawn = Command::new("systemd-nspawn")
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .env("SYSTEMD_SECCOMP", "0")
            .args([
                "--register=no",
                "--keep-unit",
                "--boot",
                "--quiet",
                "--capability=all",
            ])
            .arg(format!("--machine={name}"))
            .arg("-D")
            .arg(root)
            .arg(format!(
                "--bind={}:/run/dockerhost",
                engine.socket_dir().display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("systemd-nspawn");
        let deadline = Instant::now() + Duration::from_secs(30);
        let init = loop {
            let out = Command::new("pgrep")
                .arg("-P")
                .arg(nspawn.id().to_string())
                .output()
                .unwrap();
            // The guest's PID 1 once it runs systemd: nspawn's first child can be a
            // short-lived helper, and a pid taken too early then vanishes under nsenter.
            let systemd = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .find(|pid| {
                    fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim() == "systemd")
                })
                .map(str::to_owned);
            if let Some(pid) = systemd {
                break pid.parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "no init process under systemd-nspawn"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut machine = Machine { nspawn, init };
        // Up to the point where systemd answers; scenarios wait for their own units (a
        // boot with the engine down never finishes while docker.service keeps restarting).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = machine.sh(&["systemctl", "is-system-running"]);
            if ["starting", "running", "degraded"].contains(&state.trim()) {
                return machine;
            }
            // A machine that is gone says why on its console, not through nsenter.
            let exited = machine.nspawn.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let console =
                    fs::read_to_string(engine.dir.path().join("console.log")).unwrap_or_default();
                let tail: Vec<&str> = console.lines().rev().take(40).collect();
                panic!(
                    "systemd did not answer (nspawn: {exited:?}); console:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Run a command inside the machine; stdout and stderr together.
    fn sh(&self, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(self.init.to_string())
            .arg("-a")
            .arg("--")
            .args(args)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn prop(&self, unit: &str, property: &str) -> String {
        self.sh(&["systemctl", "show", "--value", "-p", property, unit])
            .trim()
            .to_owned()
    }

    /// `ActiveState/SubState`, e.g. `active/running`, `active/exited`, `failed/failed`.
    fn state(&self, unit: &str) -> String {
        format!(
            "{}/{}",
            self.prop(unit, "ActiveState"),
            self.prop(unit, "SubState")
        )
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- units\n{}\n--- journal\n{}",
            self.sh(&[
                "systemctl",
                "list-units",
                "--all",
                "--no-pager",
                "preload-*",
                "atomic-preload*",
                "docker.service"
            ]),
            self.sh(&[
                "journalctl",
                "--no-pager",
                "-n",
                "60",
                "-u",
                "preload-*",
                "-u",
                "atomic-preload*",
                "-u",
                "docker.service"
            ])
        )
    }

    fn wait_for(&self, what: &str, seconds: u64, done: impl Fn(&Machine) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while !done(self) {
            if Instant::now() > deadline {
                panic!(
                    "timed out after {seconds} s waiting for {what}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn wait_state(&self, unit: &str, state: &str) {
        self.wait_for(&format!("{unit} to be {state}"), 90, |m| {
            m.state(unit) == state
        });
    }

    fn poweroff(mut self) {
        self.sh(&["systemctl", "poweroff", "--no-block"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the machine did not power off within 60 s");
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Ok(None) = self.nspawn.try_wait() {
            // The guest's PID 1 first: its death takes every process of its PID namespace
            // (and the containers nested in it) along. Killing only nspawn leaves the
            // guest's systemd, journald and runc containers running.
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.init.to_string())
                .status();
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.nspawn.id().to_string())
                .status();
            let _ = self.nspawn.wait();
        }
    }
}

/// A Dockerfile CMD that runs until SIGTERM (busybox `sleep` as PID 1 would ignore it and
/// make every stop take Docker's 10 s timeout).
fn serve_cmd() -> String {
    r#"CMD ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]"#.into()
}

struct Scenario {
    engine: Engine,
    root: tempfile::TempDir,
}

impl Scenario {
    fn new() -> Scenario {
        Scenario {
            engine: Engine::start(),
            root: prepare_root(),
        }
    }
    /// A host with Podman and no Docker.
    fn with_podman() -> Scenario {
        Scenario {
            engine: Engine::stopped(),
            root: prepare_root_with_podman(),
        }
    }
    /// A host with no container engine: no daemon, no client, no docker.service.
    fn without_docker() -> Scenario {
        Scenario {
            engine: Engine::stopped(),
            root: prepare_root_without_docker(),
        }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }
    fn archive(&self, name: &str) -> PathBuf {
        self.path(PRELOAD).join("docker").join(name)
    }
    fn config(&self, text: &str) {
        fs::write(self.path(PRELOAD).join("config.yaml"), text).unwrap();
    }
    /// An image that serves until stopped, saved to `docker/<archive>`.
    fn image(&self, tag: &str, marker: &str, archive: &str) {
        self.engine
            .build_archive(tag, marker, &[serve_cmd()], &self.archive(archive));
    }
    fn boot(&self) -> Machine {
        Machine::boot(self.root.path(), &self.engine)
    }
    /// Wait (Type=exec units are active as soon as `docker run` started) until the engine
    /// runs exactly these containers.
    fn wait_containers(&self, expected: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut running = self.running_containers();
        while running != expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(300));
            running = self.running_containers();
        }
        assert_eq!(
            running, expected,
            "containers running on the engine (docker ps)"
        );
    }

    fn running_containers(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .engine
            .ok(&["ps", "--format", "{{.Names}}"])
            .lines()
            .map(String::from)
            .collect();
        names.sort();
        names
    }
}

fn sha(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

macro_rules! scenario {
    () => {{
        let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        if !boot_tests_enabled() {
            return;
        }
        guard
    }};
}

#[test]
fn s1_readme_example_boots_to_running_containers() {
    let _serial = scenario!();
    let s = Scenario::new();
    s.image("docker.io/busybox", "busybox", "busybox.tar.gz");
    s.image("docker.io/example/tools:2", "tools", "tools.tar.xz");
    etcd_image("v1").save(&s.path(PRELOAD).join("ostree/etcd.tar.gz"));
    // The original README example, plus a load-only entry.
    let readme =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config.yaml")).unwrap();
    s.config(&format!(
        "{readme}\n- name: tools\n  image: docker.io/example/tools:2\n"
    ));
    let m = s.boot();
    m.wait_state("preload-busybox_sleep.service", "active/running");
    m.wait_state("preload-tools.service", "active/exited");
    // The system container of the example: checked out and run by runc, not Docker.
    m.wait_state("preload-etcd.service", "active/exited");
    m.wait_state("etcd.service", "active/running");
    s.wait_containers(&["busybox_sleep"]);
    let args = s
        .engine
        .ok(&["inspect", "--format", "{{json .Args}}", "busybox_sleep"]);
    assert_eq!(args, r#"["999"]"#, "the container runs `sleep 999`");
    m.poweroff();
}

#[test]
fn s2_execstart_argv_is_exactly_the_configs_arguments() {
    let _serial = scenario!();
    let s = Scenario::new();
    s.image("docker.io/test/echo:1", "echo", "echo.tar");
    let hostile = support::HOSTILE_ARGS;
    let mut yaml =
        String::from("- name: argv\n  image: docker.io/test/echo:1\n  run:\n    extra_args:\n");
    let script = r#"for a in "$@"; do printf '<%s>\n' "$a"; done; trap 'exit 0' TERM; while :; do sleep 1; done"#;
    for arg in ["sh", "-c", script, "sh"].iter().chain(hostile.iter()) {
        yaml.push_str(&format!("      - {}\n", support::yaml_quote(arg)));
    }
    s.config(&yaml);
    let m = s.boot();
    m.wait_state("preload-argv.service", "active/running");

    // systemd's own parse, over D-Bus as JSON (systemctl show joins argv with spaces).
    let json = m.sh(&[
        "busctl",
        "--json=short",
        "get-property",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1/unit/preload_2dargv_2eservice",
        "org.freedesktop.systemd1.Service",
        "ExecStart",
    ]);
    let argv = json_exec_argv(&json);
    // The last mention of the image: the one in the default docker run command (the
    // run stage's own `--image` comes first).
    let image_at = argv
        .iter()
        .rposition(|a| a == "docker.io/test/echo:1")
        .expect("image in argv");
    let config_args: Vec<&str> = ["sh", "-c", script, "sh"]
        .iter()
        .chain(hostile.iter())
        .copied()
        .collect();
    assert_eq!(
        argv[image_at + 1..],
        config_args[..],
        "ExecStart argv as systemd parsed it"
    );
    // And the human view lists the same.
    assert!(
        m.sh(&[
            "systemctl",
            "show",
            "-p",
            "ExecStart",
            "preload-argv.service"
        ])
        .contains(&format!(
            "argv[]=/usr/bin/atomic-preload run --name=argv --image=docker.io/test/echo:1 --extra={} -- /usr/bin/docker run --rm --pull=never --name argv",
            config_args.len()
        ))
    );

    // What the container received, byte for byte.
    let expected: String = hostile.iter().map(|a| format!("<{a}>\n")).collect();
    let start = Instant::now();
    let mut logs = String::new();
    while start.elapsed() < Duration::from_secs(30) && logs != expected {
        // The container may not exist yet: Type=exec is active once `docker run` started.
        let out = s.engine.docker(&["logs", "argv"]);
        logs = String::from_utf8_lossy(&out.stdout).trim().to_owned() + "\n";
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(logs, expected, "arguments as the container received them");
    m.poweroff();
}

#[test]
fn s3_second_boot_brings_containers_back_without_reading_archives() {
    let _serial = scenario!();
    let s = Scenario::new();
    s.image("docker.io/example/app:1", "app", "app.tar.zst");
    s.config("- name: app\n  image: docker.io/example/app:1\n  run: {}\n");
    let t0 = s.engine.now();
    let m = s.boot();
    m.wait_state("preload-app.service", "active/running");
    assert_eq!(
        s.engine.load_events(&t0),
        1,
        "first boot loads the archive once"
    );
    m.poweroff();
    s.wait_containers(&[]);

    let t1 = s.engine.now();
    let m = s.boot();
    m.wait_state("preload-app.service", "active/running");
    s.wait_containers(&["app"]);
    assert_eq!(
        s.engine.load_events(&t1),
        0,
        "the engine saw no load at the second boot"
    );
    assert!(
        m.sh(&["journalctl", "-b", "-u", "preload-app"])
            .contains("app.tar.zst: already loaded")
    );
    m.poweroff();
}

#[test]
fn s4_replaced_archive_reloads_and_corrupt_archive_fails_only_its_unit() {
    let _serial = scenario!();
    let s = Scenario::new();
    s.image("docker.io/example/app:1", "v1", "app.tar");
    s.config("- name: app\n  image: docker.io/example/app:1\n  run: {}\n");
    let m = s.boot();
    m.wait_state("preload-app.service", "active/running");
    let v1 = s.engine.image_id("docker.io/example/app:1").unwrap();
    m.poweroff();

    // Replace the archive with a different image under the same tag; add a corrupt one
    // that a second entry names.
    s.image("docker.io/example/app:1", "v2", "app.tar");
    fs::write(s.archive("broken.tar.gz"), b"\x1f\x8b\x08 not really gzip").unwrap();
    let (app_sha, broken_sha) = (sha(&s.archive("app.tar")), sha(&s.archive("broken.tar.gz")));
    s.config("- name: app\n  image: docker.io/example/app:1\n  run: {}\n- name: broken\n  image: docker.io/example/broken:1\n  archive: broken.tar.gz\n  run: {}\n");
    let t = s.engine.now();
    let m = s.boot();
    m.wait_state("preload-app.service", "active/running");
    assert_ne!(
        s.engine.image_id("docker.io/example/app:1").unwrap(),
        v1,
        "the new archive was loaded"
    );
    assert!(s.engine.load_events(&t) >= 1);
    // It fails, with the reason in `systemctl status` (the status line, also while it
    // waits to retry within its start limit).
    m.wait_for("the reason in systemctl status preload-broken", 60, |m| {
        let status = m.sh(&["systemctl", "status", "-n", "20", "preload-broken.service"]);
        status.contains("(Result: exit-code)")
            && status.contains("cannot load /var/lib/atomic/preload/docker/broken.tar.gz")
    });
    let failed = m.sh(&["systemctl", "--failed", "--no-legend", "--plain"]);
    assert!(
        !failed.contains("preload-app"),
        "only the corrupt archive's unit fails:\n{failed}"
    );
    assert_eq!(sha(&s.archive("app.tar")), app_sha, "nothing modified");
    assert_eq!(
        sha(&s.archive("broken.tar.gz")),
        broken_sha,
        "the corrupt archive is kept as it was"
    );
    m.poweroff();
}

#[test]
fn s5_broken_entry_is_failed_with_position_and_others_run() {
    let _serial = scenario!();
    let s = Scenario::new();
    s.image("docker.io/example/app:1", "app", "app.tar");
    s.config("- name: good\n  image: docker.io/example/app:1\n  run: {}\n- name: typo\n  image: docker.io/example/app:1\n  rnu: {}\n- name: bad name\n  image: x\n");
    let m = s.boot();
    m.wait_state("preload-good.service", "active/running");
    let failed = m.sh(&["systemctl", "--failed", "--no-legend", "--plain"]);
    assert!(failed.contains("preload-typo.service"), "{failed}");
    assert!(
        failed.contains("atomic-preload-config.service"),
        "nameless problems have their own failed unit:\n{failed}"
    );
    let status = m.sh(&["systemctl", "status", "preload-typo.service"]);
    assert!(
        status.contains("/var/lib/atomic/preload/config.yaml:6:3: unknown key \"rnu\""),
        "{status}"
    );
    let status = m.sh(&["systemctl", "status", "atomic-preload-config.service"]);
    assert!(
        status.contains("/var/lib/atomic/preload/config.yaml:7:9: \"name\" must match"),
        "{status}"
    );
    m.poweroff();
}

/// Only root says what runs as root: a world-writable config.yaml runs nothing, and
/// `systemctl --failed` says why; fixed, a world-writable docker/ fails the load naming
/// it; fixed too, the container runs.
#[test]
fn s12_files_others_can_write_are_not_acted_on() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = scenario!();
    let s = Scenario::new();
    s.image("docker.io/example/app:1", "app", "app.tar");
    s.config("- name: app\n  image: docker.io/example/app:1\n  run: {}\n");
    let chmod = |rel: &str, mode: u32| {
        fs::set_permissions(s.path(rel), fs::Permissions::from_mode(mode)).unwrap()
    };
    let config = format!("{PRELOAD}/config.yaml");
    let docker = format!("{PRELOAD}/docker");
    chmod(&config, 0o666);
    let m = s.boot();
    m.wait_state("atomic-preload-config.service", "failed/failed");
    let failed = m.sh(&["systemctl", "--failed", "--no-legend", "--plain"]);
    assert!(failed.contains("atomic-preload-config.service"), "{failed}");
    let status = m.sh(&["systemctl", "status", "atomic-preload-config.service"]);
    assert!(
        status.contains(
            "/var/lib/atomic/preload/config.yaml is writable by group or others (owner uid 0, mode 0666): only root may say what runs as root, so nothing in it is used; fix: chmod go-w /var/lib/atomic/preload/config.yaml"
        ),
        "{status}"
    );
    let units = m.sh(&[
        "systemctl",
        "list-units",
        "--all",
        "--no-legend",
        "--plain",
        "preload-*",
    ]);
    assert!(units.trim().is_empty(), "no entry's unit: {units}");
    s.wait_containers(&[]);

    chmod(&config, 0o644);
    chmod(&docker, 0o777);
    m.sh(&["systemctl", "daemon-reload"]);
    m.sh(&["systemctl", "start", "--no-block", "preload-app.service"]);
    m.wait_state("preload-app.service", "failed/failed");
    let status = m.sh(&["systemctl", "status", "preload-app.service"]);
    assert!(
        status.contains(
            "/var/lib/atomic/preload/docker is writable by group or others (owner uid 0, mode 0777)"
        ),
        "{status}"
    );
    s.wait_containers(&[]);

    chmod(&docker, 0o755);
    m.sh(&["systemctl", "reset-failed", "preload-app.service"]);
    m.sh(&["systemctl", "start", "--no-block", "preload-app.service"]);
    m.wait_state("preload-app.service", "active/running");
    s.wait_containers(&["app"]);
    m.poweroff();
}

#[test]
fn s6_engine_down_at_boot_recovers_when_it_returns() {
    let _serial = scenario!();
    let mut s = Scenario::new();
    s.image("docker.io/example/app:1", "app", "app.tar.gz");
    s.image("docker.io/example/once:1", "once", "once.tar");
    s.config("- name: app\n  image: docker.io/example/app:1\n  run: {}\n- name: once\n  image: docker.io/example/once:1\n");
    s.engine.stop_daemon();
    let m = s.boot();
    // The engine does not answer: nothing is loaded, nothing is marked.
    std::thread::sleep(Duration::from_secs(5));
    assert_ne!(m.state("preload-app.service"), "active/running");
    assert_eq!(
        m.sh(&["ls", "/var/lib/atomic-preload/loaded/docker"])
            .lines()
            .filter(|l| l.ends_with(".tar") || l.ends_with(".gz"))
            .count(),
        0,
        "no load mark without an engine"
    );

    s.engine.start_daemon();
    m.wait_state("preload-app.service", "active/running");
    m.wait_state("preload-once.service", "active/exited");
    s.wait_containers(&["app"]);
    let marks = m.sh(&["ls", "/var/lib/atomic-preload/loaded/docker"]);
    assert_eq!(
        marks.split_whitespace().collect::<Vec<_>>(),
        ["app.tar.gz", "once.tar"],
        "every archive loaded and marked once"
    );
    m.poweroff();
}

#[test]
fn s7_config_rewritten_by_cloud_init_applies_in_the_same_boot() {
    let _serial = scenario!();
    let s = Scenario::new();
    s.image("docker.io/example/app:1", "app", "app.tar");
    s.image("docker.io/example/extra:1", "extra", "extra.tar");
    s.config("- name: app\n  image: docker.io/example/app:1\n  run:\n    extra_args: [sh, -c, 'trap \"exit 0\" TERM; while :; do sleep 1; done', baked-in]\n");
    // cloud-init's write_files stand-in, ordered like cloud-init.service, rewrites the
    // config after the generator ran: one container added, one changed.
    let late = "- name: app\n  image: docker.io/example/app:1\n  run:\n    extra_args: [sh, -c, 'trap \"exit 0\" TERM; while :; do sleep 1; done', from-cloud-init]\n- name: extra\n  image: docker.io/example/extra:1\n  run: {}\n";
    fs::write(s.path("root/late-config.yaml"), late).unwrap();
    fs::write(
        s.path("etc/systemd/system/cloud-init.service"),
        "[Unit]\nDescription=cloud-init write_files stand-in\nAfter=local-fs.target\nBefore=network-online.target\n\
         [Service]\nType=oneshot\nExecStart=/bin/sh -c 'sleep 2; cp /root/late-config.yaml /var/lib/atomic/preload/config.yaml'\n\
         [Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/cloud-init.service",
        s.path("etc/systemd/system/multi-user.target.wants/cloud-init.service"),
    )
    .unwrap();
    let m = s.boot();
    m.wait_state("preload-extra.service", "active/running");
    m.wait_state("preload-app.service", "active/running");
    s.wait_containers(&["app", "extra"]);
    let args = s
        .engine
        .ok(&["inspect", "--format", "{{json .Args}}", "app"]);
    assert!(
        args.ends_with(r#""from-cloud-init"]"#),
        "the changed container runs with the new args: {args}"
    );

    // Later changes are applied too (atomic-preload-refresh.path): remove extra.
    m.sh(&[
        "sh",
        "-c",
        "head -n 4 /root/late-config.yaml > /var/lib/atomic/preload/config.yaml",
    ]);
    m.wait_for("preload-extra to be stopped", 60, |m| {
        m.prop("preload-extra.service", "ActiveState") == "inactive"
    });
    s.wait_containers(&["app"]);
    m.poweroff();
}

#[test]
fn s8_preload_dir_on_a_late_mounted_file_system_still_starts() {
    let _serial = scenario!();
    let s = Scenario::new();
    // The real preload dir lives on another "file system", bind-mounted by a mount unit:
    // when the generators run, /var/lib/atomic/preload is an empty mount point.
    let fs_dir = s.path("srv/preload-fs");
    fs::create_dir_all(fs_dir.join("docker")).unwrap();
    s.engine.build_archive(
        "docker.io/example/app:1",
        "app",
        &[serve_cmd()],
        &fs_dir.join("docker/app.tar"),
    );
    fs::write(
        fs_dir.join("config.yaml"),
        "- name: app\n  image: docker.io/example/app:1\n  run: {}\n",
    )
    .unwrap();
    fs::write(
        s.path("etc/systemd/system/var-lib-atomic-preload.mount"),
        "[Unit]\nDescription=Late preload file system\n[Mount]\nWhat=/srv/preload-fs\nWhere=/var/lib/atomic/preload\nType=none\nOptions=bind\n[Install]\nWantedBy=local-fs.target\n",
    )
    .unwrap();
    fs::create_dir_all(s.path("etc/systemd/system/local-fs.target.wants")).unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/var-lib-atomic-preload.mount",
        s.path("etc/systemd/system/local-fs.target.wants/var-lib-atomic-preload.mount"),
    )
    .unwrap();
    let m = s.boot();
    m.wait_state("preload-app.service", "active/running");
    s.wait_containers(&["app"]);
    assert!(
        m.sh(&["journalctl", "-b", "-u", "atomic-preload-refresh"])
            .contains("changed since the generator ran")
    );
    m.poweroff();
}

/// argv of the first command in busctl's JSON for an ExecStart property.
/// An etcd-style system image, as `atomic install --system` images are built: busybox,
/// then /exports with a config.json template, a service template, manifest.json defaults
/// and a host file. Its container prints its ETCD_NAME and serves until SIGTERM.
fn etcd_image(marker: &str) -> Image {
    let config = r#"{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": {"uid": 0, "gid": 0},
    "args": ["/bin/sh", "-c", "echo etcd $ETCD_NAME started; trap 'echo etcd stopping; exit 0' TERM; while :; do sleep 1; done"],
    "env": ["PATH=/bin"],
    "cwd": "/"
  },
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "$NAME",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
  ],
  "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}
}
"#;
    let service = "[Unit]\nDescription=Etcd Server (test image)\nAfter=network.target\n\n[Service]\n\
        ExecStartPre=$EXEC_STARTPRE\nExecStart=$EXEC_START\nExecStop=$EXEC_STOP\nExecStopPost=$EXEC_STOPPOST\n\
        WorkingDirectory=$DESTDIR\nRestart=on-failure\n\n[Install]\nWantedBy=multi-user.target\n";
    let exports = Layer::new()
        .dir("exports/", 0o755)
        .file("exports/config.json.template", config.as_bytes(), 0o644)
        .file("exports/service.template", service.as_bytes(), 0o644)
        .file(
            "exports/manifest.json",
            br#"{"defaultValues": {"ETCD_NAME": "default"}}"#,
            0o644,
        )
        .file(
            "exports/hostfs/usr/local/bin/etcdctl-test",
            format!("#!/bin/sh\necho etcdctl {marker}\n").as_bytes(),
            0o755,
        )
        .bytes();
    let mut image = Image::new(
        "docker.io/gscrivano/etcd",
        vec![Layer::new().busybox().bytes(), exports],
    );
    image.marker = marker.into();
    image
}

/// The README's etcd entry, on a host with no container engine: it installs and runs
/// under runc, a reboot reuses the checkout, a new archive updates it into the other
/// deployment, and a hostile archive fails only its own unit.
#[test]
fn s9_system_container_without_docker() {
    let _serial = scenario!();
    let s = Scenario::without_docker();
    let ostree = s.path(PRELOAD).join("ostree");
    etcd_image("v1").save(&ostree.join("etcd.tar.zst"));
    let etcd_entry = "- name: etcd\n  image: docker.io/gscrivano/etcd\n  install:\n    system: true\n    setvalues:\n      - ETCD_NAME=myetcd\n  run: {} # use default vars\n";
    s.config(etcd_entry);
    let checkout = s.path("var/lib/containers/atomic");

    let m = s.boot();
    m.wait_state("preload-etcd.service", "active/exited");
    m.wait_state("etcd.service", "active/running");
    m.wait_for("the container's output in the journal", 30, |m| {
        m.sh(&["journalctl", "--no-pager", "-u", "etcd.service"])
            .contains("etcd myetcd started")
    });
    let status = m.sh(&["systemctl", "status", "--no-pager", "preload-etcd.service"]);
    assert!(status.contains("runs as etcd.service"), "{status}");
    // A unit systemd never loaded is read when first asked about: no daemon-reload.
    let journal = m.sh(&["journalctl", "--no-pager", "-u", "preload-etcd.service"]);
    assert!(
        journal.contains("systemd has etcd.service as written: no daemon-reload"),
        "{journal}"
    );
    let deps = m.sh(&[
        "systemctl",
        "show",
        "-p",
        "Requires",
        "-p",
        "Wants",
        "-p",
        "After",
        "preload-etcd.service",
    ]);
    assert!(!deps.contains("docker"), "no engine dependency: {deps}");
    assert!(m.sh(&["runc", "list"]).contains("etcd"), "runc runs it");
    assert_eq!(
        m.sh(&["systemctl", "--failed", "--no-legend"]),
        "",
        "nothing failed without Docker"
    );
    assert_eq!(
        m.sh(&["/usr/local/bin/etcdctl-test"]),
        "etcdctl v1\n",
        "host file installed"
    );
    assert_eq!(
        fs::read_link(checkout.join("etcd")).unwrap(),
        Path::new("/var/lib/containers/atomic/etcd.0")
    );
    let busybox_inode = fs::metadata(checkout.join("etcd.0/rootfs/bin/busybox"))
        .unwrap()
        .ino();
    // Stopping the container is not undone by the preload unit.
    m.sh(&["systemctl", "stop", "etcd.service"]);
    m.wait_state("etcd.service", "inactive/dead");
    assert_eq!(m.state("preload-etcd.service"), "active/exited");
    m.poweroff();

    // Second boot: the same checkout, running again.
    let m = s.boot();
    m.wait_state("etcd.service", "active/running");
    let journal = m.sh(&[
        "journalctl",
        "--no-pager",
        "-b",
        "-u",
        "preload-etcd.service",
    ]);
    assert!(
        journal.contains("etcd is installed from docker.io/gscrivano/etcd"),
        "{journal}"
    );
    assert_eq!(
        fs::metadata(checkout.join("etcd.0/rootfs/bin/busybox"))
            .unwrap()
            .ino(),
        busybox_inode
    );
    m.poweroff();

    // A new archive, and a hostile one for another entry: update, and a failure of its own.
    etcd_image("v2").save(&ostree.join("etcd.tar.zst"));
    let bad = Layer::new()
        .file("../../../../etc/pwned", b"x", 0o644)
        .bytes();
    Image::new("docker.io/example/bad", vec![bad]).save(&ostree.join("bad.tar"));
    s.config(&format!("{etcd_entry}- name: bad\n  image: docker.io/example/bad\n  archive: bad.tar\n  install: {{system: true}}\n  run: {{}}\n"));
    let m = s.boot();
    m.wait_state("preload-etcd.service", "active/exited");
    m.wait_state("etcd.service", "active/running");
    assert_eq!(
        fs::read_link(checkout.join("etcd")).unwrap(),
        Path::new("/var/lib/containers/atomic/etcd.1")
    );
    assert_eq!(
        m.sh(&["/usr/local/bin/etcdctl-test"]),
        "etcdctl v2\n",
        "host file updated"
    );
    let info = fs::read_to_string(checkout.join("etcd.1/info")).unwrap();
    assert!(
        info.contains("\"verified\": true"),
        "the update was seen running: {info}"
    );
    m.wait_state("preload-bad.service", "failed/failed");
    let status = m.sh(&["systemctl", "status", "--no-pager", "preload-bad.service"]);
    assert!(
        status.contains("member \"../../../../etc/pwned\" has a \"..\" component"),
        "{status}"
    );
    assert!(!s.path("etc/pwned").exists() && !checkout.join("bad").exists());
    m.poweroff();

    // An update whose container exits at once: rolled back to etcd.1, which runs, and
    // the preload unit fails saying so.
    let mut broken = etcd_image("v3");
    let exits = Layer::new().file("exports/config.json.template", br#"{"ociVersion": "1.0.2", "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/bin/false"], "cwd": "/"}, "root": {"path": "rootfs", "readonly": true}}"#, 0o644).bytes();
    broken.layers.push(exits);
    broken.save(&ostree.join("etcd.tar.zst"));
    s.config(etcd_entry);
    let m = s.boot();
    m.wait_state("preload-etcd.service", "failed/failed");
    m.wait_state("etcd.service", "active/running");
    assert_eq!(
        fs::read_link(checkout.join("etcd")).unwrap(),
        Path::new("/var/lib/containers/atomic/etcd.1")
    );
    let status = m.sh(&["systemctl", "status", "--no-pager", "preload-etcd.service"]);
    assert!(
        status.contains("rolled back to /var/lib/containers/atomic/etcd.1, which is running"),
        "{status}"
    );
    assert_eq!(
        m.sh(&["/usr/local/bin/etcdctl-test"]),
        "etcdctl v2\n",
        "host files rolled back too"
    );
    m.poweroff();
}

fn json_exec_argv(json: &str) -> Vec<String> {
    let value: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"));
    value["data"][0][1]
        .as_array()
        .expect("argv array")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// A busybox image for Podman whose INSTALL label runs a container that writes a file on
/// the host, with atomic's substitutions.
fn podman_image(marker: &str) -> Image {
    let mut image = Image::new("test/podapp:1", vec![Layer::new().busybox().bytes()]);
    image.marker = marker.into();
    image.labels.push((
        "INSTALL".into(),
        "docker run --rm -v /var/lib:/host IMAGE sh -c 'echo installed $NAME $MODE > /host/installed-by-label'"
            .into(),
    ));
    image
}

/// A Podman host (no Docker at all): the entry without `engine:` goes to Podman; the unit
/// has the Quadlet shape and really behaves so under systemd: conmon is its main process,
/// the container runs in the unit's cgroup, a crash is restarted, a stop removes the
/// container, and the next boot loads and installs nothing again.
#[test]
fn s10_podman_host_runs_preloaded_containers_under_conmon() {
    let _serial = scenario!();
    let s = Scenario::with_podman();
    podman_image("v1").save(&s.archive("podapp.tar.gz"));
    s.config(
        "- name: podapp\n  image: test/podapp:1\n  install:\n    setvalues: [MODE=fast]\n  run:\n    extra_args: [sh, -c, \"trap 'exit 0' TERM; while :; do sleep 1; done\"]\n",
    );
    let unit = "preload-podapp.service";

    let m = s.boot();
    m.wait_state(unit, "active/running");
    let main = m.prop(unit, "MainPID");
    assert_eq!(
        m.sh(&["cat", &format!("/proc/{main}/comm")]).trim(),
        "conmon",
        "conmon is the unit's main process\n{}",
        m.diagnostics()
    );
    let pid = m.sh(&["podman", "inspect", "--format", "{{.State.Pid}}", "podapp"]);
    let cgroup = m.sh(&["cat", &format!("/proc/{}/cgroup", pid.trim())]);
    assert!(
        cgroup.contains("/system.slice/preload-podapp.service/"),
        "the container runs below the unit's cgroup (--cgroups=split, Delegate=yes): {cgroup}"
    );
    assert_eq!(
        fs::read_to_string(s.path("var/lib/installed-by-label")).unwrap_or_default(),
        "installed podapp fast\n",
        "the INSTALL label ran with Podman\n{}",
        m.diagnostics()
    );
    let deps = m.sh(&["systemctl", "show", "-p", "Requires", "-p", "After", unit]);
    assert!(!deps.contains("docker"), "no Docker dependency: {deps}");
    assert_eq!(
        m.sh(&["systemctl", "--failed", "--no-legend"]),
        "",
        "nothing failed on a Podman host\n{}",
        m.diagnostics()
    );

    // The container dies: systemd restarts the unit (a stale cidfile does not stop it).
    m.sh(&["podman", "kill", "podapp"]);
    m.wait_for("the restart after a crash", 60, |m| {
        m.prop(unit, "NRestarts") == "1" && m.state(unit) == "active/running"
    });
    // Stopping the unit removes the container.
    m.sh(&["systemctl", "stop", unit]);
    assert_eq!(m.state(unit), "inactive/dead");
    assert_eq!(m.sh(&["podman", "ps", "-a", "--format", "{{.Names}}"]), "");
    m.poweroff();

    // Second boot: running again, nothing loaded or installed again.
    fs::remove_file(s.path("var/lib/installed-by-label")).unwrap();
    let m = s.boot();
    m.wait_state(unit, "active/running");
    let journal = m.sh(&["journalctl", "--no-pager", "-b", "-u", unit]);
    assert!(
        journal.contains("podapp.tar.gz: already loaded"),
        "{journal}"
    );
    assert!(journal.contains("podapp: already installed"), "{journal}");
    assert!(!s.path("var/lib/installed-by-label").exists());
    m.poweroff();
}

/// The image builder's round trip: `atomic-preload stage` into the machine's root (an
/// archive and a config entry, as an ISO build would), `status --root` before the first
/// boot, then the boot: the container runs, `atomic-preload status` on the machine shows
/// it loaded and running, and the package is installed as dpkg knows it. An archive
/// changed after staging fails its unit with the digest message, and status says so.
#[test]
fn s11_staged_image_root_boots_and_status_reports_it() {
    let _serial = scenario!();
    let s = Scenario::new();
    let src = tempfile::tempdir().unwrap();
    let archive = src.path().join("staged.tar.gz");
    s.engine
        .build_archive("test/staged:1", "v1", &[serve_cmd()], &archive);
    let entry = src.path().join("staged.yaml");
    fs::write(
        &entry,
        "- name: staged\n  image: test/staged:1\n  run: {}\n",
    )
    .unwrap();
    let root = s.root.path().to_str().unwrap().to_owned();
    let helper = support::helper();
    let out = Command::new(&helper)
        .args(["stage", "--root", &root, "--config"])
        .arg(&entry)
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&helper)
        .args(["status", "--root", &root])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "nothing will fail: {table}");
    assert!(table.contains("staged.tar.gz sha256:"), "{table}");

    let m = s.boot();
    m.wait_state("preload-staged.service", "active/running");
    s.wait_containers(&["staged"]);
    assert_eq!(
        m.sh(&["dpkg-query", "-W", "-f=${Status}", "atomic-preload"]),
        "install ok installed"
    );
    let status = m.sh(&["sh", "-c", "atomic-preload status; echo exit=$?"]);
    let row = status
        .lines()
        .find(|l| l.starts_with("staged "))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        row.contains("active (running)") && row.contains(" 20"),
        "loaded and running: {status}"
    );
    assert!(status.ends_with("exit=0\n"), "{status}");
    m.poweroff();

    // The archive is replaced behind the recorded digest's back.
    s.engine.build_archive(
        "test/staged:1",
        "v2",
        &[serve_cmd()],
        &s.archive("staged.tar.gz"),
    );
    let m = s.boot();
    m.wait_for("the digest failure on the status line", 60, |m| {
        m.prop("preload-staged.service", "StatusText")
            .contains("does not match its recorded digest")
    });
    let status = m.sh(&["sh", "-c", "atomic-preload status; echo exit=$?"]);
    assert!(
        status.contains("/var/lib/atomic/preload/docker/staged.tar.gz: content does not match its recorded digest (/var/lib/atomic/preload/docker/staged.tar.gz.sha256)"),
        "{status}"
    );
    assert!(status.ends_with("exit=1\n"), "{status}");
    m.poweroff();
}

/// The original's kickstart example, verbatim: the add-on (installed with `make
/// install-anaconda-addon`) reads it as Anaconda hands it over and runs its installation
/// task into the guest root, fetching from loopback; the guest then boots to the
/// example's system container running, its image the one stage filled in.
#[test]
fn s13_kickstart_addon_stages_the_reference_example_and_it_runs() {
    let _serial = scenario!();
    let s = Scenario::without_docker();
    let tmp = tempfile::tempdir().unwrap();
    let archives = tmp.path().join("archives");
    fs::create_dir(&archives).unwrap();
    let mut sys = etcd_image("ks");
    sys.tag = "example.com/mysyscontainer:latest".into();
    sys.save(&archives.join("syscontainer.tar.xz"));
    Image::new(
        "example.com/container:1",
        vec![Layer::new().busybox().bytes()],
    )
    .save(&archives.join("container.tar.gz"));
    let kickstart = tmp.path().join("ks.cfg");
    fs::write(
        &kickstart,
        "%addon org_projectatomic_atomic_preloader \\\n    --preload-docker http://example.com/container.tar.gz \\\n    --preload-system http://example.com/syscontainer.tar.xz\n- name: mysyscontainer\n  install:\n    system: true\n  run: {}\n%end\n",
    )
    .unwrap();
    let dest = tmp.path().join("addon");
    let out = support::install_anaconda_addon(&dest);
    assert!(out.status.success(), "{}", support::text(&out));
    let root = env!("CARGO_MANIFEST_DIR");
    let out = run(Command::new(format!("{root}/.venv/bin/python"))
        .arg(format!("{root}/tests/anaconda/run_kickstart.py"))
        .arg(&kickstart)
        .arg(s.root.path())
        .arg(&archives)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("ADDON_DIR", dest.join("usr/share/anaconda/addons")));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("requires package atomic-preload"), "{said}");
    assert!(
        fs::read_to_string(s.path(PRELOAD).join("config.yaml"))
            .unwrap()
            .contains("  image: \"example.com/mysyscontainer:latest\"\n"),
        "the image filled in"
    );
    assert!(
        s.path(PRELOAD)
            .join("docker/container.tar.gz.sha256")
            .is_file()
    );

    let m = s.boot();
    m.wait_state("preload-mysyscontainer.service", "active/exited");
    m.wait_state("mysyscontainer.service", "active/running");
    m.wait_for("the container's output in the journal", 30, |m| {
        m.sh(&["journalctl", "--no-pager", "-u", "mysyscontainer.service"])
            .contains("etcd default started")
    });
    assert!(
        m.sh(&["runc", "list"]).contains("mysyscontainer"),
        "runc runs it"
    );
    let status = m.sh(&["sh", "-c", "atomic-preload status; echo exit=$?"]);
    assert!(status.ends_with("exit=0\n"), "{status}");
    m.poweroff();
}

/// A Kubernetes node on containerd (no Docker): Debian's containerd in the guest, and a
/// `kubelet.service` stand-in that records what `ctr -n k8s.io images ls` shows when it
/// starts, ordered only as a real kubelet unit is (after the network): the preloaded
/// image is there before it starts, pinned; the next boot imports nothing.
#[test]
fn s14_containerd_node_has_its_images_before_kubelet_starts() {
    let _serial = scenario!();
    let s = Scenario::without_docker();
    let r = s.root.path();
    for bin in ["containerd", "ctr", "containerd-shim-runc-v2"] {
        fs::copy(format!("/usr/bin/{bin}"), r.join("usr/bin").join(bin)).unwrap();
    }
    // No CNI in the guest: the CRI plugin off (the k8s.io namespace is there all the same).
    fs::create_dir_all(r.join("etc/containerd")).unwrap();
    fs::write(
        r.join("etc/containerd/config.toml"),
        "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
    )
    .unwrap();
    let units = r.join("etc/systemd/system");
    fs::write(
        units.join("containerd.service"),
        "[Unit]\nDescription=containerd (Debian's binary)\nAfter=local-fs.target\n\
         [Service]\nType=notify\nExecStart=/usr/bin/containerd\nDelegate=yes\nKillMode=process\n",
    )
    .unwrap();
    fs::write(
        units.join("kubelet.service"),
        "[Unit]\nDescription=kubelet stand-in: records the images it finds\nWants=network-online.target\nAfter=network-online.target\n\
         [Service]\nType=oneshot\nRemainAfterExit=yes\n\
         ExecStart=/bin/sh -c 'ctr -n k8s.io images ls > /var/log/kubelet-found'\n",
    )
    .unwrap();
    for unit in ["containerd.service", "kubelet.service"] {
        std::os::unix::fs::symlink(
            format!("/etc/systemd/system/{unit}"),
            units.join("multi-user.target.wants").join(unit),
        )
        .unwrap();
    }
    let mut image = Image::new(
        "example.com/node/app:1",
        vec![Layer::new().busybox().bytes()],
    );
    image.marker = "node".into();
    image.save(&s.archive("app.tar.gz"));
    s.config("- name: app\n  image: example.com/node/app:1\n  engine: containerd\n");

    let m = s.boot();
    m.wait_state("preload-app.service", "active/exited");
    m.wait_state("kubelet.service", "active/exited");
    let found = fs::read_to_string(s.path("var/log/kubelet-found")).unwrap();
    let row = found
        .lines()
        .find(|l| l.starts_with("example.com/node/app:1 "))
        .unwrap_or_else(|| panic!("kubelet found no preloaded image:\n{found}"));
    assert!(row.contains("io.cri-containerd.pinned=pinned"), "{row}");
    let journal = m.sh(&[
        "journalctl",
        "--no-pager",
        "-b",
        "-u",
        "preload-app.service",
    ]);
    assert!(
        journal.contains("app.tar.gz: loaded example.com/node/app:1"),
        "{journal}"
    );
    m.poweroff();

    let _ = fs::remove_file(s.path("var/log/kubelet-found"));
    let m = s.boot();
    m.wait_state("kubelet.service", "active/exited");
    assert!(
        fs::read_to_string(s.path("var/log/kubelet-found"))
            .unwrap()
            .contains("example.com/node/app:1 "),
        "there again"
    );
    let journal = m.sh(&[
        "journalctl",
        "--no-pager",
        "-b",
        "-u",
        "preload-app.service",
    ]);
    assert!(journal.contains("app.tar.gz: already loaded"), "{journal}");
    m.poweroff();
}

// ---------------------------------------------------------------------------------------
// Boot to running, measured (bench/boot.sh): not a test, a measurement; ignored.

/// The wall-clock time (seconds since the epoch) at which process `pid` started, from
/// /proc (10 ms resolution): when the guest's systemd began.
fn started_at(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let ticks: f64 = after.split(' ').nth(19).unwrap().parse().unwrap();
    // The wall-clock time of boot, from the clock now and the uptime now (to 10 ms):
    // /proc/stat's btime is whole seconds, which would shift every measurement by up
    // to a second.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let uptime: f64 = fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    now - uptime + ticks / 100.0
}

/// Seconds from the guest's systemd start until the engine runs all `n` containers
/// (`bench-0` …), from each container's own start time. Docker's engine is this
/// machine's; Podman runs inside the guest.
fn boot_to_running(s: &Scenario, m: &Machine, n: usize, podman: bool) -> f64 {
    let names: Vec<String> = (0..n).map(|i| format!("bench-{i}")).collect();
    let running = |m: &Machine| {
        if podman {
            m.sh(&["podman", "ps", "--format", "{{.Names}}"])
                .lines()
                .filter(|l| l.starts_with("bench-"))
                .count()
        } else {
            s.running_containers().len()
        }
    };
    m.wait_for("every container running", 300, |m| running(m) == n);
    let mut args = vec!["inspect", "--format", "{{.State.StartedAt}}"];
    args.extend(names.iter().map(String::as_str));
    let started = if podman {
        let mut cmd = vec!["podman"];
        cmd.extend(&args);
        m.sh(&cmd)
    } else {
        s.engine.ok(&args)
    };
    let latest = started
        .lines()
        .map(|t| {
            // Podman: "2026-12-04 04:50:01.1 +0000 UTC"; Docker: RFC 3339.
            wall_seconds(t.trim().trim_end_matches(" UTC"))
        })
        .fold(0.0, f64::max);
    latest - started_at(m.init)
}

/// A hand-written unit `/etc/systemd/system/NAME.service`, enabled as an admin would.
fn hand_written_unit(s: &Scenario, name: &str, text: &str) {
    fs::write(s.path(&format!("etc/systemd/system/{name}.service")), text).unwrap();
    std::os::unix::fs::symlink(
        format!("/etc/systemd/system/{name}.service"),
        s.path(&format!(
            "etc/systemd/system/multi-user.target.wants/{name}.service"
        )),
    )
    .unwrap();
}

/// Each hand-written unit `names` without the lines `drop` picks (the floor's boot: the
/// images are there).
fn strip_hand_written(
    s: &Scenario,
    names: impl Iterator<Item = String>,
    drop: &dyn Fn(&str) -> bool,
) {
    for name in names {
        let path = s.path(&format!("etc/systemd/system/{name}.service"));
        let unit: String = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| !drop(l))
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&path, unit).unwrap();
    }
}

/// A time as `date -d` reads it (RFC 3339, Podman's form), in seconds since the epoch.
fn wall_seconds(t: &str) -> f64 {
    let out = run(Command::new("date").args(["-d", t, "+%s.%N"]));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<f64>()
        .unwrap()
}

/// What every bench container runs: nothing, until stopped.
const BENCH_CMD: &str = "trap 'exit 0' TERM; while :; do sleep 1; done";

/// Container `i`'s own data, BENCH_MB of it (default 20): what a real image loads.
fn bench_payload(i: usize) -> Vec<u8> {
    let mb: usize = std::env::var("BENCH_MB").map_or(20, |v| v.parse().unwrap());
    let data: Vec<u8> = (0..mb << 20)
        .map(|j| {
            (j as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(i as u32)
                .to_le_bytes()[3]
        })
        .collect();
    Layer::new().file("payload", &data, 0o644).bytes()
}

/// System container `i` for bench/boot.sh: busybox, its own data, and exports that run
/// it under runc until stopped (etcd's unit template).
fn bench_system_image(i: usize) -> Image {
    let config = format!(
        r#"{{"ociVersion": "1.0.2",
 "process": {{"terminal": false, "user": {{"uid": 0, "gid": 0}}, "args": ["/bin/sh", "-c", "{BENCH_CMD}"], "env": ["PATH=/bin"], "cwd": "/"}},
 "root": {{"path": "rootfs", "readonly": true}},
 "mounts": [{{"destination": "/proc", "type": "proc", "source": "proc"}}, {{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}}],
 "linux": {{"namespaces": [{{"type": "pid"}}, {{"type": "ipc"}}, {{"type": "uts"}}, {{"type": "mount"}}]}}}}
"#
    );
    let service = "[Unit]\nDescription=bench system container\n\n[Service]\n\
        ExecStartPre=$EXEC_STARTPRE\nExecStart=$EXEC_START\nExecStop=$EXEC_STOP\nExecStopPost=$EXEC_STOPPOST\n\
        WorkingDirectory=$DESTDIR\n\n[Install]\nWantedBy=multi-user.target\n";
    let exports = Layer::new()
        .dir("exports/", 0o755)
        .file("exports/config.json.template", config.as_bytes(), 0o644)
        .file("exports/service.template", service.as_bytes(), 0o644)
        .bytes();
    let mut image = Image::new(
        &format!("bench/sc{i}:1"),
        vec![Layer::new().busybox().bytes(), bench_payload(i), exports],
    );
    image.marker = format!("sc{i}");
    image
}

/// Seconds from the guest's systemd start until runc runs all `n` system containers
/// (`bench-sc-0` …), from each container's own creation time (`runc state`).
fn boot_to_running_system(m: &Machine, n: usize) -> f64 {
    let names: Vec<String> = (0..n).map(|i| format!("bench-sc-{i}")).collect();
    let state = |m: &Machine, name: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&m.sh(&["runc", "state", name])).ok()
    };
    m.wait_for("every system container running", 300, |m| {
        names
            .iter()
            .all(|n| state(m, n).is_some_and(|s| s["status"] == "running"))
    });
    if std::env::var("BENCH_VERBOSE").is_ok() {
        eprintln!(
            "{}",
            m.sh(&["journalctl", "-b", "--no-pager", "-o", "short-monotonic"])
        );
    }
    names
        .iter()
        .map(|name| wall_seconds(state(m, name).unwrap()["created"].as_str().unwrap()))
        .fold(0.0, f64::max)
        - started_at(m.init)
}

/// The system-container rows of bench/boot.sh: `n` system containers from `.tar`
/// archives, ours (first boot checks out, later boots reuse the checkout) against
/// hand-written units that extract the image's layers with tar at every start and run
/// it with runc — the system-container form of the ISO question's units; then a boot of
/// those with the extraction taken out (`runc run` alone, the floor); then ours with
/// checkouts staged at build time (`stage --system --checkout`), first boot only.
fn bench_system_row(n: usize) -> [f64; 6] {
    let mut times = [0.0; 6];
    let ostree = format!("/{PRELOAD}/ostree");
    for (k, how) in ["ours", "theirs", "staged"].into_iter().enumerate() {
        let s = Scenario::without_docker();
        let mut config = String::new();
        let src = tempfile::tempdir().unwrap();
        for i in 0..n {
            let image = bench_system_image(i);
            let archive = format!("sc{i}.tar");
            match how {
                "staged" => image.save(&src.path().join(&archive)),
                _ => image.save(&s.path(PRELOAD).join("ostree").join(&archive)),
            }
            if how == "theirs" {
                let bundle = format!("/var/lib/bench/sc-{i}");
                let layers: Vec<String> = (1..=image.layers.len())
                    .map(|l| format!("layer{l}/layer.tar"))
                    .collect();
                let unit = format!(
                    "[Unit]\nDescription=bench-sc-{i} (hand-written)\n\n[Service]\nTimeoutStartSec=0\n\
                     ExecStartPre=-/usr/sbin/runc delete -f bench-sc-{i}\n\
                     ExecStartPre=/bin/rm -rf {bundle}\nExecStartPre=/bin/mkdir -p {bundle}/rootfs\n\
                     ExecStartPre=/bin/sh -c 'for l in {layers}; do tar -xOf {ostree}/{archive} $l | tar -x -C {bundle}/rootfs || exit 1; done'\n\
                     ExecStartPre=/bin/cp {bundle}/rootfs/exports/config.json.template {bundle}/config.json\n\
                     ExecStart=/usr/sbin/runc run --bundle {bundle} bench-sc-{i}\n\n\
                     [Install]\nWantedBy=multi-user.target\n",
                    layers = layers.join(" ")
                );
                hand_written_unit(&s, &format!("bench-sc-{i}"), &unit);
            } else {
                config.push_str(&format!(
                    "- name: bench-sc-{i}\n  image: bench/sc{i}:1\n  archive: {archive}\n  install:\n    system: true\n  run: {{}}\n"
                ));
            }
        }
        if how == "staged" {
            let mut stage = Command::new(support::helper());
            stage
                .args(["stage", "--root"])
                .arg(s.path(""))
                .args(["--system", "--checkout"]);
            for i in 0..n {
                stage.arg(src.path().join(format!("sc{i}.tar")));
            }
            run(&mut stage);
        }
        s.config(&config);
        let boots = if how == "staged" { 1 } else { 2 };
        for boot in 0..boots {
            let m = s.boot();
            times[k * 2 + boot] = boot_to_running_system(&m, n);
            m.poweroff();
        }
        if how == "theirs" {
            strip_hand_written(&s, (0..n).map(|i| format!("bench-sc-{i}")), &|l| {
                l.contains("rm -rf") || l.contains("tar -x") || l.contains("/bin/cp")
            });
            let m = s.boot();
            times[5] = boot_to_running_system(&m, n);
            m.poweroff();
        }
    }
    // [ours 1st, ours 2nd, theirs 1st, theirs 2nd, staged 1st, floor]
    times
}

/// One row of bench/boot.sh: `n` containers (Docker), first and second boot, ours
/// against the hand-written units of the original ISO question (`ExecStartPre=-docker
/// load` at every start, then `docker run --rm`).
/// The fifth number: a third boot of the hand-written guest with its `docker load` lines
/// taken out (the images are there): the engine's own floor, `docker run` alone.
fn bench_row(n: usize, podman: bool) -> [f64; 5] {
    let mut times = [0.0; 5];
    let client = if podman {
        "/usr/bin/podman"
    } else {
        "/usr/bin/docker"
    };
    let engine_unit = if podman {
        String::new()
    } else {
        "After=docker.service\nRequires=docker.service\n".into()
    };
    for (k, ours) in [true, false].into_iter().enumerate() {
        let s = if podman {
            Scenario::with_podman()
        } else {
            Scenario::new()
        };
        let cmd = BENCH_CMD;
        let mut config = String::new();
        for i in 0..n {
            let payload = bench_payload(i);
            let mut image = Image::new(
                &format!("bench/c{i}:1"),
                vec![Layer::new().busybox().bytes(), payload],
            );
            image.marker = format!("{i}");
            image.save(&s.archive(&format!("c{i}.tar")));
            if ours {
                config.push_str(&format!(
                    "- name: bench-{i}\n  image: bench/c{i}:1\n  archive: c{i}.tar\n  run:\n    extra_args: [sh, -c, \"{cmd}\"]\n"
                ));
            } else {
                let unit = format!(
                    "[Unit]\nDescription=bench-{i} (hand-written)\n{engine_unit}\n\
                     [Service]\nTimeoutStartSec=0\nExecStartPre=-{client} kill bench-{i}\nExecStartPre=-{client} rm bench-{i}\n\
                     ExecStartPre=-{client} load -i /{PRELOAD}/docker/c{i}.tar\n\
                     ExecStart={client} run --rm --name bench-{i} bench/c{i}:1 sh -c \"{cmd}\"\n"
                );
                hand_written_unit(&s, &format!("bench-{i}"), &unit);
            }
        }
        s.config(&config);
        for boot in 0..2 {
            let m = s.boot();
            times[k * 2 + boot] = boot_to_running(&s, &m, n, podman);
            m.poweroff();
        }
        if !ours {
            strip_hand_written(&s, (0..n).map(|i| format!("bench-{i}")), &|l| {
                l.contains(" load -i ")
            });
            let m = s.boot();
            times[4] = boot_to_running(&s, &m, n, podman);
            m.poweroff();
        }
    }
    times
}

#[test]
#[ignore = "a measurement, not a test: bench/boot.sh runs it"]
fn bench_boot_to_running() {
    let _serial = scenario!();
    let list = |var: &str, default: &str| -> Vec<String> {
        std::env::var(var)
            .unwrap_or_else(|_| default.into())
            .split(',')
            .map(|v| v.trim().to_owned())
            .collect()
    };
    let counts: Vec<usize> = list("BENCH_UNITS", "1,10,40")
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    println!(
        "| containers | ours, first boot | hand-written, first boot | ratio | ours, second boot | hand-written, second boot | ratio | `run` alone | ours above it, per unit |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for engine in list("BENCH_ENGINES", "docker,podman,system") {
        if engine == "system" {
            let n: usize = std::env::var("BENCH_SYSTEM").map_or(2, |v| v.parse().unwrap());
            let [ours1, ours2, theirs1, theirs2, staged1, floor] = bench_system_row(n);
            println!(
                "| {n} (system, runc) | {ours1:.2} s | {theirs1:.2} s | {:.2} | {ours2:.2} s | {theirs2:.2} s | {:.2} | {floor:.2} s | {:.0} ms |",
                ours1 / theirs1,
                ours2 / theirs2,
                (ours2 - floor) * 1000.0 / n as f64
            );
            println!(
                "| {n} (system, staged checkouts) | {staged1:.2} s | {theirs1:.2} s | {:.2} | | | | | |",
                staged1 / theirs1
            );
            continue;
        }
        for &n in &counts {
            let [ours1, ours2, theirs1, theirs2, floor] = bench_row(n, engine == "podman");
            println!(
                "| {n} ({engine}) | {:.2} s | {:.2} s | {:.2} | {:.2} s | {:.2} s | {:.2} | {:.2} s | {:.0} ms |",
                ours1,
                theirs1,
                ours1 / theirs1,
                ours2,
                theirs2,
                ours2 / theirs2,
                floor,
                (ours2 - floor) * 1000.0 / n as f64
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Chaos: one guest booted 20 times, a random change before each boot

/// xorshift64*: the test's own dice, seeded (and printed) so a failing run can be
/// replayed with `CHAOS_SEED`.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// How a boot is cut short.
enum Cut {
    After(Duration),
    /// While the archive (of that unit) loads, by that unit or by
    /// atomic-preload-load.service.
    WhileLoading(String, String),
}

/// What the test believes an archive in `docker/` is.
#[derive(Clone, Debug, PartialEq)]
enum Archive {
    Valid(String),
    Corrupt,
    Missing,
}

/// The oracle's model, kept apart from the code under test: what the config says, what
/// each archive holds, and which system-container version runs.
struct Model {
    /// Docker entries: (name, in the config, using its `-alt` image and archive).
    entries: Vec<(&'static str, bool, bool)>,
    /// Archive file name → what it holds, and its last valid bytes and marker (to restore).
    archives: std::collections::BTreeMap<String, (Archive, Option<(Vec<u8>, String)>)>,
    /// etcd: the archive's version (and whether it fails to start), the version installed
    /// and proven, the version rolled back from (not tried again).
    etcd_archive: (String, bool),
    etcd_installed: String,
    etcd_rolled_back: Option<String>,
    /// Set after a boot cut short: the next boot's preload-etcd may finish what the cut
    /// one started (fail now) or find it done.
    etcd_uncertain: bool,
}

impl Model {
    fn archive_of(&self, name: &str, alt: bool) -> String {
        if alt {
            format!("{name}-alt.tar")
        } else {
            format!("{name}.tar")
        }
    }
    fn image_of(name: &str, alt: bool) -> String {
        format!("docker.io/chaos/{name}{}:1", if alt { "-alt" } else { "" })
    }
    fn config(&self) -> String {
        let mut text = String::from(
            "- name: etcd\n  image: docker.io/gscrivano/etcd\n  install:\n    system: true\n    setvalues: [ETCD_NAME=chaos]\n  run: {}\n",
        );
        for (name, present, alt) in &self.entries {
            if *present {
                text.push_str(&format!(
                    "- name: {name}\n  image: {}\n  archive: {}\n  run: {{}}\n",
                    Model::image_of(name, *alt),
                    self.archive_of(name, *alt)
                ));
            }
        }
        text
    }
    /// Docker entries that must run after a boot, with the marker their container shows.
    fn running(&self) -> Vec<(&'static str, String)> {
        self.entries
            .iter()
            .filter(|(_, present, _)| *present)
            .filter_map(
                |(name, _, alt)| match &self.archives[&self.archive_of(name, *alt)].0 {
                    Archive::Valid(m) => Some((*name, m.clone())),
                    _ => None,
                },
            )
            .collect()
    }
}

fn broken_etcd_image(marker: &str) -> Image {
    let mut broken = etcd_image(marker);
    let exits = Layer::new().file("exports/config.json.template", br#"{"ociVersion": "1.0.2", "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/bin/false"], "cwd": "/"}, "root": {"path": "rootfs", "readonly": true}}"#, 0o644).bytes();
    broken.layers.push(exits);
    broken
}

/// Every file under `dir` whose name starts with a dot (a temp file or dir left behind).
fn dot_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            // The deployments' rootfs are the images' own business.
            if p.ends_with("rootfs") {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with('.') {
                out.push(p.display().to_string());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out
}

#[test]
#[ignore = "20 boots, ~5 minutes: its own run in .ci/run (cargo test --test boot -- --ignored)"]
fn chaos_twenty_boots_with_random_changes_each_converge() {
    let _serial = scenario!();
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("chaos: CHAOS_SEED={seed}");
    let mut dice = Dice(seed);
    let mut s = Scenario::new();
    let ostree = s.path(PRELOAD).join("ostree");
    let checkout = s.path("var/lib/containers/atomic");
    let state_dir = s.path("var/lib/atomic-preload");
    let mut model = Model {
        entries: vec![
            ("web", true, false),
            ("db", true, false),
            ("cache", false, false),
        ],
        archives: Default::default(),
        etcd_archive: ("e0".into(), false),
        etcd_installed: "e0".into(),
        etcd_rolled_back: None,
        etcd_uncertain: false,
    };
    let mut version = 0;
    // A new image for `archive` (built on the engine, then removed from it: the engine
    // only gets images through the guest's loads).
    let build = |s: &Scenario, archive: &str, marker: &str| {
        let tag = Model::image_of(
            archive.trim_end_matches(".tar").trim_end_matches("-alt"),
            archive.contains("-alt"),
        );
        s.engine
            .build_archive(&tag, marker, &[serve_cmd()], &s.archive(archive));
        let _ = s.engine.docker(&["rmi", "-f", &tag]);
        fs::read(s.archive(archive)).unwrap()
    };
    for (name, _, _) in model.entries.clone() {
        for alt in [false, true] {
            let archive = model.archive_of(name, alt);
            let marker = format!("{archive}-v0");
            let bytes = build(&s, &archive, &marker);
            model.archives.insert(
                archive,
                (Archive::Valid(marker.clone()), Some((bytes, marker))),
            );
        }
    }
    etcd_image("e0").save(&ostree.join("etcd.tar"));

    for boot in 0..20 {
        let mut engine_down = false;
        let mut cut_short = None;
        // The change before this boot (the first boots the initial state).
        let change = if boot == 0 { 99 } else { dice.below(12) };
        let pick = |dice: &mut Dice, model: &Model| {
            let i = dice.below(model.entries.len());
            model.entries[i].0
        };
        let said = match change {
            0 | 1 => {
                let i = dice.below(model.entries.len());
                model.entries[i].1 = !model.entries[i].1;
                format!(
                    "entry {} {}",
                    model.entries[i].0,
                    if model.entries[i].1 {
                        "added"
                    } else {
                        "removed"
                    }
                )
            }
            2 => {
                let i = dice.below(model.entries.len());
                model.entries[i].2 = !model.entries[i].2;
                format!(
                    "entry {} changed to its other image and archive",
                    model.entries[i].0
                )
            }
            3 | 4 => {
                let name = pick(&mut dice, &model);
                let alt = dice.below(2) == 1;
                let archive = model.archive_of(name, alt);
                version += 1;
                let marker = format!("{archive}-v{version}");
                let bytes = build(&s, &archive, &marker);
                model.archives.insert(
                    archive.clone(),
                    (Archive::Valid(marker.clone()), Some((bytes, marker))),
                );
                format!("archive {archive} replaced")
            }
            5 => {
                let name = pick(&mut dice, &model);
                let archive = model.archive_of(name, dice.below(2) == 1);
                fs::write(s.archive(&archive), b"\x1f\x8b\x08 not really an archive").unwrap();
                model.archives.get_mut(&archive).unwrap().0 = Archive::Corrupt;
                format!("archive {archive} corrupted")
            }
            6 => {
                let name = pick(&mut dice, &model);
                let archive = model.archive_of(name, dice.below(2) == 1);
                let _ = fs::remove_file(s.archive(&archive));
                model.archives.get_mut(&archive).unwrap().0 = Archive::Missing;
                format!("archive {archive} removed")
            }
            7 => {
                let name = pick(&mut dice, &model);
                let archive = model.archive_of(name, dice.below(2) == 1);
                let entry = model.archives.get_mut(&archive).unwrap();
                let (bytes, marker) = entry.1.clone().unwrap();
                fs::write(s.archive(&archive), bytes).unwrap();
                entry.0 = Archive::Valid(marker);
                format!("archive {archive} restored")
            }
            8 => {
                // The engine lost an image (removed, garbage-collected).
                let name = pick(&mut dice, &model);
                let image = Model::image_of(name, dice.below(2) == 1);
                let _ = s.engine.docker(&["rmi", "-f", &image]);
                format!("the engine lost {image}")
            }
            9 => {
                version += 1;
                let broken = dice.below(2) == 1;
                let marker = format!("e{version}");
                if broken {
                    broken_etcd_image(&marker).save(&ostree.join("etcd.tar"));
                } else {
                    etcd_image(&marker).save(&ostree.join("etcd.tar"));
                }
                model.etcd_archive = (marker.clone(), broken);
                format!(
                    "etcd archive {marker}{}",
                    if broken { " (its service fails)" } else { "" }
                )
            }
            10 => {
                engine_down = true;
                "the engine is down for this boot".into()
            }
            11 if dice.below(2) == 0 => {
                let after = Duration::from_millis(500 + dice.below(6000) as u64);
                cut_short = Some(Cut::After(after));
                format!("this boot is cut short after {after:?}")
            }
            11 => {
                // A large new archive for an entry in the config, and the power cut while
                // its unit loads it.
                let present: Vec<(&'static str, bool)> = model
                    .entries
                    .iter()
                    .filter(|e| e.1)
                    .map(|e| (e.0, e.2))
                    .collect();
                match present.get(dice.below(present.len().max(1))) {
                    None => "no entry to cut a load of: a plain boot".into(),
                    Some(&(name, alt)) => {
                        let archive = model.archive_of(name, alt);
                        version += 1;
                        let marker = format!("{archive}-v{version}");
                        let tag = Model::image_of(name, alt);
                        let payload: Vec<u8> = (0..600u32 << 20).map(|i| (i % 251) as u8).collect();
                        s.engine.build_archive_with_payload(
                            &tag,
                            &marker,
                            &[serve_cmd()],
                            &payload,
                            &s.archive(&archive),
                        );
                        let _ = s.engine.docker(&["rmi", "-f", &tag]);
                        let bytes = fs::read(s.archive(&archive)).unwrap();
                        model.archives.insert(
                            archive.clone(),
                            (Archive::Valid(marker.clone()), Some((bytes, marker))),
                        );
                        cut_short = Some(Cut::WhileLoading(
                            format!("preload-{name}.service"),
                            archive.clone(),
                        ));
                        format!(
                            "archive {archive} replaced by a 600 MB one, and the boot cut short while it loads"
                        )
                    }
                }
            }
            _ => "first boot".into(),
        };
        eprintln!("chaos: boot {boot}: {said}");
        s.config(&model.config());
        let archive_shas: Vec<(String, String)> = fs::read_dir(s.path(PRELOAD).join("docker"))
            .unwrap()
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), sha(&e.path())))
            .collect();
        let marks = |s: &Scenario| {
            let mut v: Vec<(String, String)> =
                fs::read_dir(s.path("var/lib/atomic-preload/loaded/docker"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            fs::read_to_string(e.path()).unwrap_or_default(),
                        )
                    })
                    .collect();
            v.sort();
            v
        };
        let marks_before = marks(&s);
        if engine_down {
            s.engine.stop_daemon();
        }
        let m = s.boot();
        let at = |what: &str| format!("boot {boot} ({said}; CHAOS_SEED={seed}): {what}");
        // Archives are byte for byte what the test wrote: never modified or deleted.
        let archives_intact = || {
            for (name, want) in &archive_shas {
                assert_eq!(
                    &sha(&s.archive(name)),
                    want,
                    "{}",
                    at(&format!("{name} changed"))
                );
            }
        };

        // The system container, whatever the engine does.
        let (marker, broken) = model.etcd_archive.clone();
        let mut preload_etcd = vec!["active/exited"];
        if marker != model.etcd_installed && broken {
            if model.etcd_rolled_back.as_deref() != Some(marker.as_str()) {
                preload_etcd = vec!["failed/failed"];
            }
            model.etcd_rolled_back = Some(marker.clone());
        } else if marker != model.etcd_installed {
            model.etcd_installed = marker.clone();
        }
        if model.etcd_uncertain {
            preload_etcd = vec!["active/exited", "failed/failed"];
        }

        if let Some(cut) = cut_short {
            // A power cut: the guest and every container of this machine go.
            match cut {
                Cut::After(after) => std::thread::sleep(after),
                Cut::WhileLoading(unit, archive) => {
                    // As soon as the guest answers, the large load is under way (it takes
                    // several seconds); the journal says whether it had finished after all.
                    let journal = m.sh(&["journalctl", "-b", "-o", "cat", "--no-pager"]);
                    let finished = journal.contains(&format!("{archive}: loaded"));
                    eprintln!(
                        "chaos: boot {boot}: cut {} {unit}'s load of {archive} had finished",
                        if finished { "after" } else { "before" }
                    );
                }
            }
            drop(m);
            let _ = s.engine.docker(&["rm", "-f", "web", "db", "cache"]);
            model.etcd_uncertain = true;
            // Nothing a cut can do to the archives.
            archives_intact();
            continue;
        }
        model.etcd_uncertain = false;
        m.wait_for(
            &at(&format!(
                "preload-etcd.service to be one of {preload_etcd:?}"
            )),
            120,
            |m| preload_etcd.contains(&m.state("preload-etcd.service").as_str()),
        );
        m.wait_state("etcd.service", "active/running");
        assert_eq!(
            m.sh(&["/usr/local/bin/etcdctl-test"]),
            format!("etcdctl {}\n", model.etcd_installed),
            "{}",
            at("the host file of the version that runs")
        );
        let active = fs::read_link(checkout.join("etcd")).unwrap();
        let info = fs::read_to_string(
            s.root
                .path()
                .join(active.strip_prefix("/").unwrap())
                .join("info"),
        )
        .unwrap();
        assert!(
            info.contains("\"verified\": true"),
            "{}",
            at(&format!("the running deployment is proven: {info}"))
        );

        if engine_down {
            std::thread::sleep(Duration::from_secs(5));
            for (name, _, _) in &model.entries {
                assert_ne!(
                    m.state(&format!("preload-{name}.service")),
                    "active/running",
                    "{}",
                    at("no engine, no container")
                );
            }
            assert_eq!(
                marks(&s),
                marks_before,
                "{}",
                at("no mark changes without an engine")
            );
            m.poweroff();
            s.engine.start_daemon();
            continue;
        }

        // Docker entries: each runs its archive's content, or fails for its bad archive.
        let running = model.running();
        for (name, present, alt) in model.entries.clone() {
            let unit = format!("preload-{name}.service");
            if !present {
                assert_eq!(
                    m.prop(&unit, "LoadState"),
                    "not-found",
                    "{}",
                    at(&format!("{unit} of a removed entry"))
                );
                continue;
            }
            if let Some((_, marker)) = running.iter().find(|(n, _)| *n == name) {
                m.wait_for(&at(&format!("{name} running {marker}")), 120, |m| {
                    m.state(&unit) == "active/running"
                        && s.engine.docker(&["exec", name, "cat", "/marker"]).stdout
                            == marker.as_bytes()
                });
            } else {
                let archive = model.archive_of(name, alt);
                m.wait_for(&at(&format!("{unit} failing for {archive}")), 120, |m| {
                    m.prop(&unit, "Result") == "exit-code"
                        && m.prop(&unit, "ActiveState") != "active"
                });
            }
        }
        let mut expected: Vec<&str> = running.iter().map(|(n, _)| *n).collect();
        expected.sort();
        s.wait_containers(&expected);

        // Nothing lost, nothing stray.
        archives_intact();
        let stray: Vec<String> = [dot_files(&checkout), dot_files(&state_dir)].concat();
        assert!(
            stray.is_empty(),
            "{}",
            at(&format!("stray temp files: {stray:?}"))
        );
        let mut slots: Vec<String> = fs::read_dir(&checkout)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        slots.sort();
        assert!(
            slots
                .iter()
                .all(|n| ["etcd", "etcd.0", "etcd.1"].contains(&n.as_str())),
            "{}",
            at(&format!("the checkout directory holds {slots:?}"))
        );
        m.poweroff();
        s.wait_containers(&[]);
    }
}
