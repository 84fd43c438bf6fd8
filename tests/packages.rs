//! Packages: `make deb` holds exactly what `make install` installs, with maintainer
//! scripts that reload systemd; `rpm/atomic-preload.spec` builds with rpmbuild (when it is
//! installed; CI installs it) and holds the same files. Installing the .deb into a booted
//! machine is the boot suite's job (every scenario installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What both packages must hold (man pages: one per subcommand, compressed or not).
fn expected_files() -> Vec<&'static str> {
    vec![
        "/usr/bin/atomic-preload",
        "/usr/lib/systemd/system-generators/atomic-preload-generator",
        "/usr/lib/systemd/system/atomic-preload-load.service",
        "/usr/lib/systemd/system/atomic-preload-refresh.path",
        "/usr/lib/systemd/system/atomic-preload-refresh.service",
        "/usr/lib/systemd/system/atomic-preload.target",
        "/usr/share/man/man1/atomic-preload.1",
        "/usr/share/man/man1/atomic-preload-stage.1",
        "/usr/share/man/man1/atomic-preload-status.1",
        "/usr/share/man/man8/atomic-preload-generator.8",
        "/usr/share/bash-completion/completions/atomic-preload",
        "/usr/share/fish/vendor_completions.d/atomic-preload.fish",
    ]
}

fn has(list: &[String], file: &str) -> bool {
    list.iter()
        .any(|f| f == file || f.strip_suffix(".gz") == Some(file))
}

#[test]
fn deb_holds_the_install_and_reloads_systemd() {
    if !Path::new("/usr/bin/dpkg-deb").exists() {
        eprintln!("skipped: no dpkg-deb (not Debian)");
        return;
    }
    let out = run(Command::new("make")
        .args(["--no-print-directory", "deb"])
        .current_dir(ROOT));
    let deb = Path::new(ROOT).join(out.lines().last().unwrap().trim());
    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let files: Vec<String> = contents
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|f| f.trim_start_matches('.').to_owned())
        .collect();
    for file in expected_files() {
        assert!(
            has(&files, file),
            "{file} missing from the .deb:\n{contents}"
        );
    }
    assert!(has(
        &files,
        "/usr/share/zsh/vendor-completions/_atomic-preload"
    ));
    // lintian, as a packager runs it: no error, no warning (overrides only with a reason,
    // in debian/lintian-overrides, shipped in the package as lintian reads them).
    if Path::new("/usr/bin/lintian").exists() {
        let out = Command::new("lintian")
            .args(["--fail-on", "error,warning", "--allow-root"])
            .arg(&deb)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && !said
                    .lines()
                    .any(|l| l.starts_with("E:") || l.starts_with("W:")),
            "lintian {}:\n{said}{}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let overrides =
            std::fs::read_to_string(Path::new(ROOT).join("debian/lintian-overrides")).unwrap();
        // Every override comes after a comment that gives its reason.
        let mut reason = false;
        for line in overrides.lines() {
            if line.starts_with('#') {
                reason = true;
            } else if line.trim().is_empty() {
                reason = false;
            } else {
                assert!(reason, "an override without a reason: {line}");
            }
        }
    } else {
        panic!("lintian is missing: .ci/install-deps installs it");
    }
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: atomic-preload"), "{info}");
    assert!(
        info.contains("Recommends: docker.io | podman, runc | crun"),
        "{info}"
    );
    let postinst = run(Command::new("dpkg-deb").arg("--ctrl-tarfile").arg(&deb));
    assert!(!postinst.is_empty());
    let scripts = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(scripts.path()));
    for script in ["postinst", "postrm"] {
        let text = std::fs::read_to_string(scripts.path().join(script)).unwrap();
        assert!(text.contains("systemctl daemon-reload"), "{script}: {text}");
    }
    // Statically linked: the package needs no library.
    let ldd = Command::new("ldd")
        .arg(
            Path::new(ROOT)
                .join("build/deb/usr/lib/systemd/system-generators/atomic-preload-generator"),
        )
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ldd.stdout).contains("statically linked")
            || String::from_utf8_lossy(&ldd.stderr).contains("not a dynamic executable"),
        "{}",
        String::from_utf8_lossy(&ldd.stdout)
    );

    // The installer's updates image (after `make deb`, which built the binaries): the
    // add-on, its D-Bus files, and the binary it runs, owned by root.
    let out = run(Command::new("make")
        .args(["--no-print-directory", "anaconda-updates-img"])
        .current_dir(ROOT));
    let img = Path::new(ROOT).join(out.lines().last().unwrap().trim());
    let listing = run(Command::new("sh")
        .arg("-c")
        .arg("gzip -dc \"$1\" | cpio -itv --quiet")
        .arg("sh")
        .arg(&img));
    for file in [
        "usr/bin/atomic-preload",
        "usr/share/anaconda/addons/org_projectatomic_atomic_preloader/kickstart.py",
        "usr/share/anaconda/addons/org_projectatomic_atomic_preloader/paths.py",
        "usr/share/anaconda/dbus/services/org.fedoraproject.Anaconda.Addons.AtomicPreload.service",
        "usr/share/anaconda/dbus/confs/org.fedoraproject.Anaconda.Addons.AtomicPreload.conf",
    ] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" {file}")))
            .unwrap_or_else(|| panic!("{file} missing from the updates image:\n{listing}"));
        assert!(line.contains(" root "), "{line}");
    }
    let paths = run(Command::new("sh")
        .arg("-c")
        .arg("gzip -dc \"$1\" | cpio -i --quiet --to-stdout usr/share/anaconda/addons/org_projectatomic_atomic_preloader/paths.py")
        .arg("sh")
        .arg(&img));
    assert!(
        paths.contains("ATOMIC_PRELOAD = \"/usr/bin/atomic-preload\""),
        "{paths}"
    );
}

#[test]
fn rpm_spec_builds_with_rpmbuild() {
    if !Path::new("/usr/bin/rpmbuild").exists() {
        eprintln!("skipped: rpmbuild is not installed (apt-get install rpm)");
        return;
    }
    let top = tempfile::tempdir().unwrap();
    let spec = std::fs::read_to_string(Path::new(ROOT).join("rpm/atomic-preload.spec")).unwrap();
    let version = spec
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(
        version,
        env!("CARGO_PKG_VERSION"),
        "the spec's Version matches Cargo.toml"
    );
    // Built in place (this tree is the unpacked source, so cargo finds its own build
    // and has nothing to redo); --nodeps: the BuildRequires name Fedora's packages, not
    // what this Debian machine has.
    run(Command::new("rpmbuild")
        .args(["-bb", "--build-in-place", "--nodeps"])
        .arg("--define")
        .arg(format!("_topdir {}", top.path().display()))
        .arg("--define")
        .arg("debug_package %{nil}")
        .arg(Path::new(ROOT).join("rpm/atomic-preload.spec"))
        .current_dir(ROOT));
    let rpms = walk(&top.path().join("RPMS"));
    let rpm: PathBuf = rpms
        .iter()
        .find(|p| {
            p.extension().is_some_and(|e| e == "rpm") && !p.to_string_lossy().contains("addon")
        })
        .expect("an .rpm")
        .clone();
    // The add-on's subpackage: noarch, Anaconda's directories, the add-on's requirements.
    let addon: &PathBuf = rpms
        .iter()
        .find(|p| {
            p.to_string_lossy()
                .contains("atomic-preload-anaconda-addon-")
        })
        .expect("the add-on's .rpm");
    assert!(
        addon.to_string_lossy().ends_with(".noarch.rpm"),
        "{}",
        addon.display()
    );
    let list = run(Command::new("rpm").arg("-qlp").arg(addon));
    for file in [
        "/usr/share/anaconda/addons/org_projectatomic_atomic_preloader/kickstart.py",
        "/usr/share/anaconda/addons/org_projectatomic_atomic_preloader/service/__main__.py",
        "/usr/share/anaconda/dbus/services/org.fedoraproject.Anaconda.Addons.AtomicPreload.service",
        "/usr/share/anaconda/dbus/confs/org.fedoraproject.Anaconda.Addons.AtomicPreload.conf",
    ] {
        assert!(
            list.lines().any(|l| l == file),
            "{file} missing from the add-on's .rpm:\n{list}"
        );
    }
    let requires = run(Command::new("rpm").args(["-qp", "--requires"]).arg(addon));
    assert!(requires.contains("anaconda-core >= 34"), "{requires}");
    assert!(
        requires.lines().any(|l| l.starts_with("atomic-preload = ")),
        "{requires}"
    );
    let list = run(Command::new("rpm").arg("-qlp").arg(&rpm));
    let files: Vec<String> = list.lines().map(String::from).collect();
    for file in expected_files() {
        assert!(has(&files, file), "{file} missing from the .rpm:\n{list}");
    }
    assert!(
        has(&files, "/usr/share/zsh/site-functions/_atomic-preload"),
        "{list}"
    );
    let scripts = run(Command::new("rpm").args(["-qp", "--scripts"]).arg(&rpm));
    assert!(scripts.contains("systemctl daemon-reload"), "{scripts}");
    // rpmlint on the spec and both packages: no error, no warning; its filters, each with
    // a reason, in rpm/atomic-preload.rpmlintrc.
    let out = Command::new("rpmlint")
        .arg("-r")
        .arg(Path::new(ROOT).join("rpm/atomic-preload.rpmlintrc"))
        .arg(Path::new(ROOT).join("rpm/atomic-preload.spec"))
        .arg(&rpm)
        .arg(addon)
        .output()
        .expect("rpmlint: .ci/install-deps installs it");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains(" 0 errors, 0 warnings"),
        "rpmlint:\n{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
