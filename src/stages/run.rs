//! The run stage of an engine's image: atomic's `run`, under systemd's supervision.
//!
//! The unit carries the default command (`docker run --rm --pull=never --name NAME
//! [spc flags] IMAGE extra_args…`, or Podman's, see `plan::podman`). When the image has
//! a `RUN` label, that label is used
//! instead, as `atomic run` did: split like a shell line, `run.extra_args` appended, the
//! words IMAGE, NAME, IMAGE=IMAGE, NAME=NAME replaced and `$VAR` expanded from NAME, IMAGE
//! and the environment (undefined variables vanish). It must be a `docker run` (for
//! Podman also `podman run`); the options that break supervision are dropped and said so
//! in the journal (`-d`, `-t`, `-i`, `--rm`, `--name`, `--restart`, `--pull`,
//! `--detach-keys`, and any other option the unit's own run options set: those stand
//! instead); everything else is kept. Then the helper replaces itself with the engine's
//! client, so systemd supervises it as it would the default command.

use crate::cli::RunArgs;
use crate::engines::ImageEngine;
use crate::runtime::RuntimeError;
use crate::stages::install::expand;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Options dropped from a RUN label, with the reason the journal shows.
fn dropped(option: &str) -> Option<&'static str> {
    let name = option.split('=').next().unwrap_or(option);
    match name {
        "-d" | "--detach" => Some("systemd supervises the container in the foreground"),
        "-t" | "--tty" | "-i" | "--interactive" => Some("there is no terminal under systemd"),
        "--rm" => Some("the unit already runs it with --rm"),
        "--name" => Some("the config's name is the container's name"),
        "--restart" => Some("systemd restarts the unit: Restart=on-failure"),
        "--pull" => Some("preloaded images are never pulled (--pull=never)"),
        "--detach-keys" => Some("there is no terminal under systemd"),
        _ => None,
    }
}

/// Options whose value is the next word when not written `--opt=value`.
fn takes_value(option: &str) -> bool {
    matches!(option, "--name" | "--restart" | "--pull" | "--detach-keys")
}

/// The docker run command for a RUN label (see the module comment).
pub fn label_command(
    label: &str,
    name: &str,
    image: &str,
    extra_args: &[String],
    engine: &dyn ImageEngine,
) -> Result<(Vec<String>, Vec<String>), RuntimeError> {
    let label_err =
        |message: String| RuntimeError::Label(format!("RUN label of {image}: {message}"));
    let words = shell_words::split(label)
        .map_err(|e| label_err(format!("cannot be split into words: {e}")))?;
    let mut vars = crate::stages::install::login_variables();
    vars.extend([
        ("NAME".to_owned(), name.to_owned()),
        ("IMAGE".to_owned(), image.to_owned()),
    ]);
    let mut argv = Vec::new();
    for word in words.iter().chain(extra_args) {
        let replaced = match word.as_str() {
            "IMAGE" => image.to_owned(),
            "NAME" => name.to_owned(),
            "IMAGE=IMAGE" => format!("IMAGE={image}"),
            "NAME=NAME" => format!("NAME={name}"),
            _ => expand(word, &vars),
        };
        // atomic collapsed the words an undefined variable emptied.
        if !replaced.is_empty() || word.is_empty() {
            argv.push(replaced);
        }
    }
    let is_client = argv.first().is_some_and(|p| engine.is_client_word(p));
    if !is_client || argv.get(1).map(String::as_str) != Some("run") {
        let engines = engine.kind().run_commands();
        return Err(label_err(format!(
            "not {engines} command, so it cannot run under systemd: {label:?}"
        )));
    }
    let own = engine.run_options(name);
    // An option the unit's own run options set (by name, `--opt=value` or `--opt value`).
    let owned = |option: &str| {
        let key = option.split('=').next().unwrap_or(option);
        key.starts_with('-') && own.iter().any(|o| o.split('=').next() == Some(key))
    };
    let Some(at) = argv.iter().skip(2).position(|w| w == image).map(|i| i + 2) else {
        return Err(label_err(format!(
            "it does not name the image (IMAGE): {label:?}"
        )));
    };
    let mut kept = Vec::new();
    let mut notes = Vec::new();
    let mut options = argv[2..at].iter();
    while let Some(option) = options.next() {
        // `-it`, `-dit`: single-letter groups made only of d, i, t are all dropped.
        let group = option.len() > 2
            && option.starts_with('-')
            && !option.starts_with("--")
            && option[1..].chars().all(|c| matches!(c, 'd' | 'i' | 't'));
        let reason = if group {
            Some("systemd supervises the container in the foreground, with no terminal")
        } else if let Some(reason) = dropped(option) {
            Some(reason)
        } else if owned(option) {
            Some("the unit sets it itself")
        } else {
            None
        };
        match reason {
            Some(reason) => {
                let mut shown = option.clone();
                if (takes_value(option) || (owned(option) && option.starts_with("--")))
                    && !option.contains('=')
                    && let Some(value) = options.next()
                {
                    shown = format!("{option} {value}");
                }
                notes.push(format!("RUN label: dropped {shown} ({reason})"));
            }
            None => {
                if option.starts_with('-')
                    && !option.starts_with("--")
                    && option.len() > 2
                    && option[1..].chars().any(|c| matches!(c, 'd' | 't' | 'i'))
                    && option[1..].chars().all(|c| c.is_ascii_alphabetic())
                {
                    return Err(label_err(format!(
                        "option {option} mixes -d/-i/-t with other flags; it cannot be kept safely under systemd"
                    )));
                }
                kept.push(option.clone());
            }
        }
    }
    let mut command = vec![engine.client().display().to_string(), "run".into()];
    command.extend(own);
    command.extend(kept);
    command.extend(argv[at..].iter().cloned());
    Ok((command, notes))
}

/// `atomic-preload run`: exec the label's command, or the unit's default one.
pub fn run(args: &RunArgs) -> Result<(), RuntimeError> {
    let Some((program, _)) = args.default_command.split_first() else {
        return Err(RuntimeError::Usage("no default command after --".into()));
    };
    let engine: Box<dyn ImageEngine> = match args.engine.as_str() {
        "podman" => Box::new(crate::engines::podman::Podman::new(Path::new(program))),
        _ => Box::new(crate::engines::docker::Docker::new(Path::new(program))),
    };
    let engine = engine.as_ref();
    let label = engine.label(&args.image, "RUN")?;
    let command = if label.trim().is_empty() {
        args.default_command.clone()
    } else {
        let extra_count = args.extra.min(args.default_command.len());
        let extra = &args.default_command[args.default_command.len() - extra_count..];
        let (command, notes) = label_command(&label, &args.name, &args.image, extra, engine)?;
        for note in notes {
            println!("{note}");
        }
        println!("RUN label: {}", shell_words::join(&command));
        command
    };
    let err = Command::new(&command[0]).args(&command[1..]).exec();
    Err(RuntimeError::Spawn {
        program: command[0].clone(),
        source: err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(label: &str, extra: &[&str]) -> Result<(Vec<String>, Vec<String>), RuntimeError> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        label_command(
            label,
            "rsyslog",
            "docker.io/example/rsyslog",
            &extra,
            &crate::engines::docker::Docker::new(Path::new("/usr/bin/docker")),
        )
    }

    #[test]
    fn a_typical_run_label_runs_in_the_foreground_with_its_privileges() {
        let (argv, notes) = cmd(
            "docker run -d --privileged --name NAME -e IMAGE=IMAGE -e NAME=NAME --net=host -v /etc:/host/etc -v /var/log/$NAME:/var/log --restart always -it IMAGE /bin/rsyslog.sh",
            &["--debug"],
        )
        .unwrap();
        assert_eq!(
            argv,
            [
                "/usr/bin/docker",
                "run",
                "--rm",
                "--pull=never",
                "--name",
                "rsyslog",
                "--privileged",
                "-e",
                "IMAGE=docker.io/example/rsyslog",
                "-e",
                "NAME=rsyslog",
                "--net=host",
                "-v",
                "/etc:/host/etc",
                "-v",
                "/var/log/rsyslog:/var/log",
                "docker.io/example/rsyslog",
                "/bin/rsyslog.sh",
                "--debug",
            ]
        );
        assert_eq!(
            notes,
            [
                "RUN label: dropped -d (systemd supervises the container in the foreground)",
                "RUN label: dropped --name rsyslog (the config's name is the container's name)",
                "RUN label: dropped --restart always (systemd restarts the unit: Restart=on-failure)",
                "RUN label: dropped -it (systemd supervises the container in the foreground, with no terminal)",
            ]
        );
    }

    #[test]
    fn labels_that_cannot_run_under_systemd_are_errors() {
        let err = |label: &str| cmd(label, &[]).unwrap_err().to_string();
        assert_eq!(
            err("/usr/bin/podman run IMAGE"),
            "RUN label of docker.io/example/rsyslog: not a `docker run` command, so it cannot run under systemd: \"/usr/bin/podman run IMAGE\""
        );
        assert!(err("docker run --privileged busybox").contains("does not name the image"));
        assert!(err("docker run -itv /a:/b IMAGE").contains("option -itv mixes -d/-i/-t"));
        assert!(err("docker run 'IMAGE").contains("cannot be split into words"));
    }

    #[test]
    fn podman_runs_a_label_detached_under_conmon_with_the_units_own_options() {
        let podman = crate::engines::podman::Podman::new(Path::new("/usr/bin/podman"));
        let (argv, notes) = label_command(
            "podman run -d --cidfile /tmp/x.cid --cgroups=enabled --privileged -v /etc:/host/etc IMAGE /bin/rsyslog.sh",
            "rsyslog",
            "docker.io/example/rsyslog",
            &[],
            &podman,
        )
        .unwrap();
        assert_eq!(
            argv.join(" "),
            "/usr/bin/podman run --name rsyslog --cidfile=/run/preload-rsyslog.cid --replace --rm \
             --cgroups=split --sdnotify=conmon -d --pull=never --privileged -v /etc:/host/etc \
             docker.io/example/rsyslog /bin/rsyslog.sh"
        );
        assert_eq!(
            notes,
            [
                "RUN label: dropped -d (systemd supervises the container in the foreground)",
                "RUN label: dropped --cidfile /tmp/x.cid (the unit sets it itself)",
                "RUN label: dropped --cgroups=enabled (the unit sets it itself)",
            ]
        );
        let err = label_command("/usr/bin/runc run IMAGE", "a", "b", &[], &podman).unwrap_err();
        assert!(
            err.to_string()
                .contains("not a `docker run` or `podman run` command")
        );
    }
}
