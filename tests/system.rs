//! System containers without Docker: `atomic-preload install-system` on images built here
//! (busybox-static + `/exports`), with every host path moved into a temp dir and stand-ins
//! for systemctl and systemd-tmpfiles (the boot suite runs the real ones). The container
//! itself runs under the real runc. Needs root (ownership, xattrs) and busybox-static.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::sysimage::{FakeHost, Image, Layer};

const IMAGE: &str = "example.org/test/etcd:1";

/// A fake host for this file's image.
struct Host(FakeHost);

impl std::ops::Deref for Host {
    type Target = FakeHost;
    fn deref(&self) -> &FakeHost {
        &self.0
    }
}

impl Host {
    fn new() -> Host {
        Host(FakeHost::new())
    }
    fn install(&self, name: &str, sets: &[&str]) -> Output {
        self.0.install(IMAGE, name, sets)
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const CONFIG_TEMPLATE: &str = r#"{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": {"uid": 0, "gid": 0},
    "args": ["/bin/sh", "-c", "echo $GREETING from $$HOSTNAME > /data/out; exec sleep 1000"],
    "env": ["PATH=/bin", "HOSTNAME=$NAME"],
    "cwd": "/"
  },
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "$NAME",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
    {"destination": "/data", "type": "bind", "source": "$STATE_DIRECTORY/$NAME", "options": ["rbind", "rw"]}
  ],
  "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}
}
"#;

const SERVICE_TEMPLATE: &str = "[Unit]\nDescription=Etcd-like test server $NAME\nAfter=network.target\n\n[Service]\nExecStartPre=$EXEC_STARTPRE\nExecStart=$EXEC_START\nExecStop=$EXEC_STOP\nWorkingDirectory=$DESTDIR\nEnvironment=GREETING=$GREETING\n\n[Install]\nWantedBy=multi-user.target\n";

const MANIFEST: &str = r#"{
  "version": "1.0",
  "defaultValues": {"GREETING": "hello", "PORT": 2379, "CONF": "/etc/$NAME-not-expanded"},
  "renameFiles": {"/etc/etcd-test.conf": "/etc/$NAME.conf"},
  "installedFilesTemplate": ["/etc/etcd.conf"]
}
"#;

/// The base layer: busybox, a lower layer's files for the next one to hide, ownership,
/// setuid and a file capability.
fn base_layer() -> Vec<u8> {
    Layer::new()
        .dir("./", 0o755)
        .busybox()
        .dir("etc/", 0o755)
        .file("etc/os-release", b"ID=test\n", 0o644)
        .dir("usr/", 0o755)
        .dir("usr/lib/", 0o755)
        .dir("usr/share/", 0o755)
        .dir("usr/share/doc/", 0o755)
        .file("usr/share/doc/lower-a", b"a", 0o644)
        .file("usr/share/doc/lower-b", b"b", 0o644)
        .file("old-file", b"gone in layer 2", 0o644)
        .owned_file("bin/setuid-tool", b"#!/bin/sh\n", 0o4755, 0, 0)
        .owned_file("home-file", b"owned", 0o600, 1000, 1001)
        .file_with_capability(
            "bin/ping-like",
            b"x",
            &[1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        )
        .symlink("lib", "usr/lib")
        .char_device("dev-null")
        .fifo("a-fifo")
        .bytes()
}

/// The second layer: whiteouts, an opaque directory, a hard link, writes through a
/// symlinked directory, and /exports.
fn exports_layer(greeting_file: &str) -> Vec<u8> {
    Layer::new()
        .file(".wh.old-file", b"", 0o644)
        .file("usr/share/doc/new-c", b"c", 0o644)
        .file("usr/share/doc/.wh..wh..opq", b"", 0o644)
        .hardlink("bin/busybox-again", "bin/busybox")
        .file("lib/libtest.so", b"elf", 0o755)
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
        .file("exports/manifest.json", MANIFEST.as_bytes(), 0o644)
        .file(
            "exports/hostfs/usr/local/bin/etcdctl-test",
            greeting_file.as_bytes(),
            0o755,
        )
        .file(
            "exports/hostfs/etc/etcd-test.conf",
            b"name=$NAME greeting=$GREETING\n",
            0o644,
        )
        .file(
            "exports/hostfs/etc/existing.conf",
            b"from the image\n",
            0o644,
        )
        .bytes()
}

fn etcd_image(marker: &str) -> Image {
    let mut image = Image::new(IMAGE, vec![base_layer(), exports_layer(marker)]);
    image.marker = marker.into();
    image
}

#[test]
fn checkout_applies_layers_like_an_engine() {
    let host = Host::new();
    etcd_image("v1").save(&host.p("preload/ostree/etcd.tar.gz"));
    fs::create_dir_all(host.p("host/etc")).unwrap();
    let out = host.install("etcd", &[]);
    let stdout = ok(&out);
    assert!(
        stdout.contains("2 device nodes/FIFOs/sockets skipped"),
        "{stdout}"
    );
    let root = host.p("checkout/etcd/rootfs");
    assert_eq!(
        fs::read_link(host.p("checkout/etcd")).unwrap(),
        host.p("checkout/etcd.0")
    );
    assert!(
        !root.join("old-file").exists(),
        "whiteout removed the lower file"
    );
    let mut doc: Vec<String> = fs::read_dir(root.join("usr/share/doc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    doc.sort();
    assert_eq!(
        doc,
        ["new-c"],
        "opaque dir hides lower files, keeps its own layer's"
    );
    let a = fs::metadata(root.join("bin/busybox")).unwrap();
    let b = fs::metadata(root.join("bin/busybox-again")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link");
    let setuid = fs::metadata(root.join("bin/setuid-tool")).unwrap();
    assert_eq!(setuid.mode() & 0o7777, 0o4755, "setuid kept after chown");
    let owned = fs::metadata(root.join("home-file")).unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o777),
        (1000, 1001, 0o600)
    );
    assert_eq!(owned.mtime(), 1_600_000_000);
    let cap = rustix::fs::getxattr(
        root.join("bin/ping-like"),
        "security.capability",
        &mut [0u8; 64][..],
    );
    assert_eq!(cap.unwrap(), 20, "security.capability kept");
    assert_eq!(
        fs::read(root.join("usr/lib/libtest.so")).unwrap(),
        b"elf",
        "written through lib -> usr/lib"
    );
    assert!(
        fs::symlink_metadata(root.join("lib"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!root.join("dev-null").exists() && !root.join("a-fifo").exists());
    assert_eq!(
        fs::metadata(root.join("usr/share")).unwrap().mtime(),
        1_600_000_000,
        "dir mtimes set last"
    );
    // Nothing but the deployment and the link under the checkout dir: no temp left.
    assert_eq!(
        fs::read_dir(host.p("checkout")).unwrap().count(),
        2,
        "{:?}",
        host.tree("checkout")
            .iter()
            .filter(|p| !p.contains('/'))
            .collect::<Vec<_>>()
    );
}

#[test]
fn templates_values_and_host_files_follow_atomic() {
    let host = Host::new();
    etcd_image("v1").save(&host.p("preload/ostree/etcd.tar"));
    fs::create_dir_all(host.p("host/etc")).unwrap();
    fs::write(host.p("host/etc/existing.conf"), "the admin's\n").unwrap();
    let state = host.p("host/var/lib").display().to_string();
    ok(&host.install(
        "etcd",
        &["GREETING=bonjour", &format!("STATE_DIRECTORY={state}")],
    ));
    let dest = host.p("checkout/etcd.0");
    let destdir = dest.display().to_string();

    let unit = fs::read_to_string(host.p("units/etcd.service")).unwrap();
    assert_eq!(
        unit,
        format!(
            "[Unit]\nDescription=Etcd-like test server etcd\nAfter=network.target\n\n[Service]\n\
             ExecStartPre=-/usr/sbin/runc --systemd-cgroup delete --force 'etcd'\n\
             ExecStart=/usr/sbin/runc --systemd-cgroup run 'etcd'\n\
             ExecStop=/usr/sbin/runc --systemd-cgroup kill 'etcd' TERM\n\
             WorkingDirectory={destdir}\nEnvironment=GREETING=bonjour\n\n[Install]\nWantedBy=multi-user.target\n"
        )
    );
    assert_eq!(
        fs::read_to_string(dest.join("etcd.service")).unwrap(),
        unit,
        "copy kept in the deployment"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(dest.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["hostname"], "etcd");
    assert_eq!(
        config["process"]["args"][2],
        "echo bonjour from $HOSTNAME > /data/out; exec sleep 1000"
    );
    assert_eq!(config["mounts"][2]["source"], format!("{state}/etcd"));
    // The bind source is missing on the host: atomic's generated tmpfiles line.
    let tmpfiles = format!("d    {state}/etcd   0700 0 0 - -\n");
    assert_eq!(
        fs::read_to_string(host.p("tmpfiles/etcd.conf")).unwrap(),
        tmpfiles
    );
    assert_eq!(
        fs::read_to_string(dest.join("tmpfiles-etcd.conf")).unwrap(),
        tmpfiles
    );

    // Host files: copied, renamed, rendered; an existing file is left alone.
    assert_eq!(
        fs::read_to_string(host.p("host/usr/local/bin/etcdctl-test")).unwrap(),
        "v1"
    );
    assert_eq!(
        fs::metadata(host.p("host/usr/local/bin/etcdctl-test"))
            .unwrap()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        fs::read_to_string(host.p("host/etc/etcd.conf")).unwrap(),
        "name=etcd greeting=bonjour\n"
    );
    assert_eq!(
        fs::read_to_string(host.p("host/etc/existing.conf")).unwrap(),
        "the admin's\n"
    );

    let info: serde_json::Value =
        serde_json::from_slice(&fs::read(dest.join("info")).unwrap()).unwrap();
    assert_eq!(info["image"], IMAGE);
    assert_eq!(info["revision"], etcd_image("v1").id());
    assert_eq!(info["values"]["GREETING"], "bonjour");
    assert_eq!(info["values"]["PORT"], "2379");
    assert_eq!(info["values"]["DESTDIR"], destdir);
    assert_eq!(info["values"]["IMAGE_ID"], etcd_image("v1").id());
    assert_eq!(info["has-container-service"], true);
    let files: Vec<&str> = info["installed-files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(files, ["/etc/etcd.conf", "/usr/local/bin/etcdctl-test"]);

    let calls = host.log("systemctl.log");
    assert!(calls.contains("daemon-reload"), "{calls}");
    assert!(
        !calls.contains("enable"),
        "preload starts it, nothing enables it: {calls}"
    );
    assert!(
        host.log("tmpfiles.log").contains("--create"),
        "tmpfiles applied"
    );
}

#[test]
fn second_install_is_a_no_op_and_an_update_uses_the_other_slot() {
    let host = Host::new();
    let archive = host.p("preload/ostree/etcd.tar.zst");
    etcd_image("v1").save(&archive);
    ok(&host.install("etcd", &[]));
    let uuid = |slot: &str| -> String {
        let info: serde_json::Value =
            serde_json::from_slice(&fs::read(host.p(&format!("checkout/{slot}/info"))).unwrap())
                .unwrap();
        info["values"]["UUID"].as_str().unwrap().to_owned()
    };
    let first_uuid = uuid("etcd.0");
    assert_eq!(first_uuid.len(), 36, "{first_uuid}");
    let busybox = host.p("checkout/etcd.0/rootfs/bin/busybox");
    let before = fs::metadata(&busybox).unwrap();
    let reloads = host.log("systemctl.log").matches("daemon-reload").count();

    let again = ok(&host.install("etcd", &[]));
    assert!(again.contains("etcd is installed from"), "{again}");
    assert_eq!(
        fs::metadata(&busybox).unwrap().ino(),
        before.ino(),
        "checkout reused"
    );
    assert_eq!(
        host.log("systemctl.log").matches("daemon-reload").count(),
        reloads
    );
    assert!(!host.p("checkout/etcd.1").exists());

    // Changed values: the other slot, built fresh; the old one stays for rollback.
    ok(&host.install("etcd", &["GREETING=changed"]));
    assert_eq!(
        fs::read_link(host.p("checkout/etcd")).unwrap(),
        host.p("checkout/etcd.1")
    );
    assert!(host.p("checkout/etcd.0/rootfs/bin/busybox").exists());
    // A new image: back to slot 0, rebuilt.
    fs::write(
        host.p("host/usr/local/bin/etcdctl-test"),
        "edited by the admin",
    )
    .unwrap();
    etcd_image("v2").save(&archive);
    ok(&host.install("etcd", &["GREETING=changed"]));
    assert_eq!(
        fs::read_link(host.p("checkout/etcd")).unwrap(),
        host.p("checkout/etcd.0")
    );
    let info: serde_json::Value =
        serde_json::from_slice(&fs::read(host.p("checkout/etcd/info")).unwrap()).unwrap();
    assert_eq!(info["revision"], etcd_image("v2").id());
    // An update keeps the container's identity (atomic's runtime test asserts the same).
    assert_eq!(uuid("etcd.0"), first_uuid);
    assert_eq!(uuid("etcd.1"), first_uuid);
    assert_eq!(
        info["verified"], false,
        "an update is unverified until it ran"
    );
    assert_eq!(
        fs::read_to_string(host.p("host/usr/local/bin/etcdctl-test")).unwrap(),
        "edited by the admin",
        "a modified host file is neither removed nor overwritten"
    );

    // rollback swaps back; uninstall leaves nothing behind but the admin's edit.
    ok(&host.helper(&["rollback", "etcd"]));
    assert_eq!(
        fs::read_link(host.p("checkout/etcd")).unwrap(),
        host.p("checkout/etcd.1")
    );
    let out = ok(&host.helper(&["uninstall", "etcd"]));
    assert!(out.contains("etcd uninstalled"), "{out}");
    assert!(
        host.tree("checkout").is_empty(),
        "{:?}",
        host.tree("checkout")
    );
    assert!(host.tree("units").is_empty() && host.tree("tmpfiles").is_empty());
    let left: Vec<String> = host
        .tree("host")
        .into_iter()
        .filter(|p| p.ends_with(".conf") || p.contains("etcdctl"))
        .collect();
    assert_eq!(
        left,
        ["usr/local/bin/etcdctl-test"],
        "only the modified file stays"
    );
    assert!(
        host.log("systemctl.log")
            .contains("disable --now etcd.service")
    );
}

#[test]
fn a_failed_update_is_rolled_back_and_not_retried() {
    let host = Host::new();
    let archive = host.p("preload/ostree/etcd.tar");
    etcd_image("v1").save(&archive);
    ok(&host.install("etcd", &[]));
    fs::write(host.p("unit-state"), "active").unwrap();
    ok(&host.helper(&["start-system", "--name", "etcd", "--settle", "0"]));
    etcd_image("v2").save(&archive);
    ok(&host.install("etcd", &[]));
    assert_eq!(
        fs::read_link(host.p("checkout/etcd")).unwrap(),
        host.p("checkout/etcd.1")
    );
    // The stand-in reports the new service as failed.
    fs::write(host.p("unit-state"), "failed").unwrap();
    let out = host.helper(&["start-system", "--name", "etcd", "--settle", "1"]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("etcd.service failed to start with example.org/test/etcd:1"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("rolled back to"), "{}", stderr(&out));
    assert_eq!(
        fs::read_link(host.p("checkout/etcd")).unwrap(),
        host.p("checkout/etcd.0")
    );
    assert_eq!(
        fs::read_to_string(host.p("checkout/etcd.0/etcd.service")).unwrap(),
        fs::read_to_string(host.p("units/etcd.service")).unwrap()
    );
    // The next boot does not try the same image and values again.
    let again = ok(&host.install("etcd", &[]));
    assert!(
        again.contains("failed to start before and was rolled back"),
        "{again}"
    );
    assert_eq!(
        fs::read_link(host.p("checkout/etcd")).unwrap(),
        host.p("checkout/etcd.0")
    );
}

#[test]
fn template_errors_name_the_variable_and_leave_nothing() {
    let host = Host::new();
    let layer = Layer::new()
        .busybox()
        .file(
            "exports/service.template",
            b"[Service]\nExecStart=$EXEC_START $MISSING\n",
            0o644,
        )
        .bytes();
    Image::new(IMAGE, vec![layer]).save(&host.p("preload/ostree/bad.tar"));
    let out = host.install("bad", &[]);
    assert_eq!(out.status.code(), Some(65));
    assert_eq!(
        stderr(&out),
        "atomic-preload: the template file 'service.template' still contains an unreplaced value for: 'MISSING'\n"
    );
    assert!(host.tree("checkout").is_empty() && host.tree("units").is_empty());
}

#[test]
fn an_image_in_no_archive_and_a_foreign_unit_are_refused() {
    let host = Host::new();
    etcd_image("v1").save(&host.p("preload/ostree/etcd.tar"));
    let preload = host.p("preload").display().to_string();
    let out = host.helper(&[
        "install-system",
        "--preload-dir",
        &preload,
        "--name",
        "x1",
        "--image",
        "docker.io/other",
    ]);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr(&out).contains(&format!(
            "image docker.io/other is in no archive in {preload}/ostree: etcd.tar (holds {IMAGE})"
        )),
        "{}",
        stderr(&out)
    );
    let out = host.helper(&[
        "install-system",
        "--preload-dir",
        &preload,
        "--name",
        "etcd",
        "--image",
        IMAGE,
        "--runtime",
        "/nonexistent/runc",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "retried: the runtime may be installed later"
    );
    assert_eq!(
        stderr(&out),
        "atomic-preload: cannot install the container: the runtime /nonexistent/runc is not installed\n"
    );
    fs::write(
        host.p("units/etcd.service"),
        "[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    let out = host.install("etcd", &[]);
    assert_eq!(out.status.code(), Some(65));
    assert!(stderr(&out).contains("etcd.service exists and was not installed by atomic-preload"));
}

#[test]
fn an_image_without_exports_gets_atomics_default_config() {
    let host = Host::new();
    Image::new(IMAGE, vec![Layer::new().busybox().bytes()])
        .save(&host.p("preload/ostree/plain.tar"));
    ok(&host.install("plain", &[]));
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(host.p("checkout/plain.0/config.json")).unwrap()).unwrap();
    assert_eq!(config["root"]["readonly"], true);
    assert_eq!(config["root"]["path"], "rootfs");
    assert_eq!(config["process"]["terminal"], false);
    assert_eq!(config["process"]["args"], serde_json::json!(["run.sh"]));
    let unit = fs::read_to_string(host.p("units/plain.service")).unwrap();
    assert!(unit.starts_with("\n[Unit]\nDescription=plain\n"), "{unit}");
    assert!(unit.contains("PIDFile=/run/container-plain.pid"), "{unit}");
}

/// The checkout runs: runc starts the rendered bundle, the process sees its values and
/// its bind mount, and stops when killed.
#[test]
fn the_container_runs_under_runc() {
    let runc = "/usr/sbin/runc";
    assert!(
        Path::new(runc).exists(),
        "runc is a test dependency (.ci/install-deps)"
    );
    let host = Host::new();
    etcd_image("v1").save(&host.p("preload/ostree/etcd.tar"));
    let state = host.p("host/var/lib");
    ok(&host.install(
        "etcd",
        &[
            "GREETING=hi",
            &format!("STATE_DIRECTORY={}", state.display()),
        ],
    ));
    fs::create_dir_all(state.join("etcd")).unwrap(); // what systemd-tmpfiles --create does
    let id = format!("ap-test-{}", std::process::id());
    let runc_root = host.p("runc");
    // The detached container inherits runc's stdio: a file, so nothing waits for a pipe.
    let runc_log = host.p("runc.log");
    let runc_cmd = |args: &[&str]| {
        let status = Command::new(runc)
            .arg("--root")
            .arg(&runc_root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&runc_log).unwrap())
            .status()
            .unwrap();
        (
            status.success(),
            fs::read_to_string(&runc_log).unwrap_or_default(),
        )
    };
    let bundle = host.p("checkout/etcd").display().to_string();
    let (started, log) = runc_cmd(&["run", "--detach", "--bundle", &bundle, &id]);
    assert!(started, "runc run: {log}");
    let file = state.join("etcd/out");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = fs::read_to_string(&file).unwrap_or_default();
    runc_cmd(&["kill", &id, "KILL"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !runc_cmd(&["delete", &id]).0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    runc_cmd(&["delete", "--force", &id]);
    assert_eq!(seen, "hi from etcd\n");
    assert!(!runc_cmd(&["state", &id]).0, "container is gone");
}

/// `noContainerService: true`: host files and tmpfiles only, no unit, no rootfs kept (as
/// atomic did); uninstall removes the files.
#[test]
fn no_container_service_installs_host_files_only() {
    let host = Host::new();
    let layer = Layer::new()
        .busybox()
        .file(
            "exports/manifest.json",
            br#"{"noContainerService": true}"#,
            0o644,
        )
        .file(
            "exports/tmpfiles.template",
            b"d /run/$NAME 0755 0 0 - -\n",
            0o644,
        )
        .file(
            "exports/hostfs/usr/local/bin/tool-only",
            b"#!/bin/sh\n",
            0o755,
        )
        .bytes();
    Image::new(IMAGE, vec![layer]).save(&host.p("preload/ostree/tools.tar.bz2"));
    let out = ok(&host.install("tools", &[]));
    assert!(
        out.contains("host files only (noContainerService)"),
        "{out}"
    );
    assert!(host.tree("units").is_empty(), "no container unit");
    assert_eq!(
        fs::read_to_string(host.p("tmpfiles/tools.conf")).unwrap(),
        "d /run/tools 0755 0 0 - -\n"
    );
    assert!(host.p("host/usr/local/bin/tool-only").exists());
    assert!(
        !host.p("checkout/tools.0/rootfs").exists(),
        "no rootfs kept"
    );
    let info: serde_json::Value =
        serde_json::from_slice(&fs::read(host.p("checkout/tools/info")).unwrap()).unwrap();
    assert_eq!(info["has-container-service"], false);
    // Nothing to start; a second install changes nothing.
    assert!(
        ok(&host.helper(&["start-system", "--name", "tools"])).contains("has no container service")
    );
    assert!(ok(&host.install("tools", &[])).contains("tools is installed from"));
    ok(&host.helper(&["uninstall", "tools"]));
    assert!(!host.p("host/usr/local/bin/tool-only").exists());
    assert!(host.tree("checkout").is_empty() && host.tree("tmpfiles").is_empty());
}

/// An OCI image layout archive (gzip layers, index.json) installs like a docker-archive.
/// Everything about a checked-out tree an install promises, one line per path: type,
/// mode, owner, size, mtime (not of directories: creating a child changes it), content
/// digest or link target.
fn tree_fingerprint(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_owned()
            } else if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else {
                format!(
                    "{} {}",
                    m.mtime(),
                    support::sysimage::sha256(&fs::read(&p).unwrap())
                )
            };
            out.push(format!(
                "{} {:o} {}:{} {} {what}",
                p.strip_prefix(root).unwrap().display(),
                m.mode(),
                m.uid(),
                m.gid(),
                if m.is_dir() { 0 } else { m.len() },
            ));
        }
    }
    out.sort();
    out
}

/// One image, every way an archive can hold it: uncompressed (layers applied where they
/// lie), compressed (layers streamed as they pass, or spooled when they come before their
/// turn), as an OCI layout (gzip layers, decompressed on the way): the same tree each time.
#[test]
fn every_archive_form_checks_out_the_same_tree() {
    let mut reference = None;
    for (name, reversed, oci) in [
        ("etcd.tar", false, false),
        ("etcd.tar", true, false),
        ("etcd.tar.zst", false, false),
        ("etcd.tar.zst", true, false),
        ("etcd.tar.gz", true, false),
        ("etcd-oci.tar", false, true),
        ("etcd-oci.tar.zst", false, true),
    ] {
        let host = Host::new();
        let mut image = etcd_image("forms");
        image.members_reversed = reversed;
        let path = host.p("preload/ostree").join(name);
        if oci {
            let plain = host.p("oci.tar");
            fs::write(&plain, image.oci_archive_bytes()).unwrap();
            support::compress(&plain, &path);
        } else {
            image.save(&path);
        }
        ok(&host.install("etcd", &[]));
        let tree = tree_fingerprint(&host.p("checkout/etcd/rootfs"));
        assert!(
            tree.iter().any(|l| l.starts_with("bin/busybox ")),
            "{tree:?}"
        );
        match &reference {
            None => reference = Some(tree),
            Some(expected) => assert_eq!(&tree, expected, "{name} (reversed: {reversed})"),
        }
        // Nothing spooled is left behind.
        assert_eq!(
            fs::read_dir(host.p("checkout")).unwrap().count(),
            2,
            "{name}"
        );
    }
}

#[test]
fn an_oci_layout_archive_installs_too() {
    let host = Host::new();
    let image = etcd_image("oci");
    fs::write(
        host.p("preload/ostree/etcd-oci.tar"),
        image.oci_archive_bytes(),
    )
    .unwrap();
    ok(&host.install("etcd", &[]));
    let info: serde_json::Value =
        serde_json::from_slice(&fs::read(host.p("checkout/etcd/info")).unwrap()).unwrap();
    assert_eq!(
        info["revision"],
        image.id(),
        "the image ID is the config's digest"
    );
    assert!(host.p("checkout/etcd/rootfs/bin/busybox").exists());
    assert!(host.p("units/etcd.service").exists());
    assert!(ok(&host.install("etcd", &[])).contains("etcd is installed from"));
}

/// A whiteout under a directory the image does not have removes nothing and creates
/// nothing (no empty directory appears).
#[test]
fn a_whiteout_never_creates_its_directory() {
    let host = Host::new();
    let layers = vec![
        Layer::new().busybox().bytes(),
        Layer::new().file("not/there/.wh.gone", b"", 0o644).bytes(),
    ];
    Image::new(IMAGE, layers).save(&host.p("preload/ostree/w.tar"));
    ok(&host.install("w1", &[]));
    assert!(!host.p("checkout/w1/rootfs/not").exists());
}

#[test]
fn runs_on_one_container_wait_for_each_other_and_say_so() {
    let host = Host::new();
    etcd_image("v1").save(&host.p("preload/ostree/etcd.tar"));
    ok(&host.install("etcd", &[]));
    ok(&host.install("etcd", &["GREETING=changed"]));
    // Another run holds etcd's lock: a rollback waits, saying for what, and goes on when
    // the lock is released.
    let lock_path = host.p("state/lock-system/etcd");
    let held = fs::File::options().write(true).open(&lock_path).unwrap();
    held.lock().unwrap();
    let mut args: Vec<String> = vec!["rollback".into(), "etcd".into()];
    args.extend(host.path_args());
    let waiting = Command::new(support::helper())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        fs::read_link(host.p("checkout/etcd")).unwrap(),
        host.p("checkout/etcd.1"),
        "nothing happens while the lock is held"
    );
    // A run on another container does not wait.
    etcd_image("v1").save(&host.p("preload/ostree/other.tar"));
    let other = ok(&host.install("other", &[]));
    assert!(!other.contains("waiting"), "{other}");
    drop(held);
    let out = waiting.wait_with_output().unwrap();
    let stdout = ok(&out);
    assert!(
        stdout.starts_with(&format!(
            "waiting for another atomic-preload run to finish (it holds {})\n",
            lock_path.display()
        )),
        "{stdout}"
    );
    assert_eq!(
        fs::read_link(host.p("checkout/etcd")).unwrap(),
        host.p("checkout/etcd.0")
    );
}

#[test]
fn commands_that_take_a_name_refuse_paths() {
    let host = Host::new();
    let victim = host.p("notes.txt");
    fs::write(&victim, "keep").unwrap();
    let name = victim.display().to_string();
    for args in [
        vec!["rollback", name.as_str()],
        vec!["uninstall", name.as_str()],
        vec!["start-system", "--name", name.as_str()],
        vec!["uninstall", "../../x"],
    ] {
        let out = host.helper(&args);
        assert_eq!(out.status.code(), Some(65), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is not a valid container name"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
}

/// A system container's unit goes to the unit directory, which overrides every other
/// unit of its name: names of our own units, the engines' and systemd's are refused
/// before anything is checked out.
#[test]
fn install_refuses_names_that_would_override_other_units() {
    let host = Host::new();
    for name in [
        "preload-web",
        "atomic-preload-refresh",
        "docker",
        "kubelet",
        "systemd-udevd",
    ] {
        etcd_image("v1").save(&host.p(&format!("preload/ostree/{name}.tar")));
        let out = host.install(name, &[]);
        assert_eq!(out.status.code(), Some(65), "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!(
                "a system container cannot be named {name:?}: it would install {}",
                host.p(&format!("units/{name}.service")).display()
            )),
            "{name}: {}",
            stderr(&out)
        );
        assert!(!host.p(&format!("units/{name}.service")).exists());
        assert!(!host.p(&format!("checkout/{name}")).exists());
    }
}

/// Host files stay inside `--host-root`: a renameFiles target with `..` is refused (exit
/// 65, nothing installed), a file that renameFiles puts under a symlink the image itself
/// installs is not written through it, and systemd-tmpfiles is run with `--root` for that host root.
#[test]
fn host_files_stay_inside_the_host_root() {
    let host = Host::new();
    let escape = Layer::new()
        .busybox()
        .file(
            "exports/manifest.json",
            br#"{"renameFiles": {"/etc/a.conf": "/../../../../tmp/ap-host-escape/a.conf"}}"#,
            0o644,
        )
        .file("exports/hostfs/etc/a.conf", b"x", 0o644)
        .bytes();
    Image::new(IMAGE, vec![escape]).save(&host.p("preload/ostree/escape.tar"));
    let out = host.install("esc", &[]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "renameFiles maps /etc/a.conf to \"/../../../../tmp/ap-host-escape/a.conf\": a host path must be absolute, without \"..\""
        ),
        "{}",
        stderr(&out)
    );
    assert!(!Path::new("/tmp/ap-host-escape").exists());
    assert!(host.tree("units").is_empty());
    fs::remove_file(host.p("preload/ostree/escape.tar")).unwrap();

    let through = Layer::new()
        .busybox()
        .file(
            "exports/manifest.json",
            br#"{"renameFiles": {"/etc/real": "/etc/app"}}"#,
            0o644,
        )
        .symlink("exports/hostfs/etc/app", "/tmp/ap-host-through")
        .file("exports/hostfs/etc/real/x.conf", b"x", 0o644)
        .file(
            "exports/tmpfiles.template",
            b"d /run/$NAME 0755 0 0 - -\n",
            0o644,
        )
        .file("exports/hostfs/etc/plain.conf", b"y", 0o644)
        .bytes();
    Image::new(IMAGE, vec![through]).save(&host.p("preload/ostree/through.tar"));
    let out = ok(&host.install("thr", &[]));
    assert!(
        out.contains(
            "Will not write /etc/app/x.conf through /etc/app, a symlink of the image's own"
        ),
        "{out}"
    );
    assert!(
        fs::symlink_metadata(host.p("host/etc/app"))
            .unwrap()
            .is_symlink()
    );
    assert!(host.p("host/etc/plain.conf").is_file());
    assert!(!Path::new("/tmp/ap-host-through").exists());
    assert!(!host.p("host/tmp/ap-host-through").exists());
    let log = host.log("tmpfiles.log");
    assert!(
        log.contains(&format!("--root={}", host.p("host").display())),
        "{log}"
    );
    ok(&host.helper(&["uninstall", "thr"]));
    assert!(fs::symlink_metadata(host.p("host/etc/app")).is_err());
}

/// A system archive staged with a digest (`stage --system` writes `NAME.sha256`) is checked
/// before its checkout, as the load stage checks Docker archives: changed since, the
/// install fails with exit 65 naming both digests, and nothing is checked out.
#[test]
fn install_refuses_an_archive_whose_content_changed_since_staging() {
    let host = Host::new();
    let archive = host.p("preload/ostree/etcd.tar");
    etcd_image("v1").save(&archive);
    let sha = |p: &Path| {
        let out = Command::new("sha256sum").arg(p).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    let recorded = sha(&archive);
    fs::write(
        host.p("preload/ostree/etcd.tar.sha256"),
        format!("{recorded}  etcd.tar\n"),
    )
    .unwrap();
    etcd_image("v2").save(&archive);
    let actual = sha(&archive);
    let out = host.install("etcd", &[]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "content does not match its recorded digest ({}.sha256): expected sha256:{recorded}, actual sha256:{actual}"
        , archive.display())),
        "{}",
        stderr(&out)
    );
    assert!(
        host.tree("checkout").is_empty(),
        "{:?}",
        host.tree("checkout")
    );
    // Re-recorded (staged again): it installs.
    fs::write(
        host.p("preload/ostree/etcd.tar.sha256"),
        format!("{actual}  etcd.tar\n"),
    )
    .unwrap();
    ok(&host.install("etcd", &[]));
}

/// A fake host whose preload directory is an image root's, filled by `stage --root ROOT
/// --system [--checkout]` with the etcd image (`marker` makes its ID).
fn staged_host(marker: &str, checkout: bool) -> (Host, std::path::PathBuf) {
    let host = Host::new();
    let root = host.p("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::remove_dir_all(host.p("preload")).unwrap();
    std::os::unix::fs::symlink(root.join("var/lib/atomic/preload"), host.p("preload")).unwrap();
    stage(&host, marker, checkout);
    (host, root)
}

fn stage(host: &Host, marker: &str, checkout: bool) {
    let src = host.p(&format!("etcd-{marker}.tar"));
    etcd_image(marker).save(&src);
    let root = host.p("root");
    let mut args = vec![
        "stage".to_owned(),
        "--root".into(),
        root.display().to_string(),
        "--system".into(),
    ];
    if checkout {
        args.push("--checkout".into());
    }
    // One archive name, whatever the image: a later stage replaces it.
    let named = host.p("etcd.tar");
    fs::rename(&src, &named).unwrap();
    args.push(named.display().to_string());
    let out = Command::new(support::helper())
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    ok(&out);
}

/// `status --root` of the staged host's image root.
fn status_of_root(host: &Host) -> String {
    let out = Command::new(support::helper())
        .args(["status", "--root"])
        .arg(host.p("root"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn staged_dirs(host: &Host) -> Vec<String> {
    fs::read_dir(host.p("preload/checkouts"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A checkout staged with the image is what the first install uses: the archive is not
/// read, the values of that install still apply, and the tree is the one a checkout from
/// the archive makes. Used once: the staged copy is gone after.
#[test]
fn a_staged_checkout_is_moved_in_and_rendered_with_this_installs_values() {
    let (host, _root) = staged_host("staged", true);
    let image_id = etcd_image("staged").id();
    assert_eq!(staged_dirs(&host), [&image_id[7..]]);
    let status = status_of_root(&host);
    assert!(
        status.contains(&format!(
            "example.org/test/etcd:1  {}  from etcd.tar",
            &image_id[7..19]
        )) && status.contains("usable  (/var/lib/atomic/preload/checkouts/"),
        "{status}"
    );
    let out = ok(&host.install("etcd", &["GREETING=bonjour"]));
    assert!(
        out.contains("Using the checkout of example.org/test/etcd:1"),
        "{out}"
    );
    assert!(!out.contains("Extracting"), "{out}");
    assert!(staged_dirs(&host).is_empty(), "used once");
    let service = fs::read_to_string(host.p("units/etcd.service")).unwrap();
    assert!(service.contains("GREETING=bonjour"), "{service}");
    let info: serde_json::Value =
        serde_json::from_slice(&fs::read(host.p("checkout/etcd/info")).unwrap()).unwrap();
    assert_eq!(info["revision"], image_id);

    let plain = Host::new();
    etcd_image("staged").save(&plain.p("preload/ostree/etcd.tar"));
    ok(&plain.install("etcd", &["GREETING=bonjour"]));
    assert_eq!(
        tree_fingerprint(&host.p("checkout/etcd/rootfs")),
        tree_fingerprint(&plain.p("checkout/etcd/rootfs")),
        "the staged tree is the archive's"
    );
    // Nothing left in the checkout dir but the deployment and its link.
    assert_eq!(fs::read_dir(host.p("checkout")).unwrap().count(), 2);
}

/// A staged checkout that is not whole, or no longer the archive's, is passed over with a
/// line saying why, and the archive is checked out instead: never a broken container.
#[test]
fn a_damaged_or_stale_staged_checkout_falls_back_to_the_archive() {
    let damage: [(&str, fn(&Path), &str); 4] = [
        (
            "a file removed",
            |rootfs| fs::remove_file(rootfs.join("etc/os-release")).unwrap(),
            "is not usable (its tree is not the one recorded",
        ),
        (
            "a file truncated",
            |rootfs| fs::write(rootfs.join("bin/busybox"), b"").unwrap(),
            "is not usable (its tree is not the one recorded",
        ),
        (
            "a file re-owned",
            |rootfs| std::os::unix::fs::chown(rootfs.join("home-file"), Some(0), None).unwrap(),
            "is not usable (its tree is not the one recorded",
        ),
        (
            "the tree gone (a crash while it was moved)",
            |rootfs| fs::remove_dir_all(rootfs).unwrap(),
            "not a usable staged checkout (no rootfs)",
        ),
    ];
    for (what, damage, says) in damage {
        let (host, _root) = staged_host("damaged", true);
        let dir = host.p("preload/checkouts").join(&staged_dirs(&host)[0]);
        damage(&dir.join("rootfs"));
        assert!(
            status_of_root(&host).contains("  damaged: "),
            "{what}: {}",
            status_of_root(&host)
        );
        let out = ok(&host.install("etcd", &[]));
        assert!(out.contains(says), "{what}: {out}");
        assert!(
            out.contains("checking out from") || !says.starts_with("is not usable"),
            "{what}: {out}"
        );
        // Spoilt once, spoilt for good: it is removed, not walked again at the next boot.
        assert!(staged_dirs(&host).is_empty(), "{what}");
        assert!(out.contains("Extracting"), "{what}: {out}");
        let root = host.p("checkout/etcd/rootfs");
        assert!(root.join("etc/os-release").exists(), "{what}");
        assert_eq!(
            fs::metadata(root.join("home-file")).unwrap().uid(),
            1000,
            "{what}"
        );
        assert!(
            fs::metadata(root.join("bin/busybox")).unwrap().len() > 0,
            "{what}"
        );
    }

    // The archive replaced by hand (another image, its own sidecar; a stage would have
    // removed the checkout): the checkout is stale.
    let (host, _root) = staged_host("first", true);
    let archive = host.p("preload/ostree/etcd.tar");
    etcd_image("second").save(&archive);
    let sha = support::sysimage::sha256(&fs::read(&archive).unwrap());
    fs::write(
        host.p("preload/ostree/etcd.tar.sha256"),
        format!("{}  etcd.tar\n", &sha[7..]),
    )
    .unwrap();
    let out = ok(&host.install("etcd", &[]));
    assert!(
        out.contains("changed since it was staged") || out.contains("was staged again since"),
        "{out}"
    );
    assert!(out.contains("Extracting"), "{out}");
    let info: serde_json::Value =
        serde_json::from_slice(&fs::read(host.p("checkout/etcd/info")).unwrap()).unwrap();
    assert_eq!(info["revision"], etcd_image("second").id());

    // A stage that died before its record: never looked at.
    let (host, _root) = staged_host("norecord", true);
    let dir = host.p("preload/checkouts").join(&staged_dirs(&host)[0]);
    fs::remove_file(dir.join("staged.json")).unwrap();
    let out = ok(&host.install("etcd", &[]));
    assert!(
        out.contains("Extracting") && !out.contains("Using the checkout"),
        "{out}"
    );
}

/// Staging again replaces the staged checkout whole; staging another image under the
/// archive's name removes the old image's checkout.
#[test]
fn staging_again_replaces_a_staged_checkout() {
    let (host, _root) = staged_host("again", true);
    let before = staged_dirs(&host);
    stage(&host, "again", true);
    assert_eq!(staged_dirs(&host), before, "the same image, one checkout");
    let record = host
        .p("preload/checkouts")
        .join(&before[0])
        .join("staged.json");
    assert!(record.exists());
    // Another image under the archive's name: the old one's checkout goes with it.
    stage(&host, "newer", true);
    assert_eq!(staged_dirs(&host), [&etcd_image("newer").id()[7..]]);
    let out = ok(&host.install("etcd", &[]));
    assert!(
        out.contains("Using the checkout"),
        "the newer archive's: {out}"
    );
    let info: serde_json::Value =
        serde_json::from_slice(&fs::read(host.p("checkout/etcd/info")).unwrap()).unwrap();
    assert_eq!(info["revision"], etcd_image("newer").id());
}

/// A directory replaced by a symlink within a layer: later members spelt through another
/// symlink to it follow the new link (the walk's cached parent directory never outlives
/// a member that can change what a path resolves to).
#[test]
fn members_after_a_directory_becomes_a_symlink_follow_the_symlink() {
    let twist = Layer::new()
        .dir("srv/", 0o755)
        .dir("srv/data/", 0o755)
        .symlink("data", "srv/data")
        .file("data/a", b"a", 0o644)
        .dir("opt/", 0o755)
        .symlink("srv/data", "../opt")
        .file("data/b", b"b", 0o644)
        .bytes();
    let mut image = etcd_image("twist");
    image.layers.push(twist);
    for name in ["etcd.tar", "etcd.tar.zst"] {
        let host = Host::new();
        image.save(&host.p("preload/ostree").join(name));
        ok(&host.install("etcd", &[]));
        let root = host.p("checkout/etcd/rootfs");
        assert_eq!(fs::read(root.join("opt/b")).unwrap(), b"b", "{name}");
        assert!(!root.join("opt/a").exists(), "{name}");
        assert_eq!(
            fs::read_link(root.join("srv/data")).unwrap(),
            Path::new("../opt"),
            "{name}"
        );
    }
}

/// An install asks systemd whether it already has the unit as written (loaded from our
/// file, `NeedDaemonReload=no`): then no `daemon-reload`; any other answer reloads. (The
/// boot suite proves the first answer with real systemd, s9.)
#[test]
fn daemon_reload_only_when_systemd_does_not_have_the_unit_as_written() {
    for (need_reload, fragment_ours, reloads) in [
        ("no", true, false),
        ("yes", true, true),
        ("no", false, true),
    ] {
        let host = Host::new();
        let fragment = if fragment_ours {
            host.p("units/etcd.service").display().to_string()
        } else {
            "/usr/lib/systemd/system/etcd.service".into()
        };
        let log = host.p("systemctl.log");
        fs::write(
            host.p("systemctl"),
            format!(
                "#!/bin/sh\necho \"$*\" >> {log}\ncase \"$1\" in\n  show) printf 'LoadState=loaded\\nNeedDaemonReload={need_reload}\\nFragmentPath={fragment}\\n';;\n  is-active) exit 3;;\nesac\nexit 0\n",
                log = log.display()
            ),
        )
        .unwrap();
        etcd_image("v1").save(&host.p("preload/ostree/etcd.tar.zst"));
        let out = ok(&host.install("etcd", &[]));
        let calls = host.log("systemctl.log");
        assert_eq!(
            calls.contains("daemon-reload"),
            reloads,
            "NeedDaemonReload={need_reload}, fragment {fragment}: {calls}\n{out}"
        );
        assert_eq!(
            out.contains("systemd has etcd.service as written: no daemon-reload"),
            !reloads,
            "{out}"
        );
    }
}
