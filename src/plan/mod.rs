//! From the effective config to units as data: what each unit does, before any text.
//!
//! Every stage is a plain argv here; `render` quotes it. Keeping the decisions (which
//! stages, which flags, which dependencies) apart from the unit syntax is what lets the
//! golden tests read as a spec.
//!
//! One module per engine says *how* an entry becomes a unit ([`docker`], [`system`]);
//! this one says which engine an entry uses and what every unit shares.

pub mod docker;
pub mod node;
pub mod podman;
pub mod system;

use crate::config::{Effective, Entry, Named, Problem, Run};
use crate::engines::EngineKind;
use crate::paths;

/// The generator's view of the machine: where the config and the archives are, as seen
/// by the host (these paths are written into units), and host facts that change flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_file: String,
    pub preload_dir: String,
    /// Whether `/sys/fs/selinux` exists: atomic's super-privileged mode binds it.
    pub selinux: bool,
    /// The engine of entries without `engine:` (detected on the host at generation).
    pub engine: EngineKind,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            config_file: paths::CONFIG_FILE.into(),
            preload_dir: paths::PRELOAD_DIR.into(),
            selinux: false,
            engine: EngineKind::Docker,
        }
    }
}

/// One command line of a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// `-` prefix: systemd ignores the exit status.
    pub ignore_failure: bool,
    pub argv: Vec<String>,
}

impl Command {
    pub(crate) fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Command {
            ignore_failure: false,
            argv: argv.into_iter().map(Into::into).collect(),
        }
    }
    pub(crate) fn ignoring_failure(mut self) -> Self {
        self.ignore_failure = true;
        self
    }
}

/// How systemd knows the unit has started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    /// The stages are the unit's work: `Type=oneshot`, `RemainAfterExit=yes`.
    Oneshot,
    /// The engine's client runs the container in the foreground: `Type=exec`.
    Exec,
    /// The container's monitor says it is up (`sd_notify`): `Type=notify`.
    Notify,
}

/// A container's service: load → install → run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUnit {
    pub unit_name: String,
    pub name: String,
    pub image: String,
    pub description: String,
    /// Mounted before the unit starts (`RequiresMountsFor=`): `/var` may be separate.
    pub mounts: Vec<String>,
    /// The engine's own unit, required and started first (none for system containers).
    pub engine_unit: Option<String>,
    /// Units that start only after this one is done (`Before=`): kubelet, on a node.
    pub before: Vec<String>,
    /// Wait for the network (a container the unit itself runs, on an engine's network).
    pub wants_network: bool,
    /// `ExecStartPre=` lines (for a running container) ...
    pub start_pre: Vec<Command>,
    /// ... and `ExecStart=` lines: the run command, or for a oneshot the load/install stages.
    pub start: Vec<Command>,
    pub stop: Option<Command>,
    /// `ExecStopPost=` lines: cleanup after the container stopped or failed to start.
    pub stop_post: Vec<Command>,
    pub kind: ServiceKind,
    /// `Environment=` assignments, fixed by the engine's module (never from the config).
    pub environment: Vec<&'static str>,
    /// `Delegate=yes`: the container's monitor manages cgroups below the unit's.
    pub delegate: bool,
    /// `KillMode=`, when not systemd's default.
    pub kill_mode: Option<&'static str>,
}

/// `--NAME=VALUE`, the one form the generator writes an option with a value in: a value
/// from the config that starts with `-` (an archive named `-lead.tar`) stays the option's
/// value, where `--archive -lead.tar` would be read as another option.
pub(crate) fn option(name: &str, value: &str) -> String {
    format!("--{name}={value}")
}

/// The load stage, then the install stage when the entry has `install:`, of an image an
/// engine runs; `engine` is the stages' `--engine` option (none: Docker, the default).
pub(crate) fn image_stages(entry: &Entry, settings: &Settings, engine: &[&str]) -> Vec<Command> {
    let helper = paths::helper();
    let mut load = vec![helper.clone(), "load".into()];
    load.extend(engine.iter().map(|s| s.to_string()));
    load.extend([
        option("preload-dir", &settings.preload_dir),
        option("image", &entry.image),
    ]);
    for archive in &entry.archives {
        load.push(option("archive", archive));
    }
    let mut stages = vec![Command::new(load)];

    if let Some(install) = &entry.install {
        let mut argv = vec![helper, "install".into()];
        argv.extend(engine.iter().map(|s| s.to_string()));
        argv.extend([option("name", &entry.name), option("image", &entry.image)]);
        for set in &install.setvalues {
            argv.push(option("set", set));
        }
        if !install.extra_args.is_empty() {
            argv.push("--".into());
            argv.extend(install.extra_args.iter().cloned());
        }
        stages.push(Command::new(argv));
    }
    stages
}

/// The run stage of an image an engine runs: `atomic-preload run` with the engine's
/// `client run` command after `--` (its `options`, atomic's spc flags when asked, the
/// image, the config's arguments). The helper uses the image's RUN label when it has one
/// (atomic run), else exactly that command; either way the client replaces it, so
/// systemd supervises what the unit shows.
pub(crate) fn run_stage(
    entry: &Entry,
    run: &Run,
    settings: &Settings,
    engine: &[&str],
    client: &str,
    options: Vec<String>,
) -> Command {
    let mut argv: Vec<String> = vec![client.into(), "run".into()];
    argv.extend(options);
    if run.spc {
        argv.extend(docker::spc_flags(
            &entry.name,
            &entry.image,
            settings.selinux,
        ));
    }
    argv.push(entry.image.clone());
    argv.extend(run.extra_args.iter().cloned());
    let mut start = vec![paths::helper(), "run".into()];
    start.extend(engine.iter().map(|s| s.to_string()));
    start.extend([option("name", &entry.name), option("image", &entry.image)]);
    if !run.extra_args.is_empty() {
        start.push(option("extra", &run.extra_args.len().to_string()));
    }
    start.push("--".into());
    start.extend(argv);
    Command::new(start)
}

/// A unit whose only job is to fail and say why, so `systemctl --failed` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailingUnit {
    pub unit_name: String,
    pub description: String,
    pub syslog_identifier: String,
    pub start: Command,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    Container(ContainerUnit),
    Failing(FailingUnit),
}

impl Unit {
    pub fn name(&self) -> &str {
        match self {
            Unit::Container(u) => &u.unit_name,
            Unit::Failing(u) => &u.unit_name,
        }
    }
}

/// `dir/link` → `target`: how units get enabled from the generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symlink {
    pub dir: String,
    pub link: String,
    pub target: String,
    /// The link enables a unit this plan generates (`link` is its name), rather than
    /// one of our static units.
    pub generated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub source: String,
    pub units: Vec<Unit>,
    pub symlinks: Vec<Symlink>,
}

/// At most this many problems are written into a unit or logged at boot; a config with
/// thousands of broken entries must not make a unit line longer than systemd reads
/// (1 MiB) nor flood the kernel log. `atomic-preload validate` lists them all.
pub const REPORTED_PROBLEMS: usize = 20;

/// The first [`REPORTED_PROBLEMS`] lines, then how many more there are.
pub fn capped(lines: impl ExactSizeIterator<Item = String>, source: &str) -> Vec<String> {
    let total = lines.len();
    let mut out: Vec<String> = lines.take(REPORTED_PROBLEMS).collect();
    if total > REPORTED_PROBLEMS {
        out.push(format!(
            "... and {} more problems: run atomic-preload validate {source}",
            total - REPORTED_PROBLEMS
        ));
    }
    out
}

fn report_command(source: &str, problems: &[Problem]) -> Command {
    let mut argv = vec![paths::helper(), "config-error".into(), "--".into()];
    argv.extend(capped(
        problems.iter().map(|p| p.display(source).to_string()),
        source,
    ));
    Command::new(argv)
}

fn invalid_entry_unit(name: &str, problems: &[Problem], source: &str) -> FailingUnit {
    FailingUnit {
        unit_name: paths::container_unit(name),
        description: format!("Preloaded container {name}: invalid entry in {source}"),
        syslog_identifier: format!("preload-{name}"),
        start: report_command(source, problems),
    }
}

/// The engine a (non-system) entry's image goes to: its own `engine:`, else the host's.
pub fn engine_of(entry: &Entry, settings: &Settings) -> EngineKind {
    entry.engine.unwrap_or(settings.engine)
}

/// Why an entry without `engine:` cannot be what it asks on this host, whose engine
/// (containerd, CRI-O: a Kubernetes node) runs no containers: `run:` or `install:`.
/// (With `engine:` given, the config says so itself, with the line.)
fn refused_by_host_engine(entry: &Entry, settings: &Settings) -> Option<String> {
    let engine = engine_of(entry, settings);
    let key = match (&entry.run, &entry.install) {
        _ if engine.runs_containers() || entry.engine.is_some() => return None,
        (Some(_), _) => "run",
        (None, Some(_)) => "install",
        (None, None) => return None,
    };
    Some(format!(
        "entry {:?}: \"{key}\" does not apply on this host, whose engine is {} (a Kubernetes node: kubelet runs the pods; run it as a static pod with imagePullPolicy: Never, see the README's Kubernetes nodes), or give the entry engine: docker or podman",
        entry.name,
        engine.as_str()
    ))
}

/// Decide every unit and symlink. Pure: the same config and settings give the same plan.
pub fn plan(config: &Effective, settings: &Settings) -> Plan {
    let source = settings.config_file.clone();
    let mut units = Vec::new();
    for item in &config.items {
        units.push(match item {
            Named::Valid(entry) if entry.is_system() => {
                Unit::Container(system::unit(entry, settings))
            }
            Named::Valid(entry) => match refused_by_host_engine(entry, settings) {
                Some(message) => {
                    let problem = Problem {
                        position: Default::default(),
                        message,
                    };
                    Unit::Failing(invalid_entry_unit(&entry.name, &[problem], &source))
                }
                None => Unit::Container(match engine_of(entry, settings) {
                    EngineKind::Docker => docker::unit(entry, settings),
                    EngineKind::Podman => podman::unit(entry, settings),
                    EngineKind::Containerd => node::containerd_unit(entry, settings),
                    EngineKind::CriO => node::crio_unit(entry, settings),
                }),
            },
            Named::Invalid { name, problems } => {
                Unit::Failing(invalid_entry_unit(name, problems, &source))
            }
        });
    }
    if !config.problems.is_empty() {
        units.push(Unit::Failing(FailingUnit {
            unit_name: paths::CONFIG_ERROR_UNIT.into(),
            description: format!("atomic-preload: problems in {source}"),
            syslog_identifier: "atomic-preload-config".into(),
            start: report_command(&source, &config.problems),
        }));
    }

    let static_unit = |dir: &str, unit: &str| Symlink {
        dir: dir.into(),
        link: unit.into(),
        target: format!("{}/{unit}", paths::SYSTEM_UNIT_DIR),
        generated: false,
    };
    let enable = [
        // Started at boot...
        static_unit("multi-user.target.wants", paths::TARGET),
        // ...and again whenever Docker starts: starting the (possibly active) target
        // starts every wanted unit that is not running, so containers whose start failed
        // while the engine was down recover when it comes back, without a reboot.
        static_unit("docker.service.wants", paths::TARGET),
        // Late config, once per boot and on every change (not on every Docker start).
        static_unit("multi-user.target.wants", paths::REFRESH_SERVICE),
        static_unit("multi-user.target.wants", paths::REFRESH_PATH),
    ];
    // The same recovery when another engine's unit (containerd) starts again.
    let mut other_engines: Vec<&str> = units
        .iter()
        .filter_map(|u| match u {
            Unit::Container(c) => c.engine_unit.as_deref(),
            Unit::Failing(_) => None,
        })
        .filter(|e| *e != "docker.service")
        .collect();
    other_engines.sort_unstable();
    other_engines.dedup();
    let engine_wants: Vec<Symlink> = other_engines
        .iter()
        .map(|e| static_unit(&format!("{e}.wants"), paths::TARGET))
        .collect();
    let target_wants = format!("{}.wants", paths::TARGET);
    let symlinks = enable
        .into_iter()
        .chain(engine_wants)
        .chain(units.iter().map(|unit| Symlink {
            dir: target_wants.clone(),
            link: unit.name().into(),
            target: format!("../{}", unit.name()),
            generated: true,
        }))
        .collect();
    Plan {
        source,
        units,
        symlinks,
    }
}
