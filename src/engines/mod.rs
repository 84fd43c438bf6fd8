//! The seam between the stages (load, install, run, uninstall) and an engine: what they
//! ask of Docker or Podman. Each engine is one module ([`docker`],
//! [`podman`]); adding one touches neither the other nor the stages.
//!
//! Both are asked through their own clients, so `$DOCKER_HOST`, contexts, TLS settings,
//! `containers.conf` and `storage.conf` work as the admin configured them.

pub mod containerd;
pub mod docker;
pub mod kind;
pub mod podman;

pub use kind::{ENGINE_VALUES, EngineKind};

use crate::cli::EngineArgs;
use crate::runtime::RuntimeError;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// What inspecting an image tells.
pub struct ImageInfo {
    pub id: String,
    /// The `INSTALL` label, empty when the image has none.
    pub install_label: String,
}

/// Called while an engine loads a file: `(offset, running)`, where `offset()` is how far
/// the engine has read (if known) and `running()` whether it still loads.
pub type Watch<'a> = dyn FnMut(&mut dyn FnMut() -> Option<u64>, &mut dyn FnMut() -> bool) + 'a;

/// How the load stage feeds an archive to an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// The engine reads the file itself: its own decompression is as fast as ours.
    File,
    /// We decompress (zstd for Docker; gzip, xz and bzip2 for Podman) and stream the tar
    /// into it.
    Decompressed,
}

pub trait ImageEngine: Sync {
    fn kind(&self) -> EngineKind;
    /// The client the stages call; in a label, `docker` becomes this.
    fn client(&self) -> &Path;
    /// The first contact: an engine that does not answer is reported as such, rather
    /// than as a failed load or a missing image.
    fn ping(&self) -> Result<(), RuntimeError>;
    /// `None` when the engine does not have the image.
    fn image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError>;
    /// One label of an image, empty when it has none.
    fn label(&self, image: &str, key: &str) -> Result<String, RuntimeError>;
    /// Whether the engine has every one of these images (names or IDs).
    fn has_images(&self, images: &[&str]) -> Result<bool, RuntimeError>;
    /// How an archive of this name is best fed to the engine.
    fn feed(&self, archive_name: &str) -> Feed;
    /// Load an archive file the engine reads itself; `watch(offset, running)` runs while
    /// it loads (progress): `offset()` is how far the engine has read, if known.
    /// Returns the images loaded (references, or IDs of untagged images).
    fn load_file(&self, path: &Path, watch: &mut Watch<'_>) -> Result<Vec<String>, RuntimeError>;
    /// Load a tar stream.
    fn load_stream(&self, archive: &mut dyn Read) -> Result<Vec<String>, RuntimeError>;
    /// The options every `run` of a unit starts with (the plan's, for this engine): the
    /// run stage puts a RUN label's options after them.
    fn run_options(&self, name: &str) -> Vec<String>;
    /// Whether a label's first word names this engine's client (`docker`, for Podman also
    /// `podman`, as `podman container runlabel` does), so it is replaced by [`client`].
    fn is_client_word(&self, word: &str) -> bool;
    /// Remove a container by name, if there is one.
    fn remove_container(&self, name: &str);
    /// Where the engine keeps its images (asked only to say which file system is full).
    fn storage_dir(&self) -> Option<PathBuf>;
    /// The name of its load-once records (`STATE/loaded/NAME/`): one set per image store.
    fn marks_name(&self) -> String {
        self.kind().as_str().to_owned()
    }
    /// After an archive loaded `images`: what else the engine needs done to them (pin
    /// them against garbage collection, say what it cannot).
    fn after_load(&self, _images: &[String]) -> Result<(), RuntimeError> {
        Ok(())
    }
}

/// The engine the stage's options name (`--engine auto`: the host's, as the generator
/// decides for entries without `engine:`).
pub fn open(args: &EngineArgs) -> Box<dyn ImageEngine> {
    match kind_of(&args.engine) {
        EngineKind::Docker => Box::new(docker::Docker::new(&args.docker)),
        // CRI-O's image store is containers/storage: Podman loads into it.
        EngineKind::Podman | EngineKind::CriO => Box::new(podman::Podman::new(&args.podman)),
        EngineKind::Containerd => Box::new(containerd::Containerd::from_env(&args.ctr)),
    }
}

/// `--engine`'s value as an engine (validated by the argument parser).
pub fn kind_of(value: &str) -> EngineKind {
    EngineKind::parse(value).unwrap_or_else(|| EngineKind::detect(Path::new("/")))
}

/// An image reference as Docker normalizes it, spelled out (how containerd stores it,
/// and how Podman names what it pulled from Docker Hub):
/// `busybox` → `docker.io/library/busybox:latest`.
pub fn full_reference(reference: &str) -> String {
    let (first, _) = reference.split_once('/').unwrap_or(("", reference));
    let has_domain =
        reference.contains('/') && (first.contains(['.', ':']) || first == "localhost");
    let mut full = match (has_domain, reference.contains('/')) {
        (true, _) => reference.to_owned(),
        (false, true) => format!("docker.io/{reference}"),
        (false, false) => format!("docker.io/library/{reference}"),
    };
    let last = full.rsplit('/').next().unwrap_or("");
    if !last.contains(':') && !full.contains('@') {
        full.push_str(":latest");
    }
    full
}

/// The engine's client as a subprocess: what Docker and Podman have in common.
pub(crate) struct Client {
    pub path: PathBuf,
}

/// The last line of what a client printed: its own error message, after any progress.
pub(crate) fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .to_owned()
}

/// What a failed load said. Podman lists why each format it tried did not match; the
/// docker-archive line is the one that matters (that is what archives here are).
fn load_error(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let docker_archive = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("* docker-archive: "));
    match docker_archive {
        // Not the archive's fault when Podman's storage is full.
        Some(why) if crate::runtime::says_storage_full(why) => why.trim().to_owned(),
        Some(why) => format!("not a readable docker-archive: {}", why.trim()),
        None => last_line(stderr),
    }
}

impl Client {
    pub fn spawn_error(&self, source: std::io::Error) -> RuntimeError {
        RuntimeError::Spawn {
            program: self.path.display().to_string(),
            source,
        }
    }

    /// `CLIENT info --format FORMAT`, when it answers with a path.
    pub fn info_path(&self, format: &str) -> Option<PathBuf> {
        let out = self.output(&["info", "--format", format]).ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        let path = text.trim();
        (out.status.success() && path.starts_with('/')).then(|| PathBuf::from(path))
    }

    pub fn output(&self, args: &[&str]) -> Result<Output, RuntimeError> {
        Command::new(&self.path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.spawn_error(e))
    }

    /// `image inspect` of the ID and INSTALL label; `missing` tells the client's "no such
    /// image" message apart from other failures.
    pub fn image(
        &self,
        image: &str,
        missing: fn(&str) -> bool,
    ) -> Result<Option<ImageInfo>, RuntimeError> {
        let format = r#"{{.Id}}{{"\n"}}{{with .Config.Labels}}{{index . "INSTALL"}}{{end}}"#;
        let out = self.output(&["image", "inspect", "--format", format, "--", image])?;
        if !out.status.success() {
            let err = last_line(&out.stderr);
            if missing(&err.to_ascii_lowercase()) {
                return Ok(None);
            }
            return Err(RuntimeError::Docker {
                what: format!("inspect image {image}"),
                message: err,
            });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let (id, label) = text.split_once('\n').unwrap_or((&text, ""));
        Ok(Some(ImageInfo {
            id: id.trim().to_owned(),
            install_label: label.trim_end_matches('\n').to_owned(),
        }))
    }

    pub fn label(&self, image: &str, key: &str) -> Result<String, RuntimeError> {
        // The key goes in as a Go template string literal: quote it as JSON does.
        let key = serde_json::to_string(key).unwrap_or_default();
        let format = format!("{{{{with .Config.Labels}}}}{{{{index . {key}}}}}{{{{end}}}}");
        let out = self.output(&["image", "inspect", "--format", &format, "--", image])?;
        if !out.status.success() {
            return Err(RuntimeError::Docker {
                what: format!("inspect image {image}"),
                message: last_line(&out.stderr),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\n')
            .to_owned())
    }

    /// One `image inspect` of them all: it fails when one is missing.
    pub fn has_images(&self, images: &[&str]) -> Result<bool, RuntimeError> {
        if images.is_empty() {
            return Ok(true);
        }
        let mut args = vec!["image", "inspect", "--format", "{{.Id}}", "--"];
        args.extend(images);
        Ok(self.output(&args)?.status.success())
    }

    /// `load` with `extra` arguments and `stdin`; `copy` writes the archive into the
    /// client's stdin when it is a pipe; `watch(pid, running)` runs until the client exits.
    pub fn load(
        &self,
        extra: &[&str],
        stdin: Stdio,
        copy: Option<&mut dyn Read>,
        watch: &mut dyn FnMut(u32, &mut dyn FnMut() -> bool),
    ) -> Result<Vec<String>, RuntimeError> {
        let mut child = Command::new(&self.path)
            .arg("load")
            .args(extra)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        let copied = match (copy, child.stdin.take()) {
            (Some(archive), Some(mut stdin)) => {
                // stdin dropped at the end: the client sees end of input.
                std::io::copy(archive, &mut stdin).map(drop)
            }
            _ => {
                let pid = child.id();
                let mut running = || matches!(child.try_wait(), Ok(None));
                watch(pid, &mut running);
                Ok(())
            }
        };
        let out = child.wait_with_output().map_err(|e| self.spawn_error(e))?;
        if !out.status.success() {
            return Err(RuntimeError::Docker {
                what: format!("{} load", self.path.display()),
                message: load_error(&out.stderr),
            });
        }
        // A read error on our side is the archive's fault even if the engine took what
        // it got.
        copied.map_err(RuntimeError::ReadArchive)?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.strip_prefix("Loaded image: ")
                    .or_else(|| l.strip_prefix("Loaded image ID: "))
            })
            .map(|image| image.trim().to_owned())
            .collect())
    }
}

/// The read offset of the descriptor process `pid` has open on `path` (from /proc): how
/// far an engine has read an archive.
pub(crate) fn read_offset(pid: u32, fd: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("pos:"))
        .and_then(|p| p.trim().parse().ok())
}

/// The descriptor number process `pid` has open on `path`, if any.
pub(crate) fn fd_of(pid: u32, path: &Path) -> Option<String> {
    let want = std::fs::canonicalize(path).ok()?;
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(Result::ok)
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == want))
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// Open an archive for an engine that reads its stdin (errors are the archive's).
pub(crate) fn open_archive(path: &Path) -> Result<File, RuntimeError> {
    File::open(path).map_err(|source| RuntimeError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_spelled_out_as_containerd_stores_them() {
        for (given, full) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("gscrivano/etcd", "docker.io/gscrivano/etcd:latest"),
            ("docker.io/library/busybox:1", "docker.io/library/busybox:1"),
            ("example.com/a/b", "example.com/a/b:latest"),
            ("localhost/app:2", "localhost/app:2"),
            ("registry:5000/app", "registry:5000/app:latest"),
            ("example.com/a@sha256:00", "example.com/a@sha256:00"),
        ] {
            assert_eq!(full_reference(given), full, "{given}");
        }
    }
}
