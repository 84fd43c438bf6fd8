//! The Anaconda add-on: `make install-anaconda-addon` into a DESTDIR (the helper's path
//! baked in: this build's binary), then its pytest suite (`tests/anaconda/`) with the
//! real pykickstart, in the virtualenv `.ci/install-deps` creates (`.venv`), against the
//! installed copy: the kickstart forms and errors, the round trip, and the installation
//! task staging archives built here from a loopback server into a temporary sysroot.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use support::sysimage::{Image, Layer};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BUS_NAME: &str = "org.fedoraproject.Anaconda.Addons.AtomicPreload";

#[test]
fn addon_installs_and_its_python_suite_passes() {
    let python = Path::new(ROOT).join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: .ci/install-deps creates the add-on's test virtualenv",
        python.display()
    );
    let helper = support::helper();
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    let out = support::install_anaconda_addon(&dest);
    assert!(out.status.success(), "{}", support::text(&out));

    // Where Anaconda looks for add-ons and their D-Bus services.
    let anaconda = dest.join("usr/share/anaconda");
    let service =
        fs::read_to_string(anaconda.join(format!("dbus/services/{BUS_NAME}.service"))).unwrap();
    assert!(
        service.contains(&format!("Name={BUS_NAME}\n"))
            && service.contains(
                "Exec=/usr/libexec/anaconda/start-module org_projectatomic_atomic_preloader.service\n"
            ),
        "{service}"
    );
    let policy = fs::read_to_string(anaconda.join(format!("dbus/confs/{BUS_NAME}.conf"))).unwrap();
    assert!(
        policy.contains(&format!("<allow own=\"{BUS_NAME}\"/>")),
        "{policy}"
    );
    let package = anaconda.join("addons/org_projectatomic_atomic_preloader");
    for file in [
        "__init__.py",
        "kickstart.py",
        "service/__main__.py",
        "service/installation.py",
    ] {
        assert!(package.join(file).is_file(), "{file}");
    }
    let paths = fs::read_to_string(package.join("paths.py")).unwrap();
    assert!(
        paths.contains(&format!("ATOMIC_PRELOAD = \"{}\"", helper.display())),
        "{paths}"
    );

    let archives = tmp.path().join("archives");
    fs::create_dir(&archives).unwrap();
    for (tag, name) in [
        ("example.com/container:1", "container.tar.gz"),
        ("example.com/mysyscontainer:latest", "syscontainer.tar.xz"),
    ] {
        Image::new(tag, vec![Layer::new().busybox().bytes()]).save(&archives.join(name));
    }
    let out = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/anaconda",
        ])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("ADDON_DIR", anaconda.join("addons"))
        .env("ATOMIC_PRELOAD", helper)
        .env("GENERATOR", env!("CARGO_BIN_EXE_atomic-preload-generator"))
        .env("ARCHIVES", &archives)
        .current_dir(ROOT)
        .output()
        .unwrap();
    println!("{}", support::text(&out));
    assert!(
        out.status.success(),
        "pytest failed:\n{}",
        support::text(&out)
    );
}
