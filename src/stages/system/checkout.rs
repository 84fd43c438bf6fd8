//! A system image's layers checked out into a root file system, and staged checkouts:
//! the same checkout made when the image is built (`stage --system --checkout`), kept in
//! `<preload-dir>/checkouts/<image-id>/` with a record of what it is, and moved into the
//! first boot's deployment instead of checking the archive out again.
//!
//! The record (`staged.json`) is written last, synced, and the directory renamed into
//! place by the stage's commit: a checkout without a record is never used. It names the
//! archive the checkout came from (file name, size, SHA-256, which must equal the
//! archive's sidecar at boot: a re-staged archive makes the checkout stale) and digests
//! the tree's metadata — every path with its type, mode, owner, size, mtime and link
//! target. At boot that digest is recomputed by a stat walk (no file is read) before the
//! tree is used; anything else falls back to the archive, saying why. Contents were
//! checked against the diff_ids when staged; the walk proves the tree is the one the
//! record describes, whole (a removed, added, truncated, re-owned or re-timed file fails
//! it), which is what an installed deployment is trusted for too.

use super::archive::{self, IndexedImage, LayerPlan, Spool, normalize_reference};
use super::layer::{self, LayerError};
use super::rootfs::Root;
use crate::runtime::{RuntimeError, digest, io_err, notify};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn image_err(message: impl Into<String>) -> RuntimeError {
    RuntimeError::SystemImage(message.into())
}

/// The image's layers, in order, into `root`, each checked against its diff_id; the image
/// ID. An uncompressed archive's layers are read where they lie; a compressed one is
/// decompressed once more, each layer applied as it streams past when its turn has come
/// (the index's plan says the order) and spooled into `spool_dir` until then otherwise.
/// `checkout_dir` is where a full disk is reported.
pub fn layers(
    archive_path: &Path,
    reference: &str,
    image: &IndexedImage,
    root: &Root,
    spool_dir: &Path,
    checkout_dir: &Path,
) -> Result<String, RuntimeError> {
    let spool_err = |e: archive::ArchiveError| match e {
        // A full disk where the archive is spooled is the checkout's file system, and is
        // retried; a truncated or unreadable archive is the archive's fault.
        // (The note is made now: the failed checkout's space is freed before it prints.)
        archive::ArchiveError::Io { source, .. }
            if !crate::runtime::disk_full_note(spool_dir, &source).is_empty() =>
        {
            RuntimeError::System(format!(
                "checking out into {}: {source}{}",
                checkout_dir.display(),
                crate::runtime::disk_full_note(checkout_dir, &source)
            ))
        }
        e => image_err(e.to_string()),
    };
    let plan: Option<LayerPlan> = match &image.layers {
        _ if archive::is_uncompressed(archive_path) => None,
        Some(plan) => Some(plan.clone()),
        // Indexed from a mark: the order is read again (one pass, nothing kept).
        None => archive::index(archive_path)
            .map_err(spool_err)?
            .into_iter()
            .find(|i| i.id == image.id)
            .and_then(|i| i.layers),
    };
    let Some(plan) = plan else {
        let spool = Spool::create(archive_path, spool_dir).map_err(spool_err)?;
        let (item, config, image_id) = spool
            .image(reference)
            .map_err(|e| image_err(e.to_string()))?;
        for (i, layer_name) in item.layers.iter().enumerate() {
            layer_status(reference, i, item.layers.len());
            let bytes = spool
                .layer(layer_name)
                .map_err(|e| image_err(format!("layer {}: {e}", i + 1)))?;
            let applied = match bytes {
                archive::LayerBytes::InPlace { file, offset, len } => {
                    layer::apply_in_place(root, file, offset, len)
                }
                archive::LayerBytes::Stream(reader) => layer::apply(root, reader),
            };
            let stats = applied.map_err(|e| layer_err(i, layer_name, checkout_dir, e))?;
            check_layer(i, layer_name, &config.rootfs.diff_ids[i], &stats)?;
        }
        return Ok(image_id);
    };
    let total = plan.members.len();
    archive::stream_layers(archive_path, &plan, spool_dir, |i, streamed| {
        let name = &plan.members[i];
        layer_status(reference, i, total);
        let stats = match streamed {
            archive::Streamed::Live(incoming) => layer::apply_hashed(root, incoming),
            archive::Streamed::Spooled(path) => {
                let file = fs::File::open(path).map_err(io_err(path))?;
                let reader = archive::layer_reader(file).map_err(|e| {
                    ExtractError::Runtime(image_err(format!("layer {}: {e}", i + 1)))
                })?;
                layer::apply(root, reader)
            }
        }
        .map_err(|e| layer_err(i, name, checkout_dir, e))?;
        check_layer(i, name, &plan.diff_ids[i], &stats).map_err(ExtractError::Runtime)
    })
    .map_err(|e| match e {
        ExtractError::Archive(e) => spool_err(e),
        ExtractError::Runtime(e) => e,
    })?;
    Ok(image.id.clone())
}

/// [`layers`] into `dir/rootfs`, spooling (when it must) into `dir/.spool`, which is
/// removed after: the root and the image ID.
pub fn into_dir(
    archive_path: &Path,
    reference: &str,
    image: &IndexedImage,
    dir: &Path,
    checkout_dir: &Path,
) -> Result<(Root, String), RuntimeError> {
    let rootfs = dir.join("rootfs");
    let spool = dir.join(".spool");
    for d in [&rootfs, &spool] {
        fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let root = Root::open(&rootfs).map_err(io_err(&rootfs))?;
    let id = layers(archive_path, reference, image, &root, &spool, checkout_dir)?;
    fs::remove_dir_all(&spool).map_err(io_err(&spool))?;
    Ok((root, id))
}

/// What fails a streamed checkout: the archive, or a layer.
enum ExtractError {
    Archive(archive::ArchiveError),
    Runtime(RuntimeError),
}

impl From<archive::ArchiveError> for ExtractError {
    fn from(e: archive::ArchiveError) -> Self {
        ExtractError::Archive(e)
    }
}

impl From<RuntimeError> for ExtractError {
    fn from(e: RuntimeError) -> Self {
        ExtractError::Runtime(e)
    }
}

fn layer_status(reference: &str, i: usize, total: usize) {
    notify::status(&format!(
        "checking out {reference} layer {} of {total}",
        i + 1,
    ));
}

/// A layer applied: its digest against the image config's, and a line for the journal.
fn check_layer(
    i: usize,
    name: &str,
    expected: &str,
    stats: &layer::LayerStats,
) -> Result<(), RuntimeError> {
    if stats.diff_id != expected {
        return Err(image_err(format!(
            "layer {} ({name}) does not match the image config: diff_id {expected} expected, {} found",
            i + 1,
            stats.diff_id
        )));
    }
    println!("layer {}: {}", i + 1, layer_summary(stats));
    Ok(())
}

/// A layer that failed; a full disk is named by the checkout directory (what the admin
/// knows), not the temporary deployment it was being written into.
fn layer_err(i: usize, name: &str, checkout_dir: &Path, e: LayerError) -> RuntimeError {
    match &e {
        LayerError::Write { source, .. } => RuntimeError::System(format!(
            "layer {} ({name}): {e}{}",
            i + 1,
            crate::runtime::disk_full_note(checkout_dir, source)
        )),
        _ => image_err(format!("layer {} ({name}): {e}", i + 1)),
    }
}

fn layer_summary(stats: &layer::LayerStats) -> String {
    format!(
        "{} files, {} directories, {} symlinks, {} hard links, {} whiteouts{}",
        stats.files,
        stats.dirs,
        stats.symlinks,
        stats.hardlinks,
        stats.whiteouts,
        if stats.skipped > 0 {
            format!(", {} device nodes/FIFOs/sockets skipped", stats.skipped)
        } else {
            String::new()
        }
    )
}

/// Where staged checkouts are, below the preload directory.
pub const STAGED_DIR: &str = "checkouts";
/// The record of a staged checkout, beside its `rootfs/`.
pub const RECORD: &str = "staged.json";
/// A record is a few hundred bytes; nothing larger is read.
const RECORD_MAX: u64 = 64 << 10;

/// What a staged checkout is: written last, when the tree is whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub image_id: String,
    pub tags: Vec<String>,
    /// The archive's file name in ostree/, its size and its SHA-256 (hex, as its sidecar).
    pub archive: String,
    pub archive_size: u64,
    pub archive_sha256: String,
    pub tree: Tree,
}

/// A tree's metadata digest and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub digest: String,
    pub entries: u64,
    pub bytes: u64,
}

/// The metadata digest of everything below `root` (not `root` itself): for each path, in
/// sorted order, its type, mode, owner, size, mtime and link target. No file is read.
pub fn tree(root: &Path) -> io::Result<Tree> {
    let mut hasher = Sha256::new();
    let mut tree = Tree {
        digest: String::new(),
        entries: 0,
        bytes: 0,
    };
    walk(root, Path::new(""), &mut hasher, &mut tree)?;
    tree.digest = format!("sha256:{}", digest::hex(&hasher.finalize()));
    Ok(tree)
}

fn walk(base: &Path, rel: &Path, hasher: &mut Sha256, tree: &mut Tree) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(base.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let path = rel.join(&name);
        let full = base.join(&path);
        let meta = fs::symlink_metadata(&full)?;
        let kind = meta.file_type();
        hasher.update(path.as_os_str().as_bytes());
        hasher.update(
            format!(
                "\0{:o} {}:{} {} {}.{}",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                if kind.is_dir() { 0 } else { meta.size() },
                meta.mtime(),
                meta.mtime_nsec()
            )
            .as_bytes(),
        );
        if kind.is_symlink() {
            hasher.update(b" -> ");
            hasher.update(fs::read_link(&full)?.as_os_str().as_bytes());
        }
        hasher.update(b"\n");
        tree.entries += 1;
        if kind.is_file() {
            tree.bytes += meta.size();
        }
        if kind.is_dir() {
            walk(base, &path, hasher, tree)?;
        }
    }
    Ok(())
}

/// A staged checkout that matches an install: its directory and record.
#[derive(Debug)]
pub struct Staged {
    dir: PathBuf,
    record: Record,
}

impl Staged {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn image_id(&self) -> &str {
        &self.record.image_id
    }

    pub fn archive(&self) -> &str {
        &self.record.archive
    }

    /// The image as an index would give it (no layer plan: only a fallback reads layers).
    pub fn indexed(&self) -> IndexedImage {
        IndexedImage {
            tags: self.record.tags.clone(),
            id: self.record.image_id.clone(),
            layers: None,
        }
    }

    /// Prove the tree is the one recorded, then move it to `rootfs` (which must not exist,
    /// on the same file system) and drop what is left of the staged directory. `Err` says
    /// why it cannot be used; nothing of `rootfs` exists then. A tree that fails the proof
    /// never passes it later: it is removed, so the next boot does not walk it again (and
    /// a crash between the move and the removal converges on the archive's checkout).
    pub fn take(&self, rootfs: &Path) -> Result<(), String> {
        let proven = self.prove();
        if proven.is_err() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        proven?;
        let staged_root = self.dir.join("rootfs");
        fs::rename(&staged_root, rootfs).map_err(|e| {
            format!(
                "moving {} to {}: {e}",
                staged_root.display(),
                rootfs.display()
            )
        })?;
        // Used once: the record goes with it (a crash before this leaves a record without
        // a tree, which the next look proves unusable and removes).
        let _ = fs::remove_dir_all(&self.dir);
        Ok(())
    }

    fn prove(&self) -> Result<(), String> {
        let staged_root = self.dir.join("rootfs");
        let found = tree(&staged_root).map_err(|e| format!("{}: {e}", staged_root.display()))?;
        if found != self.record.tree {
            return Err(format!(
                "its tree is not the one recorded: {} entries, {} bytes, {} found; {} entries, {} bytes, {} recorded",
                found.entries,
                found.bytes,
                found.digest,
                self.record.tree.entries,
                self.record.tree.bytes,
                self.record.tree.digest
            ));
        }
        Ok(())
    }
}

/// What one staged checkout directory holds, for `status` and for an install.
#[derive(Debug)]
pub struct Listed {
    pub dir: PathBuf,
    pub record: Result<Record, String>,
}

/// Every staged checkout below `preload_dir` (dot-names, a stage's temporaries, left out).
pub fn list(preload_dir: &Path) -> io::Result<Vec<Listed>> {
    let dir = preload_dir.join(STAGED_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_name().as_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        let record = crate::bounded::read(&path.join(RECORD), RECORD_MAX)
            .map_err(|e| format!("{RECORD}: {e}"))
            .and_then(|bytes| {
                serde_json::from_slice::<Record>(&bytes).map_err(|e| format!("{RECORD}: {e}"))
            });
        out.push(Listed { dir: path, record });
    }
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(out)
}

/// Why a record's archive does not vouch for it (`None`: it does): the archive in ostree/
/// must be there with the recorded size and a sidecar holding the recorded SHA-256.
pub fn stale(record: &Record, ostree: &Path) -> Option<String> {
    if crate::config::archive_problem(&record.archive).is_some() {
        return Some(format!(
            "its archive {:?} is not a file name",
            record.archive
        ));
    }
    let archive = ostree.join(&record.archive);
    match fs::metadata(&archive) {
        Err(e) => return Some(format!("{}: {e}", archive.display())),
        Ok(meta) if meta.len() != record.archive_size => {
            return Some(format!(
                "{} changed since it was staged ({} bytes, {} recorded)",
                archive.display(),
                meta.len(),
                record.archive_size
            ));
        }
        Ok(_) => {}
    }
    match digest::recorded_digest(&archive) {
        Ok(Some(sha)) if sha == record.archive_sha256 => None,
        Ok(Some(_)) => Some(format!(
            "{} was staged again since (its sidecar holds another digest)",
            archive.display()
        )),
        Ok(None) => Some(format!("{} has no sidecar", archive.display())),
        Err(e) => Some(e.to_string()),
    }
}

/// The staged checkout an install of `reference` can use: its record names the image, its
/// archive is one the install may use (`archives`, when given) and vouches for it. Any
/// other checkout of the image is passed over, saying why.
pub fn find(preload_dir: &Path, reference: &str, archives: &[String]) -> Option<Staged> {
    let dir = preload_dir.join(STAGED_DIR);
    if !dir.exists() {
        return None;
    }
    if let Err(e) = crate::trust::check(&dir, None) {
        println!("not using staged checkouts: {e}");
        return None;
    }
    let wanted = normalize_reference(reference);
    let ostree = preload_dir.join("ostree");
    for listed in list(preload_dir).unwrap_or_default() {
        // What a used or spoilt checkout left (its tree moved out, its record or the rest
        // not yet removed when the run was stopped) can never be used: it goes now, so
        // every run converges on the same state.
        let remains = match &listed.record {
            Err(e) => Some(e.clone()),
            Ok(_) if !listed.dir.join("rootfs").is_dir() => Some("no rootfs".into()),
            Ok(_) => None,
        };
        if let Some(why) = remains {
            println!(
                "removing {}: not a usable staged checkout ({why})",
                listed.dir.display()
            );
            let _ = fs::remove_dir_all(&listed.dir);
            continue;
        }
        let Ok(record) = listed.record else {
            continue;
        };
        if !record.tags.iter().any(|t| normalize_reference(t) == wanted)
            || (!archives.is_empty() && !archives.contains(&record.archive))
        {
            continue;
        }
        if let Err(e) = crate::trust::check(&listed.dir, None) {
            println!(
                "not using the staged checkout {}: {e}",
                listed.dir.display()
            );
            continue;
        }
        if let Some(why) = stale(&record, &ostree) {
            println!(
                "not using the checkout of {reference} staged in {}: {why}",
                listed.dir.display()
            );
            continue;
        }
        return Some(Staged {
            dir: listed.dir,
            record,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_digest_sees_every_change_of_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        fs::write(r.join("a/b/f"), b"12345").unwrap();
        std::os::unix::fs::symlink("b/f", r.join("a/l")).unwrap();
        let before = tree(r).unwrap();
        assert_eq!((before.entries, before.bytes), (4, 5));
        assert_eq!(tree(r).unwrap(), before, "stable");
        let changes: [&dyn Fn(); 4] = [
            &|| fs::write(r.join("a/b/f"), b"1234").unwrap(),
            &|| fs::write(r.join("a/new"), b"").unwrap(),
            &|| {
                fs::remove_file(r.join("a/l")).unwrap();
                std::os::unix::fs::symlink("b/g", r.join("a/l")).unwrap();
            },
            &|| {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(r.join("a/b"), fs::Permissions::from_mode(0o700)).unwrap();
            },
        ];
        let mut last = before;
        for change in changes {
            change();
            let now = tree(r).unwrap();
            assert_ne!(now.digest, last.digest);
            last = now;
        }
    }
}
