//! Command-line interfaces of both binaries, in the library so that man pages and shell
//! completions are generated from the same definitions (`examples/gen-docs.rs`).

use crate::paths;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const GENERATOR_NOTES: &str = "\
The config, /var/lib/atomic/preload/config.yaml, is a list of entries: name, image, archive, \
engine (docker or podman; default: Docker when /usr/bin/docker exists, else Podman when \
/usr/bin/podman does), install (system, setvalues, extra_args) and run (spc, extra_args). Image archives (.tar, .tar.gz, \
.tgz, .tar.xz, .tar.zst, .tar.bz2) are read from /var/lib/atomic/preload/docker/ (Docker images) \
and /var/lib/atomic/preload/ostree/ (system containers, install: {system: true}, checked out \
into /var/lib/containers/atomic/ and run by runc as NAME.service); load-once and install-once \
marks are kept in /var/lib/atomic-preload/.

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

/// Preload containers: stage image archives and config entries into an image before its
/// first boot, see what they will do and what they did, and the stages the generated
/// units run.
///
/// Operators and image builders use `validate`, `stage`, `status`, `rollback` and
/// `uninstall`. The other commands are what the generated preload-<name>.service units
/// call (load into Docker, Podman, containerd or CRI-O's store; the INSTALL label; the
/// container; a system container's checkout run by runc): see `systemctl cat
/// preload-<name>`.
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
    /// Load archives into the engine, once per archive content, and check an image is there.
    Load(LoadArgs),
    /// Run an image's INSTALL label, once per image ID and settings.
    Install(InstallArgs),
    /// Run an image's container: its RUN label when it has one (atomic run), else the
    /// unit's default command; then the engine's client replaces this process.
    Run(RunArgs),
    /// Apply a config.yaml changed after the generator ran: reload systemd, start new
    /// units, restart changed ones, stop removed ones.
    Refresh(RefreshArgs),
    /// Check a system image out of an archive in ostree/ and install it as atomic
    /// install --system did: a runc container unit NAME.service, tmpfiles, host files.
    /// Nothing is redone while the image ID and values are unchanged.
    InstallSystem(InstallSystemArgs),
    /// Start a system container's NAME.service; a freshly updated one that fails to start
    /// is rolled back to its previous deployment.
    StartSystem(StartSystemArgs),
    /// Switch a system container back to its other deployment (NAME.0 / NAME.1).
    Rollback(SystemNameArgs),
    /// Uninstall a container as atomic did. A system container: stop it, remove its unit,
    /// tmpfiles, unmodified host files and both deployments. A Docker entry: remove its
    /// container and run the image's UNINSTALL label. Remove the config entry too, or the
    /// next boot installs it again.
    Uninstall(UninstallArgs),
    /// Put archives (files, http(s):// URLs, docker-image:NAME, podman-image:NAME) and
    /// config entries into an image root for its first boot, each archive with its
    /// SHA-256 recorded (the load stage refuses it if its content changes). All or
    /// nothing: on any error the root is left exactly as it was.
    Stage(StageArgs),
    /// One line per config entry: engine, image, archives (recorded digest), when they were
    /// loaded, when it was installed, its units' states and the last failure's reason.
    /// Exit status 1 when a unit failed or the config has problems. With --root, on an
    /// image before its first boot: which archive holds each image, and what will fail.
    Status(StatusArgs),
    /// Print config problems to stderr and fail (used by units that report them).
    ConfigError {
        /// The problems, one line each.
        messages: Vec<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// The engine: docker, podman, containerd, cri-o, or auto (the host's, detected as
    /// the generator does for entries without `engine:`).
    #[arg(long, value_name = "ENGINE", default_value = "docker", value_parser = clap::builder::PossibleValuesParser::new(crate::engines::ENGINE_VALUES))]
    pub engine: String,
    /// The Docker client to call (it honours $DOCKER_HOST).
    #[arg(long, value_name = "PATH", default_value = paths::DOCKER)]
    pub docker: PathBuf,
    /// The Podman client to call (it honours containers.conf and storage.conf).
    #[arg(long, value_name = "PATH", default_value = paths::PODMAN)]
    pub podman: PathBuf,
    /// containerd's client (containerd's address and namespace: $CONTAINERD_ADDRESS,
    /// $CONTAINERD_NAMESPACE, else /run/containerd/containerd.sock and k8s.io).
    #[arg(long, value_name = "PATH", default_value = paths::CTR)]
    pub ctr: PathBuf,
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

/// Where a system container's pieces go; every one can be moved for tests and image builds.
#[derive(Debug, Clone, Args)]
pub struct SystemPaths {
    /// Deployments NAME.0, NAME.1 and the NAME symlink to the active one.
    #[arg(long, value_name = "DIR", default_value = paths::CHECKOUT_DIR)]
    pub checkout_dir: PathBuf,
    /// Where NAME.service is installed.
    #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
    /// Where NAME.conf (tmpfiles) is installed.
    #[arg(long, value_name = "DIR", default_value = "/etc/tmpfiles.d")]
    pub tmpfiles_dir: PathBuf,
    /// Host files from the image's /exports/hostfs are copied below this directory.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub host_root: PathBuf,
    /// The OCI runtime the container unit runs (runc or crun).
    #[arg(long, value_name = "PATH", default_value = paths::RUNTIME)]
    pub runtime: String,
    /// The systemctl to call.
    #[arg(long, value_name = "PATH", default_value = "systemctl")]
    pub systemctl: PathBuf,
    /// The systemd-tmpfiles to call.
    #[arg(long, value_name = "PATH", default_value = "systemd-tmpfiles")]
    pub systemd_tmpfiles: PathBuf,
    /// Where archive indexes and locks are kept.
    #[arg(long, value_name = "DIR", default_value = paths::STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct InstallSystemArgs {
    /// The directory holding the ostree/ archive directory.
    #[arg(long, value_name = "DIR", default_value = paths::PRELOAD_DIR)]
    pub preload_dir: PathBuf,
    /// Container name: NAME.service, /var/lib/containers/atomic/NAME.
    #[arg(long)]
    pub name: String,
    /// The image (a RepoTag in an archive) to install.
    #[arg(long)]
    pub image: String,
    /// Look only in these archives (file names in ostree/). Without it, every archive there.
    #[arg(long, value_name = "FILE")]
    pub archive: Vec<String>,
    /// KEY=VALUE for the image's templates (atomic's --set).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub setvalues: Vec<String>,
    #[command(flatten)]
    pub paths: SystemPaths,
}

#[derive(Debug, Clone, Args)]
pub struct StartSystemArgs {
    /// The system container whose NAME.service is started.
    #[arg(long)]
    pub name: String,
    /// After an update, how long NAME.service must stay up before it counts as started.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub settle: u64,
    #[command(flatten)]
    pub paths: SystemPaths,
}

#[derive(Debug, Clone, Args)]
pub struct SystemNameArgs {
    /// The system container's name.
    pub name: String,
    #[command(flatten)]
    pub paths: SystemPaths,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The engine the default command runs (its client is the command's first word).
    #[arg(long, value_name = "ENGINE", default_value = "docker", value_parser = ["docker", "podman"])]
    pub engine: String,
    /// The container name (NAME in the label).
    #[arg(long)]
    pub name: String,
    /// The image whose RUN label is used (IMAGE in the label).
    #[arg(long)]
    pub image: String,
    /// How many of the default command's last words are the config's run.extra_args
    /// (appended to the label's command, as atomic did).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub extra: usize,
    /// The default command: docker run without a RUN label. Its first word is the docker
    /// client used for everything.
    #[arg(last = true, required = true)]
    pub default_command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct UninstallArgs {
    /// The container's name (the config entry's name).
    pub name: String,
    /// For a Docker entry: the image whose UNINSTALL label runs (default: the entry's).
    #[arg(long)]
    pub image: Option<String>,
    /// The config that names the entry.
    #[arg(long, value_name = "FILE", default_value = paths::CONFIG_FILE)]
    pub config: PathBuf,
    /// The Docker client to call.
    #[arg(long, value_name = "PATH", default_value = paths::DOCKER)]
    pub docker: PathBuf,
    /// The Podman client to call (entries with engine: podman, or on a host without Docker).
    #[arg(long, value_name = "PATH", default_value = paths::PODMAN)]
    pub podman: PathBuf,
    #[command(flatten)]
    pub paths: SystemPaths,
}

#[derive(Debug, Clone, Args)]
pub struct StageArgs {
    /// The image's root directory (`/` for this host).
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Config entries (a config.yaml list) to merge into ROOT's config.yaml: appended, so
    /// an entry named like an existing one replaces it, as at boot. Validated first.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Stage every SRC into ostree/ (system containers) instead of docker/.
    #[arg(long)]
    pub system: bool,
    /// A system container's source, staged into ostree/ in the same run as the SRCs
    /// (which go into docker/ unless --system): repeatable. All sources of a run are
    /// staged, or none.
    #[arg(long = "system-src", value_name = "SRC")]
    pub system_sources: Vec<String>,
    /// Also check every tagged image of the system sources out now, into
    /// ROOT/var/lib/atomic/preload/checkouts/IMAGE-ID/ (each layer checked against its
    /// diff_id): the first boot's install only renders and activates it, reading no
    /// archive. Costs the image's unpacked size in ROOT; the archive stays, and is used
    /// when the checkout is damaged or the archive was staged again. Needs root.
    #[arg(long)]
    pub checkout: bool,
    /// The expected SHA-256 of each SRC, in order (give it once per SRC, or not at all).
    /// Any source, --system-src too, may carry its own instead: `SRC#sha256=HEX`.
    #[arg(long = "sha256", value_name = "HEX")]
    pub sha256: Vec<String>,
    /// Show what would be staged and merged (local files are hashed and indexed, URLs
    /// are not downloaded); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Put the images into a read-only Podman image store inside ROOT
    /// (/var/lib/containers/atomic-preload-store, added to ROOT's
    /// /etc/containers/storage.conf as an additional image store) instead of archives:
    /// the first boot loads nothing. Podman hosts with the overlay driver only.
    #[arg(long, conflicts_with_all = ["system", "containerd_store"])]
    pub podman_store: bool,
    /// Put the images into containerd's store inside ROOT (/var/lib/containerd, kubelet's
    /// namespace k8s.io), imported and pinned by a private containerd (CRI off, its
    /// sockets temporary) that is stopped before anything is committed: the node's first
    /// boot imports nothing. The node's containerd must use the same snapshotter
    /// (overlayfs) and read this containerd's store (the same or a newer version).
    #[arg(long, conflicts_with = "system")]
    pub containerd_store: bool,
    /// The containerd daemon for --containerd-store.
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/containerd")]
    pub containerd: PathBuf,
    /// containerd's client for --containerd-store.
    #[arg(long, value_name = "PATH", default_value = paths::CTR)]
    pub ctr: PathBuf,
    /// Compression of archives saved from an engine (docker-image:, podman-image:).
    #[arg(long, value_name = "HOW", default_value = "zstd", value_parser = ["zstd", "none"])]
    pub compress: String,
    /// The Docker client for docker-image: sources.
    #[arg(long, value_name = "PATH", default_value = paths::DOCKER)]
    pub docker: PathBuf,
    /// The Podman client for podman-image: sources.
    #[arg(long, value_name = "PATH", default_value = paths::PODMAN)]
    pub podman: PathBuf,
    /// Seconds to wait for a URL source's connection (TCP and TLS).
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout: u64,
    /// Seconds a URL source may send nothing (no response, or no data in the body)
    /// before the attempt fails and is retried.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_timeout: u64,
    /// Seconds one URL source may take in all, retries included (0: no limit).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub max_time: u64,
    /// Archive files, http(s):// URLs, docker-image:NAME or podman-image:NAME; each may
    /// end in `#sha256=HEX`, its expected SHA-256 (never sent to a server).
    #[arg(value_name = "SRC")]
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Machine-readable output for scripts.
    #[arg(long)]
    pub json: bool,
    /// An image root to inspect before its first boot (systemd is not asked).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// The config file (below --root when given).
    #[arg(long, value_name = "FILE", default_value = paths::CONFIG_FILE)]
    pub config: PathBuf,
    /// The directory holding docker/ and ostree/.
    #[arg(long, value_name = "DIR", default_value = paths::PRELOAD_DIR)]
    pub preload_dir: PathBuf,
    /// Where load-once and install-once marks are kept.
    #[arg(long, value_name = "DIR", default_value = paths::STATE_DIR)]
    pub state_dir: PathBuf,
    /// System containers' deployments.
    #[arg(long, value_name = "DIR", default_value = paths::CHECKOUT_DIR)]
    pub checkout_dir: PathBuf,
    /// The systemctl to ask.
    #[arg(long, value_name = "PATH", default_value = "systemctl")]
    pub systemctl: PathBuf,
}
