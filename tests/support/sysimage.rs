//! System images built in memory: layers as raw tar streams (any member name, even a
//! hostile one) and docker-archives around them, with real diff_ids unless told otherwise.

use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// One layer's tar stream, member by member.
#[derive(Default)]
pub struct Layer {
    builder: Option<tar::Builder<Vec<u8>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            builder: Some(tar::Builder::new(Vec::new())),
        }
    }

    fn header(kind: tar::EntryType, name: &str, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        // Written raw: set_path would refuse the hostile names tests need.
        let bytes = name.as_bytes();
        assert!(
            bytes.len() < 100,
            "test member names stay in the old header"
        );
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        h
    }

    fn push(mut self, mut header: tar::Header, data: &[u8]) -> Layer {
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder
            .as_mut()
            .unwrap()
            .append(&header, data)
            .unwrap();
        self
    }

    pub fn dir(self, name: &str, mode: u32) -> Layer {
        self.push(Self::header(tar::EntryType::Directory, name, mode), b"")
    }

    pub fn file(self, name: &str, data: &[u8], mode: u32) -> Layer {
        self.push(Self::header(tar::EntryType::Regular, name, mode), data)
    }

    pub fn owned_file(self, name: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Layer {
        let mut h = Self::header(tar::EntryType::Regular, name, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        self.push(h, data)
    }

    fn link(self, kind: tar::EntryType, name: &str, target: &str) -> Layer {
        let mut h = Self::header(kind, name, 0o777);
        let t = target.as_bytes();
        h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        self.push(h, b"")
    }

    pub fn symlink(self, name: &str, target: &str) -> Layer {
        self.link(tar::EntryType::Symlink, name, target)
    }

    pub fn hardlink(self, name: &str, target: &str) -> Layer {
        self.link(tar::EntryType::Link, name, target)
    }

    pub fn char_device(self, name: &str) -> Layer {
        let mut h = Self::header(tar::EntryType::Char, name, 0o666);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        self.push(h, b"")
    }

    pub fn fifo(self, name: &str) -> Layer {
        self.push(Self::header(tar::EntryType::Fifo, name, 0o644), b"")
    }

    /// A file with a `security.capability` xattr in a PAX header.
    pub fn file_with_capability(mut self, name: &str, data: &[u8], cap: &[u8]) -> Layer {
        let b = self.builder.as_mut().unwrap();
        b.append_pax_extensions([("SCHILY.xattr.security.capability", cap)])
            .unwrap();
        self.file(name, data, 0o755)
    }

    /// busybox-static as /bin/busybox with a few applets.
    pub fn busybox(self) -> Layer {
        let busybox = std::fs::read(super::BUSYBOX).unwrap();
        let mut layer = self.dir("bin/", 0o755).file("bin/busybox", &busybox, 0o755);
        for applet in ["sh", "echo", "sleep", "cat", "true", "ls"] {
            layer = layer.symlink(&format!("bin/{applet}"), "busybox");
        }
        layer
    }

    pub fn bytes(mut self) -> Vec<u8> {
        self.builder.take().unwrap().into_inner().unwrap()
    }
}

/// A plain file member of an outer archive (names there are ours, never hostile).
fn add_member(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// A docker-archive (`docker save` layout) holding one image tagged `tag`.
pub struct Image {
    pub tag: String,
    pub layers: Vec<Vec<u8>>,
    /// Replace the config's diff_ids (to test a mismatch).
    pub diff_ids: Option<Vec<String>>,
    /// Anything that makes the image ID differ.
    pub marker: String,
    /// More image labels (INSTALL, RUN, ...).
    pub labels: Vec<(String, String)>,
    /// The config's architecture (Go's name: amd64, arm64).
    pub architecture: String,
    /// Write the layer members last first (as `docker save` may: its order is not the
    /// layers' order).
    pub members_reversed: bool,
}

impl Image {
    pub fn new(tag: &str, layers: Vec<Vec<u8>>) -> Image {
        Image {
            tag: tag.into(),
            layers,
            diff_ids: None,
            marker: String::new(),
            labels: Vec::new(),
            architecture: "amd64".into(),
            members_reversed: false,
        }
    }

    pub fn config(&self) -> Vec<u8> {
        let diff_ids = self
            .diff_ids
            .clone()
            .unwrap_or_else(|| self.layers.iter().map(|l| sha256(l)).collect());
        let mut labels = serde_json::Map::new();
        labels.insert("marker".into(), self.marker.clone().into());
        for (k, v) in &self.labels {
            labels.insert(k.clone(), v.clone().into());
        }
        serde_json::to_vec(&serde_json::json!({
            "architecture": self.architecture, "os": "linux",
            "config": {"Labels": labels},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }

    /// The image ID docker would show: the config's digest.
    pub fn id(&self) -> String {
        sha256(&self.config())
    }

    pub fn archive_bytes(&self) -> Vec<u8> {
        let config = self.config();
        let config_name = format!("{}.json", &self.id()[7..]);
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| add_member(&mut b, name, data);
        let layer_names: Vec<String> = (1..=self.layers.len())
            .map(|i| format!("layer{i}/layer.tar"))
            .collect();
        let mut members: Vec<usize> = (0..self.layers.len()).collect();
        if self.members_reversed {
            members.reverse();
        }
        for i in members {
            add(&layer_names[i], &self.layers[i]);
        }
        add(&config_name, &config);
        // An empty tag: an untagged image (`docker save IMAGE-ID`).
        let tags: Vec<&str> = Some(self.tag.as_str())
            .filter(|t| !t.is_empty())
            .into_iter()
            .collect();
        let manifest = serde_json::json!([{
            "Config": config_name, "RepoTags": tags, "Layers": layer_names,
        }]);
        add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
        b.into_inner().unwrap()
    }

    /// The same image as an OCI image layout (what `skopeo copy … oci-archive:` writes):
    /// index.json naming it by `org.opencontainers.image.ref.name`, gzip layers as blobs.
    pub fn oci_archive_bytes(&self) -> Vec<u8> {
        use std::io::Write;
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| add_member(&mut b, name, data);
        let blob = |bytes: &[u8]| format!("blobs/sha256/{}", &sha256(bytes)[7..]);
        let config = self.config();
        let mut layers = Vec::new();
        for layer in &self.layers {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(layer).unwrap();
            let gz = gz.finish().unwrap();
            add(&blob(&gz), &gz);
            layers.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(&gz), "size": gz.len()}));
        }
        add(&blob(&config), &config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
            "layers": layers,
        }))
        .unwrap();
        add(&blob(&manifest), &manifest);
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(&manifest),
            "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": self.tag},
        }]});
        add("oci-layout", br#"{"imageLayoutVersion": "1.0.0"}"#);
        add("index.json", &serde_json::to_vec(&index).unwrap());
        b.into_inner().unwrap()
    }

    /// Write the archive to `path`, compressed as its name says.
    pub fn save(&self, path: &Path) {
        let plain = path.with_extension("plain-tmp");
        std::fs::write(&plain, self.archive_bytes()).unwrap();
        super::compress(&plain, path);
    }
}

/// A stand-in `systemctl` for tests without systemd: logs its arguments to `log`, says
/// "active" for is-active when `unit-state` holds "active", and prints `unit-state`'s two lines
/// for `show` (ActiveState, SubState).
pub fn fake_systemctl(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("systemctl");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$*\" >> {dir}/systemctl.log\nstate=$(cat {dir}/unit-state 2>/dev/null || echo inactive)\n\
             case \"$1\" in\n  is-active) [ \"$state\" = active ];;\n  show) echo \"$state\"; echo running;;\n  *) exit 0;;\nesac\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// One fake host: every directory install-system writes to, under a temp dir, with
/// stand-ins for systemctl and systemd-tmpfiles that log their arguments.
pub struct FakeHost {
    pub dir: tempfile::TempDir,
}

impl FakeHost {
    pub fn new() -> FakeHost {
        let dir = tempfile::Builder::new().prefix("ap-sys").tempdir().unwrap();
        for d in [
            "preload/ostree",
            "checkout",
            "units",
            "tmpfiles",
            "host",
            "state",
        ] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        fake_systemctl(dir.path());
        let tmpfiles = dir.path().join("systemd-tmpfiles");
        fs::write(
            &tmpfiles,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}/tmpfiles.log\n",
                dir.path().display()
            ),
        )
        .unwrap();
        fs::set_permissions(&tmpfiles, fs::Permissions::from_mode(0o755)).unwrap();
        FakeHost { dir }
    }
    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn path_args(&self) -> Vec<String> {
        let p = |r: &str| self.p(r).display().to_string();
        vec![
            "--checkout-dir".into(),
            p("checkout"),
            "--unit-dir".into(),
            p("units"),
            "--tmpfiles-dir".into(),
            p("tmpfiles"),
            "--host-root".into(),
            p("host"),
            "--state-dir".into(),
            p("state"),
            "--systemctl".into(),
            p("systemctl"),
            "--systemd-tmpfiles".into(),
            p("systemd-tmpfiles"),
        ]
    }
    pub fn helper(&self, args: &[&str]) -> Output {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(self.path_args());
        Command::new(super::helper())
            .args(&all)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
    /// `install-system` of `image` as `name` from the fake preload dir.
    pub fn install(&self, image: &str, name: &str, sets: &[&str]) -> Output {
        let preload = self.p("preload").display().to_string();
        let mut args = vec![
            "install-system",
            "--preload-dir",
            &preload,
            "--name",
            name,
            "--image",
            image,
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        self.helper(&args)
    }
    pub fn log(&self, which: &str) -> String {
        fs::read_to_string(self.p(which)).unwrap_or_default()
    }
    /// Everything below the fake host, as sorted relative paths (for "nothing left").
    pub fn tree(&self, rel: &str) -> Vec<String> {
        let base = self.p(rel);
        let mut out = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                out.push(p.strip_prefix(&base).unwrap().display().to_string());
                if e.file_type().unwrap().is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }
}
