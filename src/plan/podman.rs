//! Podman: the same load and install stages as Docker (with `--engine podman`), then
//! the container in the shape systemd and Quadlet settled on for `podman run` under
//! systemd: `podman run -d --sdnotify=conmon` with `Type=notify`, so the unit's main
//! process is conmon (the container's monitor) and it is "started" when the container
//! is; `--cgroups=split` with `Delegate=yes`, so conmon and the container live in the
//! unit's own cgroup; `KillMode=mixed`; the container ID in a cidfile that stopping and
//! cleaning up use; `--replace` instead of a `rm` before the start; `--rm`. As in
//! `podman generate systemd --new`, a stale cidfile is removed before the start: Podman
//! 4.3 refuses to run when the file exists, and after a container exited on its own
//! (removed by `--rm`), `podman rm --ignore --cidfile` leaves the file behind.
//!
//! Podman has no daemon: no engine unit to require or order after.

use super::{Command, ContainerUnit, ServiceKind, Settings, image_stages, run_stage};
use crate::config::Entry;
use crate::paths;

/// Podman's image store: the unit waits for it to be mounted.
const STORAGE: &str = "/var/lib/containers/storage";

/// Where the container ID is kept while the unit runs. Quadlet writes `%t/%N.cid`; our
/// one quoting function escapes every `%` (a config value can never inject a specifier),
/// so the path is written out: the same file for a system unit.
pub fn cidfile(name: &str) -> String {
    format!(
        "/run/{}.cid",
        paths::container_unit(name).trim_end_matches(".service")
    )
}

/// The options every `podman run` of a unit starts with, also in front of a RUN label's
/// (`atomic-preload run --engine podman` gets them from here too).
pub fn run_options(name: &str) -> Vec<String> {
    [
        "--name",
        name,
        &format!("--cidfile={}", cidfile(name)),
        "--replace",
        "--rm",
        "--cgroups=split",
        "--sdnotify=conmon",
        "-d",
        "--pull=never",
    ]
    .map(String::from)
    .into()
}

/// `podman rm` of the unit's container by its cidfile: stop, and cleanup after a failure.
fn remove(name: &str) -> Command {
    Command::new([
        paths::PODMAN.to_owned(),
        "rm".into(),
        "-v".into(),
        "-f".into(),
        "-i".into(),
        format!("--cidfile={}", cidfile(name)),
    ])
}

/// The unit of an entry Podman runs.
pub fn unit(entry: &Entry, settings: &Settings) -> ContainerUnit {
    let stages = image_stages(entry, settings, &["--engine", "podman"]);
    let mut unit = ContainerUnit {
        unit_name: paths::container_unit(&entry.name),
        name: entry.name.clone(),
        image: entry.image.clone(),
        description: format!(
            "Preloaded container {} ({}, Podman)",
            entry.name, entry.image
        ),
        mounts: vec![settings.preload_dir.clone(), STORAGE.into()],
        before: vec![],
        engine_unit: None,
        wants_network: false,
        start_pre: vec![],
        start: stages,
        stop: None,
        stop_post: vec![],
        kind: ServiceKind::Oneshot,
        environment: vec![],
        delegate: false,
        kill_mode: None,
    };
    let Some(run) = &entry.run else {
        // Load (and install) only: the stages are the oneshot's own commands.
        return unit;
    };

    // atomic's --spc flags mean the same to Podman (its --privileged also turns off
    // SELinux separation).
    let start = run_stage(
        entry,
        run,
        settings,
        &["--engine", "podman"],
        paths::PODMAN,
        run_options(&entry.name),
    );

    unit.start_pre = std::mem::take(&mut unit.start);
    unit.start_pre.push(Command::new([
        "/bin/rm".to_owned(),
        "-f".into(),
        cidfile(&entry.name),
    ]));
    unit.start = vec![start];
    unit.stop = Some(remove(&entry.name));
    unit.stop_post = vec![remove(&entry.name).ignoring_failure()];
    unit.kind = ServiceKind::Notify;
    // Lets Podman (auto-update, `podman generate`) know which unit runs the container.
    unit.environment = vec!["PODMAN_SYSTEMD_UNIT=%n"];
    unit.delegate = true;
    unit.kill_mode = Some("mixed");
    unit.wants_network = true;
    unit
}
