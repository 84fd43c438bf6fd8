//! The README's recipes, run as written: each `<!-- recipe: NAME -->` block is taken from
//! README.md, with `http://example.com` pointed at a loopback server, `/` (or `$ROOT`) at
//! a temporary image root and `/tmp/` at a temporary directory; nothing else changes.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::podman::{Podman, podman_available};
use support::sysimage::{Image, Layer};

const PRELOAD: &str = "var/lib/atomic/preload";

fn readme() -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The code block of the README recipe `name`.
fn recipe(name: &str) -> String {
    let text = readme();
    let start = format!("<!-- recipe: {name} -->");
    let from = text
        .find(&start)
        .unwrap_or_else(|| panic!("README has no recipe {name}"));
    let block = &text[from + start.len()..];
    let block = &block[..block.find("<!-- /recipe -->").expect("recipe end")];
    let body = block.split_once("```").expect("a code block").1;
    let body = body.split_once('\n').expect("fence line").1;
    body[..body.rfind("```").expect("closing fence")].to_owned()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run a shell recipe with our helper first on PATH.
fn sh(script: &str, env: &[(&str, &Path)]) -> Output {
    let bin = support::helper().parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .arg("-ec")
        .arg(script)
        .env("PATH", path)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .output()
        .unwrap()
}

fn image_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("etc")).unwrap();
    root
}

fn busybox_image(tag: &str) -> Image {
    Image::new(tag, vec![Layer::new().busybox().bytes()])
}

/// Serves the files of `dir` by name on loopback; the server's base URL.
fn serve_dir(dir: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            match fs::read(dir.join(path.trim_start_matches('/'))) {
                Ok(body) => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(&body);
                }
                Err(_) => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                    );
                }
            }
        }
    });
    url
}

/// The kickstart `%post`, then the cloud-init override on top of what it staged.
#[test]
fn kickstart_post_and_cloud_init_override() {
    let served = tempfile::tempdir().unwrap();
    busybox_image("example.com/container:1").save(&served.path().join("container.tar.gz"));
    busybox_image("example.com/mysyscontainer:latest")
        .save(&served.path().join("syscontainer.tar.xz"));
    let url = serve_dir(served.path().to_owned());
    let root = image_root();
    let r = root.path();
    let tmp = tempfile::tempdir().unwrap();

    let script = recipe("kickstart")
        .replace("http://example.com", &url)
        .replace("--root / ", "--root \"$ROOT\" ")
        .replace("--root /\n", "--root \"$ROOT\"\n")
        .replace("/tmp/", "$TMPDIR/");
    assert!(
        !script.contains("--root /"),
        "every root replaced: {script}"
    );
    let out = sh(&script, &[("ROOT", r), ("TMPDIR", tmp.path())]);
    assert!(
        out.status.success(),
        "the kickstart recipe fails:\n{script}\n{}",
        text(&out)
    );
    assert!(r.join(PRELOAD).join("docker/container.tar.gz").is_file());
    assert!(
        r.join(PRELOAD)
            .join("docker/container.tar.gz.sha256")
            .is_file()
    );
    assert!(r.join(PRELOAD).join("ostree/syscontainer.tar.xz").is_file());
    assert!(
        r.join(PRELOAD)
            .join("ostree/syscontainer.tar.xz.sha256")
            .is_file()
    );
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        status.lines().any(|l| l.starts_with("mysyscontainer")
            && l.contains("system")
            && l.contains("syscontainer.tar.xz")),
        "{status}"
    );
    let units = |root: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_atomic-preload-generator"))
            .args(["--dry-run", "--root"])
            .arg(root)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = units(r);
    assert!(before.contains("install-system --preload-dir=/var/lib/atomic/preload --name=mysyscontainer --image=example.com/mysyscontainer:latest\n"), "{before}");
    assert!(
        before.contains("start-system --name=mysyscontainer"),
        "{before}"
    );

    // cloud-init's write_files, as the recipe says: appended (`append: true`), else the
    // config replaced.
    let yaml = recipe("cloud-init");
    let content: String = yaml
        .split_once("content: |\n")
        .expect("a literal block")
        .1
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("      ").unwrap_or(l)))
        .collect();
    let path = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("- path: "))
        .expect("a path");
    let config = r.join(path.trim_start_matches('/'));
    if yaml.lines().any(|l| l.trim() == "append: true") {
        let mut appended = fs::read_to_string(&config).unwrap();
        appended.push_str(&content);
        fs::write(&config, appended).unwrap();
    } else {
        fs::write(&config, &content).unwrap();
    }
    let validate = Command::new(support::helper())
        .arg("validate")
        .arg(&config)
        .output()
        .unwrap();
    assert!(validate.status.success(), "{content}\n{}", text(&validate));
    let after = units(r);
    assert!(after.contains("--set=VAR1=nondefaultval1"), "{after}");
    assert!(
        !after.contains("start-system"),
        "not started any more: {after}"
    );
}

/// The golden-image walkthrough, with an image in a private Podman's storage.
#[test]
fn golden_image_from_the_build_machines_engine() {
    if !podman_available() {
        return;
    }
    let podman = Podman::new();
    let src = tempfile::tempdir().unwrap();
    let archive = src.path().join("app.tar");
    busybox_image("example.com/app:1").save(&archive);
    podman.ok(&["load", "-q", "-i", archive.to_str().unwrap()]);
    let root = image_root();
    let tmp = tempfile::tempdir().unwrap();
    let script = recipe("golden-image").replace("/tmp/", "$TMPDIR/");
    let mut env: Vec<(&str, &Path)> = vec![("ROOT", root.path()), ("TMPDIR", tmp.path())];
    let podman_env = podman.env();
    env.extend(podman_env.iter().map(|(k, v)| (*k, v.as_path())));
    let out = sh(&script, &env);
    assert!(
        out.status.success(),
        "the golden-image recipe fails:\n{script}\n{}",
        text(&out)
    );
    let staged = root
        .path()
        .join(PRELOAD)
        .join("docker/example.com_app_1.tar.zst");
    assert!(staged.is_file() && staged.with_extension("zst.sha256").is_file());
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("app ") && l.contains("example.com_app_1.tar.zst sha256:")),
        "{status}"
    );
}
