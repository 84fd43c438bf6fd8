//! Which container engine gets a Docker-format image: Docker or Podman (which also run
//! it), or on a Kubernetes node containerd or CRI-O (whose images kubelet runs).
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
    /// containerd's `k8s.io` namespace (kubelet's), through `ctr`.
    Containerd,
    /// CRI-O's image store, which is containers/storage: loaded with Podman.
    CriO,
}

impl EngineKind {
    /// The value of the config's `engine:` key and of `--engine`.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Docker => "docker",
            EngineKind::Podman => "podman",
            EngineKind::Containerd => "containerd",
            EngineKind::CriO => "cri-o",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "docker" => Some(EngineKind::Docker),
            "podman" => Some(EngineKind::Podman),
            "containerd" => Some(EngineKind::Containerd),
            "cri-o" => Some(EngineKind::CriO),
            _ => None,
        }
    }

    /// For messages: "Docker", "Podman".
    pub fn title(self) -> &'static str {
        match self {
            EngineKind::Docker => "Docker",
            EngineKind::Podman => "Podman",
            EngineKind::Containerd => "containerd",
            EngineKind::CriO => "CRI-O",
        }
    }

    /// Who answers, for messages: "the Docker engine", "Podman".
    pub fn named(self) -> &'static str {
        match self {
            EngineKind::Docker => "the Docker engine",
            EngineKind::Podman => "Podman",
            EngineKind::Containerd => "containerd",
            // CRI-O's images are loaded into its store by Podman.
            EngineKind::CriO => "Podman (CRI-O's image store)",
        }
    }

    /// The name of the load-once records of its image store (`STATE/loaded/NAME/`): CRI-O's
    /// store is Podman's. (containerd's in another namespace than kubelet's get their own:
    /// see the engine.)
    pub fn store(self) -> &'static str {
        match self {
            EngineKind::Podman | EngineKind::CriO => "podman",
            other => other.as_str(),
        }
    }

    /// Whether this engine also runs the containers (`run:`, `install:`); on a
    /// Kubernetes node kubelet runs pods, and the engine only holds their images.
    pub fn runs_containers(self) -> bool {
        matches!(self, EngineKind::Docker | EngineKind::Podman)
    }

    /// The run commands a RUN label may be, for messages.
    pub fn run_commands(self) -> &'static str {
        match self {
            EngineKind::Docker => "a `docker run`",
            EngineKind::Podman => "a `docker run` or `podman run`",
            EngineKind::Containerd | EngineKind::CriO => "no",
        }
    }

    /// The client the units call (fixed at build time, see `paths`).
    pub fn client(self) -> &'static str {
        match self {
            EngineKind::Docker => paths::DOCKER,
            EngineKind::Podman | EngineKind::CriO => paths::PODMAN,
            EngineKind::Containerd => paths::CTR,
        }
    }

    /// The engine of an entry without `engine:`, the first that fits: Docker when its
    /// client is installed; on a Kubernetes node (kubelet installed), CRI-O when it is
    /// installed, else containerd when its client is; Podman when its client is; else
    /// Docker (whose units then fail saying the engine is missing). `root` is the host's
    /// `/` (another directory in tests and image builds). Only `stat`s: the generator
    /// must not talk to any process.
    pub fn detect(root: &Path) -> Self {
        let installed = |client: &str| paths::under(root, client).is_ok_and(|p| p.exists());
        let node = || installed(paths::KUBELET);
        if installed(paths::DOCKER) {
            EngineKind::Docker
        } else if node() && installed(paths::CRIO) {
            EngineKind::CriO
        } else if node() && installed(paths::CTR) {
            EngineKind::Containerd
        } else if installed(paths::PODMAN) {
            EngineKind::Podman
        } else {
            EngineKind::Docker
        }
    }
}

/// What `--engine` accepts: an engine, or `auto` for [`EngineKind::detect`] at run time.
pub const ENGINE_VALUES: &[&str] = &["docker", "podman", "containerd", "cri-o", "auto"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_prefers_docker_then_a_nodes_engine_then_podman_then_docker() {
        let root = std::env::temp_dir().join(format!("ap-engine-{}", std::process::id()));
        let bin = |c: &str| paths::under(&root, c).unwrap();
        std::fs::create_dir_all(bin(paths::PODMAN).parent().unwrap()).unwrap();
        assert_eq!(EngineKind::detect(&root), EngineKind::Docker);
        std::fs::write(bin(paths::PODMAN), "").unwrap();
        assert_eq!(EngineKind::detect(&root), EngineKind::Podman);
        // A Kubernetes node: containerd, or CRI-O when it is there too.
        std::fs::write(bin(paths::CTR), "").unwrap();
        assert_eq!(EngineKind::detect(&root), EngineKind::Podman, "no kubelet");
        std::fs::write(bin(paths::KUBELET), "").unwrap();
        assert_eq!(EngineKind::detect(&root), EngineKind::Containerd);
        std::fs::write(bin(paths::CRIO), "").unwrap();
        assert_eq!(EngineKind::detect(&root), EngineKind::CriO);
        std::fs::create_dir_all(bin(paths::DOCKER).parent().unwrap()).unwrap();
        std::fs::write(bin(paths::DOCKER), "").unwrap();
        assert_eq!(EngineKind::detect(&root), EngineKind::Docker);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn names_round_trip() {
        for kind in [
            EngineKind::Docker,
            EngineKind::Podman,
            EngineKind::Containerd,
            EngineKind::CriO,
        ] {
            assert_eq!(EngineKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EngineKind::parse("Docker"), None);
    }
}
