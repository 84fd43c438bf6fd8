//! System containers (`install: {system: true}`): no engine. The preload unit checks the
//! image out of an archive in `ostree/` and installs `NAME.service` (a runc container unit
//! rendered from the image's templates), then starts it when the entry has `run:`.
//!
//! The two units are linked only by that start: stopping `NAME.service` does not make the
//! preload unit start it again (it stays `active (exited)`), and stopping the preload unit
//! leaves the container running. There is no ordering between them either: the run stage
//! waits for `NAME.service`'s start job, which an `After=` would deadlock.

use super::{Command, ContainerUnit, ServiceKind, Settings, option};
use crate::config::Entry;
use crate::paths;

pub fn unit(entry: &Entry, settings: &Settings) -> ContainerUnit {
    let helper = paths::helper();
    let mut install = vec![
        helper.clone(),
        "install-system".into(),
        option("preload-dir", &settings.preload_dir),
        option("name", &entry.name),
        option("image", &entry.image),
    ];
    for archive in &entry.archives {
        install.push(option("archive", archive));
    }
    for set in entry.install.iter().flat_map(|i| &i.setvalues) {
        install.push(option("set", set));
    }
    let mut start = vec![Command::new(install)];
    let how = if entry.run.is_some() {
        start.push(Command::new([
            helper,
            "start-system".into(),
            option("name", &entry.name),
        ]));
        "runs as"
    } else {
        "installed as"
    };
    ContainerUnit {
        unit_name: paths::container_unit(&entry.name),
        name: entry.name.clone(),
        image: entry.image.clone(),
        description: format!(
            "Preloaded system container {} ({}), {how} {}.service",
            entry.name, entry.image, entry.name
        ),
        mounts: vec![settings.preload_dir.clone(), paths::CHECKOUT_DIR.into()],
        before: vec![],
        engine_unit: None,
        wants_network: false,
        start_pre: vec![],
        start,
        stop: None,
        stop_post: vec![],
        kind: ServiceKind::Oneshot,
        environment: vec![],
        delegate: false,
        kill_mode: None,
    }
}
