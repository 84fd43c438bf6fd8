//! URL sources against hostile and broken loopback servers: every wait is bounded (the
//! options set how long), redirects are checked, credentials are never printed, and an
//! interrupted stage leaves the root as it was. One row per server; the same table is in
//! the README (between the `hostile-servers` markers), and this test fails if the two
//! differ.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::sysimage::{Image, Layer};
use support::{helper, text};

/// What the server does with request number `n` (from 0) for `path`.
type Behaviour = fn(n: usize, path: &str, stream: &mut TcpStream, archive: &[u8]);

struct Row {
    what: &'static str,
    serve: Behaviour,
    /// The URL's path, after `http://` (`HOST` = the server's address).
    url: &'static str,
    /// stage's options besides the URL.
    options: &'static [&'static str],
    /// What stage prints last (`HOST` = the server's address), or "staged".
    says: &'static str,
}

fn ok(stream: &mut TcpStream, body: &[u8]) {
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(body);
}

fn redirect(stream: &mut TcpStream, location: Option<&str>) {
    let header = location.map_or(String::new(), |l| format!("Location: {l}\r\n"));
    let _ = write!(
        stream,
        "HTTP/1.1 302 Found\r\n{header}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            what: "accepts, never answers",
            serve: |_, _, _, _| std::thread::sleep(Duration::from_secs(30)),
            url: "HOST/app.tar",
            options: &["--stall-timeout", "1"],
            says: "http://HOST/app.tar: the server sent nothing for 1 s (--stall-timeout) (after 3 attempts)",
        },
        Row {
            what: "sends half the body, then stalls",
            serve: |_, _, s, archive| {
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    archive.len()
                );
                let _ = s.write_all(&archive[..archive.len() / 2]);
                std::thread::sleep(Duration::from_secs(30));
            },
            url: "HOST/app.tar",
            options: &["--stall-timeout", "1"],
            says: "http://HOST/app.tar: transfer failed: the server sent nothing for 1 s (--stall-timeout) (after 3 attempts)",
        },
        Row {
            what: "trickles a byte every 0.3 s",
            serve: |_, _, s, archive| {
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    archive.len()
                );
                for byte in archive {
                    if s.write_all(&[*byte]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
            },
            url: "HOST/app.tar",
            options: &["--max-time", "2"],
            says: "http://HOST/app.tar: transfer failed: not done within 2 s (--max-time) (after 1 attempt)",
        },
        Row {
            what: "redirects to `file:///etc/passwd`",
            serve: |_, _, s, _| redirect(s, Some("file:///etc/passwd")),
            url: "HOST/app.tar",
            options: &[],
            says: "http://HOST/app.tar: HTTP 302 redirect to file:///etc/passwd: only http:// and https:// are followed",
        },
        Row {
            what: "redirects without a `Location`",
            serve: |_, _, s, _| redirect(s, None),
            url: "HOST/app.tar",
            options: &[],
            says: "http://HOST/app.tar: HTTP 302 redirect without a usable Location header",
        },
        Row {
            what: "redirects to itself",
            serve: |_, path, s, _| redirect(s, Some(path)),
            url: "HOST/app.tar",
            options: &[],
            says: "http://HOST/app.tar: more than 5 redirects",
        },
        Row {
            what: "redirects (relative `Location`) to the archive",
            serve: |_, path, s, archive| {
                if path == "/dl/app.tar" {
                    ok(s, archive)
                } else {
                    redirect(s, Some("dl/app.tar"))
                }
            },
            url: "HOST/app.tar",
            options: &[],
            says: "staged",
        },
        Row {
            what: "answers 404 to a URL with credentials",
            serve: |_, _, s, _| {
                let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            },
            url: "builder:s3cret@HOST/app.tar",
            options: &[],
            says: "http://***@HOST/app.tar: HTTP 404",
        },
    ]
}

/// A loopback server running `serve` for each connection, in its own thread.
fn start(serve: Behaviour, archive: Arc<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let archive = archive.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let path = request.split(' ').nth(1).unwrap_or("/").to_owned();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                serve(n, &path, &mut stream, &archive);
            });
        }
    });
    host
}

fn image_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("etc")).unwrap();
    root
}

/// Every path under `dir` (what "as it was" compares).
fn tree(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        out.insert(path.clone(), meta.len());
        if meta.is_dir() {
            out.extend(tree(&path));
        }
    }
    out
}

fn markdown(rows: &[Row]) -> String {
    let mut t = String::from("| the server | `atomic-preload stage` says |\n|---|---|\n");
    for row in rows {
        let options = if row.options.is_empty() {
            String::new()
        } else {
            format!(" (`{}`)", row.options.join(" "))
        };
        t.push_str(&format!("| {}{options} | `{}` |\n", row.what, row.says));
    }
    t
}

fn archive_bytes() -> Arc<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.tar");
    Image::new(
        "test/dl:1",
        vec![Layer::new().file("f", b"x", 0o644).bytes()],
    )
    .save(&path);
    Arc::new(fs::read(path).unwrap())
}

#[test]
fn every_wait_is_bounded_and_every_redirect_checked() {
    let archive = archive_bytes();
    let mut wrong = Vec::new();
    for row in rows() {
        let host = start(row.serve, archive.clone());
        let root = image_root();
        let before = tree(root.path());
        let url = format!("http://{}", row.url.replace("HOST", &host));
        let started = Instant::now();
        let out = Command::new("timeout")
            .args(["60"])
            .arg(helper())
            .args(["stage", "--root"])
            .arg(root.path())
            .args(row.options)
            .arg(&url)
            .output()
            .unwrap();
        let took = started.elapsed();
        let printed = text(&out);
        let last = printed
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .replace(&host, "HOST");
        let last = last.trim_start_matches("atomic-preload: ");
        let says = if out.status.success() { "staged" } else { last };
        if says != row.says {
            wrong.push(format!(
                "{}:\n  want {}\n  got  {says}\n{printed}",
                row.what, row.says
            ));
        }
        if out.status.code() == Some(124) {
            wrong.push(format!("{}: still running after 60 s", row.what));
        }
        if printed.contains("s3cret") {
            wrong.push(format!(
                "{}: the password was printed:\n{printed}",
                row.what
            ));
        }
        if !out.status.success() && tree(root.path()) != before {
            wrong.push(format!("{}: a failed stage changed the root", row.what));
        }
        eprintln!("{}: {:.1} s", row.what, took.as_secs_f64());
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// SIGTERM (or Ctrl-C) in the middle of a stalled download: the half-written dot-file and
/// the directories this run created are removed, and stage exits 143.
#[test]
fn an_interrupted_download_leaves_the_root_as_it_was() {
    let archive = archive_bytes();
    let host = start(
        |_, _, s, archive| {
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                archive.len()
            );
            let _ = s.write_all(&archive[..archive.len() / 2]);
            std::thread::sleep(Duration::from_secs(60));
        },
        archive,
    );
    for signal in ["TERM", "INT", "HUP"] {
        let root = image_root();
        let before = tree(root.path());
        let mut child = Command::new(helper())
            .args(["stage", "--root"])
            .arg(root.path())
            .arg(format!("http://{host}/app.tar"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let docker = root.path().join("var/lib/atomic/preload/docker");
        let started = Instant::now();
        let partial = loop {
            let found = fs::read_dir(&docker)
                .into_iter()
                .flatten()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with(".stage-"));
            if let Some(found) = found {
                break found.path();
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no dot-file appeared"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(partial.is_file());
        Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        let number = match signal {
            "TERM" => 15,
            "INT" => 2,
            _ => 1,
        };
        assert_eq!(status.code(), Some(128 + number), "SIG{signal}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "stage interrupted (signal {number}): nothing staged"
            )),
            "{stderr}"
        );
        assert_eq!(tree(root.path()), before, "SIG{signal} left files behind");
    }
}

#[test]
fn readme_lists_the_same_table() {
    support::assert_readme_lists("hostile-servers", &markdown(&rows()));
}
