//! Faults: every operation killed or failed at every Nth system call, then run again as
//! the next boot (or the admin) would, and checked against invariants and against the
//! state a run without faults reaches. `cargo test --locked --test faults` (not part of
//! the plain `cargo test`: it runs each operation a few hundred times; `.ci/run` runs it
//! too, and the README gives its cost).
//!
//! How a fault is placed: the operation is traced once with strace (its main thread,
//! the file-changing system calls and the ones that start or wait for a child), giving
//! the sequence of calls it makes; each fault point is the k-th call of one name there,
//! spread evenly over the whole sequence, so every phase gets points. The faulted run is
//! `strace -e inject=NAME:signal=KILL:when=k` (a kill, as a power cut or an OOM kill
//! would do it) or `…:error=ENOSPC`/`EIO` (a full or failing disk). Children the run had
//! started (systemctl stand-ins) finish before the rerun begins, as they would when the
//! machine did not go down with them.
//!
//! Needs root, strace, busybox-static (and for the load: dockerd, podman).

mod support;

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::sysimage::{Image, Layer};

/// System calls a fault can be placed at.
const POINTS: &str = "openat,write,pwrite64,writev,rename,renameat,renameat2,unlink,unlinkat,\
mkdir,mkdirat,symlink,symlinkat,linkat,fchmod,fchmodat,fchown,fchownat,fsync,fdatasync,syncfs,\
utimensat,fsetxattr,ftruncate,copy_file_range,sendfile,clone,clone3,wait4,flock,\
read,close,newfstatat,statx,getdents64";

/// Calls where a full or failing disk shows up.
const DISK_CALLS: &[&str] = &[
    "read",
    "write",
    "pwrite64",
    "writev",
    "openat",
    "mkdirat",
    "mkdir",
    "fsync",
    "fdatasync",
    "syncfs",
    "renameat",
    "rename",
    "renameat2",
    "symlinkat",
    "copy_file_range",
];

/// How long a faulted run may take before it counts as hung and is killed.
const HANG: Duration = Duration::from_secs(15);

/// How many points per operation at least (all of them when a run makes fewer calls).
const MIN_POINTS: usize = 200;

fn strace_available() -> bool {
    assert!(
        Path::new("/usr/bin/strace").exists(),
        "the fault tests need strace (.ci/install-deps installs it)"
    );
    true
}

#[derive(Debug, Clone)]
enum Fault {
    Kill,
    Errno(&'static str),
}

#[derive(Debug, Clone)]
struct Point {
    syscall: String,
    nth: usize,
    fault: Fault,
    /// Traced in every thread and child (`strace -f`): the k-th call of that name in any
    /// of them (the first to reach it) gets the fault.
    follow: bool,
}

impl Point {
    fn strace_args(&self) -> Vec<String> {
        let what = match &self.fault {
            Fault::Kill => "signal=KILL".to_owned(),
            Fault::Errno(e) => format!("error={e}"),
        };
        let mut args: Vec<String> = vec![
            "-qq".into(),
            "-o".into(),
            "/dev/null".into(),
            "-e".into(),
            format!("trace={}", self.syscall),
            "-e".into(),
            format!("inject={}:{what}:when={}", self.syscall, self.nth),
        ];
        if self.follow {
            args.push("-f".into());
        }
        args
    }
}

/// The sequence of traced calls `cmd` makes (its main thread only, or with `follow`
/// every thread and child), each with the number of its thread.
fn trace(cmd: &[String], env: &[(String, String)], follow: bool) -> Vec<(u32, String)> {
    let out = tempfile::NamedTempFile::new().unwrap();
    // Its exit status is the operation's business (an automatic rollback exits 65).
    let status = Command::new("strace")
        .args(if follow { &["-f"][..] } else { &[][..] })
        .args(["-qq", "-e", "signal=none", "-e"])
        .arg(format!("trace={POINTS}"))
        .arg("-o")
        .arg(out.path())
        .arg("--")
        .args(cmd)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let calls: Vec<(u32, String)> = fs::read_to_string(out.path())
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (pid, call) = match l.split_once(' ') {
                // strace pads the PID: "1234  openat(…".
                Some((pid, rest)) if follow => (pid.parse().ok()?, rest.trim_start()),
                _ => (0, l),
            };
            let name = call.split_once('(')?.0;
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                .then(|| (pid, name.to_owned()))
        })
        .collect();
    assert!(
        !calls.is_empty(),
        "the traced run of {cmd:?} made no calls ({}): {}",
        status.status,
        String::from_utf8_lossy(&status.stderr)
    );
    calls
}

/// Fault points spread evenly over `calls`: every third one a disk error where that call
/// can have one, the rest kills.
fn points(calls: &[(u32, String)], follow: bool) -> Vec<Point> {
    let n = calls.len().min(MIN_POINTS + 20).max(1);
    let mut out = Vec::new();
    let mut last = None;
    for i in 0..n {
        let j = i * calls.len() / n;
        if last == Some(j) {
            continue;
        }
        last = Some(j);
        let (pid, name) = &calls[j];
        let nth = calls[..=j]
            .iter()
            .filter(|(p, c)| p == pid && c == name)
            .count();
        let fault = if i % 3 == 2 && DISK_CALLS.contains(&name.as_str()) {
            Fault::Errno(if i % 2 == 0 { "ENOSPC" } else { "EIO" })
        } else {
            Fault::Kill
        };
        out.push(Point {
            syscall: name.clone(),
            nth,
            fault,
            follow,
        });
    }
    out
}

/// Run `cmd` with a fault at `point`; wait for every process it started to end.
fn run_faulted(point: &Point, cmd: &[String], env: &[(String, String)]) -> Output {
    let child = Command::new("strace")
        .args(point.strace_args())
        .arg("--")
        .args(cmd)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = rustix::process::Pid::from_child(&child);
    // A fault in an engine's client can make it hang (as a real disk error can): after
    // HANG, the whole run is killed, as systemd's start timeout would.
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if watch.recv_timeout(HANG).is_err() {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = done.send(());
    watchdog.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rustix::process::test_kill_process_group(pgid).is_ok() {
        assert!(
            Instant::now() < deadline,
            "children of {cmd:?} still running"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    out
}

fn run(cmd: &[String], env: &[(String, String)]) -> Output {
    Command::new(&cmd[0])
        .args(&cmd[1..])
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every entry below `dir`: relative path → type, mode, owner and content (small files
/// as text, others as a digest; symlinks by target). `normalize` rewrites a file's text
/// (what differs between two correct runs, such as a UUID).
fn snapshot(dir: &Path, normalize: &dyn Fn(&str, String) -> String) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let head = format!("{:o} {}:{}", m.mode(), m.uid(), m.gid());
            let what = if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".into()
            } else if !m.is_file() {
                "special".into()
            } else {
                let bytes = fs::read(&p).unwrap();
                match String::from_utf8(bytes.clone()) {
                    Ok(t) if bytes.len() < 16384 => normalize(&rel, t),
                    _ => sha(&bytes),
                }
            };
            out.insert(rel, format!("{head} {what}"));
        }
    }
    out
}

fn diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push_str(&format!("  only expected: {k}: {v}\n")),
            Some(w) if w != v => out.push_str(&format!(
                "  differs: {k}:\n    expected {v}\n    found    {w}\n"
            )),
            _ => {}
        }
    }
    for (k, v) in b {
        if !a.contains_key(k) {
            out.push_str(&format!("  unexpected: {k}: {v}\n"));
        }
    }
    out
}

/// One operation under test, on a scratch directory at a fixed path that is restored
/// from a copy before every run (so absolute links inside it stay right).
struct Scenario {
    name: &'static str,
    work: PathBuf,
    saved: PathBuf,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    /// Trace threads and children too (an operation whose work is in threads).
    follow: bool,
    /// What restoring the directory does not reset (an engine's images).
    reset: Box<dyn Fn()>,
    /// A TMPDIR of its own, with a short path (`/tmp/apf-PID-K`).
    tmp: PathBuf,
}

impl Scenario {
    fn new(name: &'static str) -> Scenario {
        let base = PathBuf::from(format!("/tmp/ap-faults-{}", std::process::id()));
        let work = base.join(name);
        let saved = base.join(format!("{name}.saved"));
        let _ = fs::remove_dir_all(&work);
        let _ = fs::remove_dir_all(&saved);
        fs::create_dir_all(&work).unwrap();
        static SCENARIOS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = SCENARIOS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = PathBuf::from(format!("/tmp/apf-{}-{k}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).unwrap();
        Scenario {
            name,
            work,
            saved,
            cmd: Vec::new(),
            env: Vec::new(),
            follow: false,
            reset: Box::new(|| {}),
            tmp,
        }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.work.join(rel)
    }
    /// Keep the prepared state: every run starts from it.
    fn save(&self) {
        copy_tree(&self.work, &self.saved);
    }
    fn restore(&self) {
        (self.reset)();
        fs::remove_dir_all(&self.work).unwrap();
        copy_tree(&self.saved, &self.work);
    }
}

/// `cp -a`: modes, owners, links and xattrs kept.
fn copy_tree(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.work);
        let _ = fs::remove_dir_all(&self.saved);
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// What one operation's campaign found.
struct Report {
    points: usize,
    kills: usize,
    errors: usize,
    failures: Vec<String>,
}

/// Kill or fail `scenario`'s command at each point, then rerun it; `check` judges the
/// state after the faulted run (`after_fault`: the invariants that hold at any moment)
/// and after the rerun (everything, against the reference).
fn campaign(
    s: &Scenario,
    rerun_ok: &dyn Fn(&Output) -> bool,
    after_fault: &dyn Fn(&Scenario, &Point, &Output) -> Result<(), String>,
    after_rerun: &dyn Fn(&Scenario) -> Result<(), String>,
) -> Report {
    s.restore();
    let calls = trace(&s.cmd, &s.env, s.follow);
    let points = points(&calls, s.follow);
    let mut report = Report {
        points: points.len(),
        kills: 0,
        errors: 0,
        failures: Vec::new(),
    };
    // FAULT_POINT=SYSCALL#N runs that point alone (to look at one failure).
    let only = std::env::var("FAULT_POINT").ok();
    for point in &points {
        if only
            .as_ref()
            .is_some_and(|p| *p != format!("{}#{}", point.syscall, point.nth))
        {
            continue;
        }
        s.restore();
        let faulted = run_faulted(point, &s.cmd, &s.env);
        match point.fault {
            Fault::Kill => report.kills += 1,
            Fault::Errno(_) => report.errors += 1,
        }
        let at = format!(
            "{}: {:?} at {} #{}",
            s.name, point.fault, point.syscall, point.nth
        );
        if let Err(e) = after_fault(s, point, &faulted) {
            eprintln!("{at}: after the fault: {e}");
            report
                .failures
                .push(format!("{at}: after the fault: {e}\n{}", text(&faulted)));
            continue;
        }
        let again = run(&s.cmd, &s.env);
        if !rerun_ok(&again) {
            eprintln!(
                "{at}: the rerun failed: {}",
                text(&again).trim().lines().last().unwrap_or("")
            );
            report.failures.push(format!(
                "{at}: the rerun failed:\n{}\n(the faulted run said:\n{})",
                text(&again),
                text(&faulted)
            ));
            continue;
        }
        if let Err(e) = after_rerun(s) {
            eprintln!("{at}: after the rerun: {e}");
            report.failures.push(format!(
                "{at}: after the rerun: {e}\n(the rerun said:\n{})",
                text(&again)
            ));
        }
    }
    eprintln!(
        "{}: {} points ({} kills, {} disk errors) over {} traced calls; {} failed",
        s.name,
        report.points,
        report.kills,
        report.errors,
        calls.len(),
        report.failures.len()
    );
    report
}

fn assert_report(report: Report) {
    assert!(
        report.points >= MIN_POINTS,
        "only {} fault points: the operation makes too few calls to cover",
        report.points
    );
    assert!(
        report.failures.is_empty(),
        "{} of {} points did not converge; first ones:\n{}",
        report.failures.len(),
        report.points,
        report.failures[..report.failures.len().min(3)].join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------
// System containers

const IMAGE: &str = "example.org/test/etcd:1";

const SERVICE_TEMPLATE: &str = "[Unit]\nDescription=test $NAME\n\n[Service]\nExecStart=$EXEC_START\nWorkingDirectory=$DESTDIR\n";

const CONFIG_TEMPLATE: &str = r#"{
  "ociVersion": "1.0.2",
  "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/bin/sleep", "1000"], "cwd": "/"},
  "root": {"path": "rootfs", "readonly": true},
  "mounts": [{"destination": "/data", "type": "bind", "source": "$STATE_DIRECTORY/$NAME", "options": ["rbind", "rw"]}]
}
"#;

/// An etcd-like image: busybox, templates, host files (a binary, a template, a renamed
/// file, an empty directory), and `marker` making versions differ.
fn sys_image(marker: &str) -> Image {
    let base = Layer::new()
        .dir("./", 0o755)
        .busybox()
        .dir("etc/", 0o755)
        .file("etc/os-release", b"ID=test\n", 0o644)
        .bytes();
    let manifest = r#"{"version": "1.0", "defaultValues": {"GREETING": "hello"},
        "renameFiles": {"/etc/etcd-test.conf": "/etc/$NAME.conf"},
        "installedFilesTemplate": ["/etc/etcd-templated.conf"]}"#;
    let exports = Layer::new()
        .dir("exports/", 0o755)
        .file(
            "exports/config.json.template",
            CONFIG_TEMPLATE.as_bytes(),
            0o644,
        )
        .file(
            "exports/service.template",
            SERVICE_TEMPLATE.as_bytes(),
            0o644,
        )
        .file("exports/manifest.json", manifest.as_bytes(), 0o644)
        .file(
            "exports/hostfs/usr/local/bin/etcdctl-test",
            format!("#!/bin/sh\necho {marker}\n").as_bytes(),
            0o755,
        )
        .file(
            "exports/hostfs/usr/local/bin/etcd-helper",
            format!("#!/bin/sh\necho helper {marker}\n").as_bytes(),
            0o755,
        )
        .file("exports/hostfs/etc/etcd-test.conf", b"renamed\n", 0o644)
        .file(
            "exports/hostfs/etc/etcd-templated.conf",
            format!("name=$NAME greeting=$GREETING {marker}\n").as_bytes(),
            0o600,
        )
        .dir("exports/hostfs/var/lib/etcd-empty/", 0o750)
        .file(
            "exports/hostfs/etc/existing.conf",
            b"from the image\n",
            0o644,
        )
        .bytes();
    let mut image = Image::new(IMAGE, vec![base, exports]);
    image.marker = marker.into();
    image
}

/// A systemctl that keeps what a real systemd would know: the units it loaded at the
/// last daemon-reload (`sd/loaded/`), the unit running (`sd/running`, a copy of the
/// loaded unit it was started from), the state; a started unit whose text contains the
/// line in `sd/fail-when` fails. systemd-tmpfiles records what it created from.
fn fake_systemd(dir: &Path) -> (PathBuf, PathBuf) {
    let sd = dir.join("sd");
    fs::create_dir_all(sd.join("loaded")).unwrap();
    let systemctl = dir.join("bin/systemctl");
    let tmpfiles = dir.join("bin/systemd-tmpfiles");
    fs::create_dir_all(dir.join("bin")).unwrap();
    let d = dir.display();
    fs::write(
        &systemctl,
        format!(
            r#"#!/bin/sh
sd={d}/sd
echo "$*" >> $sd/log
state() {{ cat $sd/state 2>/dev/null || echo inactive; }}
case "$1" in
  daemon-reload) rm -rf $sd/loaded.new; mkdir $sd/loaded.new
    for u in {d}/units/*.service; do [ -f "$u" ] && cp "$u" $sd/loaded.new/; done
    rm -rf $sd/loaded; mv $sd/loaded.new $sd/loaded;;
  is-active) [ "$(state)" = active ];;
  start) u=$sd/loaded/$2
    [ -f "$u" ] || {{ echo "Unit $2 not found." >&2; exit 5; }}
    if [ -f $sd/fail-when ] && grep -qF -f $sd/fail-when "$u"; then echo failed > $sd/state; rm -f $sd/running
    else echo active > $sd/state; cp "$u" $sd/running.new; mv $sd/running.new $sd/running; fi;;
  stop|disable) echo inactive > $sd/state; rm -f $sd/running;;
  show) s=$(state); echo $s; [ $s = active ] && echo running || echo dead;;
esac
exit 0
"#
        ),
    )
    .unwrap();
    fs::write(
        &tmpfiles,
        format!(
            "#!/bin/sh\nsd={d}/sd\necho \"$*\" >> $sd/tmpfiles.log\ncase \"$1\" in --root=*) shift;; esac\ncase \"$1\" in\n  --create) cp \"$2\" $sd/tmpfiles-created;;\n  --remove) rm -f $sd/tmpfiles-created;;\nesac\n"
        ),
    )
    .unwrap();
    for p in [&systemctl, &tmpfiles] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    (systemctl, tmpfiles)
}

fn system_scenario(name: &'static str) -> Scenario {
    let s = Scenario::new(name);
    for d in [
        "preload/ostree",
        "checkout",
        "units",
        "tmpfiles",
        "host/etc",
        "state",
    ] {
        fs::create_dir_all(s.p(d)).unwrap();
    }
    fs::write(s.p("host/etc/existing.conf"), "the admin's\n").unwrap();
    fake_systemd(&s.work);
    s
}

fn system_args(s: &Scenario, op: &[&str]) -> Vec<String> {
    let p = |r: &str| s.p(r).display().to_string();
    let mut cmd: Vec<String> = std::iter::once(support::helper().display().to_string())
        .chain(op.iter().map(|a| a.to_string()))
        .collect();
    for (flag, rel) in [
        ("--checkout-dir", "checkout"),
        ("--unit-dir", "units"),
        ("--tmpfiles-dir", "tmpfiles"),
        ("--host-root", "host"),
        ("--state-dir", "state"),
        ("--systemctl", "bin/systemctl"),
        ("--systemd-tmpfiles", "bin/systemd-tmpfiles"),
    ] {
        cmd.push(flag.into());
        cmd.push(p(rel));
    }
    cmd
}

fn install_cmd(s: &Scenario) -> Vec<String> {
    let preload = s.p("preload").display().to_string();
    let state_dir = format!("STATE_DIRECTORY={}", s.p("host/var/lib").display());
    system_args(
        s,
        &[
            "install-system",
            "--preload-dir",
            &preload,
            "--name",
            "etcd",
            "--image",
            IMAGE,
            "--set",
            &state_dir,
        ],
    )
}

fn must(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

/// What a correct run leaves, comparable between runs: the deployments, units, tmpfiles,
/// host and what "systemd" knows; `created` and the UUID differ between two correct runs.
fn system_state(s: &Scenario) -> BTreeMap<String, String> {
    let normalize = |rel: &str, t: String| -> String {
        if !rel.ends_with("/info") && rel != "info" {
            return t;
        }
        let mut v: serde_json::Value = serde_json::from_str(&t).unwrap();
        v["created"] = 0.into();
        v["values"]["UUID"] = "-".into();
        v.to_string()
    };
    let mut all = BTreeMap::new();
    for dir in [
        "checkout",
        "units",
        "tmpfiles",
        "host",
        "sd/loaded",
        "preload",
    ] {
        for (k, v) in snapshot(&s.p(dir), &normalize) {
            all.insert(format!("{dir}/{k}"), v);
        }
    }
    for file in ["sd/state", "sd/running", "sd/tmpfiles-created"] {
        all.insert(
            file.into(),
            fs::read_to_string(s.p(file)).unwrap_or_else(|_| "(none)".into()),
        );
    }
    if let Ok(bytes) = fs::read(s.p("state/rolled-back/etcd")) {
        all.insert("state/rolled-back/etcd".into(), sha(&bytes));
    }
    all
}

/// Invariants at any moment, even right after a kill: the link points at a complete
/// deployment (or nowhere); every deployment under a final name is complete.
fn system_any_moment(s: &Scenario) -> Result<(), String> {
    let checkout = s.p("checkout");
    for e in fs::read_dir(&checkout).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with("etcd.") && !s.p(&format!("checkout/{name}/info")).exists() {
            return Err(format!("{name} is under its final name without an info"));
        }
    }
    if let Ok(target) = fs::read_link(s.p("checkout/etcd"))
        && !target.join("info").exists()
    {
        return Err(format!(
            "the link points at {}, which is not complete",
            target.display()
        ));
    }
    Ok(())
}

/// Invariants after a finished run: no temp files or dirs, no pending activation; the
/// unit systemd loaded is the installed one, which is the active deployment's; a
/// running service runs it; tmpfiles applied; host files as the record says.
fn system_settled(s: &Scenario) -> Result<(), String> {
    system_any_moment(s)?;
    for dir in ["checkout", "units", "tmpfiles", "host"] {
        for (k, _) in snapshot(&s.p(dir), &|_, t| t) {
            let base = k.rsplit('/').next().unwrap();
            if base.starts_with('.') {
                return Err(format!("stray {dir}/{k}"));
            }
        }
    }
    let unit = fs::read_to_string(s.p("units/etcd.service")).ok();
    let loaded = fs::read_to_string(s.p("sd/loaded/etcd.service")).ok();
    if unit != loaded {
        return Err(format!(
            "systemd loaded {loaded:?}, the installed unit is {unit:?}"
        ));
    }
    let Ok(active) = fs::read_link(s.p("checkout/etcd")) else {
        return Ok(());
    };
    let copy = fs::read_to_string(active.join("etcd.service")).ok();
    if unit != copy {
        return Err(format!("the installed unit is not {}'s", active.display()));
    }
    if fs::read_to_string(s.p("sd/state")).is_ok_and(|st| st.trim() == "active")
        && fs::read_to_string(s.p("sd/running")).ok() != loaded
    {
        return Err("the running service is not the loaded unit".into());
    }
    let conf = fs::read_to_string(s.p("tmpfiles/etcd.conf")).ok();
    if conf.is_some() && fs::read_to_string(s.p("sd/tmpfiles-created")).ok() != conf {
        return Err("tmpfiles were not created from the installed conf".into());
    }
    let info: serde_json::Value =
        serde_json::from_slice(&fs::read(active.join("info")).unwrap()).unwrap();
    for (path, sum) in info["installed-files-checksum"].as_object().unwrap() {
        let host = s.p("host").join(path.trim_start_matches('/'));
        let m = fs::symlink_metadata(&host).map_err(|e| format!("{path}: {e}"))?;
        if m.is_file() && &sha(&fs::read(&host).unwrap()) != sum {
            return Err(format!("{path} is not what info records"));
        }
    }
    Ok(())
}

fn system_campaign(
    s: &Scenario,
    reference: &[BTreeMap<String, String>],
    rerun_ok: &dyn Fn(&Output) -> bool,
) -> Report {
    campaign(s, rerun_ok, &|s, _, _| system_any_moment(s), &|s| {
        system_settled(s)?;
        let now = system_state(s);
        if reference.contains(&now) {
            Ok(())
        } else {
            Err(format!(
                "not the state a run without faults reaches:\n{}",
                diff(&reference[0], &now)
            ))
        }
    })
}

/// Reference: the state after `cmd` without faults, from the saved state.
fn reference(s: &Scenario, cmd: &[String]) -> BTreeMap<String, String> {
    s.restore();
    let out = run(cmd, &s.env);
    let state = system_state(s);
    system_settled(s).unwrap_or_else(|e| panic!("the run without faults: {e}\n{}", text(&out)));
    state
}

#[test]
fn first_install_converges_after_a_fault_anywhere() {
    strace_available();
    let mut s = system_scenario("first-install");
    sys_image("v1").save(&s.p("preload/ostree/etcd.tar"));
    s.save();
    s.cmd = install_cmd(&s);
    let r = reference(&s, &s.cmd);
    assert_report(system_campaign(&s, &[r], &|o| o.status.success()));
}

/// The first install from a checkout staged with the image (`stage --checkout`): a fault
/// anywhere (while the tree is proven, moved in, or its record removed) converges on the
/// same deployment, from the staged tree or, when that was spoilt, from the archive.
#[test]
fn a_first_install_from_a_staged_checkout_converges_after_a_fault_anywhere() {
    strace_available();
    let mut s = system_scenario("staged-install");
    let root = s.p("image-root");
    fs::create_dir_all(root.join("etc")).unwrap();
    let src = s.p("etcd.tar");
    sys_image("v1").save(&src);
    must(run(
        &[
            support::helper().display().to_string(),
            "stage".into(),
            "--root".into(),
            root.display().to_string(),
            "--system".into(),
            "--checkout".into(),
            src.display().to_string(),
        ],
        &[],
    ));
    fs::remove_file(&src).unwrap();
    fs::remove_dir_all(s.p("preload")).unwrap();
    fs::rename(root.join("var/lib/atomic/preload"), s.p("preload")).unwrap();
    fs::remove_dir_all(&root).unwrap();
    assert_eq!(fs::read_dir(s.p("preload/checkouts")).unwrap().count(), 1);
    s.save();
    s.cmd = install_cmd(&s);
    let r = reference(&s, &s.cmd);
    assert!(
        r.keys().all(|k| !k.starts_with("preload/checkouts/")),
        "the staged checkout was used: {:?}",
        r.keys()
            .filter(|k| k.starts_with("preload/"))
            .collect::<Vec<_>>()
    );
    assert_report(system_campaign(&s, &[r], &|o| o.status.success()));
}

/// v1 installed and running, the admin edited one host file, v2 arrives.
fn updated_scenario(name: &'static str) -> Scenario {
    let s = system_scenario(name);
    let archive = s.p("preload/ostree/etcd.tar");
    sys_image("v1").save(&archive);
    must(run(&install_cmd(&s), &[]));
    must(run(
        &system_args(&s, &["start-system", "--name", "etcd"]),
        &[],
    ));
    fs::write(
        s.p("host/usr/local/bin/etcd-helper"),
        "edited by the admin\n",
    )
    .unwrap();
    sys_image("v2").save(&archive);
    s
}

/// [`updated_scenario`] with v2 installed over v1 (v1 kept for rollback).
fn two_versions_scenario(name: &'static str) -> Scenario {
    let s = updated_scenario(name);
    must(run(&install_cmd(&s), &[]));
    s
}

#[test]
fn an_update_of_a_running_container_converges_after_a_fault_anywhere() {
    strace_available();
    let mut s = updated_scenario("update");
    s.save();
    s.cmd = install_cmd(&s);
    let r = reference(&s, &s.cmd);
    assert_eq!(
        r["sd/state"].trim(),
        "active",
        "the update restarts the service"
    );
    assert_eq!(
        r["checkout/etcd"].rsplit(' ').next().unwrap(),
        s.p("checkout/etcd.1").display().to_string()
    );
    assert_report(system_campaign(&s, &[r], &|o| o.status.success()));
}

#[test]
fn an_automatic_rollback_converges_after_a_fault_anywhere() {
    strace_available();
    let mut s = two_versions_scenario("auto-rollback");
    // The new version's service fails to start.
    fs::write(
        s.p("sd/fail-when"),
        format!("WorkingDirectory={}\n", s.p("checkout/etcd.1").display()),
    )
    .unwrap();
    s.save();
    s.cmd = system_args(&s, &["start-system", "--name", "etcd", "--settle", "0"]);
    let r = reference(&s, &s.cmd);
    assert_eq!(r["sd/state"].trim(), "active", "{r:?}");
    assert!(r["checkout/etcd"].ends_with("etcd.0"));
    // The rerun either finishes the rollback (0) or does it (65, saying so).
    let rerun_ok = |o: &Output| {
        o.status.success() || (o.status.code() == Some(65) && text(o).contains("rolled back to"))
    };
    assert_report(system_campaign(&s, &[r], &rerun_ok));
}

#[test]
fn a_rollback_converges_after_a_fault_anywhere() {
    strace_available();
    let mut s = two_versions_scenario("rollback");
    s.save();
    s.cmd = system_args(&s, &["rollback", "etcd"]);
    let rolled = reference(&s, &s.cmd);
    assert!(rolled["checkout/etcd"].ends_with("etcd.0"));
    // Killed after it finished, the rerun rolls back once more (a rollback is a switch):
    // that state is as consistent as the first.
    s.restore();
    must(run(&s.cmd, &[]));
    must(run(&s.cmd, &[]));
    let twice = system_state(&s);
    assert_report(system_campaign(&s, &[rolled, twice], &|o| {
        o.status.success()
    }));
}

#[test]
fn an_uninstall_converges_after_a_fault_anywhere() {
    strace_available();
    let mut s = two_versions_scenario("uninstall");
    s.save();
    s.cmd = system_args(&s, &["uninstall", "etcd"]);
    let r = reference(&s, &s.cmd);
    assert!(
        !r.keys()
            .any(|k| k.starts_with("checkout/") || k.starts_with("units/")),
        "{r:?}"
    );
    assert_eq!(
        r.get("host/usr/local/bin/etcd-helper")
            .map(|v| v.ends_with("edited by the admin\n")),
        Some(true),
        "the admin's edit stays"
    );
    // Cut short after it finished, the rerun finds nothing left to uninstall.
    let rerun_ok = |o: &Output| {
        o.status.success() || text(o).contains("etcd is not an installed system container")
    };
    assert_report(system_campaign(&s, &[r], &rerun_ok));
}

// ---------------------------------------------------------------------------------------
// Loading into an engine

/// Invariants of a load at any moment: the archive is byte for byte what it was, and
/// every mark names only images the engine really has.
fn load_any_moment(
    s: &Scenario,
    archive_sha: &str,
    has_image: &dyn Fn(&str) -> bool,
    engine: &str,
) -> Result<(), String> {
    let archive = s.p("preload/docker/app.tar");
    let now = fs::read(&archive).map(|b| sha(&b)).unwrap_or_default();
    if now != archive_sha {
        return Err("the archive changed or is gone".into());
    }
    let marks = s.p(&format!("state/loaded/{engine}"));
    for e in fs::read_dir(&marks).into_iter().flatten() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let text = fs::read_to_string(marks.join(&name)).unwrap();
        let images = text
            .lines()
            .find_map(|l| l.strip_prefix("images="))
            .ok_or(format!("mark {name} has no images line: {text:?}"))?;
        for image in images.split_whitespace() {
            if !has_image(image) {
                return Err(format!(
                    "mark {name} says {image} is loaded; the engine has no such image"
                ));
            }
        }
    }
    Ok(())
}

/// After the rerun: loaded, marked, no temp file left in the marks.
fn load_settled(
    s: &Scenario,
    archive_sha: &str,
    has_image: &dyn Fn(&str) -> bool,
    engine: &str,
) -> Result<(), String> {
    load_any_moment(s, archive_sha, has_image, engine)?;
    if !has_image("test/app:1") {
        return Err("the image is not in the engine".into());
    }
    let marks = s.p(&format!("state/loaded/{engine}"));
    let names: Vec<String> = fs::read_dir(&marks)
        .map_err(|e| format!("{}: {e}", marks.display()))?
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    if names != ["app.tar"] {
        return Err(format!("marks are {names:?}, not [\"app.tar\"]"));
    }
    Ok(())
}

fn load_cmd(s: &Scenario, engine_args: &[&str]) -> Vec<String> {
    let mut cmd = vec![support::helper().display().to_string(), "load".into()];
    cmd.extend(engine_args.iter().map(|a| a.to_string()));
    for (flag, rel) in [("--preload-dir", "preload"), ("--state-dir", "state")] {
        cmd.push(flag.into());
        cmd.push(s.p(rel).display().to_string());
    }
    cmd.extend(["--image".into(), "test/app:1".into()]);
    cmd
}

#[test]
fn a_docker_load_converges_after_a_fault_anywhere() {
    strace_available();
    if !support::docker_available() {
        return;
    }
    let engine = std::rc::Rc::new(support::Engine::start());
    let mut s = Scenario::new("docker-load");
    fs::create_dir_all(s.p("preload/docker")).unwrap();
    fs::create_dir_all(s.p("state")).unwrap();
    engine.build_archive("test/app:1", "v1", &[], &s.p("preload/docker/app.tar"));
    let _ = engine.docker(&["rmi", "-f", "test/app:1"]);
    let archive_sha = sha(&fs::read(s.p("preload/docker/app.tar")).unwrap());
    s.save();
    s.cmd = load_cmd(&s, &["--docker", "docker"]);
    s.env = vec![("DOCKER_HOST".into(), engine.host.clone())];
    s.follow = true;
    let e = engine.clone();
    s.reset = Box::new(move || {
        let _ = e.docker(&["rmi", "-f", "test/app:1"]);
    });
    let has = |image: &str| engine.image_id(image).is_some();
    assert_report(campaign(
        &s,
        &|o| o.status.success(),
        &|s, _, _| load_any_moment(s, &archive_sha, &has, "docker"),
        &|s| load_settled(s, &archive_sha, &has, "docker"),
    ));
}

#[test]
fn a_podman_load_converges_after_a_fault_anywhere() {
    strace_available();
    if !support::podman::podman_available() {
        return;
    }
    let podman = std::rc::Rc::new(support::podman::Podman::new());
    let mut s = Scenario::new("podman-load");
    fs::create_dir_all(s.p("preload/docker")).unwrap();
    fs::create_dir_all(s.p("state")).unwrap();
    let mut image = Image::new("test/app:1", vec![Layer::new().busybox().bytes()]);
    image.marker = "v1".into();
    image.save(&s.p("preload/docker/app.tar"));
    let archive_sha = sha(&fs::read(s.p("preload/docker/app.tar")).unwrap());
    s.save();
    s.cmd = load_cmd(&s, &["--engine", "podman"]);
    s.env = podman
        .env()
        .iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect();
    s.follow = true;
    let p = podman.clone();
    s.reset = Box::new(move || {
        let _ = p.podman(&["rmi", "-f", "test/app:1"]);
    });
    let has = |image: &str| podman.podman(&["image", "exists", image]).status.success();
    assert_report(campaign(
        &s,
        &|o| o.status.success(),
        &|s, _, _| load_any_moment(s, &archive_sha, &has, "podman"),
        &|s| load_settled(s, &archive_sha, &has, "podman"),
    ));
}

// ---------------------------------------------------------------------------------------
// Staging into an image root

/// A loopback HTTP server handing out `body` to every GET, for the test's lifetime.
fn serve(body: Vec<u8>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/app.tar", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(&body);
            });
        }
    });
    url
}

/// The units the generator makes of the root's config: what a merged config means, so
/// two configs that say the same (an entry merged twice, the later winning) compare equal.
fn effective_config(s: &Scenario) -> String {
    let config = s.p("root/var/lib/atomic/preload/config.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_atomic-preload-generator"))
        .arg("--dry-run")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    text(&out)
}

/// Where `stage --podman-store` puts the images, in the root.
const STORE: &str = "var/lib/containers/atomic-preload-store";

/// `podman ARGS` on the root's image store (a run root of the test's own).
fn store_podman(s: &Scenario, args: &[&str]) -> Output {
    let conf = s.work.with_extension("storage.conf");
    fs::write(
        &conf,
        format!(
            "[storage]\ndriver = \"overlay\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
            s.work.with_extension("store-run").display(),
            s.p(&format!("root/{STORE}")).display()
        ),
    )
    .unwrap();
    let out = Command::new(support::podman::PODMAN)
        .args(args)
        .env("CONTAINERS_STORAGE_CONF", &conf)
        .output()
        .unwrap();
    // Podman's overlay driver leaves its directory mounted onto itself; and its own
    // database is no part of the store.
    let _ = Command::new("umount")
        .arg("-l")
        .arg(s.p(&format!("root/{STORE}/overlay")))
        .stderr(Stdio::null())
        .status();
    let _ = fs::remove_dir_all(s.p(&format!("root/{STORE}/libpod")));
    let _ = fs::remove_dir_all(s.work.with_extension("store-run"));
    out
}

/// The root as a stage leaves it, comparable between runs: the files (but Podman's own
/// bookkeeping in the image store differs between two correct runs: the store is the
/// images it lists, each readable in full), and the units the config makes.
fn stage_state(s: &Scenario) -> BTreeMap<String, String> {
    let mut tree = snapshot(&s.p("root"), &|_, t| t);
    tree.remove("var/lib/atomic/preload/config.yaml");
    tree.insert("(effective config)".into(), effective_config(s));
    if tree.contains_key(STORE) {
        tree.retain(|k, _| !k.starts_with(&format!("{STORE}/")));
        let images = store_podman(
            s,
            &["images", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"],
        );
        tree.insert("(store images)".into(), text(&images));
        let save = store_podman(s, &["save", "-o", "/dev/null", "test/app:1"]);
        tree.insert(
            "(store: test/app:1 read in full)".into(),
            format!("{:?} {}", save.status.code(), text(&save)),
        );
    }
    tree
}

/// Anything a stage leaves that it should not: a dot-file in the root, a mount inside
/// it, a temp dir of its own.
fn stage_stray(s: &Scenario) -> Option<String> {
    let root = s.p("root").display().to_string();
    // Podman's own dot-files in the store are its business; a `.stage-…` file anywhere
    // is ours.
    if let Some(k) = snapshot(&s.p("root"), &|_, t| t).into_keys().find(|k| {
        let base = k.rsplit('/').next().unwrap();
        base.starts_with(".stage-") || (base.starts_with('.') && !k.starts_with(STORE))
    }) {
        return Some(k);
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    if let Some(m) = mounts.lines().find(|l| l.contains(&root)) {
        return Some(format!("a mount: {m}"));
    }
    // The campaign's own TMPDIR (campaigns run at once: one killed in another campaign
    // leaves its temp dir until that campaign's rerun removes it).
    fs::read_dir(&s.tmp)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("atomic-preload-stage-"))
        .map(|n| format!("{}/{n}", s.tmp.display()))
}

fn stage_campaign(name: &'static str, podman_store: bool, source: &dyn Fn(&Scenario) -> String) {
    strace_available();
    let mut s = Scenario::new(name);
    // An image root that already has an archive and a config.
    for d in ["root/etc", "root/var/lib/atomic/preload/docker", "src"] {
        fs::create_dir_all(s.p(d)).unwrap();
    }
    let old = Image::new(
        "test/old:1",
        vec![Layer::new().file("a", b"old", 0o644).bytes()],
    );
    old.save(&s.p("root/var/lib/atomic/preload/docker/old.tar"));
    fs::write(
        s.p("root/var/lib/atomic/preload/config.yaml"),
        "# baked in\n- name: old\n  image: test/old:1\n",
    )
    .unwrap();
    let mut app = Image::new("test/app:1", vec![Layer::new().busybox().bytes()]);
    app.marker = "v1".into();
    app.save(&s.p("src/app.tar"));
    fs::write(
        s.p("src/app.yaml"),
        "- name: app\n  image: test/app:1\n  run: {}\n- name: old\n  image: test/old:1\n  run: {}\n",
    )
    .unwrap();
    let src = source(&s);
    s.save();
    s.cmd = vec![
        support::helper().display().to_string(),
        "stage".into(),
        "--root".into(),
        s.p("root").display().to_string(),
        "--config".into(),
        s.p("src/app.yaml").display().to_string(),
    ];
    if podman_store {
        // Its work is Podman's too: faults in Podman's threads as well.
        s.cmd.push("--podman-store".into());
        s.follow = true;
        // A run killed before it released the mount Podman leaves in the store (the
        // rerun releases it) keeps the directory from being restored.
        let store = s.p(&format!("root/{STORE}/overlay"));
        s.reset = Box::new(move || {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&store)
                .stderr(Stdio::null())
                .status();
        });
    }
    s.cmd.push(src);
    // Its temp dirs where only its own runs make them (a short path: a TMPDIR longer
    // than Podman's run root allows gives way to /tmp).
    s.env.push(("TMPDIR".into(), s.tmp.display().to_string()));
    s.restore();
    let before = snapshot(&s.p("root"), &|_, t| t);
    must(run(&s.cmd, &s.env));
    let reference = stage_state(&s);
    if podman_store {
        assert!(
            reference["(store images)"].contains("localhost/test/app:1")
                && reference["(store: test/app:1 read in full)"].starts_with("Some(0)"),
            "{reference:?}"
        );
    } else {
        assert!(reference.contains_key("var/lib/atomic/preload/docker/app.tar.sha256"));
    }
    let stray = stage_stray;
    assert_report(campaign(
        &s,
        &|o| o.status.success(),
        &|s, point, out| {
            // A stage that failed (rather than being killed) is all or nothing: the root
            // is as it was, or (when what failed came after the commit, such as printing
            // the result) exactly what a stage does.
            // (Killed by the watchdog, a run whose engine hung on the error counts as
            // killed.)
            let killed = std::os::unix::process::ExitStatusExt::signal(&out.status).is_some();
            if matches!(point.fault, Fault::Errno(_)) && !out.status.success() && !killed {
                let now = snapshot(&s.p("root"), &|_, t| t);
                if now != before && (stray(s).is_some() || stage_state(s) != reference) {
                    return Err(format!(
                        "a failed stage changed the root:\n{}",
                        diff(&before, &now)
                    ));
                }
            }
            Ok(())
        },
        &|s| {
            if let Some(k) = stray(s) {
                return Err(format!("stray {k}"));
            }
            let now = stage_state(s);
            if now == reference {
                Ok(())
            } else {
                Err(format!(
                    "not what a stage without faults stages:\n{}",
                    diff(&reference, &now)
                ))
            }
        },
    ));
}

#[test]
fn a_stage_from_a_file_converges_after_a_fault_anywhere() {
    stage_campaign("stage-file", false, &|s| {
        s.p("src/app.tar").display().to_string()
    });
}

#[test]
fn a_stage_from_a_url_converges_after_a_fault_anywhere() {
    stage_campaign("stage-url", false, &|s| {
        serve(fs::read(s.p("src/app.tar")).unwrap())
    });
}

#[test]
fn a_stage_into_a_podman_store_converges_after_a_fault_anywhere() {
    if !support::podman::podman_available() {
        return;
    }
    stage_campaign("stage-podman-store", true, &|s| {
        s.p("src/app.tar").display().to_string()
    });
}

// ---------------------------------------------------------------------------------------
// Two operations at once

/// How often each pair runs: half the rounds with one started first, half the other,
/// the second started a little later each round, from together to when the first, run
/// alone, would have finished.
const ROUNDS: usize = 24;

/// `first` started, `second` started `delay` later; both waited for (killed after a
/// minute: two runs that wait for each other are a failure, not a hang of the suite).
fn together(
    first: &[String],
    second: &[String],
    env: &[(String, String)],
    delay: Duration,
) -> (Output, Output) {
    let start = |cmd: &[String]| {
        let (out, err) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        let child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(err.try_clone().unwrap())
            .spawn()
            .unwrap();
        (child, out, err)
    };
    let a = start(first);
    std::thread::sleep(delay);
    let b = start(second);
    let deadline = Instant::now() + Duration::from_secs(60);
    let finish = |(mut child, out, err): (std::process::Child, fs::File, fs::File)| {
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{first:?} and {second:?} together: still running after a minute");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let read = |mut f: fs::File| {
            use std::io::{Read, Seek};
            let mut bytes = Vec::new();
            f.seek(std::io::SeekFrom::Start(0)).unwrap();
            f.read_to_end(&mut bytes).unwrap();
            bytes
        };
        Output {
            status,
            stdout: read(out),
            stderr: read(err),
        }
    };
    let a = finish(a);
    let b = finish(b);
    (a, b)
}

/// Run `a` and `b` together [`ROUNDS`] times from the saved state. Never interleaved
/// means: each time, the exit statuses and the state (`state`) are those of running them
/// one after the other, in one order or the other, and the state is `settled`. Returns
/// how many rounds one of them had to wait for the other (said so on its output).
fn race(
    s: &Scenario,
    a: &[String],
    b: &[String],
    state: &dyn Fn(&Scenario) -> BTreeMap<String, String>,
    settled: &dyn Fn(&Scenario) -> Result<(), String>,
) -> usize {
    let serial = |x: &[String], y: &[String]| {
        s.restore();
        let t = Instant::now();
        let ox = run(x, &s.env);
        let tx = t.elapsed();
        let oy = run(y, &s.env);
        settled(s)
            .unwrap_or_else(|e| panic!("{x:?} then {y:?}: {e}\n{}\n{}", text(&ox), text(&oy)));
        ((ox.status.code(), oy.status.code()), state(s), tx)
    };
    let (ab_codes, ab_state, ta) = serial(a, b);
    let (ba, ba_state, tb) = serial(b, a);
    let ba_codes = (ba.1, ba.0);
    let mut waited = 0;
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        s.restore();
        let a_first = round % 2 == 0;
        let (first, second, alone) = if a_first { (a, b, ta) } else { (b, a, tb) };
        let delay = alone * (round / 2) as u32 / (ROUNDS / 2) as u32;
        let (o1, o2) = together(first, second, &s.env, delay);
        let (oa, ob) = if a_first { (o1, o2) } else { (o2, o1) };
        let said = format!("{}\n--\n{}", text(&oa), text(&ob));
        if said.contains("waiting for another atomic-preload run to finish") {
            waited += 1;
        }
        let codes = (oa.status.code(), ob.status.code());
        let now = state(s);
        let at = format!("{}: round {round} ({delay:?} apart)", s.name);
        if let Err(e) = settled(s) {
            failures.push(format!("{at}: {e}\n{said}"));
        } else if !((codes == ab_codes && now == ab_state)
            || (codes == ba_codes && now == ba_state))
        {
            failures.push(format!(
                "{at}: exit statuses {codes:?} (one after the other: {ab_codes:?} or {ba_codes:?}) and the state:\n{}\n{said}",
                diff(if codes == ba_codes { &ba_state } else { &ab_state }, &now)
            ));
        }
    }
    eprintln!(
        "{}: {ROUNDS} rounds, {waited} where one waited for the other, {} not as if one after the other",
        s.name,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {ROUNDS} rounds interleaved; first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(2)].join("\n\n")
    );
    assert!(
        waited > 0,
        "{}: in no round did one run wait for the other: the pair never overlapped",
        s.name
    );
    waited
}

fn system_race(s: &Scenario, a: &[String], b: &[String]) {
    race(s, a, b, &system_state, &system_settled);
}

#[test]
fn two_first_installs_at_once_are_one_install() {
    let mut s = system_scenario("race-install-install");
    sys_image("v1").save(&s.p("preload/ostree/etcd.tar"));
    s.save();
    s.cmd = install_cmd(&s);
    system_race(&s, &s.cmd, &s.cmd);
}

#[test]
fn an_update_and_a_rollback_at_once_are_one_after_the_other() {
    let s = updated_scenario("race-update-rollback");
    s.save();
    system_race(
        &s,
        &install_cmd(&s),
        &system_args(&s, &["rollback", "etcd"]),
    );
}

#[test]
fn an_update_and_an_uninstall_at_once_are_one_after_the_other() {
    let s = updated_scenario("race-update-uninstall");
    s.save();
    system_race(
        &s,
        &install_cmd(&s),
        &system_args(&s, &["uninstall", "etcd"]),
    );
}

#[test]
fn a_rollback_and_an_uninstall_at_once_are_one_after_the_other() {
    let s = two_versions_scenario("race-rollback-uninstall");
    s.save();
    let rollback = system_args(&s, &["rollback", "etcd"]);
    system_race(&s, &rollback, &system_args(&s, &["uninstall", "etcd"]));
    system_race(&s, &rollback, &rollback);
}

#[test]
fn a_start_and_a_rollback_at_once_are_one_after_the_other() {
    let s = two_versions_scenario("race-start-rollback");
    s.save();
    system_race(
        &s,
        &system_args(&s, &["start-system", "--name", "etcd", "--settle", "0"]),
        &system_args(&s, &["rollback", "etcd"]),
    );
}

/// `stage --root` onto the root a host runs from (an admin on a live host), with v2 of
/// the archive the other operation reads (`src/ARCHIVE`).
fn stage_v2_cmd(s: &Scenario, system: bool, archive: &str) -> Vec<String> {
    let mut cmd = vec![
        support::helper().display().to_string(),
        "stage".into(),
        "--root".into(),
        s.p("root").display().to_string(),
    ];
    if system {
        cmd.push("--system".into());
    }
    cmd.push(s.p(&format!("src/{archive}")).display().to_string());
    cmd
}

#[test]
fn a_system_stage_onto_a_live_host_and_an_install_at_once_are_one_after_the_other() {
    let s = system_scenario("race-stage-install");
    // The host's preload directory is the root's, as on a live host staged with --root /.
    fs::create_dir_all(s.p("root/etc")).unwrap();
    fs::create_dir_all(s.p("src")).unwrap();
    let preload = s.p("root/var/lib/atomic/preload");
    fs::create_dir_all(preload.join("ostree")).unwrap();
    sys_image("v1").save(&preload.join("ostree/etcd.tar"));
    sys_image("v2").save(&s.p("src/etcd.tar"));
    s.save();
    let install: Vec<String> = install_cmd(&s)
        .into_iter()
        .map(|a| {
            if a == s.p("preload").display().to_string() {
                preload.display().to_string()
            } else {
                a
            }
        })
        .collect();
    let state = |s: &Scenario| {
        let mut all = system_state(s);
        for (k, v) in snapshot(&s.p("root"), &|_, t| t) {
            all.insert(format!("root/{k}"), v);
        }
        all
    };
    race(
        &s,
        &install,
        &stage_v2_cmd(&s, true, "etcd.tar"),
        &state,
        &system_settled,
    );
}

/// A Podman scenario: `preload/docker/app.tar` (v1) with its recorded digest under a
/// root, and v2 of it in `src/`.
fn podman_race_scenario(
    name: &'static str,
    podman: &std::rc::Rc<support::podman::Podman>,
) -> Scenario {
    let mut s = Scenario::new(name);
    let docker = s.p("root/var/lib/atomic/preload/docker");
    for d in [&docker, &s.p("root/etc"), &s.p("src"), &s.p("state")] {
        fs::create_dir_all(d).unwrap();
    }
    for (marker, path) in [("v1", s.p("src/v1.tar")), ("v2", s.p("src/app.tar"))] {
        let mut image = Image::new("test/app:1", vec![Layer::new().busybox().bytes()]);
        image.marker = marker.into();
        image.save(&path);
    }
    must(run(&stage_v2_cmd(&s, false, "v1.tar"), &[]));
    fs::rename(docker.join("v1.tar"), docker.join("app.tar")).unwrap();
    fs::write(
        docker.join("app.tar.sha256"),
        fs::read_to_string(docker.join("v1.tar.sha256"))
            .unwrap()
            .replace("v1.tar", "app.tar"),
    )
    .unwrap();
    fs::remove_file(docker.join("v1.tar.sha256")).unwrap();
    s.save();
    s.env = podman
        .env()
        .iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect();
    let p = podman.clone();
    s.reset = Box::new(move || {
        let _ = p.podman(&["rmi", "-f", "test/app:1"]);
    });
    s
}

/// What a load leaves: the image the engine has, what the marks record (not the
/// fingerprint: a restored file has a new inode), the root.
fn podman_race_state(s: &Scenario, podman: &support::podman::Podman) -> BTreeMap<String, String> {
    let mut all = snapshot(&s.p("root"), &|_, t| t);
    let id = podman.podman(&["image", "inspect", "--format", "{{.Id}}", "test/app:1"]);
    all.insert("(image)".into(), text(&id));
    for (k, v) in snapshot(&s.p("state/loaded"), &|_, t| {
        t.lines()
            .filter(|l| l.starts_with("sha256=") || l.starts_with("images="))
            .collect::<Vec<_>>()
            .join("\n")
    }) {
        all.insert(format!("marks/{k}"), v);
    }
    all
}

fn podman_load_cmd(s: &Scenario) -> Vec<String> {
    let mut cmd = load_cmd(s, &["--engine", "podman"]);
    let preload = s.p("root/var/lib/atomic/preload").display().to_string();
    let i = cmd.iter().position(|a| a == "--preload-dir").unwrap();
    cmd[i + 1] = preload;
    cmd
}

#[test]
fn two_loads_at_once_load_once() {
    if !support::podman::podman_available() {
        return;
    }
    let podman = std::rc::Rc::new(support::podman::Podman::new());
    let s = podman_race_scenario("race-load-load", &podman);
    let load = podman_load_cmd(&s);
    race(
        &s,
        &load,
        &load,
        &|s| podman_race_state(s, &podman),
        &|_| Ok(()),
    );
}

#[test]
fn a_stage_onto_a_live_host_and_a_load_at_once_are_one_after_the_other() {
    if !support::podman::podman_available() {
        return;
    }
    let podman = std::rc::Rc::new(support::podman::Podman::new());
    let s = podman_race_scenario("race-stage-load", &podman);
    race(
        &s,
        &podman_load_cmd(&s),
        &stage_v2_cmd(&s, false, "app.tar"),
        &|s| podman_race_state(s, &podman),
        &|_| Ok(()),
    );
}

// ---------------------------------------------------------------------------------------
// Power loss: the order of writes

/// Every rename in a trace (`strace -f -y`) of a writer that a later run trusts must
/// come after an fsync of the file renamed (a directory: after a syncfs), and be
/// followed by an fsync of the directory it lands in. Renames to a dot-name (a deployment
/// going to the trash, a backup) are not trusted by anyone and are exempt, and so are
/// symlinks (nothing to fsync but their directory) and what `exempt` says (the test's
/// stand-ins for systemctl).
fn durability_violations(trace: &str, exempt: &dyn Fn(&str) -> bool) -> (Vec<String>, usize) {
    let quoted = |line: &str| -> Vec<String> {
        line.split('"')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s.to_owned())
            .collect()
    };
    let fd_path = |line: &str| -> Option<String> {
        let start = line.find('<')? + 1;
        let end = start + line[start..].find('>')?;
        Some(line[start..end].to_owned())
    };
    let lines: Vec<&str> = trace
        .lines()
        .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest.trim_start()))
        .collect();
    let mut violations = Vec::new();
    let mut checked = 0;
    for (i, line) in lines.iter().enumerate() {
        if !(line.starts_with("rename(") || line.starts_with("renameat")) || !line.ends_with("= 0")
        {
            continue;
        }
        let paths = quoted(line);
        let (Some(from), Some(to)) = (paths.first(), paths.get(1)) else {
            continue;
        };
        let to_name = to.rsplit('/').next().unwrap_or_default();
        if to_name.starts_with('.') || exempt(to) {
            continue;
        }
        checked += 1;
        let dir = to.rsplit_once('/').map_or(".", |(d, _)| d);
        let before = &lines[..i];
        let synced = match fs::symlink_metadata(to) {
            Ok(m) if m.file_type().is_symlink() => true,
            Ok(m) if m.is_dir() => before.iter().any(|l| l.starts_with("syncfs(")),
            _ => before.iter().any(|l| {
                (l.starts_with("fsync(") || l.starts_with("fdatasync("))
                    && fd_path(l).as_deref() == Some(from.as_str())
            }),
        };
        if !synced {
            violations.push(format!(
                "{to}: renamed from {from} without an fsync of it first"
            ));
        }
        let dir_synced = lines[i + 1..]
            .iter()
            .any(|l| l.starts_with("fsync(") && fd_path(l).as_deref() == Some(dir));
        if !dir_synced {
            violations.push(format!("{to}: no fsync of {dir} after the rename"));
        }
    }
    (violations, checked)
}

/// Run `cmd` under `strace -f -y`, must succeed; its trace.
fn traced(cmd: &[String], env: &[(String, String)]) -> String {
    let out = tempfile::NamedTempFile::new().unwrap();
    let status = Command::new("strace")
        .args(["-f", "-y", "-qq", "-e", "signal=none", "-e"])
        .arg("trace=openat,fsync,fdatasync,syncfs,rename,renameat,renameat2,close")
        .arg("-o")
        .arg(out.path())
        .arg("--")
        .args(cmd)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{cmd:?}");
    fs::read_to_string(out.path()).unwrap()
}

#[test]
fn every_writer_syncs_before_and_after_it_renames() {
    strace_available();
    let s = system_scenario("durability");
    let archive = s.p("preload/ostree/etcd.tar");
    sys_image("v1").save(&archive);
    // Only what atomic-preload writes: not the stand-ins' files, not Podman's own.
    let sd = s.p("sd").display().to_string();
    let work = s.work.display().to_string();
    let not_ours = move |p: &str| p.starts_with(&sd) || !p.starts_with(&work);
    let mut checked = Vec::new();
    // A start of a verified deployment writes nothing and an uninstall only deletes;
    // every other run renames something of ours.
    let mut check = |what: &str, cmd: Vec<String>, env: &[(String, String)]| {
        let trace = traced(&cmd, env);
        let (v, renames) = durability_violations(&trace, &not_ours);
        assert!(v.is_empty(), "{what}:\n{}", v.join("\n"));
        assert!(
            renames > 0 || what == "start" || what == "uninstall",
            "{what}: no rename of ours was seen in the trace"
        );
        checked.push(format!("{what}: {renames} renames checked"));
    };
    check("first install", install_cmd(&s), &[]);
    check(
        "start",
        system_args(&s, &["start-system", "--name", "etcd"]),
        &[],
    );
    sys_image("v2").save(&archive);
    check("update", install_cmd(&s), &[]);
    check(
        "verify",
        system_args(&s, &["start-system", "--name", "etcd", "--settle", "0"]),
        &[],
    );
    check("rollback", system_args(&s, &["rollback", "etcd"]), &[]);
    check("uninstall", system_args(&s, &["uninstall", "etcd"]), &[]);

    // Staging: archive, sidecar and config.
    fs::create_dir_all(s.p("root/etc")).unwrap();
    fs::write(
        s.p("app.yaml"),
        "- name: app\n  image: example.org/test/etcd:1\n",
    )
    .unwrap();
    check(
        "stage",
        vec![
            support::helper().display().to_string(),
            "stage".into(),
            "--root".into(),
            s.p("root").display().to_string(),
            "--config".into(),
            s.p("app.yaml").display().to_string(),
            archive.display().to_string(),
        ],
        &[],
    );
    // Loading: the marks (Podman's, which needs no daemon).
    if support::podman::podman_available() {
        let podman = support::podman::Podman::new();
        let env: Vec<(String, String)> = podman
            .env()
            .iter()
            .map(|(k, v)| (k.to_string(), v.display().to_string()))
            .collect();
        let mut cmd = vec![
            support::helper().display().to_string(),
            "load".into(),
            "--engine".into(),
            "podman".into(),
            "--preload-dir".into(),
            s.p("root/var/lib/atomic/preload").display().to_string(),
            "--state-dir".into(),
            s.p("load-state").display().to_string(),
        ];
        fs::create_dir_all(s.p("root/var/lib/atomic/preload/docker")).unwrap();
        fs::copy(&archive, s.p("root/var/lib/atomic/preload/docker/etcd.tar")).unwrap();
        cmd.extend(["--image".into(), IMAGE.into()]);
        check("load", cmd, &env);
    }
    eprintln!("{}", checked.join("\n"));
    // The checker itself: a rename with no fsync at all is caught.
    let bad = "1 openat(AT_FDCWD</>, \"/x/.a.tmp\", O_WRONLY) = 3</x/.a.tmp>\n1 rename(\"/x/.a.tmp\", \"/x/a\") = 0\n";
    assert_eq!(
        durability_violations(bad, &|_| false),
        (
            vec![
                "/x/a: renamed from /x/.a.tmp without an fsync of it first".to_owned(),
                "/x/a: no fsync of /x after the rename".to_owned(),
            ],
            1
        )
    );
    // With the PID padded as strace does for short ones.
    let padded = bad.replace("1 ", "123  ");
    assert_eq!(durability_violations(&padded, &|_| false).0.len(), 2);
}

// ---------------------------------------------------------------------------------------
// A real full disk

/// A tmpfs of `size` mounted on `dir` for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs on {}", dir.display());
        Tmpfs(dir.to_owned())
    }
    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_checkout_file_system_says_so_keeps_the_running_version_and_recovers() {
    let s = system_scenario("full-disk");
    let disk = Tmpfs::mount(&s.p("checkout"), "8M");
    let archive = s.p("preload/ostree/etcd.tar");
    sys_image("v1").save(&archive);
    must(run(&install_cmd(&s), &[]));
    must(run(
        &system_args(&s, &["start-system", "--name", "etcd"]),
        &[],
    ));
    let before = system_state(&s);
    // v2 carries 12 MB more than the file system has room for.
    let mut v2 = sys_image("v2");
    v2.layers.push(
        Layer::new()
            .file("payload", &vec![7u8; 12 << 20], 0o644)
            .bytes(),
    );
    v2.save(&archive);
    let out = run(&install_cmd(&s), &[]);
    let said = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "retried at the next start: {said}"
    );
    let checkout = s.p("checkout").display().to_string();
    assert!(
        said.contains(&format!(
            "the file system holding {checkout} ran out of space"
        )) && said.contains("ran out of space (0.0 MiB of 8.0 MiB free now)")
            && said.contains("No space left on device"),
        "{said}"
    );
    system_settled(&s).unwrap();
    let mut now = system_state(&s);
    now.remove("preload/ostree/etcd.tar");
    let mut expected = before.clone();
    expected.remove("preload/ostree/etcd.tar");
    assert_eq!(
        now,
        expected,
        "nothing half installed, v1 untouched and running:\n{}",
        diff(&expected, &now)
    );
    // Space freed: the next start installs v2.
    disk.resize("64M");
    must(run(&install_cmd(&s), &[]));
    system_settled(&s).unwrap();
    assert_eq!(
        fs::read_link(s.p("checkout/etcd")).unwrap(),
        s.p("checkout/etcd.1")
    );
    assert_eq!(
        fs::read_to_string(s.p("sd/state")).unwrap().trim(),
        "active"
    );
    drop(disk);
}

/// A private Podman whose storage (graph root) is on a tmpfs of `size`.
fn podman_on_tmpfs(size: &str) -> (std::rc::Rc<support::podman::Podman>, Tmpfs) {
    let podman = support::podman::Podman::new();
    let graph = podman.dir.path().join("root");
    fs::create_dir_all(&graph).unwrap();
    let disk = Tmpfs::mount(&graph, size);
    (std::rc::Rc::new(podman), disk)
}

fn podman_env(podman: &support::podman::Podman) -> Vec<(String, String)> {
    podman
        .env()
        .iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect()
}

#[test]
fn a_full_engine_storage_says_so_is_retried_and_recovers() {
    if !support::podman::podman_available() {
        return;
    }
    let (podman, disk) = podman_on_tmpfs("8M");
    let s = Scenario::new("full-engine");
    fs::create_dir_all(s.p("preload/docker")).unwrap();
    fs::create_dir_all(s.p("state")).unwrap();
    // 12 MB more than the engine's storage has room for.
    let image = Image::new(
        "test/app:1",
        vec![
            Layer::new().busybox().bytes(),
            Layer::new()
                .file("payload", &vec![7u8; 12 << 20], 0o644)
                .bytes(),
        ],
    );
    image.save(&s.p("preload/docker/app.tar"));
    let archive_sha = sha(&fs::read(s.p("preload/docker/app.tar")).unwrap());
    let env = podman_env(&podman);
    let cmd = load_cmd(&s, &["--engine", "podman"]);
    let out = run(&cmd, &env);
    let said = text(&out);
    eprintln!("{said}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "retried at the next start, not refused as a bad archive: {said}"
    );
    let graph = podman.dir.path().join("root").display().to_string();
    assert!(
        said.contains("no space left on device")
            && said.contains(&format!("the file system holding {graph}"))
            && said.contains("of 8.0 MiB free now): free space there, and it is tried again"),
        "{said}"
    );
    let has = |image: &str| podman.podman(&["image", "exists", image]).status.success();
    load_any_moment(&s, &archive_sha, &has, "podman").unwrap();
    assert!(!s.p("state/loaded/podman/app.tar").exists(), "no mark");
    // Space freed: the next start loads it.
    disk.resize("64M");
    must(run(&cmd, &env));
    load_settled(&s, &archive_sha, &has, "podman").unwrap();
    let _ = podman.podman(&["rmi", "-af"]);
    drop(disk);
}

#[test]
fn a_full_state_directory_says_so_and_recovers() {
    if !support::podman::podman_available() {
        return;
    }
    let podman = std::rc::Rc::new(support::podman::Podman::new());
    let s = Scenario::new("full-state");
    fs::create_dir_all(s.p("preload/docker")).unwrap();
    fs::create_dir_all(s.p("state")).unwrap();
    let disk = Tmpfs::mount(&s.p("state"), "1M");
    // Fill it up.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", s.p("state/filler").display()))
        .stderr(Stdio::null())
        .status();
    let mut image = Image::new("test/app:1", vec![Layer::new().busybox().bytes()]);
    image.marker = "v1".into();
    image.save(&s.p("preload/docker/app.tar"));
    let archive_sha = sha(&fs::read(s.p("preload/docker/app.tar")).unwrap());
    let env = podman_env(&podman);
    let has = |image: &str| podman.podman(&["image", "exists", image]).status.success();
    // The unit of one entry: its image is loaded, so its container can start; the
    // journal says the record could not be kept, and where.
    let cmd = load_cmd(&s, &["--engine", "podman"]);
    let out = run(&cmd, &env);
    let said = text(&out);
    let state = s.p("state").display().to_string();
    eprintln!("{said}");
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("No space left on device")
            && said.contains(&format!("the file system holding {state}"))
            && said.contains("ran out of space (0.0 MiB of 1.0 MiB free now)"),
        "{said}"
    );
    load_any_moment(&s, &archive_sha, &has, "podman").unwrap();
    // The unit for every archive (no image of its own) fails, to be retried.
    let mut all = cmd.clone();
    all.truncate(all.len() - 2);
    let _ = podman.podman(&["rmi", "-af"]);
    let out = run(&all, &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // Space freed: the next start loads and records it.
    fs::remove_file(s.p("state/filler")).unwrap();
    must(run(&cmd, &env));
    load_settled(&s, &archive_sha, &has, "podman").unwrap();
    drop(disk);
}
