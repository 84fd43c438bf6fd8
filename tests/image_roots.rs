//! Image roots built from third-party base images, with symlinks aimed out of the root:
//! `stage --root`, `status --root` and `atomic-preload-generator --root` resolve every
//! path inside the root, as the booted machine will, and never read or write the build
//! machine. One row per root; the same table is in the README (between the
//! `hostile-roots` markers), and this test fails if the two differ.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::sysimage::{Image, Layer, sha256};
use support::{helper, text};

const PRELOAD: &str = "var/lib/atomic/preload";

struct Row {
    /// What the root holds, with `OUTSIDE` for a directory of the build machine.
    what: &'static str,
    /// Sets it up: `(root, outside)`.
    setup: fn(&Path, &Path),
    /// Where the staged `app.tar` lands (`R/…`), or what stage says when it refuses.
    says: &'static str,
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            what: "`var/lib/atomic/preload` → `OUTSIDE` (absolute)",
            setup: |r, out| {
                fs::remove_dir_all(r.join(PRELOAD)).unwrap();
                symlink(out, r.join(PRELOAD)).unwrap()
            },
            says: "`R/OUTSIDE/docker/app.tar`",
        },
        Row {
            what: "`var/lib/atomic/preload/docker` → `../../../../../../../../..OUTSIDE` (relative, climbing out)",
            setup: |r, out| {
                let up = "../".repeat(9);
                let target = format!("{up}{}", out.display().to_string().trim_start_matches('/'));
                symlink(target, r.join(PRELOAD).join("docker")).unwrap()
            },
            says: "`R/OUTSIDE/app.tar`",
        },
        Row {
            what: "`var` → `OUTSIDE`",
            setup: |r, out| {
                fs::remove_dir_all(r.join("var")).unwrap();
                symlink(out, r.join("var")).unwrap()
            },
            says: "`R/OUTSIDE/lib/atomic/preload/docker/app.tar`",
        },
        Row {
            what: "`var/lib/atomic/preload/config.yaml` → `OUTSIDE/config.yaml` (which has an entry)",
            setup: |r, out| {
                let config = r.join(PRELOAD).join("config.yaml");
                fs::remove_file(&config).unwrap();
                symlink(out.join("config.yaml"), config).unwrap()
            },
            says: "`R/var/lib/atomic/preload/docker/app.tar` (the config merged into `R/OUTSIDE/config.yaml`)",
        },
        Row {
            what: "`var/lib/atomic` → `/srv/atomic` (the image's own link)",
            setup: |r, _| {
                fs::create_dir_all(r.join("srv")).unwrap();
                fs::rename(r.join("var/lib/atomic"), r.join("srv/atomic")).unwrap();
                symlink("/srv/atomic", r.join("var/lib/atomic")).unwrap()
            },
            says: "`R/srv/atomic/preload/docker/app.tar`",
        },
        Row {
            what: "`var/lib/atomic/preload` → `/var/lib/atomic/preload` (a loop)",
            setup: |r, _| {
                fs::remove_dir_all(r.join(PRELOAD)).unwrap();
                symlink("/var/lib/atomic/preload", r.join(PRELOAD)).unwrap()
            },
            says: "refused, exit 65: `/var/lib/atomic/preload in --root R: Too many levels of symbolic links (os error 40)`",
        },
    ]
}

/// Every path under `dir` with its content (files) or target (symlinks).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for e in walk(dir) {
        let meta = fs::symlink_metadata(&e).unwrap();
        let what = if meta.is_dir() {
            "dir".into()
        } else if meta.is_symlink() {
            format!("-> {}", fs::read_link(&e).unwrap().display())
        } else {
            sha256(&fs::read(&e).unwrap())
        };
        out.insert(e.strip_prefix(dir).unwrap().to_owned(), what);
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        all.push(path.clone());
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            all.extend(walk(&path));
        }
    }
    all
}

fn markdown(rows: &[Row]) -> String {
    let mut t = String::from(
        "| the image root `R` has | `stage --root R --config extra.yaml app.tar` |\n|---|---|\n",
    );
    for row in rows {
        t.push_str(&format!("| {} | {} |\n", row.what, row.says));
    }
    t
}

/// What happened, in the table's words: where `app.tar` landed (paths in the build
/// machine's directory shown as `OUTSIDE`), or the refusal.
fn outcome(root: &Path, outside: &Path, out: &Output) -> String {
    let hide = |s: String| {
        s.replace(&root.display().to_string(), "R").replace(
            outside.display().to_string().trim_start_matches('/'),
            "OUTSIDE",
        )
    };
    if !out.status.success() {
        let message = text(out);
        let message = message.trim().trim_start_matches("atomic-preload: ");
        return format!(
            "refused, exit {}: `{}`",
            out.status.code().unwrap_or(-1),
            hide(message.to_owned())
        );
    }
    let landed: Vec<String> = walk(root)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "app.tar"))
        .map(|p| format!("`{}`", hide(p.display().to_string())))
        .collect();
    let mut says = landed.join(", ");
    let config = root.join(PRELOAD).join("config.yaml");
    if fs::symlink_metadata(&config).is_ok_and(|m| m.is_symlink()) {
        let merged = walk(root)
            .into_iter()
            .find(|p| {
                p.file_name().is_some_and(|n| n == "config.yaml")
                    && fs::read_to_string(p).is_ok_and(|t| t.contains("name: extra"))
            })
            .map(|p| hide(p.display().to_string()))
            .unwrap_or_default();
        says.push_str(&format!(" (the config merged into `{merged}`)"));
    }
    says
}

#[test]
fn image_roots_are_read_and_written_inside_themselves() {
    let src = tempfile::tempdir().unwrap();
    let app = src.path().join("app.tar");
    Image::new("test/extra:1", vec![Layer::new().busybox().bytes()]).save(&app);
    let extra = src.path().join("extra.yaml");
    fs::write(&extra, "- name: extra\n  image: test/extra:1\n  run: {}\n").unwrap();

    let mut wrong = Vec::new();
    for row in rows() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::create_dir_all(r.join(PRELOAD)).unwrap();
        fs::write(
            r.join(PRELOAD).join("config.yaml"),
            "- name: own\n  image: test/own:1\n",
        )
        .unwrap();
        // The build machine's own directory, with a config and an archive of its own.
        let build_machine = tempfile::tempdir().unwrap();
        let outside = build_machine.path();
        fs::create_dir_all(outside.join("docker")).unwrap();
        fs::write(
            outside.join("config.yaml"),
            "- name: stolen\n  image: test/stolen:1\n",
        )
        .unwrap();
        (row.setup)(r, outside);
        let before = snapshot(outside);

        let out = Command::new(helper())
            .args(["stage", "--root"])
            .arg(r)
            .arg("--config")
            .arg(&extra)
            .arg(&app)
            .output()
            .unwrap();
        let says = outcome(r, outside, &out);
        if says != row.says {
            wrong.push(format!("{}:\n  want {}\n  got  {says}", row.what, row.says));
        }
        if snapshot(outside) != before {
            wrong.push(format!(
                "{}: the build machine's directory changed",
                row.what
            ));
        }
        if !out.status.success() {
            continue;
        }
        // What the booted machine will see: the merged entry, never the build machine's.
        let status = Command::new(helper())
            .args(["status", "--json", "--root"])
            .arg(r)
            .output()
            .unwrap();
        let generated = Command::new(env!("CARGO_BIN_EXE_atomic-preload-generator"))
            .args(["--dry-run", "--root"])
            .arg(r)
            .output()
            .unwrap();
        let (status, generated) = (text(&status), text(&generated));
        if !status.contains("\"extra\"") || status.contains("stolen") {
            wrong.push(format!("{}: status --root says\n{status}", row.what));
        }
        if !status.contains("app.tar") {
            wrong.push(format!(
                "{}: status --root sees no app.tar\n{status}",
                row.what
            ));
        }
        if !generated.contains("preload-extra.service") || generated.contains("stolen") {
            wrong.push(format!("{}: the generator wrote\n{generated}", row.what));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn readme_lists_the_same_table() {
    support::assert_readme_lists("hostile-roots", &markdown(&rows()));
}

/// `--podman-store` writes the store and storage.conf where the booted machine reads
/// them: an image whose `/etc` and `/var/lib/containers` point at build-machine
/// paths gets them inside itself.
#[test]
fn the_podman_store_and_its_storage_conf_stay_inside_the_root() {
    if !support::podman::podman_available() {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let app = src.path().join("app.tar");
    Image::new("test/ps-root:1", vec![Layer::new().busybox().bytes()]).save(&app);
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let build_machine = tempfile::tempdir().unwrap();
    let outside = build_machine.path();
    fs::write(
        outside.join("storage.conf"),
        "[storage]\ndriver = \"overlay\"\n",
    )
    .unwrap();
    fs::create_dir_all(r.join("var/lib")).unwrap();
    symlink(outside, r.join("etc")).unwrap();
    symlink(outside, r.join("var/lib/containers")).unwrap();
    let before = snapshot(outside);
    // `etc` is a link, but it resolves (inside the root) to a directory: make it one.
    let inside = r.join(outside.strip_prefix("/").unwrap());
    fs::create_dir_all(&inside).unwrap();

    let out = Command::new(helper())
        .args(["stage", "--podman-store", "--root"])
        .arg(r)
        .arg(&app)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        snapshot(outside),
        before,
        "the build machine's directory changed"
    );
    let conf = fs::read_to_string(inside.join("containers/storage.conf")).unwrap();
    assert!(conf.contains("atomic-preload-store"), "{conf}");
    assert!(
        inside
            .join("atomic-preload-store/overlay-images/images.json")
            .is_file()
    );
}
