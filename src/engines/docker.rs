//! Docker: the stages ask its client (see [the seam](super)), except the one
//! question every unit asks at every boot, which goes over the API socket when the client
//! would use a local one anyway.

use crate::engines::EngineKind;
use crate::engines::{self, Client, Feed, ImageEngine, ImageInfo};
use crate::runtime::RuntimeError;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;

pub struct Docker {
    client: Client,
}

impl Docker {
    pub fn new(docker: &Path) -> Self {
        Docker {
            client: Client {
                path: docker.to_owned(),
            },
        }
    }
}

impl ImageEngine for Docker {
    fn kind(&self) -> EngineKind {
        EngineKind::Docker
    }

    fn client(&self) -> &Path {
        &self.client.path
    }

    fn ping(&self) -> Result<(), RuntimeError> {
        if api::ping() {
            return Ok(());
        }
        // Through the CLI: it also says what is wrong.
        let out = self
            .client
            .output(&["version", "--format", "{{.Server.Version}}"])?;
        if !out.status.success() || out.stdout.trim_ascii().is_empty() {
            return Err(RuntimeError::EngineUnreachable(
                "the Docker engine",
                engines::last_line(&out.stderr),
            ));
        }
        Ok(())
    }

    fn image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        self.client
            .image(image, |err| err.contains("no such image"))
    }

    fn label(&self, image: &str, key: &str) -> Result<String, RuntimeError> {
        self.client.label(image, key)
    }

    fn has_images(&self, images: &[&str]) -> Result<bool, RuntimeError> {
        if images.is_empty() {
            return Ok(true);
        }
        if let Some(answer) = api::has_images(images) {
            return Ok(answer);
        }
        self.client.has_images(images)
    }

    fn feed(&self, archive_name: &str) -> Feed {
        // Docker 20.10 cannot read zstd; everything else it decompresses as fast as we do.
        if archive_name.ends_with(".tar.zst") {
            Feed::Decompressed
        } else {
            Feed::File
        }
    }

    fn load_file(
        &self,
        path: &Path,
        watch: &mut engines::Watch<'_>,
    ) -> Result<Vec<String>, RuntimeError> {
        // `docker load` reads the file as its stdin: no copy through us; its offset there
        // is how far along it is.
        let file = engines::open_archive(path)?;
        self.client.load(
            &["--quiet"],
            Stdio::from(file),
            None,
            &mut |pid, running| watch(&mut || engines::read_offset(pid, "0"), running),
        )
    }

    fn load_stream(&self, archive: &mut dyn Read) -> Result<Vec<String>, RuntimeError> {
        self.client
            .load(&["--quiet"], Stdio::piped(), Some(archive), &mut |_, _| {})
    }

    fn run_options(&self, name: &str) -> Vec<String> {
        crate::plan::docker::run_options(name)
    }

    fn is_client_word(&self, word: &str) -> bool {
        word == "docker" || word.ends_with("/docker")
    }

    fn remove_container(&self, name: &str) {
        let _ = std::process::Command::new(&self.client.path)
            .args(["rm", "--force", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn storage_dir(&self) -> Option<PathBuf> {
        self.client.info_path("{{.DockerRootDir}}")
    }
}

/// The engine's API socket, for the questions every load asks ("do you answer?", "are
/// these images there?"): a docker CLI process costs ~25 ms of CPU, a request ~1 ms. Used
/// only where the CLI would talk to a local unix socket with no context or TLS set up;
/// anything unexpected answers `None` (or `false`) and the CLI is asked instead.
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

    /// The HTTP status of `GET path`.
    fn status(socket: &PathBuf, path: &str) -> Option<u16> {
        let mut stream = UnixStream::connect(socket).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).ok()?;
        // "HTTP/1.x NNN"
        let code = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
        let _ = stream.shutdown(std::net::Shutdown::Both);
        Some(code)
    }

    /// Whether the engine answers its ping.
    pub fn ping() -> bool {
        socket().is_some_and(|socket| status(&socket, "/_ping") == Some(200))
    }

    /// 200 → there, 404 → not there; anything else → ask the CLI.
    pub fn has_images(images: &[&str]) -> Option<bool> {
        let socket = socket()?;
        for image in images {
            match status(&socket, &path(image))? {
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
