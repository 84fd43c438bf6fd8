//! Inputs up to the sizes cloud-init user data can carry: the generator finishes, writes
//! units systemd can read, and stays within a memory limit. `timeout` and `prlimit` are
//! hang and runaway guards, not performance assertions (bench/generator.sh measures).

use std::fs;
use std::process::Command;

struct Case {
    what: &'static str,
    config: String,
}

fn cases() -> Vec<Case> {
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..40 {
        let p = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    vec![
        Case {
            what: "alias bomb",
            config: bomb,
        },
        Case {
            what: "1 MiB of nested brackets",
            config: format!("- {}{}\n", "[".repeat(512 << 10), "]".repeat(512 << 10)),
        },
        Case {
            what: "deeply nested mappings",
            config: (0..2000)
                .map(|i| format!("{}- a:\n", "  ".repeat(i)))
                .collect(),
        },
        Case {
            what: "100k broken entries",
            config: "- x\n".repeat(100_000),
        },
        Case {
            what: "40k valid entries (1 MiB)",
            config: (0..40_000)
                .map(|i| format!("- {{name: c{i}, image: x}}\n"))
                .collect(),
        },
        Case {
            what: "one 1 MiB argument",
            config: format!(
                "- {{name: big, image: x, run: {{extra_args: [\"{}\"]}}}}\n",
                "%$\\\\\\\"".repeat(1 << 18)
            ),
        },
    ]
}

#[test]
fn large_hostile_configs_finish_within_limits() {
    for case in cases() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let cfg = root.join("var/lib/atomic/preload/config.yaml");
        fs::create_dir_all(cfg.parent().unwrap()).unwrap();
        fs::write(&cfg, &case.config).unwrap();
        let out_dir = dir.path().join("out");
        let out = Command::new("timeout")
            .args(["120", "prlimit", "--as=1073741824", "--"])
            .arg(env!("CARGO_BIN_EXE_atomic-preload-generator"))
            .arg("--root")
            .arg(&root)
            .arg(&out_dir)
            .env_remove("SYSTEMD_SCOPE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{}: {stderr:.2000}", case.what);
        assert!(
            stderr.lines().count() <= atomic_preload::plan::REPORTED_PROBLEMS + 1,
            "{}: the log is capped",
            case.what
        );
        // Every unit written is one systemd can read: no line over its 1 MiB limit.
        for entry in fs::read_dir(&out_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let text = fs::read_to_string(&path).unwrap();
                let longest = text.lines().map(str::len).max().unwrap_or(0);
                assert!(
                    longest < 1 << 20,
                    "{}: {} has a {longest}-byte line",
                    case.what,
                    path.display()
                );
            }
        }
    }
}

/// A 0.7 MB `.tar.gz` of 40 JSON-looking members of 16 MiB each would be 640 MiB of
/// "metadata" in memory: `stage`, `status --root` (and install-system's index, the same
/// code) stop at the index's total cap instead. `prlimit` is the oracle: with the
/// address space capped at 512 MiB, reading them all could not succeed.
#[test]
fn an_archive_of_huge_json_members_is_refused_not_read_into_memory() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            fs::File::create(&bomb).unwrap(),
            flate2::Compression::best(),
        );
        let mut tar = tar::Builder::new(gz);
        let mut member = vec![b' '; (16 << 20) - 2];
        member[0] = b'{';
        for i in 0..40 {
            let mut header = tar::Header::new_gnu();
            header.set_size(member.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, format!("{i:02}.json"), &member[..])
                .unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }
    assert!(fs::metadata(&bomb).unwrap().len() < 2 << 20);
    let root = dir.path().join("root");
    let docker = root.join("var/lib/atomic/preload/docker");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(&docker).unwrap();
    let capped = |args: &[&str]| {
        Command::new("timeout")
            .args(["120", "prlimit", "--as=536870912", "--"])
            .arg(env!("CARGO_BIN_EXE_atomic-preload"))
            .args(args)
            .output()
            .unwrap()
    };
    let r = root.to_str().unwrap();
    let out = capped(&["stage", "--dry-run", "--root", r, bomb.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(
        stderr.contains(
            "bomb.tar.gz: its JSON members add up to more than 64 MiB (an image's metadata is a few KiB): not indexed"
        ),
        "{stderr}"
    );
    // Staged by hand (a copy), then inspected: status says no archive holds the image.
    fs::copy(&bomb, docker.join("bomb.tar.gz")).unwrap();
    fs::write(
        root.join("var/lib/atomic/preload/config.yaml"),
        "- name: app\n  image: test/app:1\n",
    )
    .unwrap();
    let out = capped(&["status", "--root", r]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("no archive holds test/app:1: its unit will fail"),
        "{stdout}"
    );
}
