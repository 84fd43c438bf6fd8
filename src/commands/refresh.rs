//! Late config: apply a config.yaml that changed after the generator ran.
//!
//! The generator runs before `/var` may be mounted and before cloud-init's `write_files` or
//! `bootcmd` rewrite the config. `atomic-preload refresh` (run by
//! `atomic-preload-refresh.service` after local file systems and cloud-init, and again by
//! `atomic-preload-refresh.path` whenever the config changes) renders the units the current
//! config asks for and compares them with what the generator wrote. If they differ, it
//! reloads systemd (which re-runs the generator), then starts the new units, restarts the
//! changed ones that are running and stops the removed ones — all without waiting, since
//! those units may be ordered after this one.

use crate::cli::RefreshArgs;
use crate::generator::{self, Options};
use crate::paths;
use crate::render;
use crate::runtime::RuntimeError;
use std::collections::BTreeMap;
use std::process::Command;

/// What differs between the units the config asks for and those systemd has.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

pub fn diff(wanted: &BTreeMap<String, String>, current: &BTreeMap<String, String>) -> Changes {
    let mut changes = Changes::default();
    for (name, text) in wanted {
        match current.get(name) {
            None => changes.added.push(name.clone()),
            Some(old) if old != text => changes.changed.push(name.clone()),
            Some(_) => {}
        }
    }
    changes.removed = current
        .keys()
        .filter(|n| !wanted.contains_key(*n))
        .cloned()
        .collect();
    changes
}

fn wanted_units(args: &RefreshArgs) -> Result<BTreeMap<String, String>, RuntimeError> {
    let options = Options {
        config_file: Some(args.config.clone()),
        preload_dir: Some(args.preload_dir.clone()),
        ..Options::default()
    };
    let (plan, _) = generator::plan_for(&options).map_err(RuntimeError::Usage)?;
    let mut units = BTreeMap::new();
    for unit in &plan.units {
        let file = render::render_unit(&plan.source, unit)
            .map_err(|e| RuntimeError::Usage(e.to_string()))?;
        units.insert(file.name, file.text);
    }
    Ok(units)
}

fn current_units(args: &RefreshArgs) -> Result<BTreeMap<String, String>, RuntimeError> {
    let dir = &args.generator_dir;
    let mut units = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(units),
        Err(source) => {
            return Err(RuntimeError::Io {
                path: dir.clone(),
                source,
            });
        }
    };
    for entry in entries.filter_map(Result::ok) {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if paths::is_generated_unit(&name) {
            let path = entry.path();
            let text = std::fs::read_to_string(&path)
                .map_err(|source| RuntimeError::Io { path, source })?;
            units.insert(name, text);
        }
    }
    Ok(units)
}

fn systemctl(args: &RefreshArgs, verb: &[&str], units: &[String]) -> Result<(), RuntimeError> {
    if units.is_empty() && verb != ["daemon-reload"] {
        return Ok(());
    }
    println!("systemctl {} {}", verb.join(" "), units.join(" "));
    let status = Command::new(&args.systemctl)
        .args(verb)
        .args(units)
        .status()
        .map_err(|source| RuntimeError::Spawn {
            program: args.systemctl.display().to_string(),
            source,
        })?;
    if !status.success() {
        return Err(RuntimeError::Systemctl(
            format!("systemctl {}", verb.join(" ")),
            status.to_string(),
        ));
    }
    Ok(())
}

pub fn run(args: &RefreshArgs) -> Result<(), RuntimeError> {
    let changes = diff(&wanted_units(args)?, &current_units(args)?);
    if changes.is_empty() {
        println!(
            "the units in {} match {}",
            args.generator_dir.display(),
            args.config
        );
        return Ok(());
    }
    println!(
        "{} changed since the generator ran: added {:?}, changed {:?}, removed {:?}",
        args.config, changes.added, changes.changed, changes.removed
    );
    // Stop removed units while their definitions are still loaded.
    systemctl(args, &["stop", "--no-block"], &changes.removed)?;
    systemctl(args, &["daemon-reload"], &[])?;
    systemctl(args, &["try-restart", "--no-block"], &changes.changed)?;
    systemctl(args, &["start", "--no-block"], &changes.added)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn diff_sorts_units_into_added_changed_removed() {
        let wanted = units(&[
            ("preload-a.service", "a2"),
            ("preload-b.service", "b"),
            ("preload-new.service", "n"),
        ]);
        let current = units(&[
            ("preload-a.service", "a1"),
            ("preload-b.service", "b"),
            ("preload-old.service", "o"),
        ]);
        assert_eq!(
            diff(&wanted, &current),
            Changes {
                added: vec!["preload-new.service".into()],
                changed: vec!["preload-a.service".into()],
                removed: vec!["preload-old.service".into()],
            }
        );
        assert!(diff(&current, &current).is_empty());
    }

    #[test]
    fn only_generated_unit_files_count() {
        assert!(paths::is_generated_unit("preload-web.service"));
        assert!(paths::is_generated_unit("atomic-preload-config.service"));
        assert!(!paths::is_generated_unit("atomic-preload.target"));
        assert!(!paths::is_generated_unit("other-generator.service"));
        assert!(!paths::is_generated_unit("preload-web.service.d"));
    }
}
