//! The few things we ask of the Docker engine, through its own client (so `$DOCKER_HOST`,
//! contexts and TLS settings work as the admin configured them).

use super::RuntimeError;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Engine {
    docker: PathBuf,
}

/// What `docker image inspect` tells about an image.
pub struct ImageInfo {
    pub id: String,
    /// The `INSTALL` label, empty when the image has none.
    pub install_label: String,
}

/// The last line of what docker printed: its own error message, after any progress.
fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .to_owned()
}

impl Engine {
    pub fn new(docker: &Path) -> Self {
        Engine {
            docker: docker.to_owned(),
        }
    }

    pub fn docker(&self) -> &Path {
        &self.docker
    }

    fn output(&self, args: &[&str]) -> Result<std::process::Output, RuntimeError> {
        Command::new(&self.docker)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| RuntimeError::Spawn {
                program: self.docker.display().to_string(),
                source: e,
            })
    }

    /// The first contact: an engine that does not answer is reported as such, rather
    /// than as a failed load or a missing image.
    pub fn ping(&self) -> Result<(), RuntimeError> {
        let out = self.output(&["version", "--format", "{{.Server.Version}}"])?;
        if !out.status.success() || out.stdout.trim_ascii().is_empty() {
            return Err(RuntimeError::EngineUnreachable(last_line(&out.stderr)));
        }
        Ok(())
    }

    /// `None` when the engine does not have the image.
    pub fn image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        let format = r#"{{.Id}}{{"\n"}}{{with .Config.Labels}}{{index . "INSTALL"}}{{end}}"#;
        let out = self.output(&["image", "inspect", "--format", format, "--", image])?;
        if !out.status.success() {
            let err = last_line(&out.stderr);
            if err.to_ascii_lowercase().contains("no such image") {
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

    /// One label of an image, empty when it has none.
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

    /// Whether the engine has every one of these images (names or IDs).
    pub fn has_images(&self, images: &[&str]) -> Result<bool, RuntimeError> {
        if images.is_empty() {
            return Ok(true);
        }
        let mut args = vec!["image", "inspect", "--format", "{{.Id}}", "--"];
        args.extend(images);
        Ok(self.output(&args)?.status.success())
    }

    /// Stream an image archive into `docker load`; returns the images it loaded (the
    /// references, or IDs of untagged images, from its "Loaded image: …" lines).
    pub fn load(&self, archive: &mut dyn Read) -> Result<Vec<String>, RuntimeError> {
        let spawn_err = |e| RuntimeError::Spawn {
            program: self.docker.display().to_string(),
            source: e,
        };
        let mut child = Command::new(&self.docker)
            .args(["load", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let copied = {
            let mut stdin = child.stdin.take();
            match stdin.as_mut() {
                Some(stdin) => io::copy(archive, stdin).and_then(|_| stdin.flush()),
                None => Ok(()),
            }
            // stdin dropped here: docker sees end of input.
        };
        let out = child.wait_with_output().map_err(spawn_err)?;
        if !out.status.success() {
            return Err(RuntimeError::Docker {
                what: "docker load".into(),
                message: last_line(&out.stderr),
            });
        }
        // A read error on our side is the archive's fault even if docker took what it got.
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
