//! containerd, on a Kubernetes node: images go into kubelet's namespace (`k8s.io`) through
//! `ctr`, containerd's own client (it ships with containerd, on every such node). `ctr`
//! rather than the gRPC API through the `containerd-client` crate: that crate brings
//! tonic, an async runtime and `protoc` (about 100 crates) for what four `ctr` commands
//! do, and a `ctr images ls` answers in ~10 ms here, the every-boot question.
//!
//! Facts this module is built on (containerd 1.6.20, Debian bookworm): `ctr images
//! import` reads only plain tar (gzip and zstd fail), so those are decompressed here and
//! streamed in; it imports only the machine's platform unless told otherwise, and an
//! archive of another platform fails with "image might be filtered out"; an archive with
//! no tagged image imports nothing and exits 0; when containerd is down, `ctr` waits
//! ~10 s unless `--connect-timeout` is given. Kubelet's image garbage collection keeps
//! images labelled `io.cri-containerd.pinned=pinned` from containerd 1.6.25 and 1.7.10 on.
//!
//! kubelet runs the pods: there is no container to run or install here (the config
//! refuses `run:` and `install:` for this engine).

use crate::engines::EngineKind;
use crate::engines::{self, Feed, ImageEngine, ImageInfo, full_reference};
use crate::runtime::RuntimeError;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// containerd's defaults, as `ctr` has them.
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
/// kubelet's namespace (the CRI plugin's).
pub const DEFAULT_NAMESPACE: &str = "k8s.io";
/// The label kubelet's image garbage collection honours (containerd ≥ 1.6.25, 1.7.10).
pub const PIN_LABEL: &str = "io.cri-containerd.pinned=pinned";
/// How long `ctr` may take to reach containerd: a down containerd fails in this, not in
/// `ctr`'s own 10 s.
const CONNECT_TIMEOUT: &str = "2s";
/// Where containerd keeps its content (only for "which file system is full").
const STORAGE: &str = "/var/lib/containerd";

pub struct Containerd {
    ctr: PathBuf,
    address: String,
    namespace: String,
}

impl Containerd {
    /// The address and namespace from `$CONTAINERD_ADDRESS` and `$CONTAINERD_NAMESPACE`
    /// (as `ctr` takes them), else containerd's socket and `k8s.io`.
    pub fn from_env(ctr: &Path) -> Self {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Containerd {
            ctr: ctr.to_owned(),
            address: var("CONTAINERD_ADDRESS", DEFAULT_ADDRESS),
            namespace: var("CONTAINERD_NAMESPACE", DEFAULT_NAMESPACE),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.args(["--address", &self.address, "--namespace", &self.namespace])
            .args(["--connect-timeout", CONNECT_TIMEOUT]);
        cmd
    }

    fn output(&self, args: &[&str]) -> Result<Output, RuntimeError> {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.spawn_error(e))
    }

    fn spawn_error(&self, source: std::io::Error) -> RuntimeError {
        RuntimeError::Spawn {
            program: self.ctr.display().to_string(),
            source,
        }
    }

    fn failed(&self, what: &str, out: &Output) -> RuntimeError {
        let message = engines::last_line(&out.stderr);
        if message.contains("failed to dial") || message.contains("connection refused") {
            return RuntimeError::EngineUnreachable(
                "containerd",
                format!("{message} (at {})", self.address),
            );
        }
        RuntimeError::Docker {
            what: format!("ctr {what}"),
            message,
        }
    }

    /// Every image name in the namespace: one question.
    fn names(&self) -> Result<BTreeSet<String>, RuntimeError> {
        let out = self.output(&["images", "ls", "--quiet"])?;
        if !out.status.success() {
            return Err(self.failed("images ls", &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// `ctr images import` of `source` (a path, or `-` for `stdin`); the images it
    /// imported, each refused as what it is when there are none.
    fn import(
        &self,
        source: &str,
        stdin: Option<&mut dyn Read>,
    ) -> Result<Vec<String>, RuntimeError> {
        let mut child = self
            .command()
            .args(["images", "import", source])
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        let copied = match (stdin, child.stdin.take()) {
            (Some(archive), Some(mut pipe)) => std::io::copy(archive, &mut pipe).map(drop),
            _ => Ok(()),
        };
        let out = child.wait_with_output().map_err(|e| self.spawn_error(e))?;
        if !out.status.success() {
            let said = engines::last_line(&out.stderr);
            if said.contains("image might be filtered out") {
                return Err(RuntimeError::Docker {
                    what: "ctr images import".into(),
                    message: format!(
                        "the archive holds no image for this machine's platform ({}/{}): containerd imports nothing from it ({said})",
                        std::env::consts::OS,
                        go_arch()
                    ),
                });
            }
            return Err(self.failed("images import", &out));
        }
        copied.map_err(RuntimeError::ReadArchive)?;
        let images = imported(&String::from_utf8_lossy(&out.stdout));
        if images.is_empty() {
            return Err(RuntimeError::Docker {
                what: "ctr images import".into(),
                message: "the archive holds no tagged image, and containerd imports nothing from an untagged one: tag the image before saving it (docker tag, podman tag)".into(),
            });
        }
        Ok(images)
    }

    /// The server's version, when it says: `(1, 6, 20)`.
    fn server_version(&self) -> Option<(u32, u32, u32)> {
        let out = self.output(&["version"]).ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let server = text.split("Server:").nth(1)?;
        let version = server
            .lines()
            .find_map(|l| l.trim().strip_prefix("Version:"))?
            .trim()
            .trim_start_matches('v');
        parse_version(version)
    }
}

/// The images `ctr images import` says it unpacked: `unpacking REF (sha256:…)...done`.
fn imported(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("unpacking "))
        .filter_map(|rest| rest.split(" (").next())
        .map(str::to_owned)
        .collect()
}

/// `1.6.20~ds1` → `(1, 6, 20)`.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    let mut next = || parts.next()?.parse::<u32>().ok();
    Some((next()?, next()?, next()?))
}

/// Whether kubelet's garbage collection honours [`PIN_LABEL`] on this containerd.
pub fn honours_pins(version: (u32, u32, u32)) -> bool {
    match version {
        (1, 6, patch) => patch >= 25,
        (1, 7, patch) => patch >= 10,
        (1, minor, _) => minor > 7,
        (major, _, _) => major > 1,
    }
}

/// The platform name Go (and so containerd) uses for this machine's architecture.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

impl ImageEngine for Containerd {
    fn kind(&self) -> EngineKind {
        EngineKind::Containerd
    }

    fn client(&self) -> &Path {
        &self.ctr
    }

    fn ping(&self) -> Result<(), RuntimeError> {
        let out = self.output(&["version"])?;
        if !out.status.success() {
            return Err(RuntimeError::EngineUnreachable(
                "containerd",
                format!("{} (at {})", engines::last_line(&out.stderr), self.address),
            ));
        }
        Ok(())
    }

    fn image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        let full = full_reference(image);
        Ok(self.names()?.contains(&full).then(|| ImageInfo {
            id: full,
            install_label: String::new(),
        }))
    }

    fn label(&self, _image: &str, _key: &str) -> Result<String, RuntimeError> {
        // No labels are read: kubelet runs the pods, not an INSTALL or RUN label.
        Ok(String::new())
    }

    fn has_images(&self, images: &[&str]) -> Result<bool, RuntimeError> {
        if images.is_empty() {
            return Ok(true);
        }
        let names = self.names()?;
        Ok(images.iter().all(|i| names.contains(&full_reference(i))))
    }

    fn feed(&self, archive_name: &str) -> Feed {
        // `ctr images import` reads a plain tar itself; anything compressed is streamed.
        if archive_name.ends_with(".tar") {
            Feed::File
        } else {
            Feed::Decompressed
        }
    }

    fn load_file(
        &self,
        path: &Path,
        _watch: &mut engines::Watch<'_>,
    ) -> Result<Vec<String>, RuntimeError> {
        self.import(&path.to_string_lossy(), None)
    }

    fn load_stream(&self, archive: &mut dyn Read) -> Result<Vec<String>, RuntimeError> {
        self.import("-", Some(archive))
    }

    fn run_options(&self, _name: &str) -> Vec<String> {
        vec![]
    }

    fn is_client_word(&self, _word: &str) -> bool {
        false
    }

    fn remove_container(&self, _name: &str) {}

    fn storage_dir(&self) -> Option<PathBuf> {
        Some(PathBuf::from(STORAGE))
    }

    fn marks_name(&self) -> String {
        // One set of records per namespace: an image in another namespace is another
        // image to containerd. kubelet's keeps the plain name (status reads it).
        if self.namespace == DEFAULT_NAMESPACE {
            "containerd".into()
        } else {
            format!("containerd-{}", self.namespace.replace('/', "_"))
        }
    }

    fn after_load(&self, images: &[String]) -> Result<(), RuntimeError> {
        for image in images {
            let out = self.output(&["images", "label", image, PIN_LABEL])?;
            if !out.status.success() {
                return Err(self.failed("images label", &out));
            }
        }
        if let Some(version) = self.server_version()
            && !honours_pins(version)
        {
            let (a, b, c) = version;
            println!(
                "pinned {} ({PIN_LABEL}); containerd {a}.{b}.{c} does not keep pinned images from kubelet's image garbage collection (1.6.25 and 1.7.10 do): if it removes one, this unit imports it again at its next start",
                images.join(", ")
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_output_and_versions() {
        let out = "unpacking example.com/a:1 (sha256:797e)...done\nunpacking docker.io/library/b:2 (sha256:11)...done\n";
        assert_eq!(imported(out), ["example.com/a:1", "docker.io/library/b:2"]);
        assert!(imported("").is_empty());
        assert_eq!(parse_version("1.6.20~ds1"), Some((1, 6, 20)));
        assert_eq!(parse_version("v2.0.0"), None, "the caller strips the v");
        assert!(!honours_pins((1, 6, 20)) && honours_pins((1, 6, 25)));
        assert!(!honours_pins((1, 7, 9)) && honours_pins((1, 7, 10)));
        assert!(honours_pins((2, 0, 0)) && honours_pins((1, 8, 0)));
    }
}
