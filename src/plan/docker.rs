//! Docker images: `atomic-preload load` into the engine, the INSTALL label, then a
//! supervised `docker run` in the foreground.

use super::{Command, ContainerUnit, Settings};
use crate::config::Entry;
use crate::paths;

/// The engine's unit: required, and started before ours.
const ENGINE_UNIT: &str = "docker.service";

fn description(entry: &Entry) -> String {
    format!("Preloaded container {} ({})", entry.name, entry.image)
}

/// atomic's super-privileged container flags (`atomic run --spc`), minus `-i`: under
/// systemd there is no terminal to keep open.
fn spc_flags(name: &str, image: &str, selinux: bool) -> Vec<String> {
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
    let helper = paths::helper();
    let mut load = vec![
        helper.clone(),
        "load".into(),
        "--preload-dir".into(),
        settings.preload_dir.clone(),
        "--image".into(),
        entry.image.clone(),
    ];
    for archive in &entry.archives {
        load.extend(["--archive".into(), archive.clone()]);
    }
    let mut stages = vec![Command::new(load)];

    if let Some(install) = &entry.install {
        let mut argv = vec![
            helper,
            "install".into(),
            "--name".into(),
            entry.name.clone(),
            "--image".into(),
            entry.image.clone(),
        ];
        for set in &install.setvalues {
            argv.extend(["--set".into(), set.clone()]);
        }
        if !install.extra_args.is_empty() {
            argv.push("--".into());
            argv.extend(install.extra_args.iter().cloned());
        }
        stages.push(Command::new(argv));
    }

    let unit = |start_pre, start, stop, runs| ContainerUnit {
        unit_name: paths::container_unit(&entry.name),
        name: entry.name.clone(),
        image: entry.image.clone(),
        description: description(entry),
        mounts: vec![settings.preload_dir.clone()],
        engine_unit: Some(ENGINE_UNIT.into()),
        wants_network: runs,
        start_pre,
        start,
        stop,
        runs,
    };
    let Some(run) = &entry.run else {
        // Load (and install) only: the stages are the oneshot's own commands.
        return unit(vec![], stages, None, false);
    };

    // A container left over from a crash or an unclean shutdown would make `--name` clash.
    stages.push(Command::new([paths::DOCKER, "rm", "--force", &entry.name]).ignoring_failure());
    let mut argv: Vec<String> = [
        paths::DOCKER,
        "run",
        "--rm",
        "--pull=never",
        "--name",
        &entry.name,
    ]
    .map(String::from)
    .into();
    if run.spc {
        argv.extend(spc_flags(&entry.name, &entry.image, settings.selinux));
    }
    argv.push(entry.image.clone());
    argv.extend(run.extra_args.iter().cloned());
    // The helper uses the image's RUN label when it has one (atomic run), else exactly
    // this command; either way docker replaces it, so systemd supervises the client.
    let mut start = vec![
        paths::helper(),
        "run".into(),
        "--name".into(),
        entry.name.clone(),
        "--image".into(),
        entry.image.clone(),
    ];
    if !run.extra_args.is_empty() {
        start.extend(["--extra".into(), run.extra_args.len().to_string()]);
    }
    start.push("--".into());
    start.extend(argv);
    let stop = Command::new([paths::DOCKER, "stop", &entry.name]);
    unit(stages, vec![Command::new(start)], Some(stop), true)
}
