//! `atomic-preload stage`: the image builder's side. Archives (local files, URLs, or
//! images saved from a local engine) go into `ROOT/var/lib/atomic/preload/docker/` (or
//! `ostree/` for system containers), each with its SHA-256 in a sidecar the load stage
//! checks; config entries are merged into `ROOT/var/lib/atomic/preload/config.yaml`.
//!
//! All or nothing: every source is fetched into a temporary file beside its destination,
//! hashed, checked (`--sha256`, and that it is an image archive), and the merged config
//! validated, before anything gets its final name. Any failure removes what this run
//! created, so ROOT is exactly as before.

mod containerd_store;

use crate::cli::StageArgs;
use crate::config::{self, Named, archive_problem};
use crate::runtime::digest::{self, hex};
use crate::runtime::{RuntimeError, io_err};
use crate::runtime::{durable, marks};
use crate::stages::system::{archive, checkout};
use crate::{generator, paths};
use std::fs::{self, File};
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where a source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Url(String),
    /// An image a local engine has: `docker-image:NAME`, `podman-image:NAME`.
    EngineImage {
        podman: bool,
        image: String,
    },
}

impl Source {
    pub fn parse(text: &str) -> Source {
        if let Some(image) = text.strip_prefix("docker-image:") {
            Source::EngineImage {
                podman: false,
                image: image.into(),
            }
        } else if let Some(image) = text.strip_prefix("podman-image:") {
            Source::EngineImage {
                podman: true,
                image: image.into(),
            }
        } else if text.starts_with("http://") || text.starts_with("https://") {
            Source::Url(text.into())
        } else {
            Source::File(text.into())
        }
    }

    /// The archive's file name in docker/ (or ostree/).
    pub fn archive_name(&self, compress: bool) -> Result<String, String> {
        let name = match self {
            Source::File(path) => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Source::Url(url) => {
                let path = url.split(['?', '#']).next().unwrap_or(url);
                path.rsplit('/').next().unwrap_or("").to_owned()
            }
            Source::EngineImage { image, .. } => {
                let stem: String = image
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let stem = stem.trim_start_matches(['.', '-', '_']).to_owned();
                if stem.is_empty() {
                    return Err(format!("{image:?} is not an image name"));
                }
                format!("{stem}{}", if compress { ".tar.zst" } else { ".tar" })
            }
        };
        match archive_problem(&name) {
            None => Ok(name),
            // The load stage only reads archives by these suffixes.
            Some(problem) => Err(problem.replacen("\"archive\"", "the archive's file name", 1)),
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Url(url) => redact(url),
            Source::EngineImage { podman, image } => {
                format!(
                    "{}-image:{image}",
                    if *podman { "podman" } else { "docker" }
                )
            }
        }
    }
}

/// What this run created, removed again unless the run gets to commit: when it fails
/// (the [`Undo`] guard is dropped) and when it is interrupted (SIGINT, SIGTERM, SIGHUP:
/// [`undo_on_signals`]). One per process, so the signal thread can reach it.
struct Created {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    /// Directory trees this run created whole (a new Podman image store).
    trees: Vec<PathBuf>,
    /// Existing directories that new ones were created in, with their times before.
    times: Vec<(PathBuf, fs::FileTimes)>,
    done: bool,
}

static CREATED: std::sync::Mutex<Created> = std::sync::Mutex::new(Created {
    files: Vec::new(),
    dirs: Vec::new(),
    trees: Vec::new(),
    times: Vec::new(),
    done: false,
});

fn created() -> std::sync::MutexGuard<'static, Created> {
    CREATED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Created {
    fn remove(&mut self) {
        if self.done {
            return;
        }
        // A removal that fails (an I/O error on a failing disk) is tried once more: a
        // failed stage must leave the root as it was.
        for file in self.files.drain(..) {
            let _ = fs::remove_file(&file).or_else(|_| fs::remove_file(&file));
        }
        for tree in self.trees.drain(..) {
            release_store_mount(&tree);
            let _ = fs::remove_dir_all(&tree).or_else(|_| fs::remove_dir_all(&tree));
        }
        for dir in self.dirs.drain(..).rev() {
            let _ = fs::remove_dir(dir);
        }
        for (dir, times) in self.times.drain(..).rev() {
            let _ = File::open(&dir).and_then(|d| d.set_times(times));
        }
    }
}

/// The guard of [`Created`]: what the run created goes again unless [`Undo::commit`]
/// succeeded.
struct Undo;

impl Drop for Undo {
    fn drop(&mut self) {
        created().remove();
    }
}

/// On SIGINT, SIGTERM or SIGHUP (an operator's Ctrl-C, a build system's timeout), what
/// the run created is removed before it exits (128 + the signal): a stage stopped in a
/// stalled download leaves no dot-file and no directory behind. A commit already under
/// way finishes first (it holds [`CREATED`]), and then nothing is removed. SIGKILL
/// cannot be caught: the next stage removes the dot-files a dead one left.
fn undo_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let mut created = created();
            if !created.done {
                created.remove();
                eprintln!("atomic-preload: stage interrupted (signal {signal}): nothing staged");
            }
            std::process::exit(128 + signal);
        }
    });
}

impl Undo {
    /// A file this run is about to create (its directory's times are kept, see
    /// [`Undo::keep_times`]).
    fn file(&self, path: PathBuf) {
        if let Some(dir) = path.parent() {
            self.keep_times(dir);
        }
        created().files.push(path);
    }

    /// Remember `dir`'s times (once) to put back if the run fails: a failed stage leaves
    /// the root as it was, directory mtimes included.
    fn keep_times(&self, dir: &Path) {
        let mut created = created();
        if created.times.iter().any(|(d, _)| d == dir) {
            return;
        }
        if let Ok(meta) = fs::metadata(dir)
            && let (Ok(accessed), Ok(modified)) = (meta.accessed(), meta.modified())
        {
            let times = fs::FileTimes::new()
                .set_accessed(accessed)
                .set_modified(modified);
            created.times.push((dir.to_owned(), times));
        }
    }

    fn tree(&self, path: PathBuf) {
        created().trees.push(path);
    }

    /// [`commit`] the renames; after it, nothing this run created is removed.
    fn commit(self, renames: &[(PathBuf, PathBuf)]) -> Result<(), RuntimeError> {
        let mut created = created();
        commit(renames)?;
        created.done = true;
        Ok(())
    }

    /// `create_dir_all`, remembering each directory it created.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.exists() {
            missing.push(d.to_owned());
            match d.parent() {
                Some(parent) => d = parent,
                None => break,
            }
        }
        // The existing directory the new ones go into gets its times back if they are
        // removed again.
        if !missing.is_empty() {
            self.keep_times(d);
        }
        for d in missing.into_iter().rev() {
            fs::create_dir(&d)?;
            created().dirs.push(d);
        }
        Ok(())
    }
}

/// One source, fetched and checked, under its temporary name.
struct Staged {
    name: String,
    kind: Kind,
    /// Loaded into the Podman image store (--podman-store), not kept as an archive.
    into_store: bool,
    temp: PathBuf,
    sha256: String,
    images: Vec<String>,
    indexed: Vec<archive::IndexedImage>,
}

fn usage(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Usage(message.into())
}

/// ROOT must be a root file system (an image being built, or `/`), not a typo.
/// `path` (as the image sees it) in the image root, its symlinks resolved inside the root
/// (see [`paths::under`]): nothing is read or written on the build machine.
fn in_root(root: &Path, path: &str) -> Result<PathBuf, RuntimeError> {
    paths::under(root, path).map_err(|e| usage(format!("{path} in --root {}: {e}", root.display())))
}

/// A destination is renamed over, so it must be a file (or a link, which the rename
/// replaces) or nothing: a directory or a device there is the operator's to move away.
fn check_destination(path: &Path) -> Result<(), RuntimeError> {
    let kind = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() || meta.is_symlink() => return Ok(()),
        Ok(meta) if meta.is_dir() => "a directory",
        Ok(_) => "a special file",
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    };
    Err(usage(format!(
        "{}: is {kind}, where a file is to go: move it away; nothing staged",
        path.display()
    )))
}

fn check_root(root: &Path) -> Result<(), RuntimeError> {
    if !root.is_dir() {
        return Err(usage(format!("--root {}: not a directory", root.display())));
    }
    if !root.join("etc").is_dir() {
        return Err(usage(format!(
            "--root {}: does not look like a root file system (it has no etc/)",
            root.display()
        )));
    }
    Ok(())
}

/// Problems of a config text as `FILE:LINE:COL: message` lines.
fn problems(text: &[u8], file: &str) -> Vec<String> {
    config::parse(text)
        .effective()
        .all_problems()
        .iter()
        .map(|p| p.display(file).to_string())
        .collect()
}

fn entry_names(text: &[u8]) -> Vec<String> {
    config::parse(text)
        .effective()
        .items
        .iter()
        .map(|item| match item {
            Named::Valid(e) => e.name.clone(),
            Named::Invalid { name, .. } => name.clone(),
        })
        .collect()
}

/// A config file given with `--config`, bounded like the generator's (never blocking on a
/// FIFO, never more than its size limit).
fn read_config_file(path: &Path) -> Result<Vec<u8>, RuntimeError> {
    crate::bounded::read(path, generator::CONFIG_SIZE_LIMIT).map_err(io_err(path))
}

/// The config file stage merges into, as it is now (empty when there is none).
fn current_config(existing: &Path) -> Result<String, RuntimeError> {
    let current = generator::read_config(existing)
        .map_err(|p| usage(p.display(&existing.display().to_string()).to_string()))?;
    String::from_utf8(current).map_err(|_| usage(format!("{} is not UTF-8", existing.display())))
}

/// The config after merging `addition` into `current` (the text of `existing`):
/// appended, so an entry with the same name replaces the earlier one, as at boot;
/// comments and order are kept; and the names it replaces. Both must be valid, but for
/// what `left` takes out of their problems.
fn merge_config(
    existing: &Path,
    current: &str,
    addition: &Addition,
    left: impl Fn(Vec<String>) -> Vec<String>,
) -> Result<(String, Vec<String>), RuntimeError> {
    let added = &addition.text;
    let shown = addition.file.display();
    let added_problems = left(problems(added.as_bytes(), &shown.to_string()));
    if !added_problems.is_empty() {
        return Err(usage(format!(
            "{shown} has problems, nothing staged:\n{}",
            added_problems.join("\n")
        )));
    }
    let replaced: Vec<String> = {
        let before = entry_names(current.as_bytes());
        entry_names(added.as_bytes())
            .into_iter()
            .filter(|n| before.contains(n))
            .collect()
    };
    let merged = if current.trim().is_empty() {
        added.clone()
    } else {
        let mut merged = current.to_owned();
        if !merged.ends_with('\n') {
            merged.push('\n');
        }
        merged.push_str(&format!("# Merged by atomic-preload stage from {shown}\n"));
        merged.push_str(added);
        merged
    };
    let merged_problems = left(problems(merged.as_bytes(), &existing.display().to_string()));
    if !merged_problems.is_empty() {
        return Err(usage(format!(
            "merging {shown} into {} would give a config with problems (merge by hand), nothing staged:\n{}",
            existing.display(),
            merged_problems.join("\n")
        )));
    }
    Ok((merged, replaced))
}

/// A writer that hashes what it writes.
struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// "name: 12.0 of 40.0 MB (30%)" on a terminal, at most every 250 ms.
struct Progress {
    what: String,
    total: Option<u64>,
    last: Option<Instant>,
    tty: bool,
}

impl Progress {
    fn new(what: &str, total: Option<u64>) -> Progress {
        Progress {
            what: what.into(),
            total,
            last: None,
            tty: io::stderr().is_terminal(),
        }
    }
    fn show(&mut self, done: u64, end: bool) {
        if !self.tty
            || !(end
                || self
                    .last
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(250)))
        {
            return;
        }
        let line = crate::runtime::notify::progress_text(&self.what, done, self.total);
        eprint!("\r\x1b[K{line}{}", if end { "\n" } else { "" });
        self.last = Some(Instant::now());
    }
}

/// Copy `from` into `to` (hashing), showing progress; the byte count.
fn copy_hashing(
    from: &mut dyn Read,
    to: &mut HashingWriter<File>,
    progress: &mut Progress,
) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        done += n as u64;
        progress.show(done, false);
    }
    progress.show(done, true);
    Ok(done)
}

fn create_temp(path: &Path) -> Result<HashingWriter<File>, RuntimeError> {
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path))?;
    Ok(HashingWriter {
        inner: file,
        hasher: sha2::Digest::new(),
        written: 0,
    })
}

fn finish(out: HashingWriter<File>, temp: &Path) -> Result<String, RuntimeError> {
    out.inner.sync_all().map_err(io_err(temp))?;
    Ok(hex(&sha2::Digest::finalize(out.hasher)))
}

const ATTEMPTS: u32 = 3;
/// Redirects one request follows.
const REDIRECTS: u32 = 5;

/// How long a download may wait (`--connect-timeout`, `--stall-timeout`, `--max-time`).
pub struct Limits {
    pub connect: Duration,
    /// No response, or no body data, for this long fails the attempt.
    pub stall: Duration,
    /// The whole source, retries included; `None`: no limit.
    pub max: Option<Duration>,
}

impl Limits {
    fn of(args: &StageArgs) -> Limits {
        Limits {
            connect: Duration::from_secs(args.connect_timeout),
            stall: Duration::from_secs(args.stall_timeout),
            max: (args.max_time > 0).then(|| Duration::from_secs(args.max_time)),
        }
    }

    /// What a timeout means, naming the option that sets it.
    fn explain(&self, timeout: ureq::Timeout) -> String {
        use ureq::Timeout::*;
        match timeout {
            Connect | Resolve => format!(
                "no connection within {} s (--connect-timeout)",
                self.connect.as_secs()
            ),
            Global => format!(
                "not done within {} s (--max-time)",
                self.max.unwrap_or_default().as_secs()
            ),
            _ => format!(
                "the server sent nothing for {} s (--stall-timeout)",
                self.stall.as_secs()
            ),
        }
    }
}

/// `url` with any `user:password@` shown as `***@`: messages must not print credentials.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// A `Location` resolved against the URL it answered: absolute, `//host/…`, `/path` or
/// relative to the current directory.
fn redirect_target(from: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let (scheme, rest) = from.split_once("://").unwrap_or(("http", from));
    if let Some(other_host) = location.strip_prefix("//") {
        return format!("{scheme}://{other_host}");
    }
    let path_at = rest.find('/').unwrap_or(rest.len());
    let origin = format!("{scheme}://{}", &rest[..path_at]);
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let path = rest[path_at..].split(['?', '#']).next().unwrap_or("");
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    format!("{origin}{dir}{location}")
}

/// Why an attempt failed, and whether another can help.
enum Failure {
    Retry(String),
    Final(String),
}

/// `GET url`, following up to [`REDIRECTS`] redirects ourselves so each target is checked:
/// only `http://` and `https://` are followed, and a broken `Location` says so.
fn get(
    agent: &ureq::Agent,
    url: &str,
    limits: &Limits,
) -> Result<ureq::http::Response<ureq::Body>, Failure> {
    let mut url = url.to_owned();
    for _ in 0..=REDIRECTS {
        let response = match agent.get(&url).call() {
            Ok(response) => response,
            // 4xx: retrying will not help.
            Err(ureq::Error::StatusCode(code)) if (400..500).contains(&code) => {
                return Err(Failure::Final(format!("HTTP {code}")));
            }
            Err(ureq::Error::Timeout(timeout)) => {
                return Err(Failure::Retry(limits.explain(timeout)));
            }
            Err(ureq::Error::BadUri(uri)) => {
                return Err(Failure::Final(format!(
                    "not a usable URL: {}",
                    redact(&uri)
                )));
            }
            Err(e) => return Err(Failure::Retry(e.to_string())),
        };
        let status = response.status().as_u16();
        if !(300..400).contains(&status) {
            return Ok(response);
        }
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|l| !l.is_empty());
        let Some(location) = location else {
            return Err(Failure::Final(format!(
                "HTTP {status} redirect without a usable Location header"
            )));
        };
        let next = redirect_target(&url, location);
        if !(next.starts_with("http://") || next.starts_with("https://")) {
            return Err(Failure::Final(format!(
                "HTTP {status} redirect to {}: only http:// and https:// are followed",
                redact(&next)
            )));
        }
        url = next;
    }
    Err(Failure::Final(format!("more than {REDIRECTS} redirects")))
}

/// Download `url` into `temp`: streamed, checked against Content-Length, retried from the
/// start (the file truncated) up to [`ATTEMPTS`] times when the transfer fails. Every
/// wait is bounded: the connection by `limits.connect`, the response and every read of
/// the body by `limits.stall`, the whole source (retries included) by `limits.max`.
fn download(url: &str, temp: &Path, name: &str, limits: &Limits) -> Result<String, RuntimeError> {
    let shown = redact(url);
    let deadline = limits.max.map(|max| Instant::now() + max);
    let mut last_error = String::new();
    let mut tried = 0;
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            eprintln!("{shown}: {last_error}; retrying ({attempt} of {ATTEMPTS})");
            std::thread::sleep(Duration::from_secs(u64::from(attempt - 1)));
            let _ = fs::remove_file(temp);
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            last_error = limits.explain(ureq::Timeout::Global);
            break;
        }
        tried = attempt;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(limits.connect))
            .timeout_recv_response(Some(limits.stall))
            .timeout_per_read(Some(limits.stall))
            // No limit on the body as such: a multi-gigabyte archive takes what it takes,
            // as long as data keeps coming (and --max-time, when given, is not reached).
            .timeout_recv_body(None)
            .timeout_global(left)
            .max_redirects(0)
            // The system's CA certificates (a builder's own CA for an internal server works).
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                    .build(),
            )
            .build()
            .into();
        let response = match get(&agent, url, limits) {
            Ok(response) => response,
            Err(Failure::Final(message)) => {
                return Err(RuntimeError::Fetch(format!("{shown}: {message}")));
            }
            Err(Failure::Retry(message)) => {
                last_error = message.replace(url, &shown);
                continue;
            }
        };
        let length = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut out = create_temp(temp)?;
        let mut body = response.into_body();
        let mut reader = body.as_reader();
        let mut progress = Progress::new(name, length);
        match copy_hashing(&mut reader, &mut out, &mut progress) {
            Ok(n) if length.is_none_or(|l| l == n) => return finish(out, temp),
            Ok(n) => last_error = format!("got {n} of {} bytes", length.unwrap_or(0)),
            Err(e) if e.kind() == io::ErrorKind::StorageFull => {
                return Err(io_err(temp)(e));
            }
            Err(e) => {
                let timeout = e.get_ref().and_then(|inner| match inner.downcast_ref() {
                    Some(ureq::Error::Timeout(timeout)) => Some(*timeout),
                    _ => None,
                });
                // Out of time: another attempt could not finish either.
                if let Some(global @ ureq::Timeout::Global) = timeout {
                    last_error = format!("transfer failed: {}", limits.explain(global));
                    break;
                }
                last_error = match timeout {
                    Some(timeout) => format!("transfer failed: {}", limits.explain(timeout)),
                    None if e.kind() == io::ErrorKind::TimedOut => format!(
                        "transfer failed: {}",
                        limits.explain(ureq::Timeout::PerRead)
                    ),
                    None => format!("transfer failed: {e}"),
                }
            }
        }
    }
    let attempts = if tried == 1 { "attempt" } else { "attempts" };
    Err(RuntimeError::Fetch(format!(
        "{shown}: {last_error} (after {tried} {attempts})"
    )))
}

/// `docker save` / `podman save` of a local image into `temp`, zstd-compressed unless
/// `compress` is off.
fn save_image(
    client: &Path,
    podman: bool,
    image: &str,
    temp: &Path,
    compress: bool,
) -> Result<String, RuntimeError> {
    let mut cmd = Command::new(client);
    cmd.arg("save");
    if podman {
        cmd.args(["--format", "docker-archive"]);
    }
    let mut child = cmd
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RuntimeError::Spawn {
            program: client.display().to_string(),
            source,
        })?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let out = create_temp(temp)?;
    let mut progress = Progress::new(&format!("saving {image}"), None);
    let copied = if compress {
        zstd::stream::write::Encoder::new(out, 3).and_then(|mut encoder| {
            // Several threads: saving is bound by compression otherwise.
            let threads = std::thread::available_parallelism().map_or(1, usize::from);
            let _ = encoder.multithread(threads as u32);
            let mut buf = vec![0u8; 1 << 20];
            let mut done = 0;
            loop {
                let n = stdout.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                encoder.write_all(&buf[..n])?;
                done += n as u64;
                progress.show(done, false);
            }
            progress.show(done, true);
            encoder.finish()
        })
    } else {
        let mut out = out;
        copy_hashing(&mut stdout, &mut out, &mut progress).map(|_| out)
    };
    let status = child.wait().map_err(|source| RuntimeError::Spawn {
        program: client.display().to_string(),
        source,
    })?;
    let errors = errors.join().unwrap_or_default();
    if !status.success() {
        return Err(RuntimeError::Fetch(format!(
            "{} save {image}: {}",
            client.display(),
            errors.trim().lines().last().unwrap_or("failed")
        )));
    }
    let out = copied.map_err(io_err(temp))?;
    finish(out, temp)
}

/// Fetch one source into `temp`; its SHA-256.
fn fetch(
    args: &StageArgs,
    source: &Source,
    temp: &Path,
    name: &str,
) -> Result<String, RuntimeError> {
    match source {
        Source::File(path) => {
            // Opened without blocking: a FIFO given as SRC is refused, not waited on.
            let mut from = File::options()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                .open(path)
                .map_err(io_err(path))?;
            if !from.metadata().map_err(io_err(path))?.is_file() {
                return Err(usage(format!("{}: not a regular file", path.display())));
            }
            let total = from.metadata().ok().map(|m| m.len());
            let mut out = create_temp(temp)?;
            let mut progress = Progress::new(name, total);
            copy_hashing(&mut from, &mut out, &mut progress).map_err(|e| {
                // A read error is the source's, a write error the destination's.
                io_err(temp)(e)
            })?;
            finish(out, temp)
        }
        Source::Url(url) => download(url, temp, name, &Limits::of(args)),
        Source::EngineImage { podman, image } => {
            let client = if *podman { &args.podman } else { &args.docker };
            save_image(client, *podman, image, temp, args.compress == "zstd")
        }
    }
}

/// The temp name of `to` for this run: a dot-file (the load stage and the generator skip
/// those) with our PID, so [`remove_stale_temps`] knows whose it is.
fn temp_beside(to: &Path, suffix: &str) -> PathBuf {
    let name = to.file_name().unwrap_or_default().to_string_lossy();
    to.with_file_name(format!(".stage-{}-{name}{suffix}", std::process::id()))
}

/// Temp files a stage that was killed left behind (`.stage-PID-…` of a PID that is no
/// longer running); a stage that is still running keeps its own.
fn remove_stale_temps(dirs: &[&Path]) {
    for dir in dirs {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(".stage-")
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                // A staged checkout under way is a directory.
                let _ = fs::remove_file(entry.path()).or_else(|_| fs::remove_dir_all(entry.path()));
            }
        }
    }
}

/// Rename every temp file over its destination, all or nothing: an existing destination
/// is hard-linked to a backup name first, so when a rename fails every destination gets
/// its old content back (or goes away if it had none). Each rename is followed by an
/// fsync of its directory.
fn commit(renames: &[(PathBuf, PathBuf)]) -> Result<(), RuntimeError> {
    let mut done: Vec<(&Path, Option<PathBuf>)> = Vec::new();
    let mut result = Ok(());
    for (from, to) in renames {
        let backup = temp_beside(to, ".old");
        // A directory (a staged checkout) is moved aside; a file is hard-linked, so its
        // name never goes missing.
        let is_dir = fs::symlink_metadata(to).is_ok_and(|m| m.is_dir());
        let kept = if is_dir {
            durable::rename(to, &backup)
        } else {
            fs::hard_link(to, &backup)
        };
        let backup = match kept {
            Ok(()) => Some(backup),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                result = Err(io_err(to)(e));
                break;
            }
        };
        done.push((to, backup));
        if let Err(e) = durable::rename(from, to) {
            result = Err(io_err(to)(e));
            break;
        }
    }
    for (to, backup) in done.iter().rev() {
        match backup {
            // Renaming a backup over the hard link it was made from does nothing (the
            // destination whose rename failed), so the backup is removed after it either way.
            Some(backup) => {
                if result.is_err() {
                    if fs::symlink_metadata(backup).is_ok_and(|m| m.is_dir()) {
                        // The new directory, if it got in, makes way for the old one.
                        let _ = fs::remove_dir_all(to);
                    }
                    let _ = durable::rename(backup, to);
                }
                let _ = fs::remove_file(backup).or_else(|_| fs::remove_dir_all(backup));
            }
            None if result.is_err() => {
                let _ = durable::remove_file(to).or_else(|_| fs::remove_dir_all(to));
            }
            None => {}
        }
    }
    result
}

/// Staged checkouts of an archive this run replaced, other than the ones it made: no
/// install would use them again (their record names the old archive's digest). After the
/// commit: a crash before this leaves them, and they are passed over as stale.
fn remove_stale_checkouts(staged: &[Staged], renames: &Renames, places: &Places) {
    let replaced: Vec<&str> = staged
        .iter()
        .filter(|s| s.kind == Kind::System)
        .map(|s| s.name.as_str())
        .collect();
    let Ok(listed) = checkout::list(&places.preload) else {
        return;
    };
    for listed in listed {
        let made_now = renames.iter().any(|(_, to)| to == &listed.dir);
        if let Ok(record) = &listed.record
            && !made_now
            && replaced.contains(&record.archive.as_str())
        {
            println!(
                "removed the checkout of {} staged from the earlier {} ({})",
                record.tags.join(", "),
                record.archive,
                listed.dir.display()
            );
            let _ = fs::remove_dir_all(&listed.dir);
        }
    }
}

/// Every tagged image of a staged system archive checked out into a temporary directory
/// under checkouts/ (its rootfs, then its record, then a sync), with the rename that puts
/// it under its image ID added to `renames` (once per image: another archive of the run
/// holding the same image has it checked out already).
fn check_out(
    s: &Staged,
    places: &Places,
    undo: &Undo,
    renames: &mut Renames,
) -> Result<(), RuntimeError> {
    undo.create_dir_all(&places.checkouts)
        .map_err(io_err(&places.checkouts))?;
    for image in s.indexed.iter().filter(|i| !i.tags.is_empty()) {
        let hex = image.id.trim_start_matches("sha256:");
        let to = places.checkouts.join(hex);
        if renames.iter().any(|(_, t)| t == &to) {
            continue;
        }
        let temp = temp_beside(&to, "");
        undo.tree(temp.clone());
        println!("checking out {} ({})", image.tags[0], image.id);
        let (_, id) = checkout::into_dir(&s.temp, &image.tags[0], image, &temp, &places.checkouts)?;
        let rootfs = temp.join("rootfs");
        let tree = checkout::tree(&rootfs).map_err(io_err(&rootfs))?;
        let size = fs::metadata(&s.temp).map_err(io_err(&s.temp))?.len();
        let record = checkout::Record {
            image_id: id,
            tags: image.tags.clone(),
            archive: s.name.clone(),
            archive_size: size,
            archive_sha256: s.sha256.clone(),
            tree,
        };
        let bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
        // The tree reaches the disk before the record that vouches for it.
        let fd = File::open(&temp).map_err(io_err(&temp))?;
        rustix::fs::syncfs(&fd).map_err(|e| io_err(&temp)(e.into()))?;
        write_file(&temp.join(checkout::RECORD), &bytes)?;
        fd.sync_all().map_err(io_err(&temp))?;
        renames.push((temp, to));
    }
    Ok(())
}

/// Where a source goes: `docker/` (an engine loads it) or `ostree/` (a system container).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Docker,
    System,
}

impl Kind {
    fn subdir(self) -> &'static str {
        match self {
            Kind::Docker => "docker",
            Kind::System => "ostree",
        }
    }

    fn of(entry: &config::Entry) -> Kind {
        if entry.is_system() {
            Kind::System
        } else {
            Kind::Docker
        }
    }

    /// For messages: "the system-container archives".
    fn archives(self) -> &'static str {
        match self {
            Kind::Docker => "the archives for docker/",
            Kind::System => "the system-container archives (ostree/)",
        }
    }
}

/// One source as given: where from, where it goes, and the digest it must have.
struct Wanted {
    source: Source,
    kind: Kind,
    name: String,
    expected: Option<String>,
}

/// A SHA-256 as `--sha256` and `#sha256=` take it (`sha256:` prefix allowed).
fn parse_sha256(given: &str, what: &str) -> Result<String, RuntimeError> {
    let h = given
        .strip_prefix("sha256:")
        .unwrap_or(given)
        .to_ascii_lowercase();
    if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(h)
    } else {
        Err(usage(format!(
            "{what} {given}: not a SHA-256 digest (64 hex digits)"
        )))
    }
}

/// `SRC#sha256=HEX` → (`SRC`, its digest), as pip takes a URL's: the fragment is the
/// expected digest, and a URL is fetched without it.
fn split_digest(text: &str) -> Result<(&str, Option<String>), RuntimeError> {
    match text.rsplit_once("#sha256=") {
        None => Ok((text, None)),
        Some((source, hex)) => Ok((source, Some(parse_sha256(hex, "#sha256=")?))),
    }
}

/// Every source of the run: SRCs (docker/, or ostree/ with --system), then --system-src.
fn wanted(args: &StageArgs) -> Result<Vec<Wanted>, RuntimeError> {
    if !args.sha256.is_empty() && args.sha256.len() != args.sources.len() {
        return Err(usage(format!(
            "--sha256 is given {} time(s) for {} source(s): give it once per SRC, in order (or as SRC#sha256=HEX)",
            args.sha256.len(),
            args.sources.len()
        )));
    }
    let given: Vec<String> = args
        .sha256
        .iter()
        .map(|h| parse_sha256(h, "--sha256"))
        .collect::<Result<_, _>>()?;
    let positional = if args.system {
        Kind::System
    } else {
        Kind::Docker
    };
    let all = args
        .sources
        .iter()
        .map(|s| (s, positional))
        .chain(args.system_sources.iter().map(|s| (s, Kind::System)));
    let mut wanted: Vec<Wanted> = Vec::new();
    for (i, (text, kind)) in all.enumerate() {
        let (text, own) = split_digest(text)?;
        let expected = match (given.get(i), own) {
            (Some(a), Some(b)) if *a != b => {
                return Err(usage(format!(
                    "{}: --sha256 {a} and #sha256={b} disagree",
                    redact(text)
                )));
            }
            (a, b) => a.cloned().or(b),
        };
        let source = Source::parse(text);
        // A FIFO or device as SRC is refused before anything reads it (it could block).
        // A missing one too, before any directory is created.
        if let Source::File(path) = &source {
            match fs::metadata(path) {
                Ok(meta) if !meta.is_file() => {
                    return Err(usage(format!("{}: not a regular file", path.display())));
                }
                Err(e) => return Err(io_err(path)(e)),
                Ok(_) => {}
            }
        }
        let name = source
            .archive_name(args.compress == "zstd")
            .map_err(|problem| usage(format!("{}: {problem}", source.describe())))?;
        if wanted.iter().any(|w| w.kind == kind && w.name == name) {
            return Err(usage(format!(
                "{}: two sources would both be staged as {}/{name}",
                source.describe(),
                kind.subdir()
            )));
        }
        wanted.push(Wanted {
            source,
            kind,
            name,
            expected,
        });
    }
    Ok(wanted)
}

/// A `--config` entry without `image:` that no earlier entry gives one: stage fills it
/// in from the archives of its kind staged in the same run.
struct Fill {
    index: usize,
    name: String,
    kind: Kind,
    position: config::Position,
}

/// The config file given with --config, and what stage is to fill in.
struct Addition {
    file: PathBuf,
    text: String,
    fills: Vec<Fill>,
}

impl Addition {
    /// Read and check `file` against the config it is merged into (`current`): the
    /// entries to fill are those whose kind has sources in this run (the others stay the
    /// errors they are).
    fn read(file: &Path, current: &str, kinds: &[Kind]) -> Result<Addition, RuntimeError> {
        let text = String::from_utf8(read_config_file(file)?)
            .map_err(|_| usage(format!("{}: the config is not UTF-8", file.display())))?;
        let mut earlier = entry_names(current.as_bytes());
        let mut fills = Vec::new();
        for (index, item) in config::parse(text.as_bytes()).items.into_iter().enumerate() {
            let name = match item {
                config::Item::WithoutImage { entry, position } => {
                    let kind = Kind::of(&entry);
                    if !earlier.contains(&entry.name) && kinds.contains(&kind) {
                        fills.push(Fill {
                            index,
                            name: entry.name.clone(),
                            kind,
                            position,
                        });
                    }
                    Some(entry.name)
                }
                config::Item::Valid(entry) => Some(entry.name),
                config::Item::Invalid(invalid) => invalid.name,
            };
            earlier.extend(name);
        }
        let addition = Addition {
            file: file.to_owned(),
            text,
            fills,
        };
        // Written in a form the image can be added to (found now, before any download).
        for fill in &addition.fills {
            if config::with_image(&addition.text, fill.index, "placeholder.invalid/x").is_none() {
                return Err(usage(format!(
                    "{}: entry {:?} has no \"image\", and stage can only add one to an entry whose \"name\" is a plain key of a block or flow mapping: give it \"image:\"; nothing staged",
                    addition.at(fill),
                    fill.name
                )));
            }
        }
        Ok(addition)
    }

    fn at(&self, fill: &Fill) -> String {
        format!(
            "{}:{}:{}",
            self.file.display(),
            fill.position.line,
            fill.position.column
        )
    }

    /// The text with every entry to fill given the one image of its kind's archives
    /// (`images`: the tags each staged archive of that kind holds), and what was filled.
    fn filled(
        &self,
        images: impl Fn(Kind) -> Vec<String>,
    ) -> Result<(String, Vec<String>), RuntimeError> {
        let mut text = self.text.clone();
        let mut said = Vec::new();
        for fill in &self.fills {
            // Each image once (two archives may hold the same), in staging order.
            let mut candidates: Vec<String> = Vec::new();
            for image in images(fill.kind) {
                if !candidates.contains(&image) {
                    candidates.push(image);
                }
            }
            let [image] = candidates.as_slice() else {
                let found = if candidates.is_empty() {
                    "no tagged image".to_owned()
                } else {
                    format!("{} images ({})", candidates.len(), candidates.join(", "))
                };
                return Err(usage(format!(
                    "{}: entry {:?} has no \"image\", and {} staged with it hold {found}: give it \"image:\"; nothing staged",
                    self.at(fill),
                    fill.name,
                    fill.kind.archives()
                )));
            };
            text = config::with_image(&text, fill.index, image).ok_or_else(|| {
                usage(format!(
                    "{}: entry {:?}: {image:?} cannot be its \"image\"; give it one; nothing staged",
                    self.at(fill),
                    fill.name
                ))
            })?;
            said.push(format!("{} gets image: {image}", fill.name));
        }
        Ok((text, said))
    }

    /// What `problems` says of a config, without the missing images stage fills in.
    fn problems_left(&self, problems: Vec<String>) -> Vec<String> {
        problems
            .into_iter()
            .filter(|p| {
                !self
                    .fills
                    .iter()
                    .any(|f| p.ends_with(&config::no_image(&f.name)))
            })
            .collect()
    }
}

/// Where a run writes, every path resolved inside ROOT.
struct Places {
    preload: PathBuf,
    docker: PathBuf,
    ostree: PathBuf,
    checkouts: PathBuf,
    config: PathBuf,
    podman_store: PathBuf,
}

impl Places {
    fn of(root: &Path) -> Result<Places, RuntimeError> {
        let subdir =
            |kind: Kind| in_root(root, &format!("{}/{}", paths::PRELOAD_DIR, kind.subdir()));
        Ok(Places {
            preload: in_root(root, paths::PRELOAD_DIR)?,
            docker: subdir(Kind::Docker)?,
            ostree: subdir(Kind::System)?,
            checkouts: in_root(
                root,
                &format!("{}/{}", paths::PRELOAD_DIR, checkout::STAGED_DIR),
            )?,
            config: in_root(root, paths::CONFIG_FILE)?,
            podman_store: in_root(root, PODMAN_STORE)?,
        })
    }

    fn dir(&self, kind: Kind) -> &Path {
        match kind {
            Kind::Docker => &self.docker,
            Kind::System => &self.ostree,
        }
    }
}

/// Temporary files and the names they get at the commit.
type Renames = Vec<(PathBuf, PathBuf)>;

/// The config's merged text, the entries it replaced, and the images filled in.
type Merged = (String, Vec<String>, Vec<String>);

pub fn run(args: &StageArgs) -> Result<(), RuntimeError> {
    if args.sources.is_empty() && args.system_sources.is_empty() && args.config.is_none() {
        return Err(usage(
            "nothing to stage: give archives (SRC, --system-src) and/or --config FILE",
        ));
    }
    let wanted = wanted(args)?;
    check_root(&args.root)?;
    if args.checkout {
        if !wanted.iter().any(|w| w.kind == Kind::System) {
            return Err(usage(
                "--checkout checks system containers out: give --system or --system-src",
            ));
        }
        if !rustix::process::geteuid().is_root() {
            return Err(usage(
                "--checkout needs root (a checkout keeps its files' owners)",
            ));
        }
    }
    let places = Places::of(&args.root)?;
    // Destinations that are not files stop the run before any download.
    for w in wanted.iter().filter(|w| !into_store(args, w)) {
        let to = places.dir(w.kind).join(&w.name);
        check_destination(&to)?;
        check_destination(&digest::sidecar_path(&to))?;
    }
    // The config first: a bad one stops the run before any download.
    let addition = match &args.config {
        Some(file) => Some(read_addition(file, &places, &wanted)?),
        None => None,
    };
    if args.dry_run {
        return dry_run(args, &wanted, &places, addition.as_ref());
    }

    remove_stale_temps(&[
        &places.docker,
        &places.ostree,
        &places.checkouts,
        &places.preload,
        &in_root(&args.root, "/etc/containers")?,
    ]);
    undo_on_signals();
    let undo = Undo;
    let staged = fetch_all(args, &wanted, &places, &undo)?;
    // The entries without image get the one their kind's archives hold; then the merged
    // config is checked whole.
    let merged = match &addition {
        Some((addition, current)) => Some(merge_filled(addition, current, &staged, &places)?),
        None => None,
    };
    let (renames, store) = prepare_commit(args, &staged, merged.as_ref(), &places, &undo)?;
    // A load or install reading these archives on a live host finishes first (always
    // docker/ before ostree/, so two stages never wait on each other).
    let _docker = marks::lock_archives(&places.docker, true).map_err(io_err(&places.docker))?;
    let _ostree = marks::lock_archives(&places.ostree, true).map_err(io_err(&places.ostree))?;
    undo.commit(&renames)?;
    remove_stale_checkouts(&staged, &renames, &places);
    report(args, &staged, store.as_deref(), merged.as_ref(), &places);
    Ok(())
}

/// With --podman-store or --containerd-store, Docker-kind sources go into that store,
/// not into docker/.
fn into_store(args: &StageArgs, w: &Wanted) -> bool {
    (args.podman_store || args.containerd_store) && w.kind == Kind::Docker
}

/// The --config file and the config it merges into, checked as they will be merged but
/// for the images still to fill in.
fn read_addition(
    file: &Path,
    places: &Places,
    wanted: &[Wanted],
) -> Result<(Addition, String), RuntimeError> {
    check_destination(&places.config)?;
    let current = current_config(&places.config)?;
    let kinds: Vec<Kind> = wanted.iter().map(|w| w.kind).collect();
    let addition = Addition::read(file, &current, &kinds)?;
    merge_config(&places.config, &current, &addition, |p| {
        addition.problems_left(p)
    })?;
    Ok((addition, current))
}

/// Every source fetched into its temporary file beside its destination, hashed, its
/// digest checked and its images indexed.
fn fetch_all(
    args: &StageArgs,
    wanted: &[Wanted],
    places: &Places,
    undo: &Undo,
) -> Result<Vec<Staged>, RuntimeError> {
    for kind in [Kind::Docker, Kind::System] {
        if wanted.iter().any(|w| w.kind == kind) {
            let dir = places.dir(kind);
            undo.create_dir_all(dir).map_err(io_err(dir))?;
        }
    }
    let mut staged = Vec::new();
    for w in wanted {
        // The temporary name keeps the archive's suffix (the index reads by it) and starts
        // with a dot (the load stage ignores such files).
        let temp = temp_beside(&places.dir(w.kind).join(&w.name), "");
        undo.file(temp.clone());
        let sha256 = fetch(args, &w.source, &temp, &w.name)?;
        if let Some(want) = &w.expected
            && want != &sha256
        {
            return Err(RuntimeError::Fetch(format!(
                "{}: SHA-256 is {sha256}, not the expected {want}; nothing staged",
                w.source.describe()
            )));
        }
        let images = archive::index(&temp).map_err(|e| {
            RuntimeError::Fetch(format!(
                "{}: not an image archive ({}); nothing staged",
                w.source.describe(),
                e.to_string().replace(&temp.display().to_string(), &w.name)
            ))
        })?;
        staged.push(Staged {
            name: w.name.clone(),
            kind: w.kind,
            into_store: into_store(args, w),
            temp,
            sha256,
            images: images.iter().flat_map(|i| i.tags.clone()).collect(),
            indexed: images,
        });
    }
    Ok(staged)
}

/// The config with the images filled in from what was staged, merged and checked whole.
fn merge_filled(
    addition: &Addition,
    current: &str,
    staged: &[Staged],
    places: &Places,
) -> Result<Merged, RuntimeError> {
    let (text, said) = addition.filled(|kind| {
        staged
            .iter()
            .filter(|s| s.kind == kind)
            .flat_map(|s| s.images.clone())
            .collect()
    })?;
    let filled = Addition {
        file: addition.file.clone(),
        text,
        fills: vec![],
    };
    let (merged, replaced) = merge_config(&places.config, current, &filled, |p| p)?;
    Ok((merged, replaced, said))
}

/// Everything under its temporary name, ready to be renamed into place: the Podman
/// store filled (and storage.conf's new text), sidecars, the config. The renames, and
/// the store when one was filled.
fn prepare_commit(
    args: &StageArgs,
    staged: &[Staged],
    merged: Option<&Merged>,
    places: &Places,
    undo: &Undo,
) -> Result<(Renames, Option<PathBuf>), RuntimeError> {
    let mut renames = Vec::new();
    // Into the Podman image store instead of archives: loaded there now, the archives
    // (temporary files) dropped, storage.conf updated with the rest.
    let mut store = None;
    let for_store: Vec<&Staged> = staged.iter().filter(|s| s.into_store).collect();
    if !for_store.is_empty() && args.containerd_store {
        store = Some(containerd_store::fill(args, &for_store, undo)?);
    } else if !for_store.is_empty() {
        let (conf_path, conf) = fill_podman_store(args, &for_store, undo)?;
        if let Some(text) = conf {
            let parent = conf_path.parent().unwrap_or(&args.root).to_owned();
            undo.create_dir_all(&parent).map_err(io_err(&parent))?;
            let temp = temp_beside(&conf_path, "");
            undo.file(temp.clone());
            write_file(&temp, text.as_bytes())?;
            renames.push((temp, conf_path));
        }
        store = Some(places.podman_store.clone());
    }
    for s in staged.iter().filter(|s| !s.into_store) {
        let to = places.dir(s.kind).join(&s.name);
        let sidecar = digest::sidecar_path(&to);
        let temp = temp_beside(&sidecar, "");
        undo.file(temp.clone());
        write_file(&temp, digest::sidecar_text(&s.sha256, &s.name).as_bytes())?;
        renames.push((s.temp.clone(), to));
        renames.push((temp, sidecar));
    }
    if args.checkout {
        for s in staged.iter().filter(|s| s.kind == Kind::System) {
            check_out(s, places, undo, &mut renames)?;
        }
    }
    if let Some((text, _, _)) = merged {
        let parent = places.config.parent().unwrap_or(&places.preload).to_owned();
        undo.create_dir_all(&parent).map_err(io_err(&parent))?;
        let temp = temp_beside(&places.config, "");
        undo.file(temp.clone());
        write_file(&temp, text.as_bytes())?;
        renames.push((temp, places.config.clone()));
    }
    Ok((renames, store))
}

/// What was staged and merged, once it is all in place.
fn report(
    args: &StageArgs,
    staged: &[Staged],
    store: Option<&Path>,
    merged: Option<&Merged>,
    places: &Places,
) {
    for s in staged {
        let images = if s.images.is_empty() {
            "untagged".into()
        } else {
            s.images.join(", ")
        };
        match store {
            Some(store) if s.into_store && args.containerd_store => {
                let _ = fs::remove_file(&s.temp);
                println!(
                    "staged {images} into containerd's store {} (namespace k8s.io, pinned: the first boot imports nothing)",
                    store.display()
                );
            }
            Some(store) if s.into_store => {
                // Its content is in the store now.
                let _ = fs::remove_file(&s.temp);
                println!(
                    "staged {images} into the Podman image store {} (read-only at boot: nothing to load)",
                    store.display()
                );
            }
            _ => println!(
                "staged {} (sha256:{}; images: {images})",
                places.dir(s.kind).join(&s.name).display(),
                s.sha256
            ),
        }
    }
    if let (Some((_, replaced, said)), Some(file)) = (merged, &args.config) {
        println!(
            "merged {} into {}{}{}",
            file.display(),
            places.config.display(),
            if replaced.is_empty() {
                String::new()
            } else {
                format!(" (replacing the earlier {})", replaced.join(", "))
            },
            if said.is_empty() {
                String::new()
            } else {
                format!("; {}", said.join("; "))
            }
        );
    }
}

/// `--dry-run`: what would be staged and merged. Local files are hashed and indexed (so
/// the images to fill in are known when all of a kind's sources are local); URLs and
/// engine images are not fetched.
fn dry_run(
    args: &StageArgs,
    wanted: &[Wanted],
    places: &Places,
    addition: Option<&(Addition, String)>,
) -> Result<(), RuntimeError> {
    let (podman_store, config_path) = (&places.podman_store, &places.config);
    // The tags of each local file; None for a source only fetching would tell.
    let mut indexed: Vec<Option<Vec<String>>> = Vec::new();
    for w in wanted {
        // With --podman-store the archive only passes through on its way into the store.
        let dest = if args.containerd_store && into_store(args, w) {
            format!(
                "containerd's store {}",
                in_root(&args.root, containerd_store::CONTAINERD_STORE)?.display()
            )
        } else if into_store(args, w) {
            format!("the Podman image store {}", podman_store.display())
        } else {
            places.dir(w.kind).join(&w.name).display().to_string()
        };
        match &w.source {
            Source::File(path) => {
                let sha = digest::sha256_of(path).map_err(io_err(path))?;
                let images = archive::index(path)
                    .map_err(|e| usage(format!("{}: not an image archive: {e}", path.display())))?;
                let check = match &w.expected {
                    Some(e) if e != &sha => format!("; DOES NOT MATCH the expected {e}"),
                    Some(_) => "; matches the expected SHA-256".into(),
                    None => String::new(),
                };
                println!(
                    "would stage {} -> {dest} (sha256:{sha}{check}; images: {})",
                    path.display(),
                    tags(&images)
                );
                indexed.push(Some(images.into_iter().flat_map(|i| i.tags).collect()));
            }
            Source::Url(url) => {
                println!("would download {} -> {dest}", redact(url));
                indexed.push(None);
            }
            Source::EngineImage { .. } => {
                println!("would save {} -> {dest}", w.source.describe());
                indexed.push(None);
            }
        }
        if args.checkout && w.kind == Kind::System {
            println!(
                "would check its tagged images out into {}/IMAGE-ID",
                places.checkouts.display()
            );
        }
    }
    if let Some((addition, current)) = addition {
        let added = entry_names(addition.text.as_bytes());
        let before = entry_names(current.as_bytes());
        let replaced: Vec<&String> = added.iter().filter(|n| before.contains(n)).collect();
        println!(
            "would merge {} into {}: entries {}{}",
            addition.file.display(),
            config_path.display(),
            added.join(", "),
            if replaced.is_empty() {
                String::new()
            } else {
                let replaced: Vec<&str> = replaced.iter().map(|s| s.as_str()).collect();
                format!(" (replacing the earlier {})", replaced.join(", "))
            }
        );
        let known = |kind: Kind| {
            wanted
                .iter()
                .zip(&indexed)
                .all(|(w, i)| w.kind != kind || i.is_some())
        };
        if addition.fills.iter().all(|f| known(f.kind)) {
            let (_, said) = addition.filled(|kind| {
                wanted
                    .iter()
                    .zip(&indexed)
                    .filter(|(w, _)| w.kind == kind)
                    .flat_map(|(_, i)| i.clone().unwrap_or_default())
                    .collect()
            })?;
            for line in said {
                println!("would fill in: {line}");
            }
        } else {
            for fill in &addition.fills {
                println!(
                    "would fill in the image of {} from {} staged with it, once fetched",
                    fill.name,
                    fill.kind.archives()
                );
            }
        }
    }
    Ok(())
}

fn tags(images: &[archive::IndexedImage]) -> String {
    let tags: Vec<&str> = images
        .iter()
        .flat_map(|i| i.tags.iter().map(String::as_str))
        .collect();
    if tags.is_empty() {
        "untagged".into()
    } else {
        tags.join(", ")
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(io_err(path))
}

/// The read-only image store `--podman-store` fills, as the host sees it.
pub const PODMAN_STORE: &str = "/var/lib/containers/atomic-preload-store";
const STORAGE_CONF: &str = "/etc/containers/storage.conf";

/// ROOT's storage.conf with the store among its `additionalimagestores` (added once);
/// `None` when it is there already. Without a storage.conf, Podman's defaults for a
/// system store are written out, with the overlay driver (an additional store needs the
/// same driver as the main one).
fn storage_conf_with_store(current: Option<&str>) -> Result<Option<String>, RuntimeError> {
    let text = current.unwrap_or(
        "# Written by atomic-preload stage --podman-store: Podman's defaults, and the\n\
         # preloaded images' read-only store.\n[storage]\ndriver = \"overlay\"\n\
         runroot = \"/run/containers/storage\"\ngraphroot = \"/var/lib/containers/storage\"\n",
    );
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| {
        usage(format!(
            "{STORAGE_CONF} in the root cannot be read as TOML: {e}"
        ))
    })?;
    let storage = doc
        .entry("storage")
        .or_insert(toml_edit::table())
        .as_table_mut()
        .ok_or_else(|| usage(format!("{STORAGE_CONF}: [storage] is not a table")))?;
    if let Some(driver) = storage.get("driver").and_then(|d| d.as_str())
        && driver != "overlay"
    {
        return Err(usage(format!(
            "{STORAGE_CONF} in the root uses the {driver} driver; a Podman image store needs overlay"
        )));
    }
    let options = storage
        .entry("options")
        .or_insert(toml_edit::table())
        .as_table_mut()
        .ok_or_else(|| usage(format!("{STORAGE_CONF}: [storage.options] is not a table")))?;
    let stores = options
        .entry("additionalimagestores")
        .or_insert(toml_edit::value(toml_edit::Array::new()))
        .as_array_mut()
        .ok_or_else(|| {
            usage(format!(
                "{STORAGE_CONF}: additionalimagestores is not a list"
            ))
        })?;
    if stores.iter().any(|v| v.as_str() == Some(PODMAN_STORE)) {
        return Ok(None);
    }
    stores.push(PODMAN_STORE);
    Ok(Some(doc.to_string()))
}

/// Load verified archives into ROOT's Podman image store; all of them or (for a store
/// this run created) nothing.
fn fill_podman_store(
    args: &StageArgs,
    staged: &[&Staged],
    undo: &Undo,
) -> Result<(PathBuf, Option<String>), RuntimeError> {
    let store = in_root(&args.root, PODMAN_STORE)?;
    let conf_path = in_root(&args.root, STORAGE_CONF)?;
    let current = match crate::bounded::read(&conf_path, generator::CONFIG_SIZE_LIMIT) {
        Ok(bytes) => Some(
            String::from_utf8(bytes)
                .map_err(|_| usage(format!("{}: not UTF-8 text", conf_path.display())))?,
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&conf_path)(e)),
    };
    let conf = storage_conf_with_store(current.as_deref())?;
    if !store.exists() {
        undo.create_dir_all(&store).map_err(io_err(&store))?;
        undo.tree(store.clone());
    }
    // Podman's own database (containers, the run root it was opened with) is no part of
    // an image store: removed before Podman opens the store (a stage killed while
    // loading leaves one naming its own run root, which Podman would refuse to open with
    // another: "database configuration mismatch") and after.
    let libpod = store.join("libpod");
    let _ = fs::remove_dir_all(&libpod);
    // What a Podman killed in an earlier run left mounted goes first.
    release_store_mount(&store);
    // Released on every way out, a failed load too (a store this run created could not
    // be removed with the mount in it).
    let _released = StoreGuard(&store);
    let runroot = tempfile_dir()?;
    for s in staged {
        // Podman 4.3 cannot read a gzip-compressed docker-archive: decompressed here and
        // streamed in, whatever the format (as the load stage does for Podman).
        let mut load = Command::new(&args.podman);
        load.arg("--root")
            .arg(&store)
            .arg("--runroot")
            .arg(&runroot.0)
            .args(["--storage-driver", "overlay", "load", "--quiet"]);
        let (out, copied) = stream_into(&mut load, s)?;
        if !out.status.success() || copied.is_err() {
            // Podman's own reason first: a broken pipe on our side only follows from it.
            let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            let why = match (said.lines().last(), copied) {
                (Some(line), _) if !out.status.success() => line.to_owned(),
                (_, Err(e)) => e.to_string(),
                _ => "failed".to_owned(),
            };
            return Err(RuntimeError::Fetch(format!(
                "{}: podman load into {}: {why}; nothing staged",
                s.name,
                store.display()
            )));
        }
    }
    Ok((conf_path, conf))
}

/// `cmd` run with the staged archive, decompressed, on its stdin: what it said, and how
/// the copy into it went (a broken pipe only follows from the command's own failure).
fn stream_into(
    cmd: &mut Command,
    s: &Staged,
) -> Result<(std::process::Output, io::Result<u64>), RuntimeError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let spawn_err = |source| RuntimeError::Spawn {
        program: program.clone(),
        source,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let copied = match child.stdin.take() {
        Some(mut stdin) => File::open(&s.temp)
            .and_then(|file| {
                crate::runtime::compression::decompress(io::BufReader::new(file), &s.name)
            })
            .and_then(|mut tar| io::copy(&mut tar, &mut stdin)),
        None => Ok(0),
    };
    let out = child.wait_with_output().map_err(spawn_err)?;
    Ok((out, copied))
}

/// What Podman leaves in a store once the store is filled (or failed to be): its overlay
/// driver bind-mounts its directory onto itself and leaves it mounted — an image root must
/// not keep a mount (the builder could not unmount the image) — and its database.
struct StoreGuard<'a>(&'a Path);

impl Drop for StoreGuard<'_> {
    fn drop(&mut self) {
        release_store_mount(self.0);
        let _ = fs::remove_dir_all(self.0.join("libpod"));
    }
}

/// Undo every mount Podman leaves in the store: the one its overlay driver keeps on
/// `STORE/overlay`, and those of a Podman killed in the middle (its metacopy check mounts
/// `STORE/overlay/metacopy-check…/merged`; a mount outlives its process), deepest first,
/// with the scratch directories such a check leaves. None: nothing to do.
fn release_store_mount(store: &Path) {
    let mut mounted: Vec<PathBuf> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape_mount_point(point)))
        .filter(|point| point.starts_with(store))
        .collect();
    mounted.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in mounted {
        let _ = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH);
    }
    for entry in fs::read_dir(store.join("overlay"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("metacopy-check")
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A mount point as /proc/self/mountinfo writes it: space, tab, newline and backslash as
/// octal escapes (`\040`).
fn unescape_mount_point(field: &str) -> String {
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A private temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Where this run's private directory goes: `TMPDIR` when its path leaves room, else
/// `/tmp`. The directory holds Podman's run root, which Podman refuses when longer than
/// 50 bytes ("the specified runroot is longer than 50 characters"), and a private
/// containerd's sockets (a unix socket's path is at most 107 bytes); the bound assumes
/// the longest PID (7 digits), so one TMPDIR always gives the same answer.
fn tempfile_base(tmpdir: PathBuf) -> PathBuf {
    const LONGEST: usize = 50;
    let room = LONGEST - "/atomic-preload-stage-".len() - "4194304".len();
    if tmpdir.as_os_str().len() <= room {
        tmpdir
    } else {
        PathBuf::from("/tmp")
    }
}

/// This run's `TMPDIR/atomic-preload-stage-PID` (see [`tempfile_base`]), after removing
/// those of stages that were killed (their PID no longer runs).
fn tempfile_dir() -> Result<TempDir, RuntimeError> {
    let tmp = tempfile_base(std::env::temp_dir());
    for entry in fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("atomic-preload-stage-")
            .and_then(|pid| pid.parse::<u32>().ok())
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let dir = tmp.join(format!("atomic-preload-stage-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    Ok(TempDir(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_their_archive_names() {
        let name = |s: &str| Source::parse(s).archive_name(true);
        assert_eq!(name("/tmp/app.tar.gz"), Ok("app.tar.gz".into()));
        assert_eq!(
            name("https://example.com/images/app.tar.zst?sig=1#x"),
            Ok("app.tar.zst".into())
        );
        assert_eq!(
            name("docker-image:docker.io/library/busybox:1.36"),
            Ok("docker.io_library_busybox_1.36.tar.zst".into())
        );
        assert_eq!(
            Source::parse("podman-image:x/y").archive_name(false),
            Ok("x_y.tar".into())
        );
        assert!(name("https://example.com/download").is_err());
        assert!(name("notes.txt").is_err());
        assert!(name("docker-image:").is_err());
    }

    #[test]
    fn a_long_tmpdir_gives_way_to_tmp_for_podman_and_sockets() {
        assert_eq!(tempfile_base("/var/tmp".into()), Path::new("/var/tmp"));
        let longest = "/x".repeat(10) + "y";
        assert_eq!(tempfile_base(longest.clone().into()), Path::new(&longest));
        let dir = tempfile_base(longest.into()).join("atomic-preload-stage-4194304");
        assert_eq!(dir.as_os_str().len(), 50, "Podman's limit, exactly");
        assert_eq!(
            tempfile_base("/home/builder/work/images/tmp".into()),
            Path::new("/tmp")
        );
    }

    // `Hashing` is the reading side's; keep both in step.
    #[test]
    fn mount_points_are_unescaped_as_mountinfo_escapes_them() {
        assert_eq!(unescape_mount_point("/a\\040b/c\\134d"), "/a b/c\\d");
        assert_eq!(unescape_mount_point("/plain/\\04"), "/plain/\\04");
    }

    #[test]
    fn hashing_writer_matches_sha256_of() {
        let dir = std::env::temp_dir().join(format!("ap-stage-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x");
        let mut out = create_temp(&path).unwrap();
        out.write_all(b"hello").unwrap();
        let sha = finish(out, &path).unwrap();
        assert_eq!(sha, digest::sha256_of(&path).unwrap());
        let mut r = digest::Hashing::new(&b"hello"[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(sha, hex(&sha2::Digest::finalize(r.hasher)));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn storage_conf_gets_the_store_once_and_keeps_the_rest() {
        let conf = "# site settings\n[storage]\ndriver = \"overlay\" # fast\n\n[storage.options]\nadditionalimagestores = [\"/srv/images\"]\n";
        let updated = storage_conf_with_store(Some(conf)).unwrap().unwrap();
        assert_eq!(
            updated,
            "# site settings\n[storage]\ndriver = \"overlay\" # fast\n\n[storage.options]\nadditionalimagestores = [\"/srv/images\", \"/var/lib/containers/atomic-preload-store\"]\n"
        );
        assert_eq!(storage_conf_with_store(Some(&updated)).unwrap(), None);
        let fresh = storage_conf_with_store(None).unwrap().unwrap();
        assert!(fresh.contains("driver = \"overlay\""), "{fresh}");
        assert!(
            fresh
                .contains("additionalimagestores = [\"/var/lib/containers/atomic-preload-store\"]"),
            "{fresh}"
        );
        let vfs = storage_conf_with_store(Some("[storage]\ndriver = \"vfs\"\n")).unwrap_err();
        assert!(vfs.to_string().contains("uses the vfs driver"), "{vfs}");
    }
}
