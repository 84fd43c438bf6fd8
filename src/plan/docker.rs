//! Docker images: `atomic-preload load` into the engine, the INSTALL label, then a
//! supervised `docker run` in the foreground.

use super::{Command, ContainerUnit, ServiceKind, Settings, image_stages, run_stage};
use crate::config::Entry;
use crate::paths;

/// The engine's unit: required, and started before ours.
const ENGINE_UNIT: &str = "docker.service";

fn description(entry: &Entry) -> String {
    format!("Preloaded container {} ({})", entry.name, entry.image)
}

/// The options every `docker run` of a unit starts with, also in front of a RUN label's
/// (`atomic-preload run` gets them from here too).
pub fn run_options(name: &str) -> Vec<String> {
    ["--rm", "--pull=never", "--name", name]
        .map(String::from)
        .into()
}

/// atomic's super-privileged container flags (`atomic run --spc`), minus `-i`: under
/// systemd there is no terminal to keep open. Podman takes the same ones.
pub fn spc_flags(name: &str, image: &str, selinux: bool) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--privileged",
        "-v",
        "/:/host",
        "-v",
        "/run:/run",
        "-v",
        "/etc/localtime:/etc/localtime",
    ]
    .map(String::from)
    .into();
    if selinux {
        flags.extend(["-v", "/sys/fs/selinux:/sys/fs/selinux:ro"].map(String::from));
    }
    flags.extend(["--net=host", "--ipc=host", "--pid=host", "-e", "HOST=/host"].map(String::from));
    flags.extend([
        "-e".into(),
        format!("NAME={name}"),
        "-e".into(),
        format!("IMAGE={image}"),
        "-e".into(),
        "SYSTEMD_IGNORE_CHROOT=1".into(),
    ]);
    flags
}

/// The unit of an entry Docker runs.
pub fn unit(entry: &Entry, settings: &Settings) -> ContainerUnit {
    let mut stages = image_stages(entry, settings, &[]);

    let unit = |start_pre, start, stop, runs| ContainerUnit {
        unit_name: paths::container_unit(&entry.name),
        name: entry.name.clone(),
        image: entry.image.clone(),
        description: description(entry),
        mounts: vec![settings.preload_dir.clone()],
        before: vec![],
        engine_unit: Some(ENGINE_UNIT.into()),
        wants_network: runs,
        start_pre,
        start,
        stop,
        stop_post: vec![],
        kind: if runs {
            ServiceKind::Exec
        } else {
            ServiceKind::Oneshot
        },
        environment: vec![],
        delegate: false,
        kill_mode: None,
    };
    let Some(run) = &entry.run else {
        // Load (and install) only: the stages are the oneshot's own commands.
        return unit(vec![], stages, None, false);
    };

    // A container left over from a crash or an unclean shutdown would make `--name` clash.
    stages.push(Command::new([paths::DOCKER, "rm", "--force", &entry.name]).ignoring_failure());
    let start = run_stage(
        entry,
        run,
        settings,
        &[],
        paths::DOCKER,
        run_options(&entry.name),
    );
    let stop = Command::new([paths::DOCKER, "stop", &entry.name]);
    unit(stages, vec![start], Some(stop), true)
}
