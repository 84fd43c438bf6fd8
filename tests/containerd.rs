//! `engine: containerd` against a private containerd (own root, state and sockets; the
//! CRI plugin off, and on as on a node): every archive format, loaded once (the oracle:
//! containerd's own image events), the same content not imported again, changed content
//! and a removed image imported again with the pin label back, an archive of another
//! platform and an untagged one refused saying so, and containerd down failing fast with
//! the engine named.

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::containerd::{Containerd, containerd_available};
use support::sysimage::{Image, Layer};

const PIN: &str = "io.cri-containerd.pinned=pinned";

fn text(out: &Output) -> String {
    support::text(out)
}

/// `atomic-preload load --engine containerd` over `preload/docker/`, marks in `state`.
fn load(c: &Containerd, preload: &Path, state: &Path, extra: &[&str]) -> Output {
    Command::new(support::helper())
        .args([
            "load",
            "--engine",
            "containerd",
            "--ctr",
            support::containerd::CTR,
        ])
        .arg(format!("--preload-dir={}", preload.display()))
        .arg(format!("--state-dir={}", state.display()))
        .args(extra)
        .envs(c.env())
        .output()
        .unwrap()
}

fn image(tag: &str, marker: &str) -> Image {
    let mut image = Image::new(tag, vec![Layer::new().busybox().bytes()]);
    image.marker = marker.into();
    image
}

#[test]
fn loads_every_format_once_pinned_and_again_when_lost_or_changed() {
    if !containerd_available() {
        return;
    }
    for cri in [false, true] {
        let c = Containerd::start(cri, None);
        let tmp = tempfile::tempdir().unwrap();
        let (preload, state) = (tmp.path().join("preload"), tmp.path().join("state"));
        let docker = preload.join("docker");
        fs::create_dir_all(&docker).unwrap();
        let formats = ["tar", "tar.gz", "tar.zst", "tar.xz", "tar.bz2"];
        for (i, ext) in formats.iter().enumerate() {
            image(&format!("example.com/f{i}:1"), ext).save(&docker.join(format!("f{i}.{ext}")));
        }
        let out = load(&c, &preload, &state, &[]);
        assert!(out.status.success(), "cri={cri}: {}", text(&out));
        let images = c.images();
        let mut imports = Vec::new();
        for i in 0..formats.len() {
            let name = format!("example.com/f{i}:1");
            // With CRI on, containerd's CRI plugin adds its own label (it sees the image).
            assert!(
                images.get(&name).is_some_and(|l| l.contains(PIN)),
                "cri={cri} {name}: {images:?}"
            );
            imports.push(c.imports(&name));
            assert!(imports[i] >= 1, "imported: {name}");
        }
        if !cri {
            // containerd 1.6.20 does not honour the pin: said once per load, in the journal.
            assert!(
                text(&out).contains(
                    "does not keep pinned images from kubelet's image garbage collection"
                ),
                "{}",
                text(&out)
            );
        }

        // Again: nothing imported, one question to containerd.
        let again = load(&c, &preload, &state, &["--image=example.com/f0:1"]);
        assert!(again.status.success(), "{}", text(&again));
        assert!(
            text(&again).contains("f0.tar: already loaded"),
            "{}",
            text(&again)
        );
        assert_eq!(c.imports("example.com/f0:1"), imports[0]);

        // Touched (same bytes): not imported. Rewritten with new content: imported.
        let f1 = docker.join("f1.tar.gz");
        let bytes = fs::read(&f1).unwrap();
        fs::write(&f1, &bytes).unwrap();
        image("example.com/f2:1", "changed").save(&docker.join("f2.tar.zst"));
        let out = load(&c, &preload, &state, &[]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("f1.tar.gz: same content as already loaded"),
            "{}",
            text(&out)
        );
        assert!(
            text(&out).contains("f2.tar.zst: loaded example.com/f2:1"),
            "{}",
            text(&out)
        );
        assert_eq!(c.imports("example.com/f1:1"), imports[1]);
        assert!(c.imports("example.com/f2:1") > imports[2]);

        // Lost (removed, as kubelet's image GC would): imported again, pinned again.
        let rm = c.ctr(&["images", "rm", "example.com/f3:1"]);
        assert!(rm.status.success(), "{}", text(&rm));
        let out = load(
            &c,
            &preload,
            &state,
            &["--image=example.com/f3:1", "--archive=f3.tar.xz"],
        );
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            c.images()
                .get("example.com/f3:1")
                .is_some_and(|l| l.contains(PIN)),
            "{:?}",
            c.images()
        );
    }
}

#[test]
fn other_platforms_untagged_archives_and_a_down_containerd_say_so() {
    if !containerd_available() {
        return;
    }
    let mut c = Containerd::start(false, None);
    let tmp = tempfile::tempdir().unwrap();
    let (preload, state) = (tmp.path().join("preload"), tmp.path().join("state"));
    let docker = preload.join("docker");
    fs::create_dir_all(&docker).unwrap();
    let mut other = image("example.com/elsewhere:1", "arm");
    other.architecture = if cfg!(target_arch = "aarch64") {
        "amd64"
    } else {
        "arm64"
    }
    .into();
    other.save(&docker.join("elsewhere.tar"));
    image("", "untagged").save(&docker.join("untagged.tar.gz"));

    let out = load(
        &c,
        &preload,
        &state,
        &["--image=example.com/elsewhere:1", "--archive=elsewhere.tar"],
    );
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert!(
        text(&out).contains("the archive holds no image for this machine's platform (linux/"),
        "{}",
        text(&out)
    );
    let out = load(&c, &preload, &state, &["--archive=untagged.tar.gz"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(
            "the archive holds no tagged image, and containerd imports nothing from an untagged one"
        ),
        "{}",
        text(&out)
    );
    assert!(c.images().is_empty(), "{:?}", c.images());

    c.stop();
    let started = Instant::now();
    let out = load(&c, &preload, &state, &["--archive=elsewhere.tar"]);
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "fails fast: {:?}",
        started.elapsed()
    );
    assert!(
        text(&out).contains("containerd does not answer"),
        "{}",
        text(&out)
    );
}

/// `stage --containerd-store`: images into the image root's containerd store at build
/// time; a copy of that store opens in a CRI-enabled containerd (as on the node), with
/// the images pinned, and the load stage then imports nothing.
#[test]
fn a_staged_containerd_store_serves_a_node_without_importing() {
    if !containerd_available() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("etc")).unwrap();
    let src = tempfile::tempdir().unwrap();
    let app = src.path().join("app.tar.gz");
    image("example.com/node-app:1", "staged").save(&app);
    let pause = src.path().join("pause.tar.zst");
    image("registry.k8s.io/pause:3.9", "pause").save(&pause);
    let untagged = src.path().join("untagged.tar");
    image("", "none").save(&untagged);
    let entry = src.path().join("entry.yaml");
    fs::write(
        &entry,
        "- {name: node-app, image: example.com/node-app:1, engine: containerd}\n",
    )
    .unwrap();
    let stage = |extra: &[&Path]| {
        Command::new(support::helper())
            .args(["stage", "--containerd-store", "--root"])
            .arg(r)
            .arg("--config")
            .arg(&entry)
            .args(extra)
            .output()
            .unwrap()
    };

    // An untagged archive: refused, and the root as it was (no store left behind).
    let out = stage(&[&app, &untagged]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("untagged.tar: holds no tagged image"),
        "{}",
        text(&out)
    );
    assert!(!r.join("var/lib/containerd").exists());

    let out = stage(&[&app, &pause]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("into containerd's store"),
        "{}",
        text(&out)
    );
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&r.display().to_string()),
        "no mount left in the root"
    );
    assert!(fs::read_dir(r.join("var/lib/atomic/preload/docker")).map_or(true, |d| d.count() == 0));

    // The node: its containerd (CRI on) on a copy of the store.
    let node = tempfile::tempdir().unwrap();
    let copy = node.path().join("containerd");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(r.join("var/lib/containerd"))
            .arg(&copy)
            .status()
            .unwrap()
            .success()
    );
    let c = Containerd::start(true, Some(&copy));
    let images = c.images();
    for name in ["example.com/node-app:1", "registry.k8s.io/pause:3.9"] {
        assert!(
            images.get(name).is_some_and(|l| l.contains(PIN)),
            "{name}: {images:?}"
        );
    }
    let state = node.path().join("state");
    // (The CRI plugin updates its own label on images it finds: counted before.)
    let before = c.imports("example.com/node-app:1");
    let out = load(
        &c,
        &r.join("var/lib/atomic/preload"),
        &state,
        &["--image=example.com/node-app:1"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        c.imports("example.com/node-app:1"),
        before,
        "nothing imported at first boot"
    );
}
