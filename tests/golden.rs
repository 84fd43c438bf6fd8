//! Golden tests: each `golden/<case>/` is an input (config.yaml, optional `args` with one
//! generator argument per line, optional `host/`: files the fake root has, such as
//! `usr/bin/podman`) and the expected output of the real generator binary:
//! `expected/` (units and symlinks, byte for byte) and `stderr` (what it logged).
//! `UPDATE_GOLDEN=1 cargo test --test golden` rewrites them; review the diff by hand.
//!
//! A second test feeds every expected tree to `systemd-analyze verify` in a fake root.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(String),
    Symlink(PathBuf),
}

fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let rel = path.strip_prefix(root).unwrap().to_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(rel, Node::Symlink(fs::read_link(&path).unwrap()));
            } else if meta.is_dir() {
                out.insert(rel, Node::Dir);
                walk(root, &path, out);
            } else {
                out.insert(rel, Node::File(fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for (rel, node) in tree(from) {
        let dest = to.join(&rel);
        match node {
            Node::Dir => fs::create_dir_all(&dest).unwrap(),
            Node::File(text) => fs::write(&dest, text).unwrap(),
            Node::Symlink(target) => std::os::unix::fs::symlink(target, &dest).unwrap(),
        }
    }
}

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    cases
}

/// The generator's arguments for a case, and where its config goes in the fake root.
fn case_args(case: &Path) -> (Vec<String>, String) {
    let args: Vec<String> = fs::read_to_string(case.join("args"))
        .map(|t| {
            t.lines()
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let config = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "/var/lib/atomic/preload/config.yaml".into());
    (args, config)
}

struct Run {
    output: tempfile::TempDir,
    stderr: String,
    status: i32,
}

fn run_generator(case: &Path) -> Run {
    let root = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    let (args, config) = case_args(case);
    let input = case.join("config.yaml");
    let dest = root.path().join(config.trim_start_matches('/'));
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    if input.is_dir() {
        copy_tree(&input, &{
            fs::create_dir_all(&dest).unwrap();
            dest.clone()
        });
    } else if input.exists() {
        fs::copy(&input, &dest).unwrap();
    }
    // Files the host has (e.g. usr/bin/podman without usr/bin/docker: engine detection).
    if case.join("host").is_dir() {
        copy_tree(&case.join("host"), root.path());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_atomic-preload-generator"))
        .args(&args)
        .arg("--root")
        .arg(root.path())
        .arg(output.path())
        .env_remove("SYSTEMD_SCOPE")
        .output()
        .unwrap();
    Run {
        output,
        stderr: String::from_utf8(out.stderr).unwrap(),
        status: out.status.code().unwrap_or(-1),
    }
}

#[test]
fn golden_cases() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    let cases = cases();
    assert!(cases.len() >= 15, "only {} golden cases", cases.len());
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let run = run_generator(case);
        if run.status != 0 {
            failures.push(format!(
                "{name}: generator exited {}: {}",
                run.status, run.stderr
            ));
            continue;
        }
        let expected_dir = case.join("expected");
        if update {
            let _ = fs::remove_dir_all(&expected_dir);
            fs::create_dir_all(&expected_dir).unwrap();
            copy_tree(run.output.path(), &expected_dir);
            fs::write(case.join("stderr"), &run.stderr).unwrap();
            continue;
        }
        let (got, want) = (tree(run.output.path()), tree(&expected_dir));
        for path in got
            .keys()
            .chain(want.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            match (got.get(path), want.get(path)) {
                (a, b) if a == b => {}
                (Some(Node::File(a)), Some(Node::File(b))) => failures.push(format!(
                    "{name}: {} differs\n--- expected\n{b}\n--- generated\n{a}",
                    path.display()
                )),
                (a, b) => failures.push(format!(
                    "{name}: {}: expected {b:?}, generated {a:?}",
                    path.display()
                )),
            }
        }
        let want_stderr = fs::read_to_string(case.join("stderr")).unwrap_or_default();
        if run.stderr != want_stderr {
            failures.push(format!(
                "{name}: stderr differs\n--- expected\n{want_stderr}--- generated\n{}",
                run.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every command line in every golden unit reads back (with our reader of systemd's
/// syntax) as the argv the plan meant: no quoting accident hides in a golden file.
#[test]
fn golden_command_lines_parse_back() {
    for case in cases() {
        for (rel, node) in tree(&case.join("expected")) {
            let Node::File(text) = node else { continue };
            for line in text.lines() {
                let Some((key, value)) = line.split_once('=') else {
                    continue;
                };
                if key.starts_with("Exec") {
                    let argv = atomic_preload::escape::parse_command_line(value);
                    assert!(
                        argv.is_some(),
                        "{}/{}: {line}",
                        case.display(),
                        rel.display()
                    );
                    let argv = argv.unwrap();
                    let again = atomic_preload::escape::command_line("", &argv).unwrap();
                    assert_eq!(value.trim_start_matches('-'), again, "{}", rel.display());
                }
            }
        }
    }
}

/// `systemd-analyze verify` (see `support::VerifyRoot`) on every golden tree, with our
/// static units. Any message about a unit fails the test, since verify exits 0 on warnings.
#[test]
fn golden_units_pass_systemd_analyze_verify() {
    let root = support::VerifyRoot::new();
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in cases() {
        match root.verify_tree(&case.join("expected")) {
            Ok(n) => checked += n,
            Err(text) => failures.push(format!("{}: {text}", case.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked > 20, "verified only {checked} units");
}
