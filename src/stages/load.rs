//! The load stage: archives in `<preload-dir>/docker/` into the engine (Docker or Podman),
//! once per archive content and engine. Archives are only ever read, never changed or
//! deleted.
//!
//! An archive counts as loaded when a mark in `<state-dir>/loaded/<engine>/` records its
//! SHA-256, its inode, size, mtime and ctime, and the images it loaded, and the engine still
//! has those images. At the next start, unchanged metadata means "loaded" without reading a
//! byte; changed metadata means hashing it, and loading only if the content differs. A
//! first load hashes on another thread while the engine reads.

use crate::cli::LoadArgs;
use crate::config::{archive_problem, is_archive_name};
use crate::engines::{self, Feed, ImageEngine};
use crate::runtime::RuntimeError;
use crate::runtime::compression::decompress;
use crate::runtime::digest::{self, sha256_of};
use crate::runtime::marks::{self, Mark, Marks};
use crate::runtime::notify;
use std::fs::{self, File};
use std::io::{self, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Metadata that changes whenever the file's content can have changed.
pub(crate) fn fingerprint(meta: &fs::Metadata) -> [(&'static str, String); 4] {
    [
        ("inode", meta.ino().to_string()),
        ("size", meta.len().to_string()),
        (
            "mtime",
            format!("{}.{:09}", meta.mtime(), meta.mtime_nsec()),
        ),
        (
            "ctime",
            format!("{}.{:09}", meta.ctime(), meta.ctime_nsec()),
        ),
    ]
}

pub(crate) fn same_fingerprint(mark: &Mark, meta: &fs::Metadata) -> bool {
    fingerprint(meta)
        .iter()
        .all(|(k, v)| mark.get(k) == Some(v.as_str()))
}

/// What happened to one archive.
enum Loaded {
    AlreadyLoaded,
    SameContent,
    Loaded(Vec<String>),
}

/// The images a mark says its archive loaded.
fn recorded_images(mark: &Mark) -> Vec<&str> {
    mark.get("images")
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

fn load_one(
    engine: &dyn ImageEngine,
    marks: &Marks,
    locks: &Path,
    dir: &Path,
    name: &str,
) -> Result<Loaded, RuntimeError> {
    // One run at a time per archive (two units starting together never load the same one
    // twice); different archives load at once, one per core.
    let _lock = marks::lock_file(locks, name).map_err(RuntimeError::State)?;
    let path = dir.join(name);
    let archive_err = |source: io::Error| RuntimeError::Io {
        path: path.clone(),
        source,
    };
    let meta = fs::metadata(&path).map_err(archive_err)?;
    if !meta.is_file() {
        return Err(archive_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    // A digest recorded when the archive was staged: its content must match, or nothing
    // is loaded from it.
    let expected = digest::recorded_digest(&path).map_err(archive_err)?;
    // A mark counts only while the engine still has what the archive loaded: a wiped
    // or replaced engine (same ID: it lives in /etc/docker) loads everything again.
    let previous = match marks.read(name) {
        Some(mark) if engine.has_images(&recorded_images(&mark))? => Some(mark),
        _ => None,
    };
    if previous.as_ref().is_some_and(|m| {
        same_fingerprint(m, &meta)
            && expected
                .as_deref()
                .is_none_or(|e| m.get("sha256") == Some(e))
    }) {
        return Ok(Loaded::AlreadyLoaded);
    }
    // From here the archive is read (and perhaps loaded): in one of the slots, one per
    // core across every run.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let _slot = marks::lock_slot(locks, cores).map_err(RuntimeError::State)?;
    let mut mark = Mark::default();
    for (k, v) in fingerprint(&meta) {
        mark.set(k, v);
    }
    // The content's digest, when it must be known before loading (checked against the
    // record, or compared with what was loaded); else it is computed while loading.
    let mut known = None;
    if let Some(expected) = &expected {
        let actual = sha256_of(&path).map_err(archive_err)?;
        if &actual != expected {
            return Err(RuntimeError::DigestMismatch {
                path: path.clone(),
                expected: expected.clone(),
                actual,
            });
        }
        known = Some(actual);
    }
    if let Some(previous) = &previous {
        // Touched, copied or replaced: load again only if the bytes differ.
        let sha = match known.take() {
            Some(sha) => sha,
            None => sha256_of(&path).map_err(archive_err)?,
        };
        if previous.get("sha256") == Some(sha.as_str()) {
            mark.set("sha256", sha);
            mark.set("images", previous.get("images").unwrap_or(""));
            marks.write(name, &mark).map_err(RuntimeError::State)?;
            return Ok(Loaded::SameContent);
        }
        known = Some(sha);
    }
    // Nothing recorded for this content (or a failed earlier try): forget the old record
    // first, so a load interrupted from here on is retried.
    marks.remove(name).map_err(RuntimeError::State)?;
    let (loaded, sha256) = feed(engine, &path, name, meta.len(), known)?;
    let loaded = loaded.map_err(|e| load_error(engine, &path, e))?;
    // Pinned (containerd) before the mark says it is done.
    engine.after_load(&loaded)?;
    let sha256 = sha256.map_err(archive_err)?;
    // Record only what we actually read: if the file changed meanwhile, load it next time.
    let after = fs::metadata(&path).map_err(archive_err)?;
    if same_fingerprint(&mark, &after) {
        mark.set("sha256", sha256);
        mark.set("images", loaded.join(" "));
        marks.write(name, &mark).map_err(RuntimeError::State)?;
    }
    Ok(Loaded::Loaded(loaded))
}

/// What a load gave: the images loaded (or why not), and the archive's SHA-256 (or why it
/// could not be read).
type Fed = (Result<Vec<String>, RuntimeError>, io::Result<String>);

/// The archive into the engine as the engine takes it best, hashed meanwhile on another
/// thread (unless its digest is `known`): what it loaded, and the content's SHA-256.
fn feed(
    engine: &dyn ImageEngine,
    path: &Path,
    name: &str,
    len: u64,
    known: Option<String>,
) -> Result<Fed, RuntimeError> {
    let what = format!("loading {name}");
    let io_of = |source: io::Error| RuntimeError::Io {
        path: path.to_owned(),
        source,
    };
    Ok(match engine.feed(name) {
        Feed::Decompressed => {
            // Decompressed here (a format the engine cannot read, or reads slowly), while
            // the file is read and hashed on another thread.
            let file = BufReader::with_capacity(1 << 20, File::open(path).map_err(io_of)?);
            let progress = notify::Progress::new(file, what, len);
            let (chunks, hashed) = digest::read_ahead_hashing(progress);
            let loaded = match decompress(chunks, name) {
                Ok(mut tar) => engine.load_stream(&mut tar),
                Err(e) => Err(RuntimeError::ReadArchive(e)),
            };
            let sha256 = hashed
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the reading thread panicked")));
            (loaded, sha256)
        }
        Feed::File => {
            // The engine reads the file itself (its own speed); it is hashed meanwhile on
            // another thread, through a descriptor of its own (unless already known).
            let hash_path = path.to_owned();
            let hashed = std::thread::spawn(move || match known {
                Some(sha) => Ok(sha),
                None => sha256_of(&hash_path),
            });
            let loaded = engine.load_file(path, &mut |offset, running| {
                notify::watch_offset(&what, len, offset, running)
            });
            let sha256 = hashed
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the hashing thread panicked")));
            (loaded, sha256)
        }
    })
}

/// A failed load: the engine's storage full (retried, said so), or the archive.
fn load_error(engine: &dyn ImageEngine, path: &Path, e: RuntimeError) -> RuntimeError {
    let message = e.to_string();
    if crate::runtime::says_storage_full(&message) {
        RuntimeError::EngineStorageFull {
            path: path.to_owned(),
            message,
            storage: engine.storage_dir(),
        }
    } else {
        RuntimeError::LoadFailed {
            path: path.to_owned(),
            message,
        }
    }
}

/// Every archive in `dir`, by name; a missing directory has none.
/// Only root may say what is loaded and installed (see [`crate::trust`]): the archive
/// directory with everything above it, each archive and its sidecar, and the state
/// directory (whose marks decide what is skipped), checked before anything is read.
pub(crate) fn check_trusted(
    dir: &Path,
    names: &[String],
    state_dir: &Path,
) -> Result<(), RuntimeError> {
    crate::trust::check(dir, None)?;
    for name in names {
        let archive = dir.join(name);
        crate::trust::check(&archive, None)?;
        crate::trust::check(&digest::sidecar_path(&archive), None)?;
    }
    crate::trust::check(state_dir, None)?;
    Ok(())
}

pub(crate) fn list_archives(dir: &Path) -> Result<Vec<String>, RuntimeError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => {
            return Err(RuntimeError::Io {
                path: dir.to_owned(),
                source: e,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && is_archive_name(n))
        .collect();
    names.sort();
    Ok(names)
}

/// Where load marks live in the state directory: one directory per engine, since each
/// engine has its own images.
fn marks_dir(engine: &dyn ImageEngine) -> String {
    format!("loaded/{}", engine.marks_name())
}

/// Every boot after the first: nothing to load when every archive is unchanged since its
/// mark (a `stat` each, and its recorded digest if it has one; no lock, no archive byte
/// read) and the engine has, in one question, the
/// image this unit needs and what its own archives loaded. Another unit's archive whose
/// images the engine lost is that unit's (and atomic-preload-load.service's) business, so
/// a unit's cost does not grow with the images other entries use. Anything else — a
/// changed or unmarked archive, a missing image, an engine that does not answer — takes
/// the full path under the lock, which also says what went wrong.
fn all_loaded(
    engine: &dyn ImageEngine,
    marks: &Marks,
    dir: &Path,
    names: &[String],
    args: &LoadArgs,
) -> bool {
    let mut needed: Vec<String> = args.image.iter().cloned().collect();
    for name in names {
        let (Ok(meta), Some(mark)) = (fs::metadata(dir.join(name)), marks.read(name)) else {
            return false;
        };
        if !same_fingerprint(&mark, &meta) {
            return false;
        }
        // A digest recorded (or re-recorded) since: the full path checks it.
        match digest::recorded_digest(&dir.join(name)) {
            Ok(None) => {}
            Ok(Some(expected)) if mark.get("sha256") == Some(expected.as_str()) => {}
            _ => return false,
        }
        let images = recorded_images(&mark);
        let mine = !args.archive.is_empty()
            || args.image.is_none()
            || args.image.as_deref().is_some_and(|i| images.contains(&i));
        if mine {
            needed.extend(images.iter().map(|i| i.to_string()));
        }
    }
    let needed: Vec<&str> = needed.iter().map(String::as_str).collect();
    !needed.is_empty() && engine.has_images(&needed).unwrap_or(false)
}

pub fn run(args: &LoadArgs) -> Result<(), RuntimeError> {
    let dir: PathBuf = args.preload_dir.join("docker");
    let engine = engines::open(&args.engine);
    let engine = engine.as_ref();
    let named = !args.archive.is_empty();
    let names = if named {
        // The config was validated, but the units can be edited by hand.
        for name in &args.archive {
            if let Some(problem) = archive_problem(name) {
                return Err(RuntimeError::Usage(format!("--archive: {problem}")));
            }
        }
        args.archive.clone()
    } else {
        list_archives(&dir)?
    };
    check_trusted(&dir, &names, &args.engine.state_dir)?;
    // Marks exist only after a first load: before it, nothing is created here.
    let marks_kind = marks_dir(engine);
    if args.engine.state_dir.join(&marks_kind).is_dir() {
        let marks = Marks::new(&args.engine.state_dir, &marks_kind).map_err(RuntimeError::State)?;
        if all_loaded(engine, &marks, &dir, &names, args) {
            for name in &names {
                println!("{name}: already loaded");
            }
            return Ok(());
        }
    }

    engine.ping()?;
    let _archives = marks::lock_archives(&dir, false).map_err(|source| RuntimeError::Io {
        path: dir.clone(),
        source,
    })?;
    let marks = Marks::new(&args.engine.state_dir, &marks_kind).map_err(RuntimeError::State)?;

    let locks = args.engine.state_dir.join("lock-load");
    let results = load_all(engine, &marks, &locks, &dir, &names);
    let mut failures = Vec::new();
    // A full disk (the engine's storage, the state directory) is nothing wrong with the
    // archive: the unit fails with it, to be retried, not as a bad archive.
    let mut out_of_space = None;
    for (i, result) in results {
        let name = &names[i];
        match result {
            Ok(Loaded::AlreadyLoaded) => println!("{name}: already loaded"),
            Ok(Loaded::SameContent) => println!("{name}: same content as already loaded"),
            Ok(Loaded::Loaded(images)) => println!("{name}: loaded {}", images.join(", ")),
            Err(err) => {
                eprintln!("{err}");
                failures.push(format!("{name} ({err})"));
                if matches!(
                    err,
                    RuntimeError::EngineStorageFull { .. } | RuntimeError::State(_)
                ) {
                    out_of_space.get_or_insert(err);
                }
            }
        }
    }

    if let Some(image) = &args.image {
        if !engine.has_images(&[image])? {
            if let Some(err) = out_of_space {
                return Err(err);
            }
            let looked = if names.is_empty() {
                "no archives there".to_owned()
            } else {
                names.join(", ")
            };
            let failed = if failures.is_empty() {
                String::new()
            } else {
                format!("; failed: {}", failures.join("; "))
            };
            return Err(RuntimeError::ImageMissing(format!(
                "image {image} is not in {} after loading archives from {}: {looked}{failed}",
                engine_name(engine),
                dir.display()
            )));
        }
    }
    // Named archives belong to this unit: any failure is its failure. Without an image to
    // check, this is the unit for all archives, and any failure is its failure too.
    if !failures.is_empty() && (named || args.image.is_none()) {
        if let Some(err) = out_of_space {
            return Err(err);
        }
        return Err(RuntimeError::LoadFailures(failures.len()));
    }
    Ok(())
}

/// Several archives load at once, one per core: the engine unpacks layers in parallel,
/// and one archive's decompression or digest never waits for another's. The results in
/// the order of `names`.
fn load_all(
    engine: &dyn ImageEngine,
    marks: &Marks,
    locks: &Path,
    dir: &Path,
    names: &[String],
) -> Vec<(usize, Result<Loaded, RuntimeError>)> {
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, names.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<(usize, Result<Loaded, RuntimeError>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(name) = names.get(i) else { break done };
                        done.push((i, load_one(engine, marks, locks, dir, name)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results
}

/// "the Docker engine", "Podman": for messages.
pub(crate) fn engine_name(engine: &dyn ImageEngine) -> &'static str {
    engine.kind().named()
}
