//! The runtime stages against a real Podman (see `support::podman`: private storage, vfs):
//! load once per content, reload on change, every archive format, corrupt archives,
//! missing images, INSTALL labels run with Podman's client, marks kept per engine, and
//! progress on the status line. Running a container under systemd (conmon, cgroups
//! split) is proven in the boot suite, where systemd is PID 1.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::helper;
use support::podman::{Podman, podman_available};
use support::sysimage::{Image, Layer};

struct Setup {
    podman: Podman,
    preload: PathBuf,
    state: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let podman = Podman::new();
        let preload = podman.dir.path().join("preload");
        let state = podman.dir.path().join("state");
        fs::create_dir_all(preload.join("docker")).unwrap();
        Setup {
            podman,
            preload,
            state,
        }
    }

    fn archive(&self, name: &str) -> PathBuf {
        self.preload.join("docker").join(name)
    }

    /// `atomic-preload SUBCOMMAND --engine podman …` with this storage and state dir.
    fn command(&self, subcommand: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(helper());
        cmd.arg(subcommand).args(["--engine", "podman"]);
        if subcommand == "load" {
            cmd.arg("--preload-dir").arg(&self.preload);
        }
        cmd.arg("--state-dir").arg(&self.state).args(args);
        cmd.envs(self.podman.env());
        cmd
    }

    fn helper(&self, subcommand: &str, args: &[&str]) -> Output {
        self.command(subcommand, args).output().unwrap()
    }
}

/// A busybox image tagged `tag`; `marker` makes its ID differ.
fn image(tag: &str, marker: &str) -> Image {
    let mut image = Image::new(tag, vec![Layer::new().busybox().bytes()]);
    image.marker = marker.into();
    image
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
    if !podman_available() {
        return;
    }
    let s = Setup::new();
    let p = &s.podman;
    image("test/app:1", "v1").save(&s.archive("app.tar"));

    let out = s.helper("load", &["--image", "test/app:1"]);
    assert!(out.status.success(), "first load: {}", text(&out));
    assert!(text(&out).contains("app.tar: loaded"), "{}", text(&out));
    assert_eq!(p.loads(), 1, "first start loads the archive once");
    let first_id = p.image_id("test/app:1").expect("image present after load");
    assert!(s.state.join("loaded/podman/app.tar").is_file());
    assert!(
        !s.state.join("loaded/docker").exists(),
        "marks are kept per engine"
    );

    let out = s.helper("load", &["--image", "test/app:1"]);
    assert!(
        text(&out).contains("app.tar: already loaded"),
        "{}",
        text(&out)
    );
    assert_eq!(
        p.loads(),
        1,
        "an unchanged archive must not be loaded again"
    );

    let copy = p.dir.path().join("copy.tar");
    fs::copy(s.archive("app.tar"), &copy).unwrap();
    fs::rename(&copy, s.archive("app.tar")).unwrap();
    let out = s.helper("load", &["--image", "test/app:1"]);
    assert!(
        text(&out).contains("app.tar: same content"),
        "{}",
        text(&out)
    );
    assert_eq!(p.loads(), 1, "same content must not be loaded again");

    image("test/app:1", "v2").save(&s.archive("app.tar"));
    let out = s.helper("load", &["--image", "test/app:1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(p.loads(), 2, "changed content must be loaded");
    assert_ne!(p.image_id("test/app:1").unwrap(), first_id);

    // Podman lost the image (storage wiped or pruned): loaded again.
    p.ok(&["rmi", "test/app:1"]);
    let out = s.helper("load", &["--image", "test/app:1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        p.loads(),
        3,
        "the archive must be loaded into the wiped storage"
    );
}

#[test]
fn every_archive_format_loads() {
    if !podman_available() {
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
        image(&format!("test/fmt:{i}"), name).save(&s.archive(name));
    }
    fs::write(s.archive("notes.txt"), "not an archive").unwrap();
    let before: Vec<String> = names.iter().map(|n| sha(&s.archive(n))).collect();
    let out = s.helper("load", &[]);
    assert!(out.status.success(), "{}", text(&out));
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            s.podman.image_id(&format!("test/fmt:{i}")),
            Some(image(&format!("test/fmt:{i}"), name).id()[7..].to_owned()),
            "{name} not loaded: {}",
            text(&out)
        );
    }
    let after: Vec<String> = names.iter().map(|n| sha(&s.archive(n))).collect();
    assert_eq!(before, after, "archives must never be modified");
    // Marked: the next start loads nothing.
    let out = s.helper("load", &[]);
    assert_eq!(
        text(&out).matches("already loaded").count(),
        names.len(),
        "{}",
        text(&out)
    );
    assert_eq!(s.podman.loads(), 6);
}

#[test]
fn corrupt_archive_fails_permanently_and_is_kept() {
    if !podman_available() {
        return;
    }
    let s = Setup::new();
    image("test/good:1", "good").save(&s.archive("good.tar"));
    fs::write(s.archive("bad.tar.xz"), b"\xfd7zXZ\0 this is not xz at all").unwrap();
    fs::write(s.archive("worse.tar"), b"not a tar").unwrap();
    let out = s.helper("load", &[]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("cannot load") && t.contains("bad.tar.xz"), "{t}");
    assert!(
        t.contains("worse.tar: /usr/bin/podman load: not a readable docker-archive: "),
        "Podman's reason for the format that matters: {t}"
    );
    assert!(
        s.podman.image_id("test/good:1").is_some(),
        "the good one loads: {t}"
    );
    assert!(s.archive("bad.tar.xz").exists() && s.archive("worse.tar").exists());
    assert!(!s.state.join("loaded/podman/bad.tar.xz").exists());

    // A unit whose image is in a good archive does not fail for another's bad one.
    let out = s.helper("load", &["--image", "test/good:1"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn missing_image_names_podman_and_where_it_looked() {
    if !podman_available() {
        return;
    }
    let s = Setup::new();
    image("test/other:1", "o").save(&s.archive("other.tar.gz"));
    let out = s.helper("load", &["--image", "test/absent:1"]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    let want = format!(
        "image test/absent:1 is not in Podman after loading archives from {}: other.tar.gz",
        s.preload.join("docker").display()
    );
    assert!(text(&out).contains(&want), "{}", text(&out));
}

/// atomic's INSTALL semantics with Podman's client: `docker` in the label runs podman
/// (as `podman container runlabel` does), NAME/IMAGE/$VARs substituted, once per image
/// and settings.
#[test]
fn install_label_runs_with_podman_once_per_image_and_settings() {
    if !podman_available() {
        return;
    }
    let s = Setup::new();
    let mut img = image("test/inst:1", "i1");
    // A label that needs no container: what it does shows in Podman's storage.
    img.labels.push((
        "INSTALL".into(),
        "docker tag IMAGE installed/$NAME:${MODE}".into(),
    ));
    img.save(&s.archive("inst.tar"));
    assert!(
        s.helper("load", &["--image", "test/inst:1"])
            .status
            .success()
    );

    let install = |mode: &str| {
        s.helper(
            "install",
            &[
                "--name",
                "web",
                "--image",
                "test/inst:1",
                "--set",
                &format!("MODE={mode}"),
            ],
        )
    };
    let out = install("fast");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("running INSTALL: /usr/bin/podman tag test/inst:1 installed/web:fast"),
        "{}",
        text(&out)
    );
    assert!(s.podman.image_id("installed/web:fast").is_some());

    let out = install("fast");
    assert!(
        text(&out).contains("web: already installed"),
        "{}",
        text(&out)
    );

    let out = install("slow");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        s.podman.image_id("installed/web:slow").is_some(),
        "new settings install again"
    );

    // An image that is not there: permanent failure naming Podman.
    let out = s.helper("install", &["--name", "x", "--image", "test/none:1"]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert!(
        text(&out).contains("test/none:1 is not in Podman"),
        "{}",
        text(&out)
    );
}

/// The status line says how far a load is: a plain tar Podman reads itself (its read
/// offset), a .tar.gz we decompress for it (our own read); both end at 100%.
#[test]
fn load_progress_goes_to_the_status_line() {
    if !podman_available() {
        return;
    }
    let s = Setup::new();
    for (i, name) in ["progress.tar", "progress.tar.gz"].iter().enumerate() {
        let tag = format!("test/progress:{i}");
        image(&tag, name).save(&s.archive(name));
        let socket_path = s.podman.dir.path().join(format!("notify{i}.sock"));
        let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
        let out = s
            .command("load", &["--image", &tag, "--archive", name])
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
        let prefix = format!("STATUS=loading {name}: ");
        assert!(
            messages.iter().all(|m| m.starts_with(&prefix)),
            "{messages:?}"
        );
        let last = messages.last().expect("status messages");
        assert!(last.ends_with(" MB (100%)"), "{messages:?}");
    }
}

/// At every later boot each unit asks whether its images are there: the first asks
/// Podman once for them all (`podman info`, `podman images`), kept in /run for the boot;
/// the others start no Podman at all (the client, a wrapper here, counts its processes).
/// An image removed after that list was made is still found missing, and loaded again.
#[test]
fn later_boots_ask_podman_once_and_a_removed_image_is_still_reloaded() {
    if !podman_available() {
        return;
    }
    let s = Setup::new();
    let p = &s.podman;
    image("test/once:1", "v1").save(&s.archive("once.tar"));
    image("test/other:1", "v1").save(&s.archive("other.tar"));
    let log = p.dir.path().join("podman-calls");
    let wrapper = p.dir.path().join("podman");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$1\" >> {}\nexec {} \"$@\"\n",
            log.display(),
            support::podman::PODMAN
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let wrapper_arg = wrapper.to_str().unwrap();
    let load = |image: &str| s.helper("load", &["--podman", wrapper_arg, "--image", image]);
    let calls = || fs::read_to_string(&log).unwrap_or_default();

    assert!(load("test/once:1").status.success());
    assert_eq!(p.loads(), 2, "both archives loaded");
    // "A later boot": marks in place, /run empty again (this Podman's record removed);
    // the list is made once, then answers every unit.
    for entry in fs::read_dir("/run/atomic-preload").unwrap().flatten() {
        if fs::read_to_string(entry.path())
            .is_ok_and(|t| t.contains(&p.dir.path().display().to_string()))
        {
            fs::remove_file(entry.path()).unwrap();
        }
    }
    let _ = fs::remove_file(&log);
    for image in ["test/once:1", "test/other:1", "test/once:1", "test/other:1"] {
        let out = load(image);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("already loaded"), "{}", text(&out));
    }
    let asked: Vec<String> = calls().lines().map(String::from).collect();
    assert_eq!(asked, ["images"], "one question per boot: {asked:?}");

    // Removed behind the record's back: the store's image list changed, so it is asked
    // again, finds the image gone, and the unit loads it.
    let rm = p.podman(&["rmi", "test/once:1"]);
    assert!(rm.status.success(), "{}", text(&rm));
    let out = load("test/once:1");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("once.tar: loaded"), "{}", text(&out));
    assert_eq!(p.loads(), 3);
    assert!(p.image_id("test/once:1").is_some());
}

/// `load --archive ARCHIVE --image IMAGE` started while `held` is held: once it says
/// `says` (it waits), `meanwhile` runs its checks; once released, the load succeeds.
fn load_waits(
    s: &Setup,
    (archive, image): (&str, &str),
    held: Vec<fs::File>,
    says: String,
    meanwhile: impl FnOnce(),
) {
    use std::io::BufRead;
    let mut waiting = s
        .command("load", &["--archive", archive, "--image", image])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = waiting.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let first = lines
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the load says it waits");
    assert_eq!(first, says);
    meanwhile();
    drop(held);
    let out = waiting.wait_with_output().unwrap();
    reader.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(
        rest.iter()
            .any(|l| l.contains(&format!("{archive}: loaded"))),
        "{rest:?}"
    );
}

/// Units starting together take turns per archive, not per state directory: one holding
/// b.tar's load lock keeps the load of b.tar waiting (saying for what) and does not keep
/// a.tar's from loading.
#[test]
fn loads_of_different_archives_do_not_wait_for_each_other() {
    if !podman_available() {
        return;
    }
    let s = Setup::new();
    let p = &s.podman;
    image("test/a:1", "a").save(&s.archive("a.tar"));
    image("test/b:1", "b").save(&s.archive("b.tar"));
    let lock_path = s.state.join("lock-load/b.tar");
    fs::create_dir_all(lock_path.parent().unwrap()).unwrap();
    let held = fs::File::create(&lock_path).unwrap();
    held.lock().unwrap();
    let says = format!(
        "waiting for another atomic-preload run to finish (it holds {})",
        lock_path.display()
    );
    load_waits(&s, ("b.tar", "test/b:1"), vec![held], says, || {
        let other = s.helper("load", &["--archive", "a.tar", "--image", "test/a:1"]);
        assert!(other.status.success(), "{}", text(&other));
        assert!(!text(&other).contains("waiting"), "{}", text(&other));
        assert!(text(&other).contains("a.tar: loaded"), "{}", text(&other));
        assert_eq!(p.loads(), 1, "a.tar loaded while b.tar's lock is held");
        assert!(p.image_id("test/b:1").is_none(), "nothing of b.tar loaded");
    });
    assert_eq!(p.loads(), 2);
}

/// At most one load per core at once, across units: with every slot held, a load waits
/// (saying so) and goes on when one is free.
#[test]
fn loads_beyond_one_per_core_wait_for_a_slot() {
    if !podman_available() {
        return;
    }
    let s = Setup::new();
    let p = &s.podman;
    image("test/c:1", "c").save(&s.archive("c.tar"));
    let locks = s.state.join("lock-load");
    fs::create_dir_all(&locks).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let held: Vec<fs::File> = (0..cores)
        .map(|k| {
            let f = fs::File::create(locks.join(format!("slot-{k}"))).unwrap();
            f.lock().unwrap();
            f
        })
        .collect();
    let says = format!(
        "waiting for one of the {cores} loads running at once to finish ({})",
        locks.display()
    );
    load_waits(&s, ("c.tar", "test/c:1"), held, says, || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(p.loads(), 0, "nothing loads while every slot is held");
    });
    assert_eq!(p.loads(), 1);
}
