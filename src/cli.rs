//! Command-line interfaces of both binaries, in the library so that man pages and shell
//! completions are generated from the same definitions (`examples/gen-docs.rs`).

use crate::paths;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const GENERATOR_NOTES: &str = "\
The config, /var/lib/atomic/preload/config.yaml, is a list of entries: name, image, archive, \
install (setvalues, extra_args) and run (spc, extra_args). Image archives (.tar, .tar.gz, .tgz, \
.tar.xz, .tar.zst, .tar.bz2) are read from /var/lib/atomic/preload/docker/; load-once and \
install-once marks are kept in /var/lib/atomic-preload/.

It writes preload-<name>.service per entry (load, install, run) and, when the config has \
problems no entry's unit can show, atomic-preload-config.service; all are wanted by \
atomic-preload.target. Inspect them with systemctl status, systemctl cat and journalctl -u.

Exit status: 0 when every unit was written, config problems included (failing units show \
them); 1 when a unit could not be written.";

/// systemd generator: one preload-<name>.service per container in config.yaml.
///
/// systemd runs it at boot and on every daemon-reload with three output directories;
/// units are written into the first. Problems in the config are logged and turned into
/// failing units, so they show in `systemctl --failed`.
#[derive(Debug, Parser)]
#[command(name = "atomic-preload-generator", version, after_long_help = GENERATOR_NOTES)]
pub struct GeneratorCli {
    /// Output directory for units (systemd's "normal" directory).
    #[arg(required_unless_present = "dry_run")]
    pub normal_dir: Option<PathBuf>,
    /// systemd's "early" directory (unused).
    pub early_dir: Option<PathBuf>,
    /// systemd's "late" directory (unused).
    pub late_dir: Option<PathBuf>,
    /// The config file, as seen on the host.
    #[arg(long, value_name = "FILE", default_value = paths::CONFIG_FILE)]
    pub config: String,
    /// The directory holding docker/ and ostree/ archives, as seen on the host.
    #[arg(long, value_name = "DIR", default_value = paths::PRELOAD_DIR)]
    pub preload_dir: String,
    /// Read files below DIR as if it were / (tests, image builds); units still name host paths.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Print every unit it would write, each after a "# <file name>" line; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Validate config.yaml and run the load and install stages of preloaded containers.
///
/// The stage commands are what the generated preload-<name>.service units call; see
/// `systemctl cat preload-<name>`.
#[derive(Debug, Parser)]
#[command(name = "atomic-preload", version)]
pub struct HelperCli {
    #[command(subcommand)]
    pub command: HelperCommand,
}

#[derive(Debug, Subcommand)]
pub enum HelperCommand {
    /// Check a config file: exit 0 when valid, 1 with FILE:LINE:COL: messages when not.
    Validate {
        /// The config file.
        #[arg(default_value = paths::CONFIG_FILE)]
        file: PathBuf,
    },
    /// Load archives into Docker, once per archive content, and check an image is there.
    Load(LoadArgs),
    /// Run an image's INSTALL label, once per image ID and settings.
    Install(InstallArgs),
    /// Apply a config.yaml changed after the generator ran: reload systemd, start new
    /// units, restart changed ones, stop removed ones.
    Refresh(RefreshArgs),
    /// Print config problems to stderr and fail (used by units that report them).
    ConfigError {
        /// The problems, one line each.
        messages: Vec<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// The Docker client to call (it honours $DOCKER_HOST).
    #[arg(long, value_name = "PATH", default_value = paths::DOCKER)]
    pub docker: PathBuf,
    /// Where load-once and install-once marks are kept.
    #[arg(long, value_name = "DIR", default_value = paths::STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The directory holding the docker/ archive directory.
    #[arg(long, value_name = "DIR", default_value = paths::PRELOAD_DIR)]
    pub preload_dir: PathBuf,
    /// Load only these archives (file names in docker/) and fail if one fails.
    /// Without it, every archive in docker/ is loaded.
    #[arg(long, value_name = "FILE")]
    pub archive: Vec<String>,
    /// Fail unless this image is in the engine afterwards.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// Container name: NAME in the label, and /etc/NAME, /var/log/NAME, /var/lib/NAME.
    #[arg(long)]
    pub name: String,
    /// The image whose INSTALL label is run.
    #[arg(long)]
    pub image: String,
    /// KEY=VALUE, set in the label command's environment and substituted for $KEY.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub setvalues: Vec<String>,
    /// Create CONFDIR, LOGDIR and DATADIR below this directory instead of / (tests).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub host_root: PathBuf,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Arguments appended to the INSTALL command.
    #[arg(last = true)]
    pub extra_args: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RefreshArgs {
    /// The config file the generator reads.
    #[arg(long, value_name = "FILE", default_value = paths::CONFIG_FILE)]
    pub config: String,
    /// The preload directory the generator names in units.
    #[arg(long, value_name = "DIR", default_value = paths::PRELOAD_DIR)]
    pub preload_dir: String,
    /// Where systemd's generators wrote their units.
    #[arg(long, value_name = "DIR", default_value = paths::GENERATOR_DIR)]
    pub generator_dir: PathBuf,
    /// The systemctl to call.
    #[arg(long, value_name = "PATH", default_value = "systemctl")]
    pub systemctl: PathBuf,
}
