//! `atomic-preload status`: what happened at boot, one line per config entry, from what
//! the stages leave behind (load marks, install marks, system deployments) and systemd's
//! view of each unit. On an image root (`--root DIR`, before its first boot) it says what
//! will happen instead: which archive holds each entry's image, with its digest.

use crate::cli::StatusArgs;
use crate::config::{Entry, Named};
use crate::engines::EngineKind;
use crate::runtime::RuntimeError;
use crate::runtime::digest;
use crate::runtime::marks::{Mark, Marks};
use crate::stages::load::list_archives;
use crate::stages::system::archive;
use crate::stages::system::deploy::Info;
use crate::{generator, paths};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One archive an entry's unit uses.
#[derive(Debug, Serialize)]
pub struct ArchiveStatus {
    pub file: String,
    /// The digest recorded when it was staged (`NAME.sha256`), if any.
    pub recorded_sha256: Option<String>,
    /// Why its sidecar cannot be used (the load stage's own verdict: not a digest, not a
    /// regular file, too large); the unit will fail on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecar_problem: Option<String>,
    /// When it was loaded (UTC), and the digest of what was loaded.
    pub loaded_at: Option<String>,
    pub loaded_sha256: Option<String>,
    /// The images in it: from the load mark, or (image root) read from the archive.
    pub images: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct UnitStatus {
    pub unit: String,
    pub active: String,
    pub sub: String,
    pub result: String,
    /// The last status line a stage sent (a failure's reason).
    pub status_text: String,
}

#[derive(Debug, Serialize)]
pub struct EntryStatus {
    pub name: String,
    /// docker, podman, or system.
    pub engine: String,
    pub image: String,
    pub archives: Vec<ArchiveStatus>,
    /// When its install ran (UTC) and from which image or deployment.
    pub installed_at: Option<String>,
    pub installed: Option<String>,
    /// systemd's view (none on an image root).
    pub units: Vec<UnitStatus>,
    pub problem: Option<String>,
    pub failed: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub config: String,
    /// Whether there is a config at all (no config: nothing is preloaded, and that is no
    /// failure).
    pub config_exists: bool,
    pub config_problems: Vec<String>,
    pub entries: Vec<EntryStatus>,
    /// System images checked out at build time (`stage --checkout`), not yet used.
    pub staged_checkouts: Vec<StagedCheckout>,
}

/// One staged checkout, and whether the first install of its image will use it.
#[derive(Debug, Serialize)]
pub struct StagedCheckout {
    pub dir: String,
    pub images: Vec<String>,
    pub image_id: Option<String>,
    pub archive: Option<String>,
    pub entries: Option<u64>,
    pub bytes: Option<u64>,
    /// `usable`, or why not (its install checks the archive out instead).
    pub state: String,
}

/// `seconds` since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn mtime(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| utc(m.mtime()))
}

struct Context<'a> {
    args: &'a StatusArgs,
    root: PathBuf,
    /// The preload, state and checkout directories, resolved inside the root (`None`
    /// when they cannot be: a symlink loop, shown as a config problem).
    preload: Option<PathBuf>,
    state: Option<PathBuf>,
    checkout: Option<PathBuf>,
    /// systemd is asked only about the running host, not an image root.
    live: bool,
    host_engine: EngineKind,
}

impl Context<'_> {
    /// A message with the image root's paths shown as the booted machine's.
    fn shown(&self, message: String) -> String {
        if self.root == Path::new("/") {
            message
        } else {
            message.replace(&self.root.display().to_string(), "")
        }
    }

    /// `name` in `dir` (one of the resolved directories), its own symlinks resolved inside
    /// the root too: an image's `docker/app.tar -> /srv/app.tar` is the image's file.
    fn inside(&self, dir: &Path, name: &str) -> Option<PathBuf> {
        let rel = dir.strip_prefix(&self.root).ok()?.join(name);
        paths::under(&self.root, &rel.display().to_string()).ok()
    }

    fn unit(&self, unit: &str) -> Option<UnitStatus> {
        if !self.live {
            return None;
        }
        let out = Command::new(&self.args.systemctl)
            .args([
                "show",
                "--property=ActiveState,SubState,Result,StatusText",
                unit,
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or("")
                .to_owned()
        };
        Some(UnitStatus {
            unit: unit.into(),
            active: get("ActiveState"),
            sub: get("SubState"),
            result: get("Result"),
            status_text: get("StatusText"),
        })
    }

    /// The archives an entry's unit uses: those it names, else (live) the one whose load
    /// mark holds its image, else (image root) the ones that hold it.
    /// Also whether one of them is known to hold the image.
    fn archives(
        &self,
        entry: &Entry,
        dir: Option<&Path>,
        marks: Option<&Marks>,
    ) -> (Vec<ArchiveStatus>, bool) {
        let names = if entry.archives.is_empty() {
            dir.and_then(|dir| list_archives(dir).ok())
                .unwrap_or_default()
        } else {
            entry.archives.clone()
        };
        let mut all: Vec<ArchiveStatus> = names
            .iter()
            .map(|name| {
                let path = dir.and_then(|dir| self.inside(dir, name));
                let mark: Option<Mark> = marks.and_then(|m| m.read(name));
                let images = match &mark {
                    Some(mark) => mark
                        .get("images")
                        .unwrap_or("")
                        .split_whitespace()
                        .map(String::from)
                        .collect(),
                    // Before the first boot: read the archive itself.
                    None => match &path {
                        Some(path) if !self.live && path.is_file() => archive::index(path)
                            .map(|images| images.into_iter().flat_map(|i| i.tags).collect())
                            .unwrap_or_default(),
                        _ => vec![],
                    },
                };
                // The load stage's parser, so status and the unit agree.
                let recorded = path.as_ref().map(|path| digest::recorded_digest(path));
                ArchiveStatus {
                    file: name.clone(),
                    recorded_sha256: recorded
                        .as_ref()
                        .and_then(|r| r.as_ref().ok().cloned().flatten()),
                    sidecar_problem: recorded
                        .and_then(|r| r.err())
                        .map(|e| self.shown(e.to_string())),
                    loaded_at: mark
                        .as_ref()
                        .and_then(|_| marks.and_then(|m| mtime(&m.path_of(name)))),
                    loaded_sha256: mark
                        .as_ref()
                        .and_then(|m| m.get("sha256").map(String::from)),
                    images,
                }
            })
            .collect();
        let wanted = archive::normalize_reference(&entry.image);
        let holds = |a: &ArchiveStatus| {
            a.images
                .iter()
                .any(|i| archive::normalize_reference(i) == wanted)
        };
        let held = all.iter().any(holds);
        if entry.archives.is_empty() && held {
            all.retain(holds);
        }
        (all, held)
    }

    /// Whether `stage --podman-store` put the image into the root's read-only store.
    /// Read from the store's image list (c/storage's `overlay-images/images.json`): asking
    /// podman would write its database into the image root.
    fn in_podman_store(&self, image: &str) -> bool {
        let list = paths::under(
            &self.root,
            &format!(
                "{}/overlay-images/images.json",
                crate::commands::stage::PODMAN_STORE
            ),
        );
        let Ok(bytes) = list.and_then(std::fs::read) else {
            return false;
        };
        let Ok(serde_json::Value::Array(images)) = serde_json::from_slice(&bytes) else {
            return false;
        };
        let wanted = archive::normalize_reference(image);
        let local = archive::normalize_reference(&format!("localhost/{image}"));
        images
            .iter()
            .filter_map(|i| i["names"].as_array())
            .flatten()
            .filter_map(|n| n.as_str())
            .map(archive::normalize_reference)
            .any(|n| n == wanted || n == local)
    }

    fn entry(&self, entry: &Entry) -> EntryStatus {
        let (mut status, held_image) = if entry.is_system() {
            self.system_entry(entry)
        } else {
            self.engine_entry(entry)
        };
        status.failed = status
            .units
            .iter()
            .any(|u| u.active == "failed" || (u.result != "success" && !u.result.is_empty()));
        status.problem = status
            .units
            .iter()
            .find(|u| u.active == "failed" || u.sub == "auto-restart")
            .map(|u| {
                if u.status_text.is_empty() {
                    format!("{} {} ({})", u.unit, u.active, u.result)
                } else {
                    u.status_text.clone()
                }
            });
        if !self.live {
            self.predict(entry, &mut status, held_image);
        }
        status
    }

    /// A system container's status, and whether an archive holds its image.
    fn system_entry(&self, entry: &Entry) -> (EntryStatus, bool) {
        let state = self.state.as_deref();
        let unit_name = paths::container_unit(&entry.name);
        let dir = self.preload.as_ref().and_then(|p| self.inside(p, "ostree"));
        let link = self.checkout.as_ref().map(|c| c.join(&entry.name));
        let info: Option<Info> = link
            .as_ref()
            .and_then(|link| self.inside(link, "info"))
            .and_then(|info| std::fs::read(info).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        let marks = state.and_then(|s| Marks::new_existing(s, "loaded/ostree"));
        let (archives, held) = self.archives(entry, dir.as_deref(), marks.as_ref());
        let status = EntryStatus {
            name: entry.name.clone(),
            engine: "system".into(),
            image: entry.image.clone(),
            archives,
            installed_at: info.as_ref().map(|i| utc(i.created as i64)),
            installed: info.as_ref().map(|i| {
                let target = link
                    .as_ref()
                    .and_then(|link| std::fs::read_link(link).ok())
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                format!("{target} ({})", i.revision)
            }),
            units: [unit_name.clone(), format!("{}.service", entry.name)]
                .iter()
                .filter_map(|u| self.unit(u))
                .collect(),
            problem: None,
            failed: false,
        };
        (status, held)
    }

    /// An engine's entry's status, and whether an archive (or the Podman store) holds its
    /// image.
    fn engine_entry(&self, entry: &Entry) -> (EntryStatus, bool) {
        let state = self.state.as_deref();
        let unit_name = paths::container_unit(&entry.name);
        let engine = entry.engine.unwrap_or(self.host_engine);
        let dir = self.preload.as_ref().and_then(|p| self.inside(p, "docker"));
        let marks =
            state.and_then(|s| Marks::new_existing(s, &format!("loaded/{}", engine.store())));
        let installed = entry.install.as_ref().and_then(|_| {
            let marks = Marks::new_existing(state?, "installed")?;
            let mark = marks.read(&entry.name)?;
            Some((
                mtime(&marks.path_of(&entry.name)),
                mark.get("image").unwrap_or("").to_owned(),
            ))
        });
        let (archives, held) = self.archives(entry, dir.as_deref(), marks.as_ref());
        let held = held
            || (!self.live && engine.store() == "podman" && self.in_podman_store(&entry.image));
        let status = EntryStatus {
            name: entry.name.clone(),
            engine: engine.as_str().into(),
            image: entry.image.clone(),
            archives,
            installed_at: installed.as_ref().and_then(|(at, _)| at.clone()),
            installed: installed.map(|(_, image)| image),
            units: self.unit(&unit_name).into_iter().collect(),
            problem: None,
            failed: false,
        };
        (status, held)
    }

    /// Before the first boot (`--root`): what will fail, from the archives as staged.
    fn predict(&self, entry: &Entry, status: &mut EntryStatus, held_image: bool) {
        let mismatch = status.archives.iter().find(|a| {
            a.recorded_sha256.as_ref().is_some_and(|want| {
                self.preload
                    .as_ref()
                    .and_then(|p| self.inside(p, preload_dir_of(entry)))
                    .and_then(|dir| self.inside(&dir, &a.file))
                    .is_some_and(|file| digest::sha256_of(&file).is_ok_and(|have| &have != want))
            })
        });
        let bad_sidecar = status
            .archives
            .iter()
            .find_map(|a| a.sidecar_problem.clone());
        status.problem = if let Some(problem) = bad_sidecar {
            Some(format!("{problem}: its unit will fail"))
        } else if let Some(a) = mismatch {
            Some(format!(
                "{} does not match its recorded digest: its unit will fail",
                a.file
            ))
        } else if !held_image {
            Some(format!(
                "no archive holds {}: its unit will fail",
                entry.image
            ))
        } else {
            None
        };
        status.failed = status.problem.is_some();
    }
}

impl Context<'_> {
    /// Every staged checkout, each proven as an install would (record, archive, tree).
    fn staged_checkouts(&self) -> Vec<StagedCheckout> {
        use crate::stages::system::checkout;
        let Some(preload) = &self.preload else {
            return vec![];
        };
        let ostree = preload.join("ostree");
        let listed = checkout::list(preload).unwrap_or_default();
        listed
            .into_iter()
            .map(|listed| {
                let dir = self.shown(listed.dir.display().to_string());
                match listed.record {
                    Err(e) => StagedCheckout {
                        dir,
                        images: vec![],
                        image_id: None,
                        archive: None,
                        entries: None,
                        bytes: None,
                        state: format!("unusable: {e}"),
                    },
                    Ok(record) => {
                        let state = match checkout::stale(&record, &ostree) {
                            Some(why) => format!("stale: {}", self.shown(why)),
                            None => match checkout::tree(&listed.dir.join("rootfs")) {
                                Ok(tree) if tree == record.tree => "usable".into(),
                                Ok(_) => "damaged: its tree is not the one recorded".into(),
                                Err(e) => format!("damaged: {e}"),
                            },
                        };
                        StagedCheckout {
                            dir,
                            images: record.tags,
                            image_id: Some(record.image_id),
                            archive: Some(record.archive),
                            entries: Some(record.tree.entries),
                            bytes: Some(record.tree.bytes),
                            state,
                        }
                    }
                }
            })
            .collect()
    }
}

fn preload_dir_of(entry: &Entry) -> &'static str {
    if entry.is_system() {
        "ostree"
    } else {
        "docker"
    }
}

pub fn report(args: &StatusArgs) -> Report {
    let root = args.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let live = args.root.is_none();
    let mut unresolvable = Vec::new();
    let mut resolve = |dir: &Path| match paths::under(&root, &dir.display().to_string()) {
        Ok(path) => Some(path),
        Err(e) => {
            unresolvable.push(format!(
                "{}: cannot be read in the root: {e}",
                dir.display()
            ));
            None
        }
    };
    let context = Context {
        args,
        live,
        host_engine: EngineKind::detect(&root),
        preload: resolve(&args.preload_dir),
        state: resolve(&args.state_dir),
        checkout: resolve(&args.checkout_dir),
        root: root.clone(),
    };
    let effective =
        generator::load_effective_under(args.root.as_deref(), &args.config.display().to_string());
    let shown = args.config.display().to_string();
    let config_exists = paths::under(&root, &shown).is_ok_and(|p| p.exists());
    let mut report = Report {
        config: shown.clone(),
        config_exists,
        config_problems: effective
            .all_problems()
            .iter()
            .map(|p| p.display(&shown).to_string())
            .chain(unresolvable)
            .collect(),
        entries: Vec::new(),
        staged_checkouts: context.staged_checkouts(),
    };
    for item in &effective.items {
        match item {
            Named::Valid(entry) => report.entries.push(context.entry(entry)),
            Named::Invalid { name, .. } => {
                let unit = paths::container_unit(name);
                report.entries.push(EntryStatus {
                    name: name.clone(),
                    engine: String::new(),
                    image: String::new(),
                    archives: vec![],
                    installed_at: None,
                    installed: None,
                    units: context.unit(&unit).into_iter().collect(),
                    problem: Some(format!("invalid entry in {shown}")),
                    failed: true,
                })
            }
        }
    }
    report
}

fn cell(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "-".into())
}

pub fn print_table(report: &Report, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    if !report.config_exists && report.entries.is_empty() && report.config_problems.is_empty() {
        writeln!(
            out,
            "No config at {}: nothing is preloaded here (atomic-preload stage --config FILE writes one).",
            report.config
        )?;
        return print_staged(report, out);
    }
    let mut rows = vec![
        [
            "NAME",
            "ENGINE",
            "IMAGE",
            "ARCHIVE",
            "LOADED",
            "INSTALLED",
            "UNIT",
        ]
        .map(String::from),
    ];
    for e in &report.entries {
        let archives = if e.archives.is_empty() {
            "-".into()
        } else {
            e.archives
                .iter()
                .map(|a| {
                    let digest = a
                        .recorded_sha256
                        .as_deref()
                        .map(|d| format!(" sha256:{}", &d[..12]))
                        .unwrap_or_default();
                    format!("{}{digest}", a.file)
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let loaded = e
            .archives
            .iter()
            .filter_map(|a| a.loaded_at.clone())
            .max()
            .unwrap_or_else(|| "-".into());
        let installed = match (&e.installed_at, &e.installed) {
            (Some(at), Some(what)) if e.engine == "system" => format!("{at} {what}"),
            (Some(at), _) => at.clone(),
            _ => cell(&None),
        };
        let unit = if e.units.is_empty() {
            "-".into()
        } else {
            e.units
                .iter()
                .map(|u| format!("{} ({})", u.active, u.sub))
                .collect::<Vec<_>>()
                .join(", ")
        };
        rows.push([
            e.name.clone(),
            e.engine.clone(),
            e.image.clone(),
            archives,
            loaded,
            installed,
            unit,
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    for problem in &report.config_problems {
        writeln!(out, "config: {problem}")?;
    }
    for e in &report.entries {
        if let Some(problem) = &e.problem {
            writeln!(out, "{}: {problem}", e.name)?;
        }
    }
    print_staged(report, out)
}

/// The staged checkouts, after the table: what the first installs will move in.
fn print_staged(report: &Report, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    if report.staged_checkouts.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "staged checkouts (each used once, by its image's first install):"
    )?;
    for c in &report.staged_checkouts {
        let images = if c.images.is_empty() {
            "-".into()
        } else {
            c.images.join(", ")
        };
        let id = c
            .image_id
            .as_deref()
            .map(|i| {
                i.trim_start_matches("sha256:")
                    .chars()
                    .take(12)
                    .collect::<String>()
            })
            .unwrap_or_else(|| "-".into());
        let size = match (c.entries, c.bytes) {
            (Some(n), Some(b)) => format!("{n} entries, {} MB", b.div_ceil(1 << 20)),
            _ => "-".into(),
        };
        writeln!(
            out,
            "  {images}  {id}  from {}  {size}  {}  ({})",
            c.archive.as_deref().unwrap_or("-"),
            c.state,
            c.dir
        )?;
    }
    Ok(())
}

/// Exit status: 0 when nothing failed, 1 when a unit failed, an entry or the config has
/// problems, or (image root) an entry's unit will fail.
pub fn run(args: &StatusArgs) -> Result<bool, RuntimeError> {
    let report = report(args);
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &report)
            .map_err(|e| RuntimeError::Usage(e.to_string()))?;
        use std::io::Write;
        let _ = writeln!(stdout);
    } else {
        let _ = print_table(&report, &mut stdout);
    }
    Ok(report.config_problems.is_empty() && report.entries.iter().all(|e| !e.failed))
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_795_433_045), "2026-11-23 11:24:05");
    }
}
