//! Hostile system-image archives, one row each: what `atomic-preload install-system`
//! says (or where the member lands, when it is confined rather than refused). Every row
//! also checks the oracle: nothing outside the deployment changed (a sentinel directory
//! the archive aims at is untouched, a refused install leaves no deployment and no unit).
//! Each row runs twice: from an uncompressed archive (its layers applied where they lie)
//! and from a zstd-compressed one (its layers streamed); both must give the same answer
//! (a damaged archive's message may differ: the two readers notice the damage apart).
//! The same table is in the README (between the `hostile-archives` markers); this test
//! fails if the two differ, and prints the table to paste.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::sysimage::{FakeHost, Image, Layer};

/// What hostile members aim at. Fixed, so messages are the same on every machine.
const OUTSIDE: &str = "/tmp/ap-hostile-outside";

enum Expect {
    /// install-system fails (exit 65) printing exactly this.
    Refused(&'static str),
    /// It installs; this path (relative to the deployment) exists instead.
    Confined(&'static str),
    /// It installs, printing a line containing this.
    Says(&'static str),
}

struct Row {
    what: &'static str,
    layers: fn() -> Vec<Vec<u8>>,
    /// Change the saved archive's bytes (truncate it...).
    damage: Option<fn(Vec<u8>) -> Vec<u8>>,
    diff_ids: Option<Vec<String>>,
    expect: Expect,
}

fn rows() -> Vec<Row> {
    use Expect::*;
    let row = |what, layers, expect| Row {
        what,
        layers,
        damage: None,
        diff_ids: None,
        expect,
    };
    vec![
        row(
            "absolute symlink, then a member through it",
            || {
                vec![
                    Layer::new()
                        .symlink("escape", OUTSIDE)
                        .file("escape/pwned", b"x", 0o644)
                        .bytes(),
                ]
            },
            Confined("rootfs/tmp/ap-hostile-outside/pwned"),
        ),
        row(
            "relative symlink climbing out",
            || {
                vec![
                    Layer::new()
                        .symlink("up", "../../../../../../../../../tmp/ap-hostile-outside")
                        .file("up/pwned", b"x", 0o644)
                        .bytes(),
                ]
            },
            Confined("rootfs/tmp/ap-hostile-outside/pwned"),
        ),
        row(
            "absolute member path",
            || {
                vec![
                    Layer::new()
                        .file("/tmp/ap-hostile-outside/pwned", b"x", 0o644)
                        .bytes(),
                ]
            },
            Confined("rootfs/tmp/ap-hostile-outside/pwned"),
        ),
        row(
            "`../` member",
            || {
                vec![
                    Layer::new()
                        .file("../../../../tmp/ap-hostile-outside/pwned", b"x", 0o644)
                        .bytes(),
                ]
            },
            Refused(
                "layer 1 (layer1/layer.tar): member \"../../../../tmp/ap-hostile-outside/pwned\" has a \"..\" component",
            ),
        ),
        row(
            "hard link to a host file",
            || vec![Layer::new().hardlink("passwd", "/etc/passwd").bytes()],
            Refused(
                "layer 1 (layer1/layer.tar): hard link \"passwd\" points at \"/etc/passwd\", which is not in the image",
            ),
        ),
        row(
            "hard link through a symlink to /",
            || {
                vec![
                    Layer::new()
                        .symlink("h", "/")
                        .hardlink("shadow", "h/etc/shadow")
                        .bytes(),
                ]
            },
            Refused(
                "layer 1 (layer1/layer.tar): hard link \"shadow\" points at \"h/etc/shadow\", which is not in the image",
            ),
        ),
        row(
            "symlink swapped for a directory between layers",
            || {
                vec![
                    Layer::new()
                        .dir("d/", 0o755)
                        .file("d/f", b"1", 0o644)
                        .bytes(),
                    Layer::new()
                        .symlink("d", OUTSIDE)
                        .file("d/pwned", b"x", 0o644)
                        .bytes(),
                ]
            },
            Confined("rootfs/tmp/ap-hostile-outside/pwned"),
        ),
        row(
            "whiteout through a symlink",
            || {
                vec![
                    Layer::new()
                        .symlink("s", OUTSIDE)
                        .file("s/.wh.keep", b"", 0o644)
                        .bytes(),
                ]
            },
            Says("layer 1: 0 files, 0 directories, 1 symlinks, 0 hard links, 1 whiteouts"),
        ),
        row(
            "whiteout of `..`",
            || vec![Layer::new().file("a/.wh..", b"", 0o644).bytes()],
            Refused("layer 1 (layer1/layer.tar): member \"a/.wh..\" is not a valid whiteout"),
        ),
        row(
            "device node and FIFO (skipped)",
            || {
                vec![
                    Layer::new()
                        .char_device("dev/sda")
                        .fifo("run/fifo")
                        .file("ok", b"1", 0o644)
                        .bytes(),
                ]
            },
            Says("2 device nodes/FIFOs/sockets skipped"),
        ),
        Row {
            what: "layer that does not match its diff_id",
            layers: || vec![Layer::new().file("a", b"1", 0o644).bytes()],
            damage: None,
            diff_ids: Some(vec![format!("sha256:{}", "0".repeat(64))]),
            expect: Refused(
                "layer 1 (layer1/layer.tar) does not match the image config: diff_id sha256:0000000000000000000000000000000000000000000000000000000000000000 expected, sha256:5ea67f4269b86682b861f13bd02d28c54a7fa31150ca5a41b92aa7052093b35c found",
            ),
        },
        Row {
            what: "truncated archive",
            layers: || vec![Layer::new().file("a", &[7u8; 5000], 0o644).bytes()],
            damage: Some(|b| b[..3000].to_vec()),
            diff_ids: None,
            expect: Refused(
                "image hostile:1 is in no archive in PREFIX/ostree: image.tar (unreadable: the archive ends inside layer1/layer.tar)",
            ),
        },
        row(
            "layer that is not a tar",
            || vec![b"not a tar stream ".repeat(64)],
            Refused(
                "layer 1 (layer1/layer.tar): reading the layer: not a tar archive (its first header is invalid)",
            ),
        ),
    ]
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn run_row(row: &Row, outer: &str) -> Result<String, String> {
    let exact = row.damage.is_none() || outer == "image.tar";
    let host = FakeHost::new();
    let h = host.dir.path();
    let mut image = Image::new("hostile:1", (row.layers)());
    image.diff_ids = row.diff_ids.clone();
    let archive = h.join("preload/ostree").join(outer);
    let mut bytes = image.archive_bytes();
    if let Some(damage) = row.damage {
        bytes = damage(bytes);
    }
    let plain = h.join("plain.tar");
    fs::write(&plain, bytes).unwrap();
    support::compress(&plain, &archive);
    let preload = h.join("preload").display().to_string();
    let out = host.install("hostile:1", "hostile", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&preload, "PREFIX");
    // The oracle: the target outside is exactly as it was.
    let outside = listing(Path::new(OUTSIDE));
    if outside != [Path::new(OUTSIDE).join("keep")]
        || fs::read(Path::new(OUTSIDE).join("keep")).unwrap() != b"keep"
    {
        return Err(format!("{OUTSIDE} changed: {outside:?}"));
    }
    if !listing(&h.join("host")).is_empty() {
        return Err(format!(
            "the host root changed: {:?}",
            listing(&h.join("host"))
        ));
    }
    match &row.expect {
        Expect::Refused(message) => {
            let got = stderr
                .trim_end()
                .strip_prefix("atomic-preload: ")
                .unwrap_or(&stderr)
                .to_owned();
            if out.status.code() != Some(65) || (exact && got != *message) {
                return Err(format!(
                    "expected exit 65 and {message:?}\n  got {:?} {got:?}",
                    out.status.code()
                ));
            }
            if !listing(&h.join("checkout")).is_empty() || !listing(&h.join("units")).is_empty() {
                return Err(format!(
                    "a refused install left {:?} {:?}",
                    listing(&h.join("checkout")),
                    listing(&h.join("units"))
                ));
            }
            Ok(format!("`{message}`"))
        }
        Expect::Confined(path) => {
            if !out.status.success() {
                return Err(format!("expected an install, got {stderr}"));
            }
            if !h.join("checkout/hostile").join(path).exists() {
                return Err(format!("{path} is not in the deployment"));
            }
            Ok(format!("installed; the member lands at `NAME.0/{path}`"))
        }
        Expect::Says(line) => {
            if !out.status.success() || !stdout.contains(line) {
                return Err(format!(
                    "expected an install saying {line:?}, got {stdout}{stderr}"
                ));
            }
            Ok(format!("installed, saying `{line}`"))
        }
    }
}

fn table() -> (String, Vec<String>) {
    let _ = fs::remove_dir_all(OUTSIDE);
    fs::create_dir_all(OUTSIDE).unwrap();
    fs::write(Path::new(OUTSIDE).join("keep"), "keep").unwrap();
    fs::set_permissions(OUTSIDE, fs::Permissions::from_mode(0o755)).unwrap();
    let mut text = String::from("| archive | `atomic-preload install-system` |\n|---|---|\n");
    let mut wrong = Vec::new();
    for row in rows() {
        match (run_row(&row, "image.tar"), run_row(&row, "image.tar.zst")) {
            (Ok(cell), Ok(streamed)) if cell == streamed || row.damage.is_some() => {
                text.push_str(&format!("| {} | {cell} |\n", row.what))
            }
            (Ok(cell), Ok(streamed)) => wrong.push(format!(
                "{}: in place {cell}, streamed {streamed}",
                row.what
            )),
            (Err(e), _) => wrong.push(format!("{} (in place): {e}", row.what)),
            (_, Err(e)) => wrong.push(format!("{} (streamed): {e}", row.what)),
        }
    }
    fs::remove_dir_all(OUTSIDE).unwrap();
    (text, wrong)
}

#[test]
fn hostile_archives_are_refused_or_confined_and_the_readme_says_so() {
    let (text, wrong) = table();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- hostile-archives -->\n")
        .expect("README marker")
        + "<!-- hostile-archives -->\n".len();
    let end = readme
        .find("<!-- /hostile-archives -->")
        .expect("README end marker");
    assert_eq!(
        &readme[start..end],
        text,
        "README table differs; paste:\n{text}"
    );
}
