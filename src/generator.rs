//! The generator run: read config → parse → plan → render → write. The binary's `main`
//! only parses arguments and calls [`run`].

use crate::config::{self, Position, Problem};
use crate::engines::EngineKind;
use crate::log::{Level, Logger};
use crate::plan::{self, Plan, Settings};
use crate::{bounded, paths, render, trust, write};
use std::io;
use std::path::{Path, PathBuf};

/// Larger files are refused rather than read: a config is a few kilobytes.
pub const CONFIG_SIZE_LIMIT: u64 = 4 << 20;

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// systemd's normal output directory; `None` only with `dry_run`.
    pub output_dir: Option<PathBuf>,
    /// As seen on the host (written into units).
    pub config_file: Option<String>,
    pub preload_dir: Option<String>,
    /// Read files below this directory as if it were `/` (tests, image builds).
    pub root: Option<PathBuf>,
    pub dry_run: bool,
}

/// How the run went: config problems are not failures (failing units show them), only
/// units that could not be rendered or written are.
#[derive(Debug, Default)]
pub struct Outcome {
    pub units: usize,
    pub config_problems: usize,
    pub failures: usize,
}

/// `path` as the generator reads it: below `--root` resolved inside that root, else the
/// host's own.
fn in_root(root: Option<&Path>, path: &str) -> io::Result<PathBuf> {
    match root {
        Some(root) => paths::under(root, path),
        None => Ok(PathBuf::from(path)),
    }
}

/// The config's bytes. A missing file is an empty config (nothing preloaded, or `/var`
/// not mounted yet); anything else unreadable is a problem shown like a syntax error.
pub fn read_config(path: &Path) -> Result<Vec<u8>, Problem> {
    let problem = |message: String| Problem {
        position: Position::default(),
        message,
    };
    // FIFOs and devices are refused without blocking: opening one could block boot.
    match bounded::read(path, CONFIG_SIZE_LIMIT) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(problem(format!(
            "the config is larger than {CONFIG_SIZE_LIMIT} bytes"
        ))),
        Err(e) => Err(problem(format!("cannot read the config: {e}"))),
    }
}

/// Read and validate a config file: what `atomic-preload validate` and the generator share.
pub fn load_effective(path: &Path) -> config::Effective {
    match read_config(path) {
        Ok(bytes) => config::parse(&bytes).effective(),
        Err(problem) => config::Effective {
            items: vec![],
            problems: vec![problem],
        },
    }
}

/// [`load_effective`] of the config at `path` (as the booted image sees it) below
/// `root`, or of the host's own without one — if only root can write it (see
/// [`trust`]): otherwise nothing in it is used, and the one problem says why.
pub fn load_effective_under(root: Option<&Path>, path: &str) -> config::Effective {
    let problem = |message: String| config::Effective {
        items: vec![],
        problems: vec![Problem {
            position: Position::default(),
            message,
        }],
    };
    match in_root(root, path) {
        Ok(path) => match trust::check(&path, root) {
            Ok(()) => load_effective(&path),
            Err(untrusted) => problem(untrusted.to_string()),
        },
        Err(e) => problem(format!("cannot read the config: {e}")),
    }
}

/// Paths we write into units must be absolute and free of whitespace, control characters
/// and backslashes, which the path settings (`RequiresMountsFor=`) cannot carry.
fn check_host_path(what: &str, path: &str) -> Result<(), String> {
    let bad = |c: char| c.is_whitespace() || c.is_control() || c == '\\';
    if !path.starts_with('/') || path.chars().any(bad) {
        return Err(format!(
            "{what} must be an absolute path without spaces, backslashes or control characters: {path:?}"
        ));
    }
    Ok(())
}

/// What the generator decides for these options: the plan (config problems included, as
/// failing units) and the problems as `FILE:LINE:COL: message` lines, for logging.
/// `Err` when an option is unusable.
pub fn plan_for(options: &Options) -> Result<(Plan, Vec<String>), String> {
    let defaults = Settings::default();
    // A relative path on the command line (someone trying it out) means the current
    // directory, made absolute for the units; with --root, paths are the image's own.
    let absolute = |path: Option<&String>, default: String| match path {
        Some(p) if options.root.is_none() && Path::new(p).is_relative() => std::path::absolute(p)
            .map(|a| a.display().to_string())
            .unwrap_or_else(|_| p.clone()),
        Some(p) => p.clone(),
        None => default,
    };
    let settings = Settings {
        config_file: absolute(options.config_file.as_ref(), defaults.config_file),
        preload_dir: absolute(options.preload_dir.as_ref(), defaults.preload_dir),
        selinux: in_root(options.root.as_deref(), "/sys/fs/selinux").is_ok_and(|p| p.is_dir()),
        engine: EngineKind::detect(options.root.as_deref().unwrap_or(Path::new("/"))),
    };
    check_host_path("--config", &settings.config_file)?;
    check_host_path("--preload-dir", &settings.preload_dir)?;
    let effective = load_effective_under(options.root.as_deref(), &settings.config_file);
    let problems = effective
        .all_problems()
        .iter()
        .map(|p| p.display(&settings.config_file).to_string())
        .collect();
    Ok((plan::plan(&effective, &settings), problems))
}

pub fn run(options: &Options, log: &mut Logger, stdout: &mut dyn io::Write) -> Outcome {
    let (plan, problems) = match plan_for(options) {
        Ok(planned) => planned,
        Err(message) => {
            log.log(Level::Error, &message);
            return Outcome {
                failures: 1,
                ..Outcome::default()
            };
        }
    };
    let mut outcome = Outcome {
        config_problems: problems.len(),
        ..Outcome::default()
    };
    for problem in plan::capped(problems.into_iter(), &plan.source) {
        log.log(Level::Warning, &problem);
    }
    let dir = match (&options.output_dir, options.dry_run) {
        (_, true) => None,
        (Some(dir), false) => {
            // systemd creates it; a person running the generator by hand may not have.
            if let Err(err) = std::fs::create_dir_all(dir) {
                log.log(
                    Level::Error,
                    &format!("cannot create {}: {err}", dir.display()),
                );
                outcome.failures += 1;
                return outcome;
            }
            Some(dir)
        }
        (None, false) => {
            log.log(Level::Error, "no output directory given");
            outcome.failures += 1;
            return outcome;
        }
    };
    // Render and write one unit at a time: memory stays flat however long the config.
    let mut written = std::collections::HashSet::new();
    for unit in &plan.units {
        let file = match render::render_unit(&plan.source, unit) {
            Ok(file) => file,
            Err(err) => {
                log.log(Level::Error, &format!("cannot generate {err}"));
                outcome.failures += 1;
                continue;
            }
        };
        let result = match dir {
            Some(dir) => write::write_unit(dir, &file).map_err(|err| err.to_string()),
            None => write!(stdout, "# {}\n{}", file.name, file.text).map_err(|err| err.to_string()),
        };
        match result {
            Ok(()) => {
                written.insert(unit.name());
            }
            Err(err) => {
                log.log(Level::Error, &format!("cannot write {err}"));
                outcome.failures += 1;
            }
        }
    }
    outcome.units = written.len();
    let Some(dir) = dir else { return outcome };
    // Link only what exists: a dangling wants/ link would hide the failure.
    let links = plan
        .symlinks
        .iter()
        .filter(|link| !link.generated || written.contains(link.link.as_str()));
    if let Err(errors) = write::write_symlinks(dir, links) {
        for err in &errors {
            log.log(Level::Error, &format!("cannot write {err}"));
        }
        outcome.failures += errors.len();
    }
    outcome
}
