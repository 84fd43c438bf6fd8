//! Kubernetes nodes: the image goes into the store kubelet's container runtime uses, and
//! kubelet runs the pods. So the unit only loads: a oneshot, done before kubelet starts
//! (unless the entry says `before_kubelet: false`, for large images that need not hold
//! kubelet back), and no container of its own (the config refuses `run:` and
//! `install:` here: see the README's Kubernetes recipe, a static pod with
//! `imagePullPolicy: Never`).
//!
//! containerd: `atomic-preload load --engine containerd` through `ctr` into `k8s.io`,
//! requiring containerd. CRI-O: its image store is containers/storage, shared with
//! Podman, so Podman loads into it (`--engine podman`) with no daemon to wait for.

use super::{ContainerUnit, ServiceKind, Settings, image_stages};
use crate::config::Entry;
use crate::paths;

pub const KUBELET_UNIT: &str = "kubelet.service";
const CONTAINERD_UNIT: &str = "containerd.service";
/// containerd's content and snapshots: the unit waits for them to be mounted.
const CONTAINERD_STORAGE: &str = "/var/lib/containerd";
/// containers/storage, CRI-O's and Podman's store.
const CRIO_STORAGE: &str = "/var/lib/containers/storage";

fn load_only(
    entry: &Entry,
    settings: &Settings,
    engine: &str,
    engine_unit: Option<&str>,
    storage: &str,
    runtime: &str,
) -> ContainerUnit {
    ContainerUnit {
        unit_name: paths::container_unit(&entry.name),
        name: entry.name.clone(),
        image: entry.image.clone(),
        description: format!(
            "Preloaded image {} for {runtime} ({})",
            entry.name, entry.image
        ),
        mounts: vec![settings.preload_dir.clone(), storage.into()],
        engine_unit: engine_unit.map(String::from),
        before: if entry.before_kubelet {
            vec![KUBELET_UNIT.into()]
        } else {
            vec![]
        },
        wants_network: false,
        start_pre: vec![],
        start: image_stages(entry, settings, &["--engine", engine]),
        stop: None,
        stop_post: vec![],
        kind: ServiceKind::Oneshot,
        environment: vec![],
        delegate: false,
        kill_mode: None,
    }
}

/// The unit of an entry whose image goes into containerd's `k8s.io` namespace.
pub fn containerd_unit(entry: &Entry, settings: &Settings) -> ContainerUnit {
    load_only(
        entry,
        settings,
        "containerd",
        Some(CONTAINERD_UNIT),
        CONTAINERD_STORAGE,
        "containerd",
    )
}

/// The unit of an entry whose image goes into CRI-O's store (with Podman).
pub fn crio_unit(entry: &Entry, settings: &Settings) -> ContainerUnit {
    load_only(entry, settings, "podman", None, CRIO_STORAGE, "CRI-O")
}
