//! The runtime stages against a real Docker engine (see `support`): load once per
//! content, reload on change, compressed archives, corrupt archives, missing images,
//! INSTALL labels, and a generated unit's command lines run as systemd would run them.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::{Engine, docker_available, helper, label};

struct Setup {
    engine: Engine,
    preload: PathBuf,
    state: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let engine = Engine::start();
        let preload = engine.dir.path().join("preload");
        let state = engine.dir.path().join("state");
        fs::create_dir_all(preload.join("docker")).unwrap();
        Setup {
            engine,
            preload,
            state,
        }
    }

    fn archive(&self, name: &str) -> PathBuf {
        self.preload.join("docker").join(name)
    }

    /// `atomic-preload SUBCOMMAND …` with this engine and state dir, not started yet.
    fn command(&self, subcommand: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(helper());
        cmd.arg(subcommand);
        if subcommand == "load" {
            cmd.arg("--preload-dir").arg(&self.preload);
        }
        cmd.arg("--state-dir")
            .arg(&self.state)
            .arg("--docker")
            .arg("docker")
            .args(args);
        cmd.env("DOCKER_HOST", &self.engine.host);
        cmd
    }

    /// Run `atomic-preload SUBCOMMAND …` to completion.
    fn helper(&self, subcommand: &str, args: &[&str]) -> Output {
        self.command(subcommand, args).output().unwrap()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn sha(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn load_once_then_reload_only_when_content_changes() {
    if !docker_available() {
        return;
    }
    let s = Setup::new();
    let e = &s.engine;
    e.build_archive("test/app:1", "v1", &[], &s.archive("app.tar"));

    let t0 = e.now();
    let out = s.helper("load", &["--image", "test/app:1"]);
    assert!(out.status.success(), "first load: {}", text(&out));
    assert!(text(&out).contains("app.tar: loaded"), "{}", text(&out));
    assert_eq!(e.load_events(&t0), 1, "first start loads the archive once");
    let first_id = e.image_id("test/app:1").expect("image present after load");

    // Unchanged archive: the engine sees no load at all.
    let t1 = e.now();
    let out = s.helper("load", &["--image", "test/app:1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("app.tar: already loaded"),
        "{}",
        text(&out)
    );
    assert_eq!(
        e.load_events(&t1),
        0,
        "an unchanged archive must not be loaded again"
    );

    // Same bytes, new file (copied over): hashed, not loaded.
    let copy = s.engine.dir.path().join("copy.tar");
    fs::copy(s.archive("app.tar"), &copy).unwrap();
    fs::rename(&copy, s.archive("app.tar")).unwrap();
    let t2 = e.now();
    let out = s.helper("load", &["--image", "test/app:1"]);
    assert!(
        text(&out).contains("app.tar: same content"),
        "{}",
        text(&out)
    );
    assert_eq!(
        e.load_events(&t2),
        0,
        "same content must not be loaded again"
    );

    // Different content under the same name and tag: loaded, new image ID.
    e.build_archive("test/app:1", "v2", &[], &s.archive("app.tar"));
    let t3 = e.now();
    let out = s.helper("load", &["--image", "test/app:1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(e.load_events(&t3), 1, "changed content must be loaded");
    assert_ne!(
        e.image_id("test/app:1").unwrap(),
        first_id,
        "the new image replaced the old tag"
    );

    // The engine lost the image (wiped storage: the engine ID survives in /etc/docker):
    // the mark no longer counts, and the archive is loaded again.
    e.ok(&["rmi", "test/app:1"]);
    let t4 = e.now();
    let out = s.helper("load", &["--image", "test/app:1"]);
    assert!(
        out.status.success(),
        "a wiped engine must be reloaded: {}",
        text(&out)
    );
    assert_eq!(
        e.load_events(&t4),
        1,
        "the archive must be loaded into the wiped engine"
    );
}

#[test]
fn every_archive_format_loads() {
    if !docker_available() {
        return;
    }
    let s = Setup::new();
    let names = [
        "a.tar",
        "b.tar.gz",
        "c.tgz",
        "d.tar.xz",
        "e.tar.bz2",
        "f.tar.zst",
    ];
    for (i, name) in names.iter().enumerate() {
        s.engine
            .build_archive(&format!("test/fmt:{i}"), name, &[], &s.archive(name));
    }
    fs::write(s.archive("notes.txt"), "not an archive").unwrap();
    let before: Vec<String> = names.iter().map(|n| sha(&s.archive(n))).collect();
    let out = s.helper("load", &[]);
    assert!(out.status.success(), "{}", text(&out));
    for i in 0..names.len() {
        assert!(
            s.engine.image_id(&format!("test/fmt:{i}")).is_some(),
            "{} not loaded: {}",
            names[i],
            text(&out)
        );
    }
    let after: Vec<String> = names.iter().map(|n| sha(&s.archive(n))).collect();
    assert_eq!(before, after, "archives must never be modified");
    assert!(s.archive("notes.txt").exists());
}

#[test]
fn corrupt_archive_fails_its_unit_only_and_is_kept() {
    if !docker_available() {
        return;
    }
    let s = Setup::new();
    s.engine
        .build_archive("test/good:1", "good", &[], &s.archive("good.tar"));
    fs::write(s.archive("bad.tar.gz"), b"\x1f\x8bthis is not gzip at all").unwrap();
    let bad_sha = sha(&s.archive("bad.tar.gz"));

    // The unit for all archives (no --image) fails and names the archive.
    let out = s.helper("load", &[]);
    assert!(
        !out.status.success(),
        "a corrupt archive must fail the load-all stage"
    );
    assert!(
        text(&out).contains("bad.tar.gz"),
        "the message must name the archive: {}",
        text(&out)
    );

    // An entry whose image came from another archive still starts (with a warning).
    let out = s.helper("load", &["--image", "test/good:1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("cannot load"), "{}", text(&out));

    // An entry that names the corrupt archive fails.
    let out = s.helper(
        "load",
        &["--image", "test/good:1", "--archive", "bad.tar.gz"],
    );
    assert!(!out.status.success());

    assert_eq!(
        sha(&s.archive("bad.tar.gz")),
        bad_sha,
        "nothing is deleted or modified"
    );
    let marks = fs::read_dir(s.state.join("loaded/docker")).unwrap().count();
    assert_eq!(marks, 1, "only the good archive is marked loaded");
}

#[test]
fn missing_image_names_image_and_where_it_looked() {
    if !docker_available() {
        return;
    }
    let s = Setup::new();
    s.engine
        .build_archive("test/other:1", "o", &[], &s.archive("other.tar"));
    let out = s.helper("load", &["--image", "docker.io/example/missing:1"]);
    assert_eq!(
        out.status.code(),
        Some(65),
        "retrying cannot conjure the image"
    );
    let msg = text(&out);
    assert!(
        msg.contains("image docker.io/example/missing:1 is not in the Docker engine"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{}", s.preload.join("docker").display())),
        "{msg}"
    );
    assert!(msg.contains("other.tar"), "{msg}");
}

#[test]
fn engine_not_answering_is_reported() {
    // No daemon needed: a socket nobody listens on.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(helper())
        .args(["load", "--preload-dir"])
        .arg(dir.path())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--docker", "docker", "--image", "x"])
        .env(
            "DOCKER_HOST",
            format!("unix://{}/nothing.sock", dir.path().display()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("the Docker engine does not answer"),
        "{}",
        text(&out)
    );
    assert!(
        !dir.path().join("state/loaded").exists(),
        "no mark without an engine"
    );
}

#[test]
fn install_label_runs_once_per_image_and_settings() {
    if !docker_available() {
        return;
    }
    let s = Setup::new();
    let out_dir = s.engine.dir.path().join("install-out");
    fs::create_dir_all(&out_dir).unwrap();
    let install = format!(
        "docker run --rm -t -v {}:/out -e CONFDIR=${{CONFDIR}} IMAGE /bin/sh -c 'echo \"$0|$1|$CONFDIR|$2\" >> /out/result' NAME ${{MYVAR}}",
        out_dir.display()
    );
    s.engine.build_archive(
        "test/inst:1",
        "i",
        &[label("INSTALL", &install)],
        &s.archive("inst.tar"),
    );
    s.engine
        .build_archive("test/plain:1", "p", &[], &s.archive("plain.tar"));
    assert!(s.helper("load", &[]).status.success());
    let host = s.engine.dir.path().join("host");
    let host_arg = host.display().to_string();
    let install_args = [
        "--name",
        "web",
        "--image",
        "test/inst:1",
        "--set",
        "MYVAR=hello world",
        "--host-root",
        &host_arg,
        "--",
        "extra arg",
    ];

    let out = s.helper("install", &install_args);
    assert!(out.status.success(), "{}", text(&out));
    let result = fs::read_to_string(out_dir.join("result")).unwrap();
    assert_eq!(result, "web|hello world|/etc/web|extra arg\n");
    for dir in ["etc/web", "var/log/web", "var/lib/web"] {
        assert!(host.join(dir).is_dir(), "{dir} not created");
    }

    // Once per image ID and settings.
    let out = s.helper("install", &install_args);
    assert!(text(&out).contains("already installed"), "{}", text(&out));
    assert_eq!(
        fs::read_to_string(out_dir.join("result"))
            .unwrap()
            .lines()
            .count(),
        1
    );

    // Changed settings install again.
    let mut changed = install_args;
    changed[5] = "MYVAR=changed";
    assert!(s.helper("install", &changed).status.success());
    assert_eq!(
        fs::read_to_string(out_dir.join("result"))
            .unwrap()
            .lines()
            .last(),
        Some("web|changed|/etc/web|extra arg")
    );

    // No label: nothing to install, success.
    let out = s.helper(
        "install",
        &[
            "--name",
            "plain",
            "--image",
            "test/plain:1",
            "--host-root",
            &host_arg,
        ],
    );
    assert!(
        out.status.success() && text(&out).contains("no INSTALL label"),
        "{}",
        text(&out)
    );

    // A failing INSTALL command fails the stage and leaves no mark.
    let failing = label("INSTALL", "docker run --rm IMAGE /bin/sh -c 'exit 3'");
    s.engine
        .build_archive("test/fail:1", "f", &[failing], &s.archive("fail.tar"));
    assert!(s.helper("load", &[]).status.success());
    let out = s.helper(
        "install",
        &[
            "--name",
            "failing",
            "--image",
            "test/fail:1",
            "--host-root",
            &host_arg,
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!s.state.join("installed/failing").exists());
}

/// The generated unit's command lines, read back with our systemd-syntax reader and run
/// in order (ExecStartPre, then ExecStart) against the engine: the container receives
/// exactly the config's arguments, hostile ones included.
#[test]
fn generated_unit_commands_deliver_exact_argv() {
    if !docker_available() {
        return;
    }
    let s = Setup::new();
    s.engine.build_archive(
        "docker.io/test/echo:1",
        "e",
        &[],
        &s.archive("echo.tar.zst"),
    );
    let hostile = support::HOSTILE_ARGS;
    let mut config = String::from(
        "- name: echo-test\n  image: docker.io/test/echo:1\n  run:\n    extra_args:\n      - sh\n      - -c\n      - 'for a in \"$@\"; do printf \"<%s>\\n\" \"$a\"; done'\n      - sh\n",
    );
    for arg in hostile {
        config.push_str(&format!("      - {}\n", support::yaml_quote(arg)));
    }
    let root = s.engine.dir.path().join("root");
    let cfg = root.join("var/lib/atomic/preload/config.yaml");
    fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    fs::write(&cfg, &config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_atomic-preload-generator"))
        .arg("--dry-run")
        .arg("--root")
        .arg(&root)
        .arg("--preload-dir")
        .arg(&s.preload)
        .output()
        .unwrap();
    let unit = String::from_utf8(out.stdout).unwrap();
    assert!(
        unit.contains("ExecStart="),
        "{unit}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut last = String::new();
    for line in unit
        .lines()
        .filter(|l| l.starts_with("ExecStartPre=") || l.starts_with("ExecStart="))
    {
        let value = line.split_once('=').unwrap().1;
        let ignore = value.starts_with('-');
        let mut argv = atomic_preload::escape::parse_command_line(value).expect(line);
        if argv[0].ends_with("/atomic-preload") && argv[1] == "run" {
            // The run stage: its default command's docker is the test engine's client.
            argv[0] = helper().display().to_string();
            let dash = argv.iter().position(|a| a == "--").unwrap();
            argv[dash + 1] = "docker".into();
        } else if argv[0].ends_with("/atomic-preload") {
            argv[0] = helper().display().to_string();
            argv.extend([
                "--state-dir".into(),
                s.state.display().to_string(),
                "--docker".into(),
                "docker".into(),
            ]);
        } else {
            argv[0] = "docker".into();
        }
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .env("DOCKER_HOST", &s.engine.host)
            .output()
            .unwrap();
        assert!(ignore || out.status.success(), "{line}: {}", text(&out));
        last = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    let expected: String = hostile.iter().map(|a| format!("<{a}>\n")).collect();
    assert_eq!(last, expected);
}

/// Units starting together load under one lock: both succeed, the archive is loaded once,
/// and the mark is whole.
#[test]
fn concurrent_loads_take_turns() {
    if !docker_available() {
        return;
    }
    let s = Setup::new();
    s.engine
        .build_archive("test/c:1", "c", &[], &s.archive("c.tar.gz"));
    let t0 = s.engine.now();
    let spawn = || {
        s.command("load", &["--image", "test/c:1"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success() && b.status.success(),
        "{}\n{}",
        text(&a),
        text(&b)
    );
    assert_eq!(
        s.engine.load_events(&t0),
        1,
        "loaded once, not once per unit"
    );
    let mark = fs::read_to_string(s.state.join("loaded/docker/c.tar.gz")).unwrap();
    assert!(
        mark.contains("sha256=") && mark.contains("images=test/c:1"),
        "{mark}"
    );
}

/// A load killed at any moment leaves no mark claiming it finished; the next start loads
/// the archive and ends with the image present.
#[test]
fn killed_load_is_repaired_by_the_next_start() {
    if !docker_available() {
        return;
    }
    let s = Setup::new();
    // A large, incompressible layer so the load takes long enough to be interrupted.
    let noise = s.engine.dir.path().join("noise");
    let out = Command::new("head")
        .args(["-c", "40000000", "/dev/urandom"])
        .output()
        .unwrap();
    fs::write(&noise, out.stdout).unwrap();
    s.engine
        .build_archive_with_file("test/big:1", &noise, &s.archive("big.tar"));
    for delay_ms in [30, 150, 400] {
        let _ = s.engine.docker(&["rmi", "test/big:1"]);
        let _ = fs::remove_file(s.state.join("loaded/docker/big.tar"));
        let mut child = s
            .command("load", &["--image", "test/big:1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let finished = child.wait().unwrap().success();
        let marked = s.state.join("loaded/docker/big.tar").exists();
        assert!(
            !marked || finished || s.engine.image_id("test/big:1").is_some(),
            "a mark without the image after a kill at {delay_ms} ms"
        );
        let out = s.helper("load", &["--image", "test/big:1"]);
        assert!(
            out.status.success(),
            "after a kill at {delay_ms} ms: {}",
            text(&out)
        );
        assert!(s.engine.image_id("test/big:1").is_some());
        assert!(s.state.join("loaded/docker/big.tar").exists());
    }
}

/// An image's RUN label, as `atomic run` used it, in the foreground: `-d` and `--name`
/// dropped and said so, `-e` and `$NAME` kept and substituted, run.extra_args appended.
/// A label that is not a `docker run` fails the stage naming it.
#[test]
fn run_label_is_honoured_in_the_foreground() {
    if !docker_available() {
        return;
    }
    let s = Setup::new();
    // As with atomic, $VAR in the label is expanded before docker runs (even inside the
    // script), so the script reads the environment with `env`.
    let run_label = r#"docker run -d --name other -e GREETING=hello-$NAME -e IMAGE=IMAGE IMAGE sh -c 'echo from $IMAGE; env | grep ^GREETING; echo "args: $*"' sh"#;
    s.engine.build_archive(
        "test/runlabel:1",
        "r",
        &[label("RUN", run_label)],
        &s.archive("run.tar"),
    );
    s.engine.build_archive(
        "test/badlabel:1",
        "b",
        &[label("RUN", "/usr/bin/podman run IMAGE")],
        &s.archive("bad.tar"),
    );
    let load = |image: &str| {
        Command::new(helper())
            .args([
                "load",
                "--preload-dir",
                s.preload.to_str().unwrap(),
                "--image",
                image,
            ])
            .args([
                "--state-dir",
                s.state.to_str().unwrap(),
                "--docker",
                "docker",
            ])
            .env("DOCKER_HOST", &s.engine.host)
            .output()
            .unwrap()
    };
    assert!(load("test/runlabel:1").status.success());
    let run = |image: &str, extra: &[&str]| {
        let mut default = vec![
            "docker",
            "run",
            "--rm",
            "--pull=never",
            "--name",
            "runlabel",
            image,
        ];
        default.extend(extra);
        let extra_count = extra.len().to_string();
        Command::new(helper())
            .args([
                "run",
                "--name",
                "runlabel",
                "--image",
                image,
                "--extra",
                &extra_count,
                "--",
            ])
            .args(&default)
            .env("DOCKER_HOST", &s.engine.host)
            .output()
            .unwrap()
    };
    let out = run("test/runlabel:1", &["one", "two words"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "RUN label: dropped -d (systemd supervises the container in the foreground)\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "RUN label: dropped --name other (the config's name is the container's name)\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("from test/runlabel:1\nGREETING=hello-runlabel\nargs: one two words\n"),
        "the container ran in the foreground with the label's environment: {stdout}"
    );
    assert_eq!(
        s.engine.ok(&["ps", "-a", "--format", "{{.Names}}"]),
        "",
        "--rm: nothing left"
    );

    let out = run("test/badlabel:1", &[]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "atomic-preload: RUN label of test/badlabel:1: not a `docker run` command, so it cannot run under systemd: \"/usr/bin/podman run IMAGE\"\n"
    );
}

/// `atomic-preload uninstall` for a Docker entry: the container goes, the UNINSTALL label
/// runs with atomic's substitutions and the entry's setvalues, and the install mark is
/// dropped so the next start installs again.
#[test]
fn uninstall_runs_the_uninstall_label() {
    if !docker_available() {
        return;
    }
    let s = Setup::new();
    let out_dir = s.engine.dir.path().join("uninstall-out");
    fs::create_dir_all(&out_dir).unwrap();
    let mount = format!("{}:/out", out_dir.display());
    let install = format!("docker run --rm -v {mount} IMAGE sh -c 'echo installed >> /out/log'");
    let uninstall = format!(
        "docker run --rm -v {mount} -e NAME=NAME IMAGE sh -c 'echo uninstalled $0 $1 >> /out/log' NAME ${{GREETING}}"
    );
    s.engine.build_archive(
        "test/uninst:1",
        "u",
        &[label("INSTALL", &install), label("UNINSTALL", &uninstall)],
        &s.archive("uninst.tar"),
    );
    assert!(s.helper("load", &[]).status.success());
    let config = s.engine.dir.path().join("config.yaml");
    fs::write(
        &config,
        "- name: web\n  image: test/uninst:1\n  install:\n    setvalues: [GREETING=bye]\n",
    )
    .unwrap();
    let install_args = [
        "--name",
        "web",
        "--image",
        "test/uninst:1",
        "--set",
        "GREETING=bye",
    ];
    assert!(s.helper("install", &install_args).status.success());
    s.engine
        .ok(&["create", "--name", "web", "test/uninst:1", "true"]);

    let checkout = s.engine.dir.path().join("checkout");
    let out = Command::new(helper())
        .args([
            "uninstall",
            "web",
            "--config",
            config.to_str().unwrap(),
            "--docker",
            "docker",
        ])
        .args([
            "--state-dir",
            s.state.to_str().unwrap(),
            "--checkout-dir",
            checkout.to_str().unwrap(),
        ])
        .env("DOCKER_HOST", &s.engine.host)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("web: running UNINSTALL: docker run --rm -v"),
        "{}",
        text(&out)
    );
    assert_eq!(
        fs::read_to_string(out_dir.join("log")).unwrap(),
        "installed\nuninstalled web bye\n"
    );
    assert_eq!(
        s.engine.ok(&["ps", "-a", "--format", "{{.Names}}"]),
        "",
        "the container is removed"
    );
    // The mark is gone: the next start installs again.
    assert!(s.helper("install", &install_args).status.success());
    assert_eq!(
        fs::read_to_string(out_dir.join("log")).unwrap(),
        "installed\nuninstalled web bye\ninstalled\n"
    );
}

/// Every boot after the first: a unit whose archives are unchanged and whose image is
/// there asks the engine once and loads nothing, even when another entry's images are
/// gone; that other entry's own unit loads its archive again.
#[test]
fn a_units_check_does_not_depend_on_other_entries_archives() {
    if !docker_available() {
        return;
    }
    let s = Setup::new();
    let e = &s.engine;
    e.build_archive("test/a:1", "a", &[], &s.archive("a.tar"));
    e.build_archive("test/b:1", "b", &[], &s.archive("b.tar.gz"));
    assert!(s.helper("load", &[]).status.success());
    e.ok(&["rmi", "test/b:1"]);

    let t = e.now();
    let out = s.helper("load", &["--image", "test/a:1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("a.tar: already loaded"),
        "{}",
        text(&out)
    );
    assert_eq!(e.load_events(&t), 0, "a's unit loads nothing");

    let out = s.helper("load", &["--image", "test/b:1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("b.tar.gz: loaded"), "{}", text(&out));
    assert_eq!(e.load_events(&t), 1, "b's unit loads b again");
    assert!(e.image_id("test/b:1").is_some());
}

/// While an archive loads, the unit's status line says how far along it is (sd_notify
/// STATUS=), ending at 100%.
#[test]
fn load_progress_goes_to_the_status_line() {
    if !docker_available() {
        return;
    }
    let s = Setup::new();
    s.engine
        .build_archive("test/progress:1", "p", &[], &s.archive("progress.tar.gz"));
    let socket_path = s.engine.dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    let out = s
        .command("load", &["--image", "test/progress:1"])
        .env("NOTIFY_SOCKET", &socket_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    socket.set_nonblocking(true).unwrap();
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        messages
            .first()
            .is_some_and(|m| m.starts_with("STATUS=loading progress.tar.gz: ")),
        "{messages:?}"
    );
    let last = messages.last().unwrap();
    assert!(
        last.starts_with("STATUS=loading progress.tar.gz: ") && last.ends_with(" MB (100%)"),
        "{messages:?}"
    );
}

/// `atomic-preload stage docker-image:NAME` saves an image from the local Docker engine
/// (zstd), with its digest, and the load stage loads it back.
#[test]
fn stage_saves_a_docker_image_that_loads_back() {
    if !docker_available() {
        return;
    }
    let s = Setup::new();
    let e = &s.engine;
    let built = e.dir.path().join("built.tar");
    e.build_archive("test/saved:1", "saved", &[], &built);
    e.ok(&["load", "-i", built.to_str().unwrap()]);
    let root = e.dir.path().join("image-root");
    fs::create_dir_all(root.join("etc")).unwrap();
    let out = Command::new(helper())
        .args(["stage", "--docker", "docker", "--root"])
        .arg(&root)
        .arg("docker-image:test/saved:1")
        .env("DOCKER_HOST", &e.host)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("images: test/saved:1"),
        "{}",
        text(&out)
    );
    let docker_dir = root.join("var/lib/atomic/preload/docker");
    let staged = docker_dir.join("test_saved_1.tar.zst");
    assert!(staged.is_file(), "{}", text(&out));
    assert_eq!(
        fs::read_to_string(docker_dir.join("test_saved_1.tar.zst.sha256")).unwrap(),
        format!("{}  test_saved_1.tar.zst\n", sha(&staged))
    );
    // Gone from the engine, then loaded from the staged archive (digest checked).
    e.ok(&["rmi", "test/saved:1"]);
    let out = Command::new(helper())
        .args([
            "load",
            "--docker",
            "docker",
            "--image",
            "test/saved:1",
            "--preload-dir",
        ])
        .arg(root.join("var/lib/atomic/preload"))
        .arg("--state-dir")
        .arg(&s.state)
        .env("DOCKER_HOST", &e.host)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("test_saved_1.tar.zst: loaded"),
        "{}",
        text(&out)
    );
    assert!(e.image_id("test/saved:1").is_some());
}
