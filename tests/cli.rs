//! The command-line contracts other tools rely on: `atomic-preload validate`, the
//! generator's `--dry-run` and argument handling, `config-error`.

use std::fs;
use std::process::{Command, Output};

fn helper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_atomic-preload"))
        .args(args)
        .output()
        .unwrap()
}

fn generator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_atomic-preload-generator"))
        .args(args)
        .env_remove("SYSTEMD_SCOPE")
        .output()
        .unwrap()
}

/// A fake root (for `--root`) whose config.yaml is `config`; the root is `<dir>/root`.
fn root_with_config(config: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let cfg = root.join("var/lib/atomic/preload/config.yaml");
    fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    fs::write(&cfg, config).unwrap();
    (dir, root)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn validate_accepts_the_examples_config_syntax_and_reports_problems() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    fs::write(&good, "- name: web\n  image: docker.io/nginx\n  run: {}\n").unwrap();
    let out = helper(&["validate", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out), "");

    let bad = dir.path().join("bad.yaml");
    fs::write(
        &bad,
        "- name: web\n  image: docker.io/nginx\n  rnu: {}\n- name: x y\n  image: z\n",
    )
    .unwrap();
    let out = helper(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let path = bad.display();
    assert_eq!(
        stdout(&out),
        format!(
            "{path}:3:3: unknown key \"rnu\" in an entry (known keys: name, image, archive, engine, install, run, before_kubelet)\n\
             {path}:4:9: \"name\" must match [a-zA-Z0-9][a-zA-Z0-9_.-]+ (Docker's container-name rule, at most 200 characters), found \"x y\"\n"
        )
    );
}

#[test]
fn validate_treats_a_missing_file_as_empty_and_a_directory_as_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = helper(&["validate", dir.path().join("none.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let out = helper(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("not a regular file"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn examples_config_dry_run_prints_each_unit_after_its_name() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config.yaml");
    let out = generator(&["--dry-run", "--config", example]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let names: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("# preload-"))
        .collect();
    assert_eq!(
        names,
        ["# preload-busybox_sleep.service", "# preload-etcd.service"]
    );
    assert!(text.contains("ExecStart=:/usr/bin/atomic-preload run --name=busybox_sleep --image=docker.io/busybox --extra=2 -- /usr/bin/docker run --rm --pull=never --name busybox_sleep docker.io/busybox sleep 999\n"));
    // The README example's system container: installed and started natively.
    assert!(text.contains("ExecStart=:/usr/bin/atomic-preload install-system --preload-dir=/var/lib/atomic/preload --name=etcd --image=docker.io/gscrivano/etcd --set=ETCD_NAME=myetcd\n"));
    assert!(text.contains("ExecStart=:/usr/bin/atomic-preload start-system --name=etcd\n"));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn generator_needs_an_output_dir_unless_dry_run() {
    let out = generator(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NORMAL_DIR"));
}

#[test]
fn generator_accepts_systemds_three_directories() {
    let dir = tempfile::tempdir().unwrap();
    let (n, e, l) = (
        dir.path().join("n"),
        dir.path().join("e"),
        dir.path().join("l"),
    );
    let out = generator(&[
        "--root",
        dir.path().to_str().unwrap(),
        n.to_str().unwrap(),
        e.to_str().unwrap(),
        l.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        n.join("multi-user.target.wants/atomic-preload.target")
            .is_symlink()
    );
    assert!(
        !e.exists() && !l.exists(),
        "only the normal directory is written"
    );
}

#[test]
fn generator_refuses_paths_units_cannot_carry() {
    let out = generator(&["--dry-run", "--preload-dir", "/srv/pre load"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--preload-dir must be an absolute path without spaces, backslashes")
    );
}

#[test]
fn output_dir_entries_in_the_way_are_replaced_never_followed() {
    let (dir, root) = root_with_config("- {name: web, image: x, run: {}}\n");
    let out_dir = dir.path().join("out");
    fs::create_dir_all(&out_dir).unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, "keep me").unwrap();
    std::os::unix::fs::symlink(&victim, out_dir.join("preload-web.service")).unwrap();
    let out = generator(&["--root", root.to_str().unwrap(), out_dir.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep me");
    assert!(!out_dir.join("preload-web.service").is_symlink());
    assert!(
        fs::read_to_string(out_dir.join("preload-web.service"))
            .unwrap()
            .contains("[Service]")
    );
}

#[test]
fn config_error_prints_every_problem_and_fails() {
    let out = helper(&[
        "config-error",
        "--",
        "c.yaml:1:2: first",
        "c.yaml:3:4: second",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("c.yaml:1:2: first\nc.yaml:3:4: second\n"),
        "{err}"
    );
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["load", "--help"],
        &["install", "--help"],
        &["validate", "--help"],
        &["config-error", "--help"],
    ] {
        let out = helper(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(stdout(&out).contains("Usage:"), "{args:?}");
    }
    assert_eq!(generator(&["--help"]).status.code(), Some(0));
}

#[test]
fn a_symlinked_wants_dir_pointing_outside_is_refused_not_followed() {
    let (dir, root) = root_with_config("- {name: web, image: x, run: {}}\n");
    let out_dir = dir.path().join("out");
    let outside = dir.path().join("outside");
    fs::create_dir_all(&out_dir).unwrap();
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, out_dir.join("atomic-preload.target.wants")).unwrap();
    let out = generator(&["--root", root.to_str().unwrap(), out_dir.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a write it could not do is a failure"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("atomic-preload.target.wants: exists and is not a directory")
    );
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written through the symlink"
    );
    // Everything else was still written.
    assert!(out_dir.join("preload-web.service").is_file());
    assert!(
        out_dir
            .join("multi-user.target.wants/atomic-preload.target")
            .is_symlink()
    );
}

/// The README's quick start, as a newcomer types it: the generator line's arguments exactly
/// as written, from the repository's top directory (a relative --config must work).
#[test]
fn readme_quick_start_generator_line_works_verbatim() {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("## Quick start").unwrap();
    let line = readme[start..]
        .lines()
        .find(|l| l.starts_with("cargo run ") && l.contains("atomic-preload-generator"))
        .expect("the quick start runs the generator");
    let words = shell_words::split(line).unwrap();
    let args: Vec<&str> = words
        .iter()
        .skip_while(|w| *w != "--")
        .skip(1)
        .map(String::as_str)
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_atomic-preload-generator"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config.yaml");
    assert!(
        text.contains(&format!("SourcePath={example}\n")),
        "made absolute for the units: {text}"
    );
    assert!(
        text.contains("# preload-etcd.service\n")
            && text.contains("# preload-busybox_sleep.service\n")
    );
}

/// Values from the config that start with `-` (an archive named `-lead.tar`, `--help.tar`)
/// reach the helper as values: every stage command line the generator writes parses,
/// where `--archive -lead.tar` would be a usage error (exit 2) at every start.
#[test]
fn values_starting_with_a_dash_stay_values_in_generated_command_lines() {
    let (_dir, root) = root_with_config(
        "- name: lead\n  image: test/lead\n  archive: [-lead.tar, --help.tar, -h.tar]\n  install: {setvalues: [X=-1]}\n  run: {}\n\
         - name: sys\n  image: test/sys\n  archive: -sys.tar\n  install: {system: true, setvalues: [Y=--help]}\n  run: {}\n",
    );
    let empty = tempfile::tempdir().unwrap();
    let preload = empty.path().to_str().unwrap();
    let out = generator(&[
        "--dry-run",
        "--root",
        root.to_str().unwrap(),
        "--preload-dir",
        preload,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let units = stdout(&out);
    let mut ran = 0;
    for line in units.lines() {
        let Some((_, command)) = line.split_once("=:/usr/bin/atomic-preload ") else {
            continue;
        };
        let mut argv = shell_words::split(command).unwrap();
        let stage = argv[0].clone();
        // The engine client is one that fails at once: the point is that the command
        // line parses, and the stage gets as far as needing the engine or the archive.
        let at = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
        if ["load", "install"].contains(&stage.as_str()) {
            argv.insert(at, "--docker=/bin/false".into());
        } else if stage == "run" {
            argv[at + 1] = "/bin/false".into();
        }
        let out = Command::new(env!("CARGO_BIN_EXE_atomic-preload"))
            .args(&argv)
            .env("ATOMIC_PRELOAD_NO_NOTIFY", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(2), "{stage}: {command}\n{stderr}");
        assert!(
            !stderr.contains("unexpected argument"),
            "{command}\n{stderr}"
        );
        ran += 1;
    }
    assert!(ran >= 5, "{units}");
}

#[test]
fn first_words_say_what_the_tool_is_and_status_says_when_there_is_no_config() {
    let help = helper(&["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.starts_with("Preload containers: stage image archives and config entries into an image before its first boot"),
        "{help}"
    );
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    for args in [
        vec!["--config", "/nonexistent/config.yaml"],
        vec!["--root", root.path().to_str().unwrap()],
    ] {
        let out = helper(&[&["status"][..], &args].concat());
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.starts_with("No config at ") && said.contains("nothing is preloaded here"),
            "{said}"
        );
    }
}
