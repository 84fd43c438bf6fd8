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
        if let Some(answer) = api::has_images(images) {
            return Ok(answer);
        }
        let mut args = vec!["image", "inspect", "--format", "{{.Id}}", "--"];
        args.extend(images);
        Ok(self.output(&args)?.status.success())
    }

    /// Stream an image archive into `docker load`; returns the images it loaded (the
    /// references, or IDs of untagged images, from its "Loaded image: …" lines).
    pub fn load(&self, archive: &mut dyn Read) -> Result<Vec<String>, RuntimeError> {
        let mut child = self.spawn_load(Stdio::piped())?;
        let copied = {
            let mut stdin = child.stdin.take();
            match stdin.as_mut() {
                Some(stdin) => io::copy(archive, stdin).and_then(|_| stdin.flush()),
                None => Ok(()),
            }
            // stdin dropped here: docker sees end of input.
        };
        self.finish_load(child, copied)
    }

    /// `docker load` reading the archive file itself (no copy through us: the engine's
    /// own speed); `watch(docker's pid)` runs while it loads, e.g. to report progress.
    pub fn load_file(
        &self,
        file: std::fs::File,
        watch: impl FnOnce(u32, &mut dyn FnMut() -> bool),
    ) -> Result<Vec<String>, RuntimeError> {
        let mut child = self.spawn_load(Stdio::from(file))?;
        let pid = child.id();
        // `child` is only polled here; its output is read once it has exited.
        let mut still_running = || matches!(child.try_wait(), Ok(None));
        watch(pid, &mut still_running);
        self.finish_load(child, Ok(()))
    }

    fn spawn_load(&self, stdin: Stdio) -> Result<std::process::Child, RuntimeError> {
        Command::new(&self.docker)
            .args(["load", "--quiet"])
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RuntimeError::Spawn {
                program: self.docker.display().to_string(),
                source: e,
            })
    }

    fn finish_load(
        &self,
        child: std::process::Child,
        copied: io::Result<()>,
    ) -> Result<Vec<String>, RuntimeError> {
        let out = child.wait_with_output().map_err(|e| RuntimeError::Spawn {
            program: self.docker.display().to_string(),
            source: e,
        })?;
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

/// The engine's API socket, for the one question every boot asks of every unit ("are
/// these images there?"): a docker CLI process costs ~25 ms of CPU, a request ~1 ms. Used
/// only where the CLI would talk to a local unix socket with no context or TLS set up;
/// anything unexpected answers `None` and the CLI is asked instead.
mod api {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::PathBuf;
    use std::time::Duration;

    fn socket() -> Option<PathBuf> {
        for var in ["DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"] {
            if std::env::var_os(var).is_some() {
                return None;
            }
        }
        // A context chosen in the CLI's config file applies to the CLI only: use it.
        if let Some(home) = std::env::var_os("HOME") {
            let config = PathBuf::from(home).join(".docker/config.json");
            if std::fs::read_to_string(config).is_ok_and(|c| c.contains("currentContext")) {
                return None;
            }
        }
        match std::env::var("DOCKER_HOST") {
            Ok(host) => host.strip_prefix("unix://").map(PathBuf::from),
            Err(std::env::VarError::NotPresent) => Some(PathBuf::from("/var/run/docker.sock")),
            Err(_) => None,
        }
    }

    /// `/images/NAME/json` with NAME percent-encoded except the reference characters.
    fn path(image: &str) -> String {
        let mut out = String::from("/images/");
        for b in image.bytes() {
            if b.is_ascii_alphanumeric() || b"._-/:@".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out + "/json"
    }

    /// 200 → there, 404 → not there; anything else → ask the CLI.
    fn status(socket: &PathBuf, image: &str) -> Option<u16> {
        let mut stream = UnixStream::connect(socket).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        let request = format!("GET {} HTTP/1.0\r\nHost: docker\r\n\r\n", path(image));
        stream.write_all(request.as_bytes()).ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).ok()?;
        // "HTTP/1.x NNN"
        let code = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
        let _ = stream.shutdown(std::net::Shutdown::Both);
        Some(code)
    }

    pub fn has_images(images: &[&str]) -> Option<bool> {
        let socket = socket()?;
        for image in images {
            match status(&socket, image)? {
                200 => {}
                404 => return Some(false),
                _ => return None,
            }
        }
        Some(true)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn image_paths_keep_reference_characters_only() {
            assert_eq!(
                super::path("docker.io/x/y:1@sha256:ab"),
                "/images/docker.io/x/y:1@sha256:ab/json"
            );
            assert_eq!(super::path("a b?#"), "/images/a%20b%3F%23/json");
        }
    }
}
