//! Install, start, roll back and uninstall a system container (see the module above).

use super::archive::{self, IndexedImage, normalize_reference};
use super::checkout;
use super::hostfiles::{self, Installed};
use super::rootfs::Root;
use super::template::{self, TemplateError};
use super::values::{self, Facts, Values};
use crate::cli::{InstallSystemArgs, StartSystemArgs, SystemNameArgs, SystemPaths};
use crate::config::{archive_problem, is_valid_name};
use crate::paths;
use crate::runtime::marks::{self, Mark, Marks};
use crate::runtime::{RuntimeError, io_err};
use crate::runtime::{durable, notify};
use crate::stages::load::{fingerprint, list_archives, same_fingerprint};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// atomic's unit template for images that ship none.
const DEFAULT_SERVICE_TEMPLATE: &str = "
[Unit]
Description=$NAME

[Service]
ExecStartPre=$EXEC_STARTPRE
ExecStart=$EXEC_START
ExecStop=$EXEC_STOP
ExecStopPost=$EXEC_STOPPOST
Restart=on-failure
WorkingDirectory=$DESTDIR
PIDFile=$PIDFILE

[Install]
WantedBy=multi-user.target
";

/// The deployment's `info` record: atomic's keys, plus what we need to decide "nothing
/// to do" (`setvalues`) and "was this update seen running" (`verified`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub image: String,
    /// The image ID (`sha256:` of its config), atomic's "revision".
    pub revision: String,
    pub created: u64,
    pub values: Values,
    #[serde(default)]
    pub setvalues: Vec<String>,
    #[serde(rename = "has-container-service", default = "yes")]
    pub has_container_service: bool,
    #[serde(rename = "installed-files", default)]
    pub installed_files: Vec<String>,
    #[serde(rename = "installed-files-checksum", default)]
    pub installed_files_checksum: Installed,
    #[serde(rename = "installed-files-template", default)]
    pub installed_files_template: Vec<String>,
    #[serde(rename = "rename-installed-files", default)]
    pub rename_installed_files: BTreeMap<String, String>,
    #[serde(default)]
    pub remote: Option<String>,
    #[serde(default)]
    pub runtime: String,
    /// The archive the image came from, for `atomic-preload status` and the journal.
    #[serde(default)]
    pub archive: String,
    /// False for an update until its service was seen running: `start-system` rolls an
    /// unverified deployment back when it fails.
    #[serde(default = "yes")]
    pub verified: bool,
}

fn yes() -> bool {
    true
}

fn image_err(message: impl Into<String>) -> RuntimeError {
    RuntimeError::SystemImage(message.into())
}

/// Where one container's pieces are.
struct Layout<'a> {
    paths: &'a SystemPaths,
    name: &'a str,
}

impl Layout<'_> {
    fn link(&self) -> PathBuf {
        self.paths.checkout_dir.join(self.name)
    }
    fn slot(&self, n: u8) -> PathBuf {
        self.paths.checkout_dir.join(format!("{}.{n}", self.name))
    }
    fn unit_name(&self) -> String {
        format!("{}.service", self.name)
    }
    fn unit_out(&self) -> PathBuf {
        self.paths.unit_dir.join(self.unit_name())
    }
    fn tmpfiles_out(&self) -> PathBuf {
        self.paths.tmpfiles_dir.join(format!("{}.conf", self.name))
    }
    /// The active deployment's slot number, from the symlink.
    fn active_slot(&self) -> Result<Option<u8>, RuntimeError> {
        let target = match fs::read_link(self.link()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other.map_err(io_err(&self.link()))?,
        };
        Ok(match target.to_string_lossy().rsplit('.').next() {
            Some("0") => Some(0),
            Some("1") => Some(1),
            _ => None,
        })
    }
    /// A deployment's record; none when it has no (complete) one. A record that cannot
    /// be read is an error: taking it for "not installed" would install over it.
    fn read_info(&self, dir: &Path) -> Result<Option<Info>, RuntimeError> {
        Ok(read_optional(&dir.join("info"))?.and_then(|b| serde_json::from_slice(&b).ok()))
    }
    fn active(&self) -> Result<Option<(u8, Info)>, RuntimeError> {
        let Some(slot) = self.active_slot()? else {
            return Ok(None);
        };
        Ok(self.read_info(&self.slot(slot))?.map(|info| (slot, info)))
    }
    fn systemctl(&self, args: &[&str]) -> Result<std::process::Output, RuntimeError> {
        println!("systemctl {}", args.join(" "));
        Command::new(&self.paths.systemctl)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RuntimeError::Spawn {
                program: self.paths.systemctl.display().to_string(),
                source,
            })
    }
    fn systemctl_ok(&self, args: &[&str]) -> Result<(), RuntimeError> {
        let out = self.systemctl(args)?;
        if !out.status.success() {
            return Err(RuntimeError::Systemctl(
                format!("systemctl {}", args.join(" ")),
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        Ok(())
    }
    /// Whether systemd has the unit as it now is on disk: loaded from our file, with
    /// nothing changed since (`NeedDaemonReload=no`, systemd's own answer, drop-ins
    /// included). A unit systemd never loaded is read from disk when first asked about,
    /// so a first install needs no `daemon-reload` (~80 ms each, run one at a time by
    /// systemd, longer on a host with more units). Any other answer, or one not
    /// understood: reload.
    fn systemd_has_current_unit(&self) -> bool {
        let unit = self.unit_name();
        let Ok(out) = self.systemctl(&[
            "show",
            "-p",
            "LoadState",
            "-p",
            "NeedDaemonReload",
            "-p",
            "FragmentPath",
            &unit,
        ]) else {
            return false;
        };
        let said = String::from_utf8_lossy(&out.stdout);
        let fragment = format!("FragmentPath={}", self.unit_out().display());
        out.status.success()
            && said.lines().any(|l| l == "LoadState=loaded")
            && said.lines().any(|l| l == "NeedDaemonReload=no")
            && said.lines().any(|l| l == fragment)
    }
    fn is_active(&self) -> bool {
        self.systemctl(&["is-active", "--quiet", &self.unit_name()])
            .is_ok_and(|o| o.status.success())
    }
    fn tmpfiles(&self, verb: &str, file: &Path) -> Result<(), RuntimeError> {
        println!("systemd-tmpfiles {verb} {}", file.display());
        let mut command = Command::new(&self.paths.systemd_tmpfiles);
        // Another host root (an image being built, a test's): its paths, not this host's.
        if self.paths.host_root != Path::new("/") {
            command.arg(format!("--root={}", self.paths.host_root.display()));
        }
        let status = command
            .arg(verb)
            .arg(file)
            .stdin(Stdio::null())
            .status()
            .map_err(|source| RuntimeError::Spawn {
                program: self.paths.systemd_tmpfiles.display().to_string(),
                source,
            })?;
        if !status.success() {
            return Err(RuntimeError::System(format!(
                "systemd-tmpfiles {verb} {} failed ({status})",
                file.display()
            )));
        }
        Ok(())
    }
    /// Point `NAME` at `NAME.N` atomically: a new symlink renamed over the old one.
    fn swap_link(&self, slot: u8) -> Result<(), RuntimeError> {
        durable::symlink(&self.slot(slot), &self.link()).map_err(io_err(&self.link()))
    }
    /// Where a deployment is built before it is renamed to `NAME.N`, and where a slot is
    /// renamed to before it is deleted: never a half deployment under a final name.
    fn temp_slot(&self, n: u8) -> PathBuf {
        self.paths
            .checkout_dir
            .join(format!(".{}.{n}.tmp", self.name))
    }
    /// The record of an activation in progress (see [`Pending`]).
    fn pending_path(&self) -> PathBuf {
        self.paths
            .checkout_dir
            .join(format!(".{}.pending", self.name))
    }
    fn read_pending(&self) -> Result<Option<Pending>, RuntimeError> {
        Ok(read_optional(&self.pending_path())?.and_then(|b| serde_json::from_slice(&b).ok()))
    }
    /// Whether anything of this container is on the host (for uninstall).
    fn exists(&self) -> bool {
        [
            self.link(),
            self.slot(0),
            self.slot(1),
            self.pending_path(),
            self.trash_slot(0),
            self.trash_slot(1),
            self.temp_slot(0),
            self.temp_slot(1),
        ]
        .iter()
        // Unreadable counts as there: uninstall then fails on it, saying why.
        .any(|p| !matches!(fs::symlink_metadata(p), Err(e) if e.kind() == io::ErrorKind::NotFound))
    }
    /// Whether the installed `NAME.service` is one of ours: a copy of a deployment's
    /// unit, or written by an activation still pending.
    fn owns_unit(&self) -> Result<bool, RuntimeError> {
        let Some(unit) = read_optional(&self.unit_out())? else {
            return Ok(true);
        };
        if self.read_pending()?.is_some() {
            return Ok(true);
        }
        for n in [0, 1] {
            if read_optional(&self.slot(n).join(self.unit_name()))?.as_ref() == Some(&unit) {
                return Ok(true);
            }
        }
        Ok(false)
    }
    /// Where a slot is renamed to before it is deleted: a crash in the middle of the
    /// delete leaves no half deployment under a final name, only this, which the next
    /// run removes.
    fn trash_slot(&self, n: u8) -> PathBuf {
        self.paths
            .checkout_dir
            .join(format!(".{}.{n}.removing", self.name))
    }
    /// Delete slot `n`, if it is there.
    fn discard(&self, n: u8) -> Result<(), RuntimeError> {
        let (dir, trash) = (self.slot(n), self.trash_slot(n));
        remove_dir(&trash)?;
        if fs::symlink_metadata(&dir).is_ok() {
            durable::rename(&dir, &trash).map_err(io_err(&dir))?;
            remove_dir(&trash)?;
        }
        Ok(())
    }
    /// What a killed run left: temp dirs and temp files are removed, and an activation
    /// it had begun is finished (every step of [`Layout::finish`] can be done again).
    fn recover(&self) -> Result<(), RuntimeError> {
        for n in [0, 1] {
            remove_dir(&self.temp_slot(n))?;
            remove_dir(&self.trash_slot(n))?;
        }
        for path in [self.unit_out(), self.tmpfiles_out(), self.link()] {
            let _ = fs::remove_file(durable::temp_name(&path));
        }
        let Some(pending) = self.read_pending()? else {
            return Ok(());
        };
        if self.read_info(&self.slot(pending.to))?.is_none() {
            // Its deployment is gone (an uninstall was cut short): nothing to finish.
            return durable::remove_file(&self.pending_path())
                .map_err(io_err(&self.pending_path()));
        }
        println!(
            "finishing the {} of {} into {}, which was interrupted",
            pending.kind,
            self.name,
            self.slot(pending.to).display()
        );
        self.finish(&pending).map(drop)
    }
}

/// A deployment's rootfs; none when it has none (a host-files-only image's, after its
/// activation).
fn open_rootfs(dir: &Path) -> Result<Option<Root>, RuntimeError> {
    let path = dir.join("rootfs");
    match Root::open(&path) {
        Ok(root) => Ok(Some(root)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// A file's bytes; none when it is not there. Any other failure is an error.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, RuntimeError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn remove_dir(dir: &Path) -> Result<(), RuntimeError> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(dir)(e)),
        _ => Ok(()),
    }
}

/// An activation in progress: written (durably) before it changes anything on the host,
/// removed when every step is done. So a deployment is active only when the `NAME` link
/// points at it and no activation is pending; a run that finds one finishes it first.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    /// "install" or "rollback" (for the journal).
    kind: String,
    /// The slot being made active; its deployment is complete, `info` included.
    to: u8,
    /// The slot it replaces, if any.
    from: Option<u8>,
    /// Whether `NAME.service` was running before: it is started again at the end, even by
    /// the run that finishes an activation a crash cut short.
    was_active: bool,
}

fn host_files_err(e: hostfiles::HostFilesError) -> RuntimeError {
    match e {
        hostfiles::HostFilesError::Template(t) => template_err(t),
        // The image's own manifest: another try gives the same answer.
        e @ hostfiles::HostFilesError::Rename { .. } => RuntimeError::SystemImage(e.to_string()),
        other => RuntimeError::System(other.to_string()),
    }
}

/// A deployment's record written durably (temp, fsync, rename, fsync of the directory).
fn write_info(dir: &Path, info: &Info) -> Result<(), RuntimeError> {
    let path = dir.join("info");
    let json = serde_json::to_vec_pretty(info).unwrap_or_default();
    durable::write(&path, &json, None).map_err(io_err(&path))
}

/// Copy a deployment's file (its unit, its tmpfiles) to where systemd reads it, or
/// remove that when the deployment has none. Returns whether it has one.
fn install_copy(copy: &Path, out: &Path) -> Result<bool, RuntimeError> {
    match fs::read(copy) {
        Ok(bytes) => {
            if let Some(dir) = out.parent() {
                fs::create_dir_all(dir).map_err(io_err(dir))?;
            }
            durable::write(out, &bytes, None).map_err(io_err(out))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            durable::remove_file(out).map_err(io_err(out))?;
            Ok(false)
        }
        Err(e) => Err(io_err(copy)(e)),
    }
}

fn parse_setvalues(setvalues: &[String]) -> Result<Vec<(String, String)>, RuntimeError> {
    setvalues
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| RuntimeError::Usage(format!("--set {s:?}: expected KEY=VALUE")))
        })
        .collect()
}

/// The images an archive holds, from its index mark while the file is unchanged.
fn indexed(marks: &Marks, dir: &Path, name: &str) -> Result<Vec<IndexedImage>, String> {
    let path = dir.join(name);
    let meta = fs::metadata(&path).map_err(|e| e.to_string())?;
    if let Some(mark) = marks.read(name)
        && same_fingerprint(&mark, &meta)
    {
        return Ok(mark
            .0
            .iter()
            .filter(|(k, _)| k.starts_with("image."))
            .map(|(_, v)| {
                let mut words = v.split_whitespace().map(String::from);
                IndexedImage {
                    id: words.next().unwrap_or_default(),
                    tags: words.collect(),
                    layers: None,
                }
            })
            .collect());
    }
    let images = archive::index(&path).map_err(|e| match e {
        // The caller names the archive.
        archive::ArchiveError::Io { source, .. } => source.to_string(),
        archive::ArchiveError::Format { message, .. } => format!("not a docker-archive: {message}"),
    })?;
    let mut mark = Mark::default();
    for (k, v) in fingerprint(&meta) {
        mark.set(k, v);
    }
    for (i, image) in images.iter().enumerate() {
        mark.set(
            &format!("image.{i}"),
            format!("{} {}", image.id, image.tags.join(" ")),
        );
    }
    // Only what was read from an unchanged file is remembered.
    if fs::metadata(&path).is_ok_and(|after| same_fingerprint(&mark, &after)) {
        let _ = marks.write(name, &mark);
    }
    Ok(images)
}

/// The archive in ostree/ holding `image`, and the image's ID.
fn find_image(args: &InstallSystemArgs) -> Result<(PathBuf, IndexedImage), RuntimeError> {
    let dir = args.preload_dir.join("ostree");
    let marks = Marks::new(&args.paths.state_dir, "loaded/ostree").map_err(RuntimeError::State)?;
    let names = if args.archive.is_empty() {
        list_archives(&dir)?
    } else {
        for name in &args.archive {
            if let Some(problem) = archive_problem(name) {
                return Err(RuntimeError::Usage(format!("--archive: {problem}")));
            }
        }
        args.archive.clone()
    };
    crate::stages::load::check_trusted(&dir, &names, &args.paths.state_dir)?;
    let wanted = normalize_reference(&args.image);
    let mut looked = Vec::new();
    for name in &names {
        match indexed(&marks, &dir, name) {
            Ok(images) => {
                if let Some(image) = images
                    .iter()
                    .find(|i| i.tags.iter().any(|t| normalize_reference(t) == wanted))
                {
                    return Ok((dir.join(name), image.clone()));
                }
                let tags: Vec<&str> = images
                    .iter()
                    .flat_map(|i| &i.tags)
                    .map(String::as_str)
                    .collect();
                looked.push(format!(
                    "{name} (holds {})",
                    if tags.is_empty() {
                        "no tagged image".into()
                    } else {
                        tags.join(", ")
                    }
                ));
            }
            Err(e) => looked.push(format!("{name} (unreadable: {e})")),
        }
    }
    let looked = if looked.is_empty() {
        "no archives there".to_owned()
    } else {
        looked.join("; ")
    };
    Err(RuntimeError::ImageMissing(format!(
        "image {} is in no archive in {}: {looked}",
        args.image,
        dir.display()
    )))
}

/// What a checkout produced, before anything on the host changed.
struct Prepared {
    image_id: String,
    values: Values,
    has_container_service: bool,
    renames: BTreeMap<String, String>,
    templates: Vec<String>,
}

fn template_err(e: TemplateError) -> RuntimeError {
    image_err(e.to_string())
}

/// `runc spec --rootless`, made read-only and set to run `run.sh`: atomic's default.
fn default_config(runtime: &str, dir: &Path) -> Result<Vec<u8>, RuntimeError> {
    let out = Command::new(runtime)
        .args(["spec", "--rootless", "--bundle"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RuntimeError::Spawn {
            program: runtime.to_owned(),
            source,
        })?;
    let spec_path = dir.join("config.json");
    if !out.status.success() {
        return Err(RuntimeError::System(format!(
            "the image has no config.json(.template) in /exports and `{runtime} spec --rootless` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let bytes = fs::read(&spec_path).map_err(io_err(&spec_path))?;
    let mut spec: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| RuntimeError::System(format!("{runtime} spec: {e}")))?;
    spec["root"]["readonly"] = true.into();
    spec["root"]["path"] = "rootfs".into();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["run.sh"]);
    Ok(serde_json::to_vec_pretty(&spec).unwrap_or_default())
}

/// atomic's `_check_oci_configuration_file`: JSON, read-only `rootfs`; returns the bind
/// mount sources missing on the host (they get tmpfiles `d` lines).
fn check_config(bytes: &[u8], host_root: &Path) -> Result<Vec<String>, RuntimeError> {
    let config: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| image_err(format!("config.json is not valid JSON: {e}")))?;
    if config.as_object().is_some_and(|o| o.is_empty()) {
        return Ok(vec![]);
    }
    if config["root"]["readonly"] != serde_json::Value::Bool(true) {
        return Err(image_err(
            "config.json: only read-only images are supported (root.readonly must be true)",
        ));
    }
    if config["root"]["path"] != "rootfs" {
        return Err(image_err("config.json: root.path must be \"rootfs\""));
    }
    let mut missing = Vec::new();
    for mount in config["mounts"].as_array().into_iter().flatten() {
        let (Some(kind), Some(source)) = (mount["type"].as_str(), mount["source"].as_str()) else {
            continue;
        };
        if kind.contains("bind") && !host_root.join(source.trim_start_matches('/')).exists() {
            missing.push(source.to_owned());
        }
    }
    Ok(missing)
}

/// Check the image out into `tmp` and render its files there.
fn checkout(
    args: &InstallSystemArgs,
    archive_path: &Path,
    (image, staged): (&IndexedImage, Option<&checkout::Staged>),
    tmp: &Path,
    dest: &Path,
    setvalues: &[(String, String)],
    previous_uuid: Option<&str>,
) -> Result<Prepared, RuntimeError> {
    let (root, image_id) = extract(args, archive_path, image, staged, tmp, dest)?;
    render(args, &root, tmp, dest, image_id, setvalues, previous_uuid)
}

/// The image into `tmp/rootfs`: a staged checkout moved in when one is given and still
/// whole, else the archive's layers checked out. The root and the image ID.
fn extract(
    args: &InstallSystemArgs,
    archive_path: &Path,
    image: &IndexedImage,
    staged: Option<&checkout::Staged>,
    tmp: &Path,
    dest: &Path,
) -> Result<(Root, String), RuntimeError> {
    let rootfs_dir = tmp.join("rootfs");
    if let Some(staged) = staged {
        match staged.take(&rootfs_dir) {
            Ok(()) => {
                println!(
                    "Using the checkout of {} ({}) staged in {}",
                    args.image,
                    staged.image_id(),
                    staged.dir().display()
                );
                let root = Root::open(&rootfs_dir).map_err(io_err(&rootfs_dir))?;
                return Ok((root, staged.image_id().to_owned()));
            }
            Err(why) => {
                let message = format!(
                    "the checkout of {} staged in {} is not usable ({why}): checking out from {}",
                    args.image,
                    staged.dir().display(),
                    archive_path.display()
                );
                println!("{message}");
                notify::status(&message);
                verify_recorded_digest(archive_path)?;
            }
        }
    }
    println!(
        "Extracting {} from {} to {}",
        args.image,
        archive_path.display(),
        dest.display()
    );
    checkout::into_dir(
        archive_path,
        &args.image,
        image,
        tmp,
        &args.paths.checkout_dir,
    )
}

/// The container's unit (unless the manifest says `noContainerService`) and its tmpfiles
/// (the image's template, or a directory for each missing bind source), into `tmp`.
fn write_units(
    args: &InstallSystemArgs,
    root: &Root,
    rootfs_dir: &Path,
    tmp: &Path,
    values: &Values,
    missing_binds: &[String],
    has_container_service: bool,
) -> Result<(), RuntimeError> {
    let exports = Path::new("exports");
    let read = |name: &str| root.read(&exports.join(name)).map_err(io_err(rootfs_dir));
    let text = |bytes: Vec<u8>, file: &str| {
        String::from_utf8(bytes).map_err(|_| image_err(format!("{file} is not valid UTF-8")))
    };
    let unit = if has_container_service {
        let t = match read("service.template")? {
            Some(bytes) => text(bytes, "service.template")?,
            None => DEFAULT_SERVICE_TEMPLATE.to_owned(),
        };
        Some(template::substitute(&t, values, "service.template").map_err(template_err)?)
    } else {
        None
    };
    let tmpfiles = match read("tmpfiles.template")? {
        Some(bytes) => {
            let t = text(bytes, "tmpfiles.template")?;
            Some(template::substitute(&t, values, "tmpfiles.template").map_err(template_err)?)
        }
        None => Some(
            missing_binds
                .iter()
                .map(|p| format!("d    {p}   0700 0 0 - -\n"))
                .collect::<String>(),
        ),
    }
    .filter(|t| !t.is_empty());
    if let Some(unit) = &unit {
        let p = tmp.join(format!("{}.service", args.name));
        fs::write(&p, unit).map_err(io_err(&p))?;
    }
    if let Some(t) = &tmpfiles {
        let p = tmp.join(format!("tmpfiles-{}.conf", args.name));
        fs::write(&p, t).map_err(io_err(&p))?;
    }
    Ok(())
}

/// The checkout's files from the image's /exports with this install's values:
/// config.json, the unit, tmpfiles, and what the manifest says of host files.
fn render(
    args: &InstallSystemArgs,
    root: &Root,
    tmp: &Path,
    dest: &Path,
    image_id: String,
    setvalues: &[(String, String)],
    previous_uuid: Option<&str>,
) -> Result<Prepared, RuntimeError> {
    let rootfs_dir = tmp.join("rootfs");

    let exports = Path::new("exports");
    let read = |name: &str| root.read(&exports.join(name)).map_err(io_err(&rootfs_dir));
    if root.dir(exports).is_err() {
        println!("Warning: /exports directory not found. Default config files will be generated.");
    }
    let manifest: Option<serde_json::Value> = match read("manifest.json")? {
        None => None,
        Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
            image_err(format!(
                "Invalid manifest.json file in image {}: {e}",
                args.image
            ))
        })?),
    };
    let facts = Facts {
        name: &args.name,
        image: &args.image,
        image_id: &image_id,
        destdir: &dest.to_string_lossy(),
        runtime: &args.paths.runtime,
        helper: &paths::helper(),
        // An update keeps the deployment's identity, as atomic did: a new UUID only for a
        // first install.
        uuid: previous_uuid.map_or_else(values::new_uuid, str::to_owned),
        cap_last_cap: values::cap_last_cap(),
    };
    let values = values::amend(setvalues, manifest.as_ref(), &facts);
    let text = |bytes: Vec<u8>, file: &str| {
        String::from_utf8(bytes).map_err(|_| image_err(format!("{file} is not valid UTF-8")))
    };

    let config_json = if let Some(bytes) = read("config.json")? {
        bytes
    } else if let Some(bytes) = read("config.json.template")? {
        let t = text(bytes, "config.json.template")?;
        template::substitute(&t, &values, "config.json.template")
            .map_err(template_err)?
            .into_bytes()
    } else {
        default_config(&args.paths.runtime, tmp)?
    };
    let missing_binds = check_config(&config_json, &args.paths.host_root)?;
    let config_path = tmp.join("config.json");
    fs::write(&config_path, &config_json).map_err(io_err(&config_path))?;

    let attr = |key: &str| manifest.as_ref().and_then(|m| m.get(key));
    let mut renames = BTreeMap::new();
    for (from, to) in attr("renameFiles")
        .and_then(|r| r.as_object())
        .into_iter()
        .flatten()
    {
        let to = to.as_str().unwrap_or_default();
        let to = template::substitute(to, &values, "manifest.json").map_err(template_err)?;
        renames.insert(from.clone(), to);
    }
    let templates: Vec<String> = attr("installedFilesTemplate")
        .and_then(|t| t.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let has_container_service = attr("noContainerService") != Some(&serde_json::Value::Bool(true));

    write_units(
        args,
        root,
        &rootfs_dir,
        tmp,
        &values,
        &missing_binds,
        has_container_service,
    )?;
    Ok(Prepared {
        image_id,
        values,
        has_container_service,
        renames,
        templates,
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The record of an update that failed to start and was rolled back: not retried.
fn attempt_key(image_id: &str, setvalues: &[String]) -> String {
    format!("{image_id} {}", setvalues.join("\u{1f}"))
}

/// A container name from the command line, checked with the config's rule before it
/// names any file: never a path.
fn check_name(name: &str) -> Result<(), RuntimeError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(RuntimeError::Usage(format!(
            "{name:?} is not a valid container name"
        )))
    }
}

/// One run at a time per container (install, start, rollback, uninstall); others wait,
/// saying so.
fn lock(paths: &SystemPaths, name: &str) -> Result<fs::File, RuntimeError> {
    marks::lock_file(&paths.state_dir.join("lock-system"), name).map_err(RuntimeError::State)
}

/// `atomic-preload install-system`.
pub fn install(args: &InstallSystemArgs) -> Result<(), RuntimeError> {
    let setvalues = check_install(args)?;
    let _lock = lock(&args.paths, &args.name)?;
    let layout = Layout {
        paths: &args.paths,
        name: &args.name,
    };
    layout.recover()?;
    // The archive is indexed here and read again by the checkout: a stage onto this host
    // waits until both are done.
    let ostree = args.preload_dir.join("ostree");
    let _archives = marks::lock_archives(&ostree, false).map_err(io_err(&ostree))?;
    // A checkout staged with the image saves reading the archive at all (until it turns
    // out not to be usable: then the archive is checked out after all).
    let staged = checkout::find(&args.preload_dir, &args.image, &args.archive);
    let (archive_path, image) = match &staged {
        Some(staged) => {
            // The archive is the fallback: trusted as find_image trusts what it reads.
            let names = [staged.archive().to_owned()];
            crate::stages::load::check_trusted(&ostree, &names, &args.paths.state_dir)?;
            (ostree.join(staged.archive()), staged.indexed())
        }
        None => find_image(args)?,
    };
    let image_id = image.id.clone();
    let current = layout.active()?;
    if let Some(message) = nothing_to_do(args, &layout, current.as_ref(), &image_id)? {
        println!("{message}");
        notify::status(&message);
        return Ok(());
    }

    // A digest recorded when the archive was staged (`stage --system`): its content must
    // match before anything is checked out, as the load stage checks Docker archives.
    // Only here, where a checkout is about to be made: an installed one is not re-read
    // (nor is it for a staged checkout, which has its own proof; a fallback checks).
    if staged.is_none() {
        verify_recorded_digest(&archive_path)?;
    }
    let slot = match &current {
        Some((0, _)) => 1,
        _ => 0,
    };
    let dest = layout.slot(slot);
    let tmp = layout.temp_slot(slot);
    let info = match build(
        args,
        &archive_path,
        (&image, staged.as_ref()),
        &tmp,
        &dest,
        &setvalues,
        current.as_ref(),
    ) {
        Ok(info) => info,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    // From here on the host changes. The new deployment goes in under its final name
    // first (a crash leaves it unreferenced, and the next run builds it again), then the
    // pending record, then everything else.
    layout.discard(slot)?;
    durable::rename(&tmp, &dest).map_err(io_err(&tmp))?;
    let pending = Pending {
        kind: if current.is_some() {
            "update"
        } else {
            "install"
        }
        .into(),
        to: slot,
        from: current.as_ref().map(|(n, _)| *n),
        was_active: current
            .as_ref()
            .is_some_and(|(_, i)| i.has_container_service)
            && layout.is_active(),
    };
    layout.begin(&pending)?;
    layout.finish(&pending)?;
    let message = format!(
        "{} installed from {} ({}) in {}{}",
        args.name,
        args.image,
        info.revision,
        dest.display(),
        if info.has_container_service {
            format!("; runs as {}", layout.unit_name())
        } else {
            "; host files only (noContainerService)".into()
        }
    );
    println!("{message}");
    notify::status(&message);
    Ok(())
}

/// What `install-system` refuses before it locks anything: a bad or reserved name, bad
/// `--set` values, no runtime. The values, parsed.
fn check_install(args: &InstallSystemArgs) -> Result<Vec<(String, String)>, RuntimeError> {
    check_name(&args.name).map_err(|_| {
        RuntimeError::Usage(format!(
            "--name {:?} is not a valid container name",
            args.name
        ))
    })?;
    // Only a new installation is refused: one made before the rule can still be rolled
    // back or uninstalled.
    if let Some(why) = crate::config::system_name_taken(&args.name) {
        return Err(RuntimeError::Usage(format!(
            "a system container cannot be named {:?}: it would install {}, {why}",
            args.name,
            args.paths
                .unit_dir
                .join(format!("{}.service", args.name))
                .display()
        )));
    }
    let setvalues = parse_setvalues(&args.setvalues)?;
    // As atomic did: no runtime, no install (the unit would only fail later).
    if !Path::new(&args.paths.runtime).exists() {
        return Err(RuntimeError::System(format!(
            "cannot install the container: the runtime {} is not installed",
            args.paths.runtime
        )));
    }
    Ok(setvalues)
}

/// Why this install has nothing to do (the message to show), if so: the same image and
/// values are installed (a removed unit is put back), or they failed to start before and
/// were rolled back. An error when the unit exists but is not ours.
fn nothing_to_do(
    args: &InstallSystemArgs,
    layout: &Layout,
    current: Option<&(u8, Info)>,
    image_id: &str,
) -> Result<Option<String>, RuntimeError> {
    let Some((slot, info)) = current else {
        if !layout.owns_unit()? {
            return Err(image_err(format!(
                "{} exists and was not installed by atomic-preload; not overwriting it",
                layout.unit_out().display()
            )));
        }
        return Ok(None);
    };
    if info.revision == image_id && info.setvalues == args.setvalues && info.image == args.image {
        if info.has_container_service && !layout.unit_out().exists() {
            // Someone removed the unit: put the deployment's copy back.
            install_copy(
                &layout.slot(*slot).join(layout.unit_name()),
                &layout.unit_out(),
            )?;
            layout.systemctl_ok(&["daemon-reload"])?;
        }
        return Ok(Some(format!(
            "{} is installed from {} ({}) in {}",
            args.name,
            args.image,
            image_id,
            layout.slot(*slot).display()
        )));
    }
    let failed = Marks::new(&args.paths.state_dir, "rolled-back").map_err(RuntimeError::State)?;
    if failed
        .read(&args.name)
        .is_some_and(|m| m.get("attempt") == Some(attempt_key(image_id, &args.setvalues).as_str()))
    {
        return Ok(Some(format!(
            "not updating {}: {} ({image_id}) with these values failed to start before and was rolled back; {} stays on {}",
            args.name,
            args.image,
            args.name,
            layout.slot(*slot).display()
        )));
    }
    Ok(None)
}

/// The new deployment, whole, in `tmp`: checked out, rendered, its record written, and
/// synced to disk before it gets its final name.
fn build(
    args: &InstallSystemArgs,
    archive_path: &Path,
    image: (&IndexedImage, Option<&checkout::Staged>),
    tmp: &Path,
    dest: &Path,
    setvalues: &[(String, String)],
    current: Option<&(u8, Info)>,
) -> Result<Info, RuntimeError> {
    fs::create_dir_all(tmp).map_err(io_err(tmp))?;
    let previous_uuid = current
        .and_then(|(_, info)| info.values.get("UUID"))
        .map(String::as_str);
    let prepared = checkout(
        args,
        archive_path,
        image,
        tmp,
        dest,
        setvalues,
        previous_uuid,
    )?;
    let info = record(args, &prepared, current, tmp, archive_path)?;
    write_info(tmp, &info)?;
    let fd = fs::File::open(tmp).map_err(io_err(tmp))?;
    rustix::fs::syncfs(&fd).map_err(|e| io_err(tmp)(e.into()))?;
    Ok(info)
}

/// The archive's content against its sidecar (`NAME.sha256`), when it has one; a sidecar
/// that cannot be used is the image's problem (exit 65), like a mismatch.
fn verify_recorded_digest(archive_path: &Path) -> Result<(), RuntimeError> {
    use crate::runtime::digest;
    let Some(expected) =
        digest::recorded_digest(archive_path).map_err(|e| image_err(e.to_string()))?
    else {
        return Ok(());
    };
    let actual = digest::sha256_of(archive_path).map_err(io_err(archive_path))?;
    if actual != expected {
        return Err(RuntimeError::DigestMismatch {
            path: archive_path.to_owned(),
            expected,
            actual,
        });
    }
    Ok(())
}

/// The new deployment's `info`: what it is, and the host files it will own (planned
/// against what the host holds now, before anything is changed).
fn record(
    args: &InstallSystemArgs,
    prepared: &Prepared,
    current: Option<&(u8, Info)>,
    tmp: &Path,
    archive_path: &Path,
) -> Result<Info, RuntimeError> {
    let rootfs = Root::open(&tmp.join("rootfs")).map_err(io_err(tmp))?;
    let mut info = Info {
        image: args.image.clone(),
        revision: prepared.image_id.clone(),
        created: now(),
        values: prepared.values.clone(),
        setvalues: args.setvalues.clone(),
        has_container_service: prepared.has_container_service,
        installed_files: Vec::new(),
        installed_files_checksum: hostfiles::Installed::new(),
        installed_files_template: prepared.templates.clone(),
        rename_installed_files: prepared.renames.clone(),
        remote: None,
        runtime: args.paths.runtime.clone(),
        archive: archive_path.display().to_string(),
        verified: current.is_none(),
    };
    let empty = hostfiles::Installed::new();
    let replaceable = current.map_or(&empty, |(_, i)| &i.installed_files_checksum);
    info.plan_host_files(&rootfs, &args.paths.host_root, replaceable)?;
    Ok(info)
}

impl Info {
    /// How this deployment's host files are made from its rootfs.
    fn host_files<'a>(&'a self, rootfs: &'a Root) -> hostfiles::Source<'a> {
        hostfiles::Source {
            rootfs,
            templates: &self.installed_files_template,
            renames: &self.rename_installed_files,
            values: &self.values,
        }
    }

    /// Record the host files this deployment will own (see [`hostfiles::plan`]).
    fn plan_host_files(
        &mut self,
        rootfs: &Root,
        host_root: &Path,
        replaceable: &hostfiles::Installed,
    ) -> Result<(), RuntimeError> {
        let planned = hostfiles::plan(&self.host_files(rootfs), host_root, replaceable)
            .map_err(host_files_err)?;
        self.installed_files = planned.keys().cloned().collect();
        self.installed_files_checksum = planned;
        Ok(())
    }
}

impl Layout<'_> {
    fn begin(&self, pending: &Pending) -> Result<(), RuntimeError> {
        let path = self.pending_path();
        let json = serde_json::to_vec_pretty(pending).unwrap_or_default();
        durable::write(&path, &json, None).map_err(io_err(&path))
    }

    /// Make `pending.to` the active deployment, step by step, each of which a later run
    /// may do again: stop the service if it ran, remove the old tmpfiles, make the host
    /// files what the new record says, install its unit and tmpfiles, swap the link,
    /// `daemon-reload`, `systemd-tmpfiles --create`, start the service again; only then
    /// is the pending record removed.
    fn finish(&self, pending: &Pending) -> Result<Info, RuntimeError> {
        let dir = self.slot(pending.to);
        let info = self.read_info(&dir)?.ok_or_else(|| {
            RuntimeError::System(format!("{} has no readable info", dir.display()))
        })?;
        let old = match pending.from {
            Some(n) => self.read_info(&self.slot(n))?,
            None => None,
        };
        if pending.was_active && self.is_active() {
            self.systemctl_ok(&["stop", &self.unit_name()])?;
        }
        let tmpfiles_name = format!("tmpfiles-{}.conf", self.name);
        if let Some(from) = pending.from {
            let old_tmpfiles = self.slot(from).join(&tmpfiles_name);
            if old_tmpfiles.exists() {
                let _ = self.tmpfiles("--remove", &old_tmpfiles);
            }
        }
        let empty = hostfiles::Installed::new();
        let old_files = old.as_ref().map_or(&empty, |i| &i.installed_files_checksum);
        match open_rootfs(&dir)? {
            Some(rootfs) => {
                hostfiles::apply(
                    &info.host_files(&rootfs),
                    &self.paths.host_root,
                    &info.installed_files_checksum,
                    old_files,
                )
                .map_err(host_files_err)?;
            }
            // A host-files-only deployment after its activation (atomic keeps no rootfs):
            // what it owns is on the host already.
            None => hostfiles::remove(
                &old_files
                    .iter()
                    .filter(|(k, _)| !info.installed_files_checksum.contains_key(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                &self.paths.host_root,
            )
            .map_err(host_files_err)?,
        }
        let unit_copy = dir.join(self.unit_name());
        if info.has_container_service {
            install_copy(&unit_copy, &self.unit_out())?;
        } else {
            durable::remove_file(&self.unit_out()).map_err(io_err(&self.unit_out()))?;
        }
        let tmpfiles_out = self.tmpfiles_out();
        let has_tmpfiles = install_copy(&dir.join(&tmpfiles_name), &tmpfiles_out)?;
        self.swap_link(pending.to)?;
        if info.has_container_service && self.systemd_has_current_unit() {
            println!(
                "systemd has {} as written: no daemon-reload",
                self.unit_name()
            );
        } else {
            self.systemctl_ok(&["daemon-reload"])?;
        }
        if has_tmpfiles {
            self.tmpfiles("--create", &tmpfiles_out)?;
        }
        if pending.was_active {
            self.systemctl_ok(&["start", &self.unit_name()])?;
        }
        durable::remove_file(&self.pending_path()).map_err(io_err(&self.pending_path()))?;
        if !info.has_container_service {
            // atomic kept no rootfs for host-files-only images.
            let _ = fs::remove_dir_all(dir.join("rootfs"));
        }
        Ok(info)
    }
}

/// `atomic-preload start-system`: start NAME.service; roll a failing update back.
pub fn start(args: &StartSystemArgs) -> Result<(), RuntimeError> {
    check_name(&args.name)?;
    let _lock = lock(&args.paths, &args.name)?;
    let layout = Layout {
        paths: &args.paths,
        name: &args.name,
    };
    layout.recover()?;
    let Some((slot, info)) = layout.active()? else {
        return Err(RuntimeError::System(format!(
            "{} is not installed (no {})",
            args.name,
            layout.link().display()
        )));
    };
    if !info.has_container_service {
        println!(
            "{} has no container service (noContainerService)",
            args.name
        );
        return Ok(());
    }
    let unit = layout.unit_name();
    let started = layout.systemctl_ok(&["start", &unit]);
    if info.verified {
        started?;
        notify::status(&format!(
            "started {unit} ({} in {})",
            info.image,
            layout.slot(slot).display()
        ));
        return Ok(());
    }
    let ok = started.is_ok() && settled(&layout, Duration::from_secs(args.settle));
    if ok {
        let mut info = info;
        info.verified = true;
        let dir = layout.slot(slot);
        write_info(&dir, &info)?;
        notify::status(&format!(
            "started {unit} ({} in {})",
            info.image,
            dir.display()
        ));
        return Ok(());
    }
    let failed = Marks::new(&args.paths.state_dir, "rolled-back").map_err(RuntimeError::State)?;
    let mut mark = Mark::default();
    mark.set("attempt", attempt_key(&info.revision, &info.setvalues));
    mark.set("image", &info.image);
    failed
        .write(&args.name, &mark)
        .map_err(RuntimeError::State)?;
    eprintln!(
        "{unit} failed to start from {}; rolling back",
        layout.slot(slot).display()
    );
    // It may be waiting to restart: stop it for good, and forget its failed starts so the
    // previous deployment gets a clean start.
    let _ = layout.systemctl(&["stop", &unit]);
    let _ = layout.systemctl(&["reset-failed", &unit]);
    rollback_layout(&layout, true)?;
    Err(RuntimeError::SystemImage(format!(
        "{unit} failed to start with {} ({}) from {}; rolled back to {}, which is running",
        info.image,
        info.revision,
        layout.slot(slot).display(),
        layout.slot(1 - slot).display()
    )))
}

/// Whether the unit stays up (not failed, not waiting to restart) for `settle`.
fn settled(layout: &Layout<'_>, settle: Duration) -> bool {
    let deadline = Instant::now() + settle;
    loop {
        let state = layout
            .systemctl(&[
                "show",
                "--value",
                "-p",
                "ActiveState,SubState",
                &layout.unit_name(),
            ])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut lines = state.lines();
        let (active, sub) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
        if active == "failed" || active == "inactive" || sub == "auto-restart" {
            return false;
        }
        if Instant::now() >= deadline {
            return active == "active";
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Make the other deployment active again. With `start`, its service is started
/// afterwards whether or not the current one was running (an automatic rollback's
/// service had just failed).
fn rollback_layout(layout: &Layout<'_>, start: bool) -> Result<(), RuntimeError> {
    let Some((slot, current)) = layout.active()? else {
        return Err(RuntimeError::Usage(format!(
            "{} is not installed",
            layout.name
        )));
    };
    let other = 1 - slot;
    let dir = layout.slot(other);
    let Some(mut previous) = layout.read_info(&dir)? else {
        return Err(RuntimeError::Usage(format!(
            "cannot find a previous deployment to roll back to at {}",
            dir.display()
        )));
    };
    if previous.has_container_service && !dir.join(layout.unit_name()).exists() {
        return Err(RuntimeError::System(format!(
            "cannot find the service file of the previous deployment; {} may be corrupted",
            dir.display()
        )));
    }
    println!(
        "Rolling back container {} to the checkout at {}",
        layout.name,
        dir.display()
    );
    // The host files it will own again, planned against what the current one owns.
    if let Some(rootfs) = open_rootfs(&dir)? {
        previous.plan_host_files(
            &rootfs,
            &layout.paths.host_root,
            &current.installed_files_checksum,
        )?;
    }
    previous.verified = true;
    write_info(&dir, &previous)?;
    let pending = Pending {
        kind: "rollback".into(),
        to: other,
        from: Some(slot),
        was_active: previous.has_container_service
            && (start || (current.has_container_service && layout.is_active())),
    };
    layout.begin(&pending)?;
    layout.finish(&pending).map(drop)
}

/// `atomic-preload rollback NAME`.
pub fn rollback(args: &SystemNameArgs) -> Result<(), RuntimeError> {
    check_name(&args.name)?;
    let _lock = lock(&args.paths, &args.name)?;
    let layout = Layout {
        paths: &args.paths,
        name: &args.name,
    };
    // A rollback cut short and run again is finished, not done twice.
    let interrupted = layout.read_pending()?.is_some_and(|p| p.kind == "rollback");
    layout.recover()?;
    if interrupted {
        return Ok(());
    }
    rollback_layout(&layout, false)
}

/// Whether NAME is (even partly) installed as a system container.
pub fn is_installed(paths: &SystemPaths, name: &str) -> bool {
    is_valid_name(name) && Layout { paths, name }.exists()
}

/// `atomic-preload uninstall NAME`.
pub fn uninstall(args: &SystemNameArgs) -> Result<(), RuntimeError> {
    check_name(&args.name)?;
    let _lock = lock(&args.paths, &args.name)?;
    let layout = Layout {
        paths: &args.paths,
        name: &args.name,
    };
    if !layout.exists() {
        println!("{} is not installed as a system container", args.name);
        return Ok(());
    }
    // Host files of the active deployment, and of both while an activation is pending
    // (either may own some of them).
    let mut records: Vec<Info> = layout.active()?.map(|(_, i)| i).into_iter().collect();
    if let Some(p) = layout.read_pending()? {
        for n in [Some(p.to), p.from].into_iter().flatten() {
            records.extend(layout.read_info(&layout.slot(n))?);
        }
    }
    if records.iter().all(|i| i.has_container_service) {
        // Its exit status says little (the unit may be gone already); not being able to
        // run systemctl at all stops the uninstall, to be run again.
        layout.systemctl(&["disable", "--now", &layout.unit_name()])?;
    }
    // The unit goes first, so the container cannot be started while files disappear.
    durable::remove_file(&layout.unit_out()).map_err(io_err(&layout.unit_out()))?;
    layout.systemctl_ok(&["daemon-reload"])?;
    let tmpfiles_out = layout.tmpfiles_out();
    if tmpfiles_out.exists() {
        let _ = layout.tmpfiles("--remove", &tmpfiles_out);
        durable::remove_file(&tmpfiles_out).map_err(io_err(&tmpfiles_out))?;
    }
    for info in &records {
        hostfiles::remove(&info.installed_files_checksum, &args.paths.host_root)
            .map_err(host_files_err)?;
    }
    // The link, then the deployments, then the pending record: a run cut short anywhere
    // still finds something to finish with.
    durable::remove_file(&layout.link()).map_err(io_err(&layout.link()))?;
    for n in [0, 1] {
        layout.discard(n)?;
        remove_dir(&layout.temp_slot(n))?;
    }
    durable::remove_file(&layout.pending_path()).map_err(io_err(&layout.pending_path()))?;
    if let Ok(marks) = Marks::new(&args.paths.state_dir, "rolled-back") {
        let _ = marks.remove(&args.name);
    }
    println!("{} uninstalled", args.name);
    Ok(())
}
