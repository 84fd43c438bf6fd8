//! Only root says what runs as root: a config, archive, sidecar or directory that someone
//! else owns or can write is not acted on, and the unit says which file, its owner and
//! mode, and the command that fixes it. One row per case; the same table is in the README
//! (between the `untrusted-files` markers), and this test fails if the two differ. The
//! boot suite's s12 shows the same on a booted machine.

mod support;

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::Path;
use std::process::Command;

struct Row {
    what: &'static str,
    /// Changes the preload directory `P` (config.yaml, docker/app.tar and its sidecar).
    setup: fn(&Path),
    /// Who reads it: the generator (its config-problems unit says it) or the load stage.
    reader: Reader,
    /// What it says (`P` = the preload directory); "" = acted on.
    says: &'static str,
}

#[derive(Clone, Copy)]
enum Reader {
    Generator,
    Load,
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn rows() -> Vec<Row> {
    use Reader::*;
    vec![
        Row {
            what: "`config.yaml` mode 0666",
            setup: |p| chmod(&p.join("config.yaml"), 0o666),
            reader: Generator,
            says: "P/config.yaml is writable by group or others (owner uid 0, mode 0666): only root may say what runs as root, so nothing in it is used; fix: chmod go-w P/config.yaml",
        },
        Row {
            what: "`config.yaml` owned by uid 65534",
            setup: |p| chown(p.join("config.yaml"), Some(65534), None).unwrap(),
            reader: Generator,
            says: "P/config.yaml is not owned by root (owner uid 65534, mode 0644): only root may say what runs as root, so nothing in it is used; fix: chown root: P/config.yaml",
        },
        Row {
            what: "the preload directory mode 0777",
            setup: |p| chmod(p, 0o777),
            reader: Generator,
            says: "P is writable by group or others (owner uid 0, mode 0777): only root may say what runs as root, so nothing in it is used; fix: chmod go-w P",
        },
        Row {
            what: "`config.yaml` a link to a file in a 0777 directory",
            setup: |p| {
                fs::create_dir(p.join("open")).unwrap();
                chmod(&p.join("open"), 0o777);
                fs::rename(p.join("config.yaml"), p.join("open/config.yaml")).unwrap();
                symlink(p.join("open/config.yaml"), p.join("config.yaml")).unwrap();
            },
            reader: Generator,
            says: "P/open is writable by group or others (owner uid 0, mode 0777): only root may say what runs as root, so nothing in it is used; fix: chmod go-w P/open",
        },
        Row {
            what: "`config.yaml` a link to a root-owned 0644 file (accepted)",
            setup: |p| {
                fs::create_dir(p.join("etc")).unwrap();
                fs::rename(p.join("config.yaml"), p.join("etc/config.yaml")).unwrap();
                symlink("etc/config.yaml", p.join("config.yaml")).unwrap();
            },
            reader: Generator,
            says: "",
        },
        Row {
            what: "a directory above, 1777 and root's (like `/tmp`: accepted)",
            setup: |p| chmod(p, 0o1777),
            reader: Generator,
            says: "",
        },
        Row {
            what: "`docker/` mode 0777",
            setup: |p| chmod(&p.join("docker"), 0o777),
            reader: Load,
            says: "P/docker is writable by group or others (owner uid 0, mode 0777): only root may say what runs as root, so nothing in it is used; fix: chmod go-w P/docker",
        },
        Row {
            what: "an archive mode 0666",
            setup: |p| chmod(&p.join("docker/app.tar"), 0o666),
            reader: Load,
            says: "P/docker/app.tar is writable by group or others (owner uid 0, mode 0666): only root may say what runs as root, so nothing in it is used; fix: chmod go-w P/docker/app.tar",
        },
        Row {
            what: "a sidecar owned by uid 1000",
            setup: |p| chown(p.join("docker/app.tar.sha256"), Some(1000), None).unwrap(),
            reader: Load,
            says: "P/docker/app.tar.sha256 is not owned by root (owner uid 1000, mode 0644): only root may say what runs as root, so nothing in it is used; fix: chown root: P/docker/app.tar.sha256",
        },
        Row {
            what: "the state directory mode 0777",
            setup: |p| chmod(&p.join("state"), 0o777),
            reader: Load,
            says: "P/state is writable by group or others (owner uid 0, mode 0777): only root may say what runs as root, so nothing in it is used; fix: chmod go-w P/state",
        },
    ]
}

fn markdown(rows: &[Row]) -> String {
    let mut t = String::from("| what | read by | the unit says |\n|---|---|---|\n");
    for row in rows {
        let reader = match row.reader {
            Reader::Generator => "generator",
            Reader::Load => "load stage",
        };
        let says = if row.says.is_empty() {
            "(acted on)".to_owned()
        } else {
            format!("`{}`", row.says)
        };
        t.push_str(&format!("| {} | {reader} | {says} |\n", row.what));
    }
    t
}

#[test]
fn only_files_root_alone_can_write_are_acted_on() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (chown)");
        return;
    }
    let mut wrong = Vec::new();
    for row in rows() {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        let p = dir.path().join("preload");
        fs::create_dir_all(p.join("docker")).unwrap();
        fs::create_dir_all(p.join("state")).unwrap();
        fs::write(
            p.join("config.yaml"),
            "- name: app\n  image: test/app:1\n  run: {}\n",
        )
        .unwrap();
        fs::write(p.join("docker/app.tar"), "not looked at").unwrap();
        fs::write(
            p.join("docker/app.tar.sha256"),
            format!("{}  app.tar\n", "0".repeat(64)),
        )
        .unwrap();
        for f in ["config.yaml", "docker/app.tar", "docker/app.tar.sha256"] {
            chmod(&p.join(f), 0o644);
        }
        (row.setup)(&p);
        let (code, printed) = match row.reader {
            Reader::Generator => {
                let out = Command::new(env!("CARGO_BIN_EXE_atomic-preload-generator"))
                    .arg("--dry-run")
                    .arg("--config")
                    .arg(p.join("config.yaml"))
                    .arg("--preload-dir")
                    .arg(&p)
                    .env_remove("SYSTEMD_SCOPE")
                    .output()
                    .unwrap();
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                )
            }
            Reader::Load => {
                let out = Command::new(env!("CARGO_BIN_EXE_atomic-preload"))
                    .args(["load", "--docker", "/bin/false", "--preload-dir"])
                    .arg(&p)
                    .arg("--state-dir")
                    .arg(p.join("state"))
                    .output()
                    .unwrap();
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            }
        };
        let printed = printed.replace(&p.display().to_string(), "P");
        let acted_on = match row.reader {
            Reader::Generator => printed.contains("# preload-app.service"),
            // The load got past the check, to the engine (which /bin/false is not).
            Reader::Load => !printed.contains("only root may say"),
        };
        let ok = if row.says.is_empty() {
            acted_on
        } else {
            !acted_on
                && printed.contains(row.says)
                && (matches!(row.reader, Reader::Generator) || code == Some(65))
        };
        if !ok {
            wrong.push(format!(
                "{}: want {:?}, got ({code:?}):\n{printed}",
                row.what, row.says
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn readme_lists_the_same_table() {
    support::assert_readme_lists("untrusted-files", &markdown(&rows()));
}
