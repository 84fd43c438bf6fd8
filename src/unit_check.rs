//! An independent reader of what we render, used as the oracle by the property tests and
//! the fuzzer: a rendered unit must split into exactly the lines our templates write, and
//! every command line must read back (with systemd's rules, see `escape`) as the argv the
//! plan meant. Not used by the generator itself.

use crate::escape::parse_command_line;
use crate::plan::{Command, Unit};

/// Every key our templates write; any other key means a value escaped its line.
const KEYS: &[&str] = &[
    "Description",
    "Documentation",
    "SourcePath",
    "RequiresMountsFor",
    "Requires",
    "After",
    "Wants",
    "StartLimitIntervalSec",
    "StartLimitBurst",
    "Type",
    "RemainAfterExit",
    "SyslogIdentifier",
    "StateDirectory",
    "TimeoutStartSec",
    "Restart",
    "RestartSec",
    "RestartPreventExitStatus",
    "NotifyAccess",
    "ExecStartPre",
    "ExecStart",
    "ExecStop",
];

/// `(section, key, value)` for every assignment, split as systemd's parser does; `Err`
/// for a line systemd would read differently than we meant (a continuation, a stray line).
pub fn read_unit(text: &str) -> Result<Vec<(String, String, String)>, String> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        let n = n + 1;
        if line.contains('\r') || line.contains('\0') {
            return Err(format!("line {n}: CR or NUL"));
        }
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if line.ends_with('\\') {
            return Err(format!(
                "line {n} ends with a backslash: systemd joins the next line"
            ));
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {n} is not key=value: {line:?}"));
        };
        if !KEYS.contains(&key) {
            return Err(format!(
                "line {n}: key {key:?} is not one our templates write"
            ));
        }
        out.push((section.clone(), key.to_owned(), value.to_owned()));
    }
    Ok(out)
}

fn expect_commands(
    lines: &[(String, String, String)],
    key: &str,
    planned: &[&Command],
) -> Result<(), String> {
    let got: Vec<&String> = lines
        .iter()
        .filter(|(_, k, _)| k == key)
        .map(|(_, _, v)| v)
        .collect();
    if got.len() != planned.len() {
        return Err(format!(
            "{key}: {} lines, planned {}",
            got.len(),
            planned.len()
        ));
    }
    for (value, command) in got.iter().zip(planned) {
        if value.starts_with('-') != command.ignore_failure {
            return Err(format!("{key}={value}: wrong '-' prefix"));
        }
        match parse_command_line(value) {
            Some(argv) if argv == command.argv => {}
            other => {
                return Err(format!(
                    "{key}={value}\n reads back as {other:?}\n planned {:?}",
                    command.argv
                ));
            }
        }
    }
    Ok(())
}

/// Check one rendered unit against its plan.
pub fn check(unit: &Unit, text: &str) -> Result<(), String> {
    let lines = read_unit(text)?;
    match unit {
        Unit::Container(u) => {
            expect_commands(
                &lines,
                "ExecStartPre",
                &u.start_pre.iter().collect::<Vec<_>>(),
            )?;
            expect_commands(&lines, "ExecStart", &u.start.iter().collect::<Vec<_>>())?;
            expect_commands(&lines, "ExecStop", &u.stop.iter().collect::<Vec<_>>())
        }
        Unit::Failing(u) => expect_commands(&lines, "ExecStart", &[&u.start]),
    }
}

/// The generator's whole path on config bytes — parse, plan, render — with every unit
/// checked. What the fuzzer runs; returns how many units were rendered.
pub fn check_config(bytes: &[u8]) -> Result<usize, String> {
    let effective = crate::config::parse(bytes).effective();
    let plan = crate::plan::plan(&effective, &crate::plan::Settings::default());
    for unit in &plan.units {
        let file = crate::render::render_unit(&plan.source, unit).map_err(|e| e.to_string())?;
        check(unit, &file.text).map_err(|e| format!("{}: {e}\n{}", file.name, file.text))?;
    }
    Ok(plan.units.len())
}
