//! Which container engine runs a Docker-format image: Docker or Podman.
//!
//! Shared by the config (the `engine:` key), the plan (which unit shape) and the runtime
//! stages (which client they call), so the name and the detection rule live in one place.
//! System containers have no engine (runc runs them from a checkout).

use crate::paths;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    Docker,
    Podman,
}

impl EngineKind {
    /// The value of the config's `engine:` key and of `--engine`.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Docker => "docker",
            EngineKind::Podman => "podman",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "docker" => Some(EngineKind::Docker),
            "podman" => Some(EngineKind::Podman),
            _ => None,
        }
    }

    /// For messages: "Docker", "Podman".
    pub fn title(self) -> &'static str {
        match self {
            EngineKind::Docker => "Docker",
            EngineKind::Podman => "Podman",
        }
    }

    /// The client the units call (fixed at build time, see `paths`).
    pub fn client(self) -> &'static str {
        match self {
            EngineKind::Docker => paths::DOCKER,
            EngineKind::Podman => paths::PODMAN,
        }
    }

    /// The engine of an entry without `engine:`: Docker when its client is installed,
    /// else Podman when its client is, else Docker (whose units then fail saying the
    /// engine is missing). `root` is the host's `/` (another directory in tests and image
    /// builds). Only two `stat`s: the generator must not talk to any process.
    pub fn detect(root: &Path) -> Self {
        let installed = |client: &str| paths::under(root, client).is_ok_and(|p| p.exists());
        if installed(paths::DOCKER) {
            EngineKind::Docker
        } else if installed(paths::PODMAN) {
            EngineKind::Podman
        } else {
            EngineKind::Docker
        }
    }
}

/// What `--engine` accepts: an engine, or `auto` for [`EngineKind::detect`] at run time.
pub const ENGINE_VALUES: &[&str] = &["docker", "podman", "auto"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_prefers_docker_then_podman_then_docker() {
        let root = std::env::temp_dir().join(format!("ap-engine-{}", std::process::id()));
        let bin = |c: &str| paths::under(&root, c).unwrap();
        std::fs::create_dir_all(bin(paths::PODMAN).parent().unwrap()).unwrap();
        assert_eq!(EngineKind::detect(&root), EngineKind::Docker);
        std::fs::write(bin(paths::PODMAN), "").unwrap();
        assert_eq!(EngineKind::detect(&root), EngineKind::Podman);
        std::fs::create_dir_all(bin(paths::DOCKER).parent().unwrap()).unwrap();
        std::fs::write(bin(paths::DOCKER), "").unwrap();
        assert_eq!(EngineKind::detect(&root), EngineKind::Docker);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn names_round_trip() {
        for kind in [EngineKind::Docker, EngineKind::Podman] {
            assert_eq!(EngineKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EngineKind::parse("Docker"), None);
    }
}
