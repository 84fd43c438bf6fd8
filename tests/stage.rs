//! `atomic-preload stage`: local archives, URLs from a loopback HTTP server (one that drops
//! the connection mid-file too), config merging, `--dry-run`, and every bad input leaving
//! the root exactly as it was; then the load stage refusing an archive whose content no
//! longer matches its recorded digest, and `podman-image:` sources (real Podman, private
//! storage).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::helper;
use support::podman::{Podman, podman_available};
use support::sysimage::{Image, Layer, sha256};

const PRELOAD: &str = "var/lib/atomic/preload";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An image root (it has etc/) with an existing config.
fn image_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("etc")).unwrap();
    fs::create_dir_all(root.path().join(PRELOAD)).unwrap();
    fs::write(
        root.path().join(PRELOAD).join("config.yaml"),
        "# baked in by the base image\n- name: web\n  image: test/web:1\n  run: {}\n- name: db\n  image: test/db:1\n",
    )
    .unwrap();
    root
}

/// Every path under `dir` with its content (files), target (symlinks) or mtime
/// (directories): "exactly as before" is this map being equal.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                // With its mtime: a failed stage must not even touch a directory.
                out.insert(rel, format!("dir {:?}", meta.modified().unwrap()));
                walk(root, &path, out);
            } else if meta.is_symlink() {
                out.insert(
                    rel,
                    format!("-> {}", fs::read_link(&path).unwrap().display()),
                );
            } else {
                out.insert(rel, sha256(&fs::read(&path).unwrap()));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

fn stage(args: &[&str]) -> Output {
    Command::new(helper())
        .arg("stage")
        .args(args)
        .output()
        .unwrap()
}

/// A small image archive (busybox) tagged `tag`, written to `path` (compressed as named).
fn archive(dir: &Path, name: &str, tag: &str) -> PathBuf {
    let path = dir.join(name);
    let mut image = Image::new(tag, vec![Layer::new().busybox().bytes()]);
    image.marker = name.into();
    image.save(&path);
    path
}

fn hex_of(path: &Path) -> String {
    sha256(&fs::read(path).unwrap())[7..].to_owned()
}

#[test]
fn stages_archives_with_digests_and_merges_config_entries() {
    let root = image_root();
    let r = root.path();
    let src = tempfile::tempdir().unwrap();
    let app = archive(src.path(), "app.tar.gz", "test/app:1");
    let add = src.path().join("add.yaml");
    fs::write(
        &add,
        "- name: web\n  image: test/web:2\n  run: {}\n- name: app\n  image: test/app:1\n  archive: app.tar.gz\n",
    )
    .unwrap();

    let before = snapshot(r);
    let root_arg = r.to_str().unwrap();
    let dry = stage(&[
        "--root",
        root_arg,
        "--config",
        add.to_str().unwrap(),
        "--dry-run",
        app.to_str().unwrap(),
    ]);
    assert!(dry.status.success(), "{}", text(&dry));
    let want = format!(
        "would stage {} -> {}/{PRELOAD}/docker/app.tar.gz (sha256:{}; images: test/app:1)\n",
        app.display(),
        r.display(),
        hex_of(&app)
    );
    assert!(text(&dry).contains(&want), "{}", text(&dry));
    assert!(
        text(&dry).contains("entries app, web (replacing the earlier web)"),
        "{}",
        text(&dry)
    );
    assert_eq!(snapshot(r), before, "--dry-run changes nothing");

    let out = stage(&[
        "--root",
        root_arg,
        "--config",
        add.to_str().unwrap(),
        "--sha256",
        &hex_of(&app),
        app.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let docker = r.join(PRELOAD).join("docker");
    assert_eq!(
        fs::read(docker.join("app.tar.gz")).unwrap(),
        fs::read(&app).unwrap()
    );
    // The sidecar is sha256sum's format: `sha256sum -c` checks it from docker/.
    assert_eq!(
        fs::read_to_string(docker.join("app.tar.gz.sha256")).unwrap(),
        format!("{}  app.tar.gz\n", hex_of(&app))
    );
    let check = Command::new("sha256sum")
        .args(["-c", "app.tar.gz.sha256"])
        .current_dir(&docker)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    // Appended: the original text (comments too) stays, the later `web` wins.
    let config = fs::read_to_string(r.join(PRELOAD).join("config.yaml")).unwrap();
    assert!(
        config.starts_with("# baked in by the base image\n- name: web\n"),
        "{config}"
    );
    let validate = Command::new(helper())
        .arg("validate")
        .arg(r.join(PRELOAD).join("config.yaml"))
        .output()
        .unwrap();
    assert!(validate.status.success(), "{}", text(&validate));
    let dry_run = Command::new(env!("CARGO_BIN_EXE_atomic-preload-generator"))
        .args(["--dry-run", "--root", root_arg])
        .output()
        .unwrap();
    let units = String::from_utf8_lossy(&dry_run.stdout);
    assert!(
        units.contains("# preload-web.service") && units.contains("--image=test/web:2"),
        "{units}"
    );
    assert!(
        units.contains("# preload-db.service") && units.contains("# preload-app.service"),
        "{units}"
    );
    // Nothing temporary is left behind.
    let leftovers: Vec<_> = fs::read_dir(&docker)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_input_leaves_the_root_exactly_as_before() {
    let root = image_root();
    let r = root.path();
    let root_arg = r.to_str().unwrap();
    let src = tempfile::tempdir().unwrap();
    let good = archive(src.path(), "good.tar", "test/good:1");
    let not_archive = src.path().join("notes.tar");
    fs::write(&not_archive, "just text, not a tar").unwrap();
    let bad_config = src.path().join("bad.yaml");
    fs::write(&bad_config, "- name: x\n  image: test/x:1\n  rnu: {}\n").unwrap();
    let flow = src.path().join("flow.yaml");
    fs::write(&flow, "[{name: yy, image: test/yy:1}]\n").unwrap();
    // Where the second archive would go, someone left a directory.
    let second = archive(src.path(), "second.tar", "test/second:1");
    fs::create_dir_all(r.join(PRELOAD).join("docker/second.tar/kept")).unwrap();
    let fifo = src.path().join("fifo.tar");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let before = snapshot(r);

    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--dry-run".into(), fifo.display().to_string()],
            format!("{}: not a regular file", fifo.display()),
        ),
        (
            vec![fifo.display().to_string()],
            format!("{}: not a regular file", fifo.display()),
        ),
        (
            vec!["--sha256".into(), "0".repeat(64), good.display().to_string()],
            format!("SHA-256 is {}, not the expected {}; nothing staged", hex_of(&good), "0".repeat(64)),
        ),
        (
            vec![good.display().to_string(), not_archive.display().to_string()],
            format!("{}: not an image archive (notes.tar: ", not_archive.display()),
        ),
        (
            vec!["--config".into(), bad_config.display().to_string(), good.display().to_string()],
            format!("{}:3:3: unknown key \"rnu\"", bad_config.display()),
        ),
        (
            vec!["--config".into(), flow.display().to_string()],
            "would give a config with problems (merge by hand), nothing staged".into(),
        ),
        (
            vec![good.display().to_string(), second.display().to_string()],
            format!(
                "{}/{PRELOAD}/docker/second.tar: is a directory, where a file is to go: move it away; nothing staged",
                r.display()
            ),
        ),
        (
            vec![src.path().join("missing.tar").display().to_string()],
            "missing.tar: No such file or directory".into(),
        ),
        (
            vec![format!("http://127.0.0.1:9/{}.tar", "a".repeat(246))],
            "the archive's file name is longer than 200 bytes".into(),
        ),
        (
            vec!["http://127.0.0.1:9/.hidden.tar".into()],
            "the archive's file name must not start with '.' (the load stage skips hidden files)".into(),
        ),
        (
            vec!["/etc/hostname".into()],
            "/etc/hostname: the archive's file name \"hostname\" does not end in one of .tar, .tar.gz".into(),
        ),
    ];
    for (args, says) in cases {
        let mut all = vec!["--root".to_owned(), root_arg.to_owned()];
        all.extend(args.iter().cloned());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = stage(&all);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            text(&out).contains(&says),
            "{args:?}: want {says:?} in:\n{}",
            text(&out)
        );
        assert_eq!(snapshot(r), before, "{args:?} changed the root");
    }

    // Not a root at all.
    let plain = tempfile::tempdir().unwrap();
    let out = stage(&[
        "--root",
        plain.path().to_str().unwrap(),
        good.to_str().unwrap(),
    ]);
    assert!(
        text(&out).contains("does not look like a root file system (it has no etc/)"),
        "{}",
        text(&out)
    );
    assert!(fs::read_dir(plain.path()).unwrap().next().is_none());
}

/// A full disk mid-copy: the error names the file, and the root is as before.
#[test]
fn disk_full_leaves_the_root_as_before() {
    let mount = tempfile::tempdir().unwrap();
    let m = mount.path();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(m)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(m);
    fs::create_dir_all(m.join("etc")).unwrap();
    let src = tempfile::tempdir().unwrap();
    let big = archive(src.path(), "big.tar", "test/big:1"); // busybox: ~2 MB
    let before = snapshot(m);
    let out = stage(&["--root", m.to_str().unwrap(), big.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("No space left on device"),
        "{}",
        text(&out)
    );
    assert_eq!(snapshot(m), before);
}

/// A loopback HTTP server: serves `body` at any path; the first `drops` requests get the
/// headers and half the body, then the connection is closed. Returns its base URL.
fn serve(body: Vec<u8>, drops: usize, status: u16) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            if status != 200 {
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} Nope\r\nContent-Length: 0\r\n\r\n"
                );
                continue;
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let part = if n < drops {
                &body[..body.len() / 2]
            } else {
                &body[..]
            };
            let _ = stream.write_all(part);
            let _ = stream.flush();
            // Dropping the stream closes the connection, mid-file for a dropped request.
        }
    });
    (url, requests)
}

#[test]
fn url_sources_are_streamed_retried_and_never_left_half_written() {
    let root = image_root();
    let r = root.path();
    let root_arg = r.to_str().unwrap();
    let src = tempfile::tempdir().unwrap();
    let app = archive(src.path(), "app.tar.zst", "test/app:1");
    let bytes = fs::read(&app).unwrap();

    // The first try is cut off mid-file: retried, and the result is whole.
    let (url, requests) = serve(bytes.clone(), 1, 200);
    let out = stage(&[
        "--root",
        root_arg,
        &format!("{url}/images/app.tar.zst?token=x"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("retrying (2 of 3)"), "{}", text(&out));
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    let staged = r.join(PRELOAD).join("docker/app.tar.zst");
    assert_eq!(fs::read(&staged).unwrap(), bytes);
    assert_eq!(
        fs::read_to_string(r.join(PRELOAD).join("docker/app.tar.zst.sha256")).unwrap(),
        format!("{}  app.tar.zst\n", hex_of(&app))
    );

    // Always cut off: fails after 3 tries; nothing under the final name, nothing left.
    let before = snapshot(r);
    let (url, requests) = serve(bytes.clone(), usize::MAX, 200);
    let out = stage(&["--root", root_arg, &format!("{url}/other.tar.zst")]);
    assert!(!out.status.success());
    assert!(text(&out).contains("(after 3 attempts)"), "{}", text(&out));
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    assert_eq!(snapshot(r), before);

    // Not found: no retry.
    let (url, requests) = serve(vec![], 0, 404);
    let out = stage(&["--root", root_arg, &format!("{url}/gone.tar")]);
    assert!(text(&out).contains("gone.tar: HTTP 404"), "{}", text(&out));
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    assert_eq!(snapshot(r), before);

    // Nobody listening (a port just closed).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = stage(&[
        "--root",
        root_arg,
        &format!("http://127.0.0.1:{port}/x.tar"),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("(after 3 attempts)"), "{}", text(&out));
    assert_eq!(snapshot(r), before);
}

/// The load stage checks a staged archive against its recorded digest before loading:
/// a changed archive fails with exit 65 naming both digests, and nothing is loaded.
#[test]
fn load_refuses_an_archive_whose_content_changed_since_staging() {
    if !podman_available() {
        return;
    }
    let podman = Podman::new();
    let root = image_root();
    let r = root.path();
    let src = tempfile::tempdir().unwrap();
    let app = archive(src.path(), "app.tar", "test/app:1");
    let out = stage(&["--root", r.to_str().unwrap(), app.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let load = |state: &str| {
        Command::new(helper())
            .args([
                "load",
                "--engine",
                "podman",
                "--image",
                "test/app:1",
                "--preload-dir",
            ])
            .arg(r.join(PRELOAD))
            .arg("--state-dir")
            .arg(src.path().join(state))
            .envs(podman.env())
            .output()
            .unwrap()
    };
    let out = load("state-a");
    assert!(
        out.status.success(),
        "a staged archive loads: {}",
        text(&out)
    );
    assert_eq!(podman.loads(), 1);

    // Replaced by another image under the same name (or corrupted on the way).
    let staged = r.join(PRELOAD).join("docker/app.tar");
    let expected = hex_of(&staged);
    archive(
        &r.join(PRELOAD).join("docker"),
        "app.tar",
        "test/app:1-evil",
    );
    let actual = hex_of(&staged);
    podman.ok(&["rmi", "-a"]);
    let out = load("state-b");
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    let says = format!(
        "{}: content does not match its recorded digest ({}.sha256): expected sha256:{expected}, actual sha256:{actual}; not loaded",
        staged.display(),
        staged.display()
    );
    assert!(text(&out).contains(&says), "{}", text(&out));
    assert_eq!(podman.loads(), 1, "nothing was loaded");
    // Even with a mark from before (same name), the check is not skipped.
    let out = load("state-a");
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert_eq!(podman.loads(), 1);
}

/// `podman-image:NAME` saves a local image, zstd-compressed, and it loads back.
#[test]
fn podman_image_sources_are_saved_compressed() {
    if !podman_available() {
        return;
    }
    let podman = Podman::new();
    let src = tempfile::tempdir().unwrap();
    let app = archive(src.path(), "app.tar", "test/saved:1");
    podman.ok(&["load", "-q", "-i", app.to_str().unwrap()]);
    let root = image_root();
    let r = root.path();
    let out = Command::new(helper())
        .args([
            "stage",
            "--root",
            r.to_str().unwrap(),
            "podman-image:test/saved:1",
        ])
        .envs(podman.env())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let staged = r.join(PRELOAD).join("docker/test_saved_1.tar.zst");
    assert!(
        text(&out).contains("images: localhost/test/saved:1"),
        "{}",
        text(&out)
    );
    let mut magic = [0u8; 4];
    fs::File::open(&staged)
        .unwrap()
        .read_exact(&mut magic)
        .unwrap();
    assert_eq!(magic, [0x28, 0xb5, 0x2f, 0xfd], "zstd");
    // An image the engine does not have: a clear error, nothing staged.
    let before = snapshot(r);
    let out = Command::new(helper())
        .args([
            "stage",
            "--root",
            r.to_str().unwrap(),
            "podman-image:test/absent:1",
        ])
        .envs(podman.env())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("save test/absent:1: "),
        "{}",
        text(&out)
    );
    assert_eq!(snapshot(r), before);
}

/// `status --root` on an image root before its first boot: what will happen, as a table
/// and as JSON; exit 1 when an entry's unit will fail.
#[test]
fn status_on_an_image_root_says_what_will_happen() {
    let root = image_root();
    let r = root.path();
    let root_arg = r.to_str().unwrap();
    let src = tempfile::tempdir().unwrap();
    let web = archive(src.path(), "web.tar.gz", "test/web:1");
    let out = stage(&["--root", root_arg, web.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let status = |extra: &[&str]| {
        Command::new(helper())
            .args(["status", "--root", root_arg])
            .args(extra)
            .output()
            .unwrap()
    };
    // `db`'s image is in no archive: its unit will fail.
    let out = status(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME  ENGINE  IMAGE"), "{table}");
    let digest = &hex_of(&web)[..12];
    let web_row = lines.iter().find(|l| l.starts_with("web ")).unwrap();
    assert!(
        web_row.contains("docker  test/web:1  web.tar.gz sha256:") && web_row.contains(digest),
        "{table}"
    );
    assert!(
        table.contains("db: no archive holds test/db:1: its unit will fail"),
        "{table}"
    );

    let db = archive(src.path(), "db.tar", "test/db:1");
    assert!(
        stage(&["--root", root_arg, db.to_str().unwrap()])
            .status
            .success()
    );
    let out = status(&["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let entry = |name: &str| entries.iter().find(|e| e["name"] == name).unwrap();
    assert_eq!(entry("web")["archives"][0]["file"], "web.tar.gz");
    assert_eq!(entry("web")["archives"][0]["recorded_sha256"], hex_of(&web));
    assert_eq!(entry("web")["archives"][0]["images"][0], "test/web:1");
    assert_eq!(entry("db")["archives"][0]["file"], "db.tar");
    assert_eq!(entry("db")["failed"], false);

    // A staged archive changed afterwards: status says its unit will fail.
    fs::write(r.join(PRELOAD).join("docker/db.tar"), b"tampered").unwrap();
    let out = status(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("db: db.tar does not match its recorded digest: its unit will fail"),
        "{}",
        text(&out)
    );
}

/// `status` on a running host: marks say when things were loaded and installed, systemd
/// (a stand-in here) says how each unit is; a failed unit's reason is shown, exit 1.
#[test]
fn status_on_a_host_reports_units_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("docker")).unwrap();
    fs::write(
        d.join("config.yaml"),
        "- name: web\n  image: test/web:1\n  engine: podman\n  install: {}\n  run: {}\n- name: db\n  image: test/db:1\n  engine: podman\n",
    )
    .unwrap();
    fs::write(d.join("docker/both.tar"), b"archive").unwrap();
    let state = d.join("state");
    fs::create_dir_all(state.join("loaded/podman")).unwrap();
    fs::create_dir_all(state.join("installed")).unwrap();
    fs::write(
        state.join("loaded/podman/both.tar"),
        "images=localhost/test/web:1 localhost/test/db:1\nsha256=abc\n",
    )
    .unwrap();
    fs::write(state.join("installed/web"), "engine=podman\nimage=0123\n").unwrap();
    let systemctl = d.join("systemctl");
    fs::write(
        &systemctl,
        "#!/bin/sh\ncase \"$3\" in\n  preload-web.service) printf 'ActiveState=active\\nSubState=running\\nResult=success\\nStatusText=\\n' ;;\n  *) printf 'ActiveState=failed\\nSubState=failed\\nResult=exit-code\\nStatusText=image test/db:1 is not in Podman after loading archives\\n' ;;\nesac\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&systemctl, fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(helper())
        .arg("status")
        .arg("--config")
        .arg(d.join("config.yaml"))
        .arg("--preload-dir")
        .arg(d)
        .arg("--state-dir")
        .arg(&state)
        .arg("--systemctl")
        .arg(&systemctl)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .to_owned()
    };
    let web = row("web ");
    assert!(
        web.contains("podman") && web.contains("both.tar") && web.contains("active (running)"),
        "{table}"
    );
    // Loaded and installed at the marks' times (today, whatever the clock).
    // (Dates counted as YYYY-MM-DD words: " 20" also matches an hour of 20.)
    let dates = web
        .split_whitespace()
        .filter(|w| {
            let b = w.as_bytes();
            b.len() == 10 && b[4] == b'-' && b[7] == b'-' && w.starts_with("20")
        })
        .count();
    assert_eq!(dates, 2, "two timestamps: {table}");
    assert!(row("db ").contains("failed (failed)"), "{table}");
    assert!(
        table.contains("db: image test/db:1 is not in Podman after loading archives"),
        "{table}"
    );
}

/// `--podman-store`: images go into a read-only Podman image store inside the root, listed
/// in its storage.conf, so the first boot loads nothing; a failure leaves no store behind.
#[test]
fn podman_store_serves_images_without_loading() {
    if !podman_available() {
        return;
    }
    let root = image_root();
    let r = root.path();
    let root_arg = r.to_str().unwrap();
    let src = tempfile::tempdir().unwrap();
    let bad = src.path().join("bad.tar");
    fs::write(&bad, "not an archive").unwrap();
    let before = snapshot(r);
    let out = stage(&["--root", root_arg, "--podman-store", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(
        snapshot(r),
        before,
        "a failed run leaves no store: {}",
        text(&out)
    );

    let app = archive(src.path(), "app.tar.gz", "test/ps:1");
    let out = stage(&["--root", root_arg, "--podman-store", app.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("staged test/ps:1 into the Podman image store"),
        "{}",
        text(&out)
    );
    let conf = fs::read_to_string(r.join("etc/containers/storage.conf")).unwrap();
    assert!(conf.contains("driver = \"overlay\""), "{conf}");
    assert!(
        conf.contains("additionalimagestores = [\"/var/lib/containers/atomic-preload-store\"]"),
        "{conf}"
    );
    assert!(
        !r.join(PRELOAD).join("docker/app.tar.gz").exists(),
        "no archive"
    );
    // Staging again adds the image, not a second entry in storage.conf; a TMPDIR longer
    // than Podman takes for a run root does not fail it (a builder's deep work tree).
    let more = archive(src.path(), "more.tar", "test/ps:2");
    let deep = src
        .path()
        .join("a-build-tree-deep-enough/to-exceed-podman/tmp");
    fs::create_dir_all(&deep).unwrap();
    let out = Command::new(helper())
        .args(["stage", "--root", root_arg, "--podman-store"])
        .arg(&more)
        .env("TMPDIR", &deep)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let again = fs::read_to_string(r.join("etc/containers/storage.conf")).unwrap();
    assert_eq!(again, conf);
    // Nothing stays mounted inside the image root (Podman's overlay driver mounts its
    // directory onto itself).
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(r.to_str().unwrap()),
        "a mount left in the root:\n{mounts}"
    );

    // Before the first boot, status knows the images are in the store.
    fs::write(
        r.join(PRELOAD).join("config.yaml"),
        "- name: ps\n  image: test/ps:1\n  engine: podman\n  run: {}\n",
    )
    .unwrap();
    let out = Command::new(helper())
        .args(["status", "--root", root_arg])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // The booted machine's Podman, with the store as its storage.conf says (paths moved
    // into the test's directories): the images are there, read-only, and the load stage
    // has nothing to load.
    let podman = Podman::new();
    let store = r.join("var/lib/containers/atomic-preload-store");
    let conf_path = podman.dir.path().join("storage.conf");
    let mut test_conf = fs::read_to_string(&conf_path)
        .unwrap()
        .replace("vfs", "overlay");
    test_conf.push_str(&format!(
        "[storage.options]\nadditionalimagestores = [\"{}\"]\n",
        store.display()
    ));
    fs::write(&conf_path, test_conf).unwrap();
    let images = podman.ok(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.ReadOnly}}",
    ]);
    assert!(
        images.contains("localhost/test/ps:1 true") && images.contains("localhost/test/ps:2 true"),
        "{images}"
    );
    let out = Command::new(helper())
        .args([
            "load",
            "--engine",
            "podman",
            "--image",
            "test/ps:1",
            "--preload-dir",
        ])
        .arg(r.join(PRELOAD))
        .arg("--state-dir")
        .arg(src.path().join("state"))
        .envs(podman.env())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(podman.loads(), 0, "nothing loaded at boot");
}

#[test]
fn both_kinds_in_one_run_and_entries_without_image_get_their_archives_image() {
    let root = image_root();
    let r = root.path();
    let root_arg = r.to_str().unwrap();
    let src = tempfile::tempdir().unwrap();
    let busybox = archive(src.path(), "container.tar.gz", "test/busybox:1");
    let sys = archive(src.path(), "syscontainer.tar", "test/sys:1");
    let other_sys = archive(src.path(), "other.tar", "test/other:1");
    // The reference's %addon body, verbatim, plus a Docker entry without image.
    let body = src.path().join("body.yaml");
    fs::write(
        &body,
        "- name: mysyscontainer\n  install:\n    system: true\n  run: {}\n- {name: sleeper, run: {extra_args: [sleep, \"9\"]}}\n",
    )
    .unwrap();
    let sys_src = format!("{}#sha256={}", sys.display(), hex_of(&sys));
    let base = [
        "--root",
        root_arg,
        "--config",
        body.to_str().unwrap(),
        "--system-src",
    ];

    // Several candidates, none, a digest that does not match, two digests that disagree:
    // each an error saying so, and the root exactly as before.
    let before = snapshot(r);
    let other = other_sys.to_str().unwrap();
    let wrong = format!("{}#sha256={}", sys.display(), "0".repeat(64));
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec![&sys_src, "--system-src", other, busybox.to_str().unwrap()],
            "entry \"mysyscontainer\" has no \"image\", and the system-container archives (ostree/) staged with it hold 2 images (test/sys:1, test/other:1): give it \"image:\"; nothing staged".into(),
        ),
        (
            vec![&sys_src],
            format!("{}:5:3: entry has no \"image\" (give it one; put it after an entry named \"sleeper\"", body.display()),
        ),
        (
            vec![&wrong, busybox.to_str().unwrap()],
            format!("SHA-256 is {}, not the expected {}; nothing staged", hex_of(&sys), "0".repeat(64)),
        ),
    ];
    for (extra, says) in &cases {
        let mut args = base.to_vec();
        args.extend(extra);
        let out = stage(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out).contains(says.as_str()),
            "{args:?}:\n{}",
            text(&out)
        );
        assert_eq!(snapshot(r), before, "{args:?}");
    }
    let out = stage(&[
        "--root",
        root_arg,
        "--sha256",
        &"1".repeat(64),
        &format!("{}#sha256={}", busybox.display(), hex_of(&busybox)),
    ]);
    assert!(text(&out).contains("disagree"), "{}", text(&out));

    // Dry run: local files are indexed, so it says what it would fill in.
    let mut args = base.to_vec();
    args.extend([sys_src.as_str(), busybox.to_str().unwrap(), "--dry-run"]);
    let dry = stage(&args);
    assert!(dry.status.success(), "{}", text(&dry));
    for line in [
        format!(
            "-> {root_arg}/{PRELOAD}/ostree/syscontainer.tar (sha256:{}; matches the expected SHA-256; images: test/sys:1)",
            hex_of(&sys)
        ),
        format!("-> {root_arg}/{PRELOAD}/docker/container.tar.gz ("),
        "would fill in: mysyscontainer gets image: test/sys:1".into(),
        "would fill in: sleeper gets image: test/busybox:1".into(),
    ] {
        assert!(text(&dry).contains(&line), "{line}\n{}", text(&dry));
    }
    assert_eq!(snapshot(r), before, "--dry-run changes nothing");

    // The real run: both kinds, both filled in, the operator's text kept around them.
    let args = [&base[..], &[sys_src.as_str(), busybox.to_str().unwrap()]].concat();
    let out = stage(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(
            "; mysyscontainer gets image: test/sys:1; sleeper gets image: test/busybox:1"
        ),
        "{}",
        text(&out)
    );
    let preload = r.join(PRELOAD);
    for (dir, file, from) in [
        ("ostree", "syscontainer.tar", &sys),
        ("docker", "container.tar.gz", &busybox),
    ] {
        assert_eq!(
            fs::read(preload.join(dir).join(file)).unwrap(),
            fs::read(from).unwrap()
        );
        assert_eq!(
            fs::read_to_string(preload.join(dir).join(format!("{file}.sha256"))).unwrap(),
            format!("{}  {file}\n", hex_of(from))
        );
    }
    let config = fs::read_to_string(preload.join("config.yaml")).unwrap();
    assert!(
        config.ends_with(&format!(
            "# Merged by atomic-preload stage from {}\n- name: mysyscontainer\n  image: \"test/sys:1\"\n  install:\n    system: true\n  run: {{}}\n- {{image: \"test/busybox:1\", name: sleeper, run: {{extra_args: [sleep, \"9\"]}}}}\n",
            body.display()
        )),
        "{config}"
    );
    // What boot makes of it: a system container's unit and a Docker one, from the images
    // the archives hold.
    let units = Command::new(env!("CARGO_BIN_EXE_atomic-preload-generator"))
        .args(["--dry-run", "--root", root_arg])
        .output()
        .unwrap();
    let units = String::from_utf8_lossy(&units.stdout);
    assert!(
        units.contains("# preload-mysyscontainer.service"),
        "{units}"
    );
    assert!(
        units.contains("install-system") && units.contains("test/sys:1"),
        "{units}"
    );
    assert!(
        units.contains("# preload-sleeper.service") && units.contains("--image=test/busybox:1"),
        "{units}"
    );
}
