//! The install stage for Docker images: atomic's `install` semantics, done natively.
//!
//! The image's `INSTALL` label is split like a shell line, the words `IMAGE`, `NAME`,
//! `IMAGE=IMAGE`, `NAME=NAME` are replaced, `$VAR`/`${VAR}` expanded from NAME, IMAGE,
//! CONFDIR=/etc/NAME, LOGDIR=/var/log/NAME, DATADIR=/var/lib/NAME, the `--set` values and
//! then the environment (undefined variables become empty, as atomic did), the config's
//! extra arguments appended, and the command run with those variables in its environment.
//! Under systemd there is no terminal, so `-t`/`--tty` are dropped from a `docker run`.
//! A label's `docker` runs the entry's engine's client (for Podman, `podman` too, as
//! `podman container runlabel` does).
//! It runs once per engine, image ID and settings: a mark in `<state-dir>/installed/NAME`
//! records them.

use crate::cli::InstallArgs;
use crate::engines::{self, ImageEngine};
use crate::runtime::RuntimeError;
use crate::runtime::marks::{Mark, Marks};
use crate::stages::load::engine_name;
use sha2::{Digest, Sha256};
use std::process::Command;

/// What atomic's `cmd_env` added to the environment of every label: `SUDO_UID` and
/// `SUDO_GID` (unless set) the login's uid — `/proc/self/loginuid`, unset (4294967295) for
/// a boot-time service, so 0 — for both, and `PWD`.
pub(crate) fn login_variables() -> Vec<(String, String)> {
    let login = std::fs::read_to_string("/proc/self/loginuid")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|uid| *uid <= 2_147_483_647)
        .map_or_else(|| "0".to_owned(), |uid| uid.to_string());
    let mut vars = Vec::new();
    for key in ["SUDO_UID", "SUDO_GID"] {
        if std::env::var_os(key).is_none() {
            vars.push((key.to_owned(), login.clone()));
        }
    }
    if let Ok(pwd) = std::env::current_dir() {
        vars.push(("PWD".to_owned(), pwd.display().to_string()));
    }
    vars
}

/// The variables atomic always defined, then the `--set` ones (which may override them).
pub(crate) fn variables(args: &InstallArgs) -> Vec<(String, String)> {
    let name = &args.name;
    let mut vars = login_variables();
    vars.extend([
        ("NAME".to_owned(), name.clone()),
        ("IMAGE".to_owned(), args.image.clone()),
        ("CONFDIR".to_owned(), format!("/etc/{name}")),
        ("LOGDIR".to_owned(), format!("/var/log/{name}")),
        ("DATADIR".to_owned(), format!("/var/lib/{name}")),
    ]);
    for set in &args.setvalues {
        if let Some((k, v)) = set.split_once('=') {
            vars.retain(|(key, _)| key != k);
            vars.push((k.to_owned(), v.to_owned()));
        }
    }
    vars
}

fn lookup(vars: &[(String, String)], key: &str) -> Option<String> {
    vars.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var(key).ok())
}

/// Expand `$VAR` and `${VAR}` in one word. A `$` not followed by a name stays. An
/// undefined variable is removed with the rest of its whitespace-separated word, as
/// atomic's `sub_env_strings` did (`-v /srv/${UNDEF}/x:/x` → `-v /srv/`; a whole-word
/// `$OPT1` goes).
pub(crate) fn expand(word: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (value, tail) = if let Some((key, tail)) = after
            .strip_prefix('{')
            .and_then(|braced| braced.split_once('}'))
        {
            (lookup(vars, key), tail)
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 || after.starts_with(|c: char| c.is_ascii_digit()) {
                out.push('$');
                rest = after;
                continue;
            }
            (lookup(vars, &after[..len]), &after[len..])
        };
        match value {
            Some(value) => {
                out.push_str(&value);
                rest = tail;
            }
            None => rest = &tail[tail.find(char::is_whitespace).unwrap_or(tail.len())..],
        }
    }
    out.push_str(rest);
    out
}

/// `-t`, `--tty`, and the `t` in `-it`, before the image in a `docker run`.
fn drop_tty(argv: Vec<String>, image: &str) -> Vec<String> {
    let is_docker_run = argv
        .first()
        .is_some_and(|p| p == "docker" || p.ends_with("/docker"))
        && argv.get(1).is_some_and(|a| a == "run");
    if !is_docker_run {
        return argv;
    }
    let mut out = Vec::with_capacity(argv.len());
    let mut options = true;
    for word in argv {
        if word == image {
            options = false;
        }
        if options && (word == "-t" || word == "--tty" || word == "--tty=true") {
            continue;
        }
        if options
            && word.starts_with('-')
            && !word.starts_with("--")
            && word.len() > 2
            && word.contains('t')
        {
            let flags: String = word[1..].chars().filter(|&c| c != 't').collect();
            // `-t` inside a group of single-letter flags only when all are letters.
            if word[1..].chars().all(|c| c.is_ascii_alphabetic()) {
                out.push(format!("-{flags}"));
                continue;
            }
        }
        out.push(word);
    }
    out
}

/// The command to run for an INSTALL label, as argv.
pub fn install_command(
    label: &str,
    args: &InstallArgs,
    engine: &dyn ImageEngine,
) -> Result<Vec<String>, RuntimeError> {
    label_command("INSTALL", label, args, engine)
}

/// The command for an INSTALL or UNINSTALL label (atomic treated both alike), as argv.
pub fn label_command(
    kind: &str,
    label: &str,
    args: &InstallArgs,
    engine: &dyn ImageEngine,
) -> Result<Vec<String>, RuntimeError> {
    let words = shell_words::split(label).map_err(|e| {
        RuntimeError::Label(format!(
            "{kind} label of {} cannot be split into words: {e}",
            args.image
        ))
    })?;
    let vars = variables(args);
    let mut argv: Vec<String> = Vec::with_capacity(words.len() + args.extra_args.len());
    for word in words {
        let replaced = match word.as_str() {
            "IMAGE" => args.image.clone(),
            "NAME" => args.name.clone(),
            "IMAGE=IMAGE" => format!("IMAGE={}", args.image),
            "NAME=NAME" => format!("NAME={}", args.name),
            _ => expand(&word, &vars),
        };
        // atomic collapsed the words an undefined variable emptied.
        if replaced.is_empty() && !word.is_empty() {
            continue;
        }
        argv.push(replaced);
    }
    argv.extend(args.extra_args.iter().cloned());
    if argv.first().is_some_and(|p| engine.is_client_word(p)) {
        argv[0] = "docker".into();
    }
    let mut argv = drop_tty(argv, &args.image);
    if argv.first().is_some_and(|p| p == "docker") {
        argv[0] = engine.client().display().to_string();
    }
    if argv.is_empty() {
        return Err(RuntimeError::Label(format!(
            "{kind} label of {} is empty",
            args.image
        )));
    }
    Ok(argv)
}

/// What must change for the install to run again: the image and every setting.
fn settings_digest(args: &InstallArgs) -> String {
    let mut h = Sha256::new();
    for part in [&args.name, &args.image]
        .into_iter()
        .chain(&args.setvalues)
        .chain(&args.extra_args)
    {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn run(args: &InstallArgs) -> Result<(), RuntimeError> {
    let engine = engines::open(&args.engine);
    let engine = engine.as_ref();
    let Some(info) = engine.image(&args.image)? else {
        return Err(RuntimeError::ImageMissing(format!(
            "image {} is not in {}, so it cannot be installed",
            args.image,
            engine_name(engine)
        )));
    };
    let marks = Marks::new(&args.engine.state_dir, "installed").map_err(RuntimeError::State)?;
    let digest = settings_digest(args);
    if let Some(done) = marks.read(&args.name) {
        // Marks written before Podman was supported name no engine: Docker's.
        if done.get("image") == Some(info.id.as_str())
            && done.get("settings") == Some(digest.as_str())
            && done.get("engine").unwrap_or("docker") == engine.kind().as_str()
        {
            println!("{}: already installed from image {}", args.name, info.id);
            return Ok(());
        }
    }
    let mut mark = Mark::default();
    mark.set("engine", engine.kind().as_str());
    mark.set("image", info.id.clone());
    mark.set("settings", digest);
    if info.install_label.trim().is_empty() {
        println!(
            "{}: image {} has no INSTALL label, nothing to install",
            args.name, args.image
        );
        return marks.write(&args.name, &mark).map_err(RuntimeError::State);
    }

    let vars = variables(args);
    for dir in ["CONFDIR", "LOGDIR", "DATADIR"] {
        let path = args.host_root.join(
            lookup(&vars, dir)
                .unwrap_or_default()
                .trim_start_matches('/'),
        );
        std::fs::create_dir_all(&path).map_err(|source| RuntimeError::Io { path, source })?;
    }
    run_label("INSTALL", &info.install_label, args, engine)?;
    marks.write(&args.name, &mark).map_err(RuntimeError::State)
}

/// Build an INSTALL or UNINSTALL label's command and run it with the label variables in
/// its environment; its failure is the stage's failure.
pub(crate) fn run_label(
    kind: &str,
    label: &str,
    args: &InstallArgs,
    engine: &dyn ImageEngine,
) -> Result<(), RuntimeError> {
    let argv = label_command(kind, label, args, engine)?;
    println!(
        "{}: running {kind}: {}",
        args.name,
        shell_words::join(&argv)
    );
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .envs(variables(args))
        .status()
        .map_err(|source| RuntimeError::Spawn {
            program: argv[0].clone(),
            source,
        })?;
    if !status.success() {
        return Err(RuntimeError::InstallFailed(format!(
            "{kind} command of {} failed ({status})",
            args.image
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::EngineArgs;
    use crate::engines::docker::Docker;
    use crate::engines::podman::Podman;
    use std::path::Path;

    #[test]
    fn podman_runs_docker_and_podman_labels_with_its_own_client() {
        let podman = Podman::new(Path::new("/usr/bin/podman"));
        for label in [
            "docker run --rm IMAGE /install.sh",
            "/usr/bin/docker run --rm IMAGE /install.sh",
            "podman run --rm IMAGE /install.sh",
            "/usr/local/bin/podman run -t --rm IMAGE /install.sh",
        ] {
            assert_eq!(
                install_command(label, &args(&[], &[]), &podman)
                    .unwrap()
                    .join(" "),
                "/usr/bin/podman run --rm example/httpd:1 /install.sh",
                "{label}"
            );
        }
        // Docker keeps a podman label as it is (and fails running it when podman is missing).
        let docker = Docker::new(Path::new("/usr/bin/docker"));
        assert_eq!(
            install_command("podman run IMAGE", &args(&[], &[]), &docker).unwrap()[0],
            "podman"
        );
        // Anything else runs as written.
        assert_eq!(
            install_command("/bin/sh -c 'echo $NAME'", &args(&[], &[]), &podman).unwrap(),
            ["/bin/sh", "-c", "echo web"]
        );
    }

    fn args(set: &[&str], extra: &[&str]) -> InstallArgs {
        InstallArgs {
            name: "web".into(),
            image: "example/httpd:1".into(),
            setvalues: set.iter().map(|s| s.to_string()).collect(),
            host_root: "/".into(),
            engine: EngineArgs {
                engine: "docker".into(),
                docker: "/usr/bin/docker".into(),
                podman: "/usr/bin/podman".into(),
                ctr: "/usr/bin/ctr".into(),
                state_dir: "/nonexistent".into(),
            },
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn atomic_httpd_example_label() {
        let label = "docker run --rm --privileged -v /:/host -e HOST=/host -e LOGDIR=${LOGDIR} -e CONFDIR=${CONFDIR} -e DATADIR=${DATADIR} -e IMAGE=IMAGE -e NAME=NAME IMAGE /bin/install.sh";
        let argv = install_command(
            label,
            &args(&[], &["--verbose"]),
            &Docker::new(Path::new("/usr/bin/docker")),
        )
        .unwrap();
        assert_eq!(
            argv.join(" "),
            "/usr/bin/docker run --rm --privileged -v /:/host -e HOST=/host -e LOGDIR=/var/log/web \
             -e CONFDIR=/etc/web -e DATADIR=/var/lib/web -e IMAGE=example/httpd:1 -e NAME=web \
             example/httpd:1 /bin/install.sh --verbose"
        );
    }

    #[test]
    fn setvalues_substitute_and_override_and_keep_spaces() {
        let label = r#"docker run -it --rm -e "X=$GREETING" -e DIR=${CONFDIR} IMAGE sh -c "echo $UNDEFINED_ATOMIC_PRELOAD_VAR -t""#;
        let argv = install_command(
            label,
            &args(&["GREETING=hello world", "CONFDIR=/srv/conf"], &[]),
            &Docker::new(Path::new("/d")),
        )
        .unwrap();
        assert_eq!(
            argv,
            [
                "/d",
                "run",
                "-i",
                "--rm",
                "-e",
                "X=hello world",
                "-e",
                "DIR=/srv/conf",
                "example/httpd:1",
                "sh",
                "-c",
                "echo  -t"
            ]
        );
    }

    #[test]
    fn expansion_edge_cases() {
        let vars = vec![("A".to_owned(), "1".to_owned())];
        assert_eq!(expand("$A${A}$", &vars), "11$");
        assert_eq!(expand("$1 $ ${A", &vars), "$1 $ ${A");
        assert_eq!(expand("x$A_y", &vars), "x");
        // An undefined variable takes the rest of its whitespace-separated word along.
        assert_eq!(
            expand("/srv/${UNDEFINED_ATOMIC_PRELOAD_VAR}/x:/x", &vars),
            "/srv/"
        );
        assert_eq!(
            expand("echo $UNDEFINED_ATOMIC_PRELOAD_VAR-t; $A", &vars),
            "echo  1"
        );
    }

    #[test]
    fn sudo_uid_and_gid_are_the_logins_as_atomic_set_them() {
        let vars = login_variables();
        let get = |k: &str| {
            vars.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        if std::env::var_os("SUDO_UID").is_none() {
            let uid = get("SUDO_UID").unwrap();
            assert!(uid.parse::<u32>().is_ok(), "{uid}");
            assert_eq!(
                get("SUDO_GID"),
                Some(uid),
                "atomic used the login uid for both"
            );
        }
        assert!(get("PWD").is_some());
    }

    #[test]
    fn unsplittable_label_is_an_error() {
        assert!(matches!(
            install_command(
                "docker run \"open",
                &args(&[], &[]),
                &Docker::new(Path::new("/d"))
            ),
            Err(RuntimeError::Label(_))
        ));
    }
}
