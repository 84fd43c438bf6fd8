//! Podman: no daemon, so every question is a `podman` process (its storage is shared
//! through files and locks; concurrent `podman load`s are safe).

use crate::engines::EngineKind;
use crate::engines::{self, Client, Feed, ImageEngine, ImageInfo};
use crate::runtime::RuntimeError;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;

pub struct Podman {
    client: Client,
}

impl Podman {
    pub fn new(podman: &Path) -> Self {
        Podman {
            client: Client {
                path: podman.to_owned(),
            },
        }
    }
}

impl ImageEngine for Podman {
    fn kind(&self) -> EngineKind {
        EngineKind::Podman
    }

    fn client(&self) -> &Path {
        &self.client.path
    }

    fn ping(&self) -> Result<(), RuntimeError> {
        // No daemon to reach: the client must run and read its configuration.
        let out = self
            .client
            .output(&["version", "--format", "{{.Version}}"])?;
        if !out.status.success() || out.stdout.trim_ascii().is_empty() {
            return Err(RuntimeError::EngineUnreachable(
                "Podman",
                engines::last_line(&out.stderr),
            ));
        }
        Ok(())
    }

    fn image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        self.client.image(image, |err| {
            err.contains("image not known") || err.contains("no such image")
        })
    }

    fn label(&self, image: &str, key: &str) -> Result<String, RuntimeError> {
        self.client.label(image, key)
    }

    fn has_images(&self, images: &[&str]) -> Result<bool, RuntimeError> {
        // The every-boot question, from this boot's image list when it is still true;
        // anything it does not show as there is asked of Podman itself.
        if images.is_empty() || list::current(&self.client).is_some_and(|l| l.has_all(images)) {
            return Ok(true);
        }
        self.client.has_images(images)
    }

    fn feed(&self, archive_name: &str) -> Feed {
        // Podman 4.3 cannot load a gzip-compressed docker-archive at all ("invalid tar
        // header"), and its xz and bzip2 decoders (pure Go) are several times slower than
        // liblzma and libbz2: those are decompressed here and streamed into its stdin.
        // A plain tar and zstd it reads as fast as we could (bench/load.sh).
        if archive_name.ends_with(".tar") || archive_name.ends_with(".tar.zst") {
            Feed::File
        } else {
            Feed::Decompressed
        }
    }

    fn load_file(
        &self,
        path: &Path,
        watch: &mut engines::Watch<'_>,
    ) -> Result<Vec<String>, RuntimeError> {
        let path_arg = path.to_string_lossy();
        self.client.load(
            &["--quiet", "--input", &path_arg],
            Stdio::null(),
            None,
            &mut |pid, running| {
                // Podman opens the archive itself: find its descriptor, then its offset.
                let mut fd = None;
                watch(
                    &mut || {
                        if fd.is_none() {
                            fd = engines::fd_of(pid, path);
                        }
                        engines::read_offset(pid, fd.as_deref()?)
                    },
                    running,
                )
            },
        )
    }

    fn load_stream(&self, archive: &mut dyn Read) -> Result<Vec<String>, RuntimeError> {
        self.client
            .load(&["--quiet"], Stdio::piped(), Some(archive), &mut |_, _| {})
    }

    fn run_options(&self, name: &str) -> Vec<String> {
        crate::plan::podman::run_options(name)
    }

    fn is_client_word(&self, word: &str) -> bool {
        ["docker", "podman"]
            .iter()
            .any(|c| word == *c || word.ends_with(&format!("/{c}")))
    }

    fn remove_container(&self, name: &str) {
        let _ = std::process::Command::new(&self.client.path)
            .args(["rm", "--force", "--ignore", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn storage_dir(&self) -> Option<PathBuf> {
        self.client.info_path("{{.Store.GraphRoot}}")
    }
}

/// Podman has no daemon: asking it anything starts a `podman` process (~19 ms of CPU),
/// and at boot every unit asks whether its images are there. So the first unit of a boot
/// asks once for every image (`podman images`), and the answer is kept in `/run` for the
/// others, keyed by what could change it: the boot, the Podman and settings asked
/// (client, `$CONTAINERS_STORAGE_CONF`, `$CONTAINERS_CONF`, `$STORAGE_DRIVER`), the
/// storage.conf read (it says where the store is; without a driver there, `podman info`
/// does), and
/// the store's own image list (`GRAPHROOT/DRIVER-images/images.json`, which Podman
/// rewrites whenever an image is added, removed or tagged). Any of those different: the
/// list is asked again. The list only ever answers "there"; an image it does not show is
/// asked of Podman directly, so a name it spells differently costs a process, never a
/// wrong answer.
mod list {
    use super::Client;
    use crate::paths;
    use sha2::Digest;
    use std::collections::BTreeSet;
    use std::fs::{self, File};
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};

    /// This boot's images, and what they were read against.
    pub struct List {
        names: BTreeSet<String>,
    }

    impl List {
        /// Whether every one of these images (references or IDs) is in the list.
        pub fn has_all(&self, images: &[&str]) -> bool {
            images.iter().all(|i| {
                let id = i.strip_prefix("sha256:").unwrap_or(i);
                // A short name is found as Podman finds it: on Docker Hub's spelling, or
                // as a local image (`localhost/NAME`, what Podman names one it loaded
                // without a registry).
                let full = crate::engines::full_reference(i);
                let local = full
                    .strip_prefix("docker.io/")
                    .map(|rest| format!("localhost/{}", rest.trim_start_matches("library/")));
                self.names.contains(*i)
                    || self.names.contains(&full)
                    || local
                        .is_some_and(|l| !i.starts_with("docker.io/") && self.names.contains(&l))
                    || (id.len() >= 12
                        && id.bytes().all(|b| b.is_ascii_hexdigit())
                        && self.names.iter().any(|n| n.starts_with(id)))
            })
        }
    }

    /// `path`'s identity: any rewrite (Podman renames a new file over it) changes it.
    fn stamp(path: &Path) -> String {
        match fs::metadata(path) {
            Ok(m) => format!("{} {} {} {}", m.ino(), m.size(), m.mtime(), m.mtime_nsec()),
            Err(_) => "none".into(),
        }
    }

    fn boot_id() -> String {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// The storage.conf Podman reads (rootful), as containers/storage looks for it.
    fn storage_conf() -> PathBuf {
        match std::env::var_os("CONTAINERS_STORAGE_CONF") {
            Some(p) => PathBuf::from(p),
            None if Path::new("/etc/containers/storage.conf").exists() => {
                "/etc/containers/storage.conf".into()
            }
            None => "/usr/share/containers/storage.conf".into(),
        }
    }

    /// One record per Podman and settings (tests run several private ones at once).
    fn record_path(client: &Client) -> PathBuf {
        let mut key = sha2::Sha256::new();
        for part in [
            client.path.as_os_str().to_owned(),
            std::env::var_os("CONTAINERS_STORAGE_CONF").unwrap_or_default(),
            std::env::var_os("CONTAINERS_CONF").unwrap_or_default(),
            std::env::var_os("STORAGE_DRIVER").unwrap_or_default(),
        ] {
            key.update(part.as_encoded_bytes());
            key.update([0]);
        }
        let key = crate::runtime::digest::hex(&key.finalize());
        Path::new(paths::RUN_DIR).join(format!("podman-images-{}", &key[..16]))
    }

    /// The head of a record: what the list was read against (`store_stamp`: the store's
    /// image list as it was before Podman listed it).
    fn head(boot: &str, conf: &Path, store_file: &Path, store_stamp: &str) -> String {
        format!(
            "boot {boot}\nstorage.conf {} {}\nstore {} {store_stamp}\n",
            conf.display(),
            stamp(conf),
            store_file.display(),
        )
    }

    /// The record's list, when everything it was read against is unchanged.
    fn read_valid(path: &Path, boot: &str, conf: &Path) -> Option<List> {
        let text = crate::bounded::read(path, 4 << 20).ok()?;
        let text = String::from_utf8(text).ok()?;
        let mut lines = text.lines();
        let store_line = text.lines().nth(2)?;
        let store_file = store_line
            .strip_prefix("store ")?
            .rsplitn(5, ' ')
            .nth(4)
            .map(PathBuf::from)?;
        let expected = head(boot, conf, &store_file, &stamp(&store_file));
        if !text.starts_with(&expected) {
            return None;
        }
        lines.nth(2);
        Some(List {
            names: lines.map(str::to_owned).collect(),
        })
    }

    /// The store's graph root and driver as storage.conf says them (rootful defaults),
    /// when it names a driver: reading it costs no Podman process (`podman info` takes
    /// ~150 ms here).
    fn store_of(conf: &Path) -> Option<(String, String)> {
        let text = crate::bounded::read(conf, 1 << 20).ok()?;
        let doc: toml_edit::DocumentMut = String::from_utf8(text).ok()?.parse().ok()?;
        let storage = doc.get("storage")?;
        let value = |key: &str| storage.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        let driver = std::env::var("STORAGE_DRIVER")
            .ok()
            .filter(|d| !d.is_empty())
            .or_else(|| value("driver"))
            .filter(|d| !d.is_empty())?;
        let root = value("graphroot").unwrap_or_else(|| "/var/lib/containers/storage".into());
        Some((root, driver))
    }

    /// Ask Podman: where its store's image list is (unless storage.conf says), then
    /// (that file stamped first) every image, names and IDs.
    fn ask(client: &Client, conf: &Path) -> Option<(PathBuf, String, BTreeSet<String>)> {
        let (root, driver) = match store_of(conf) {
            Some(store) => store,
            None => {
                let out = client
                    .output(&[
                        "info",
                        "--format",
                        "{{.Store.GraphRoot}}\n{{.Store.GraphDriverName}}",
                    ])
                    .ok()
                    .filter(|o| o.status.success())?;
                let text = String::from_utf8(out.stdout).ok()?;
                let (root, driver) = text.trim().split_once('\n')?;
                (root.trim().to_owned(), driver.trim().to_owned())
            }
        };
        let store_file = Path::new(&root).join(format!("{driver}-images/images.json"));
        let before = stamp(&store_file);
        let out = client
            .output(&[
                "images",
                "--noheading",
                "--no-trunc",
                "--format",
                "{{.ID}} {{range .Names}}{{.}} {{end}}",
            ])
            .ok()
            .filter(|o| o.status.success())?;
        let names = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|w| w.strip_prefix("sha256:").unwrap_or(w).to_owned())
            .collect();
        Some((store_file, before, names))
    }

    /// This boot's list: the record when it still holds, else asked of Podman (by one
    /// unit at a time: the others wait, then read what it wrote). None when Podman does
    /// not answer or the record cannot be kept: the caller asks directly.
    pub fn current(client: &Client) -> Option<List> {
        let path = record_path(client);
        let (boot, conf) = (boot_id(), storage_conf());
        if boot.is_empty() {
            return None;
        }
        if let Some(list) = read_valid(&path, &boot, &conf) {
            return Some(list);
        }
        // Only root's own directory is trusted with it (see crate::trust).
        fs::create_dir_all(paths::RUN_DIR).ok()?;
        crate::trust::check(Path::new(paths::RUN_DIR), None).ok()?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.with_extension("lock"))
            .ok()?;
        lock.lock().ok()?;
        if let Some(list) = read_valid(&path, &boot, &conf) {
            return Some(list);
        }
        // Stamped before Podman lists: a change while it lists makes the record stale.
        let (store_file, before, names) = ask(client, &conf)?;
        let mut text = head(&boot, &conf, &store_file, &before);
        for name in &names {
            text.push_str(name);
            text.push('\n');
        }
        crate::runtime::durable::write(&path, text.as_bytes(), Some(0o644)).ok()?;
        Some(List { names })
    }
}
