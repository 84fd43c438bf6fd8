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
