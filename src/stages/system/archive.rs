//! docker-archive files (`docker save`, optionally compressed) read without Docker: which
//! images one holds, and its layers for a checkout.
//!
//! The outer archive is never unpacked by path: its regular files are spooled into a
//! scratch directory under numbered names and looked up through a table, so member names
//! cannot place anything anywhere.

use crate::runtime::compression::decompress;
use crate::runtime::digest::hex;
use crate::runtime::notify::Progress;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// `manifest.json` at the top of a docker-archive: one item per image.
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestItem {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
}

/// The parts of an image config we use.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfig {
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    pub diff_ids: Vec<String>,
}

/// One image an archive holds: its tags and its ID (the SHA-256 of its config), and, from
/// a fresh index, how to check it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedImage {
    pub tags: Vec<String>,
    pub id: String,
    pub layers: Option<LayerPlan>,
}

/// An image's layers in the order they apply: the archive members holding them (the
/// archive's own symlinks resolved) and the diff_id each must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    pub members: Vec<String>,
    pub diff_ids: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a docker-archive: {message}", path.display())]
    Format { path: PathBuf, message: String },
}

/// JSON members larger than this are not image metadata.
const JSON_MAX: u64 = 16 << 20;
/// All metadata an index keeps: an image's manifest and config are a few KiB, so a
/// many-image archive stays far below this; an archive past it (dozens of JSON-looking
/// members of 16 MiB each) is refused rather than read into memory.
const JSON_TOTAL_MAX: u64 = 64 << 20;

/// The archive's bytes, decompressed according to its suffix; how far along the file
/// is goes to the unit's status line as "`doing` NAME: x of y MB".
pub fn open_decompressed(path: &Path, doing: &str) -> io::Result<Box<dyn Read>> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let progress = Progress::new(file, format!("{doing} {name}"), size);
    decompress(BufReader::with_capacity(1 << 20, progress), &name)
}

/// A layer blob, decompressed by its magic bytes (docker save writes plain tars; OCI
/// layouts and newer tools write gzip or zstd).
pub fn layer_reader(file: File) -> io::Result<Box<dyn Read + Send>> {
    decoder(BufReader::with_capacity(1 << 20, file))
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

fn is_compressed(magic: &[u8]) -> bool {
    magic.starts_with(&GZIP_MAGIC) || magic.starts_with(&ZSTD_MAGIC)
}

/// A buffered blob, decompressed by its magic bytes.
fn decoder<'a, R: io::BufRead + Send + 'a>(mut reader: R) -> io::Result<Box<dyn Read + Send + 'a>> {
    let magic = reader.fill_buf()?;
    Ok(if magic.starts_with(&GZIP_MAGIC) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if magic.starts_with(&ZSTD_MAGIC) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader)?)
    } else {
        Box::new(reader)
    })
}

/// Docker's reference normalization, enough to compare `image:` with RepoTags:
/// `docker.io/library/busybox` = `busybox` = `busybox:latest`.
pub fn normalize_reference(reference: &str) -> String {
    let mut r = reference;
    for prefix in ["docker.io/", "index.docker.io/"] {
        if let Some(rest) = r.strip_prefix(prefix) {
            r = rest;
        }
    }
    let r = r.strip_prefix("library/").unwrap_or(r);
    let last = r.rsplit('/').next().unwrap_or(r);
    if last.contains(':') || r.contains('@') {
        r.to_owned()
    } else {
        format!("{r}:latest")
    }
}

fn format_err(path: &Path, message: impl Into<String>) -> ArchiveError {
    ArchiveError::Format {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// A member name as docker writes it, with `./` and leading `/` dropped.
fn member_key(name: &Path) -> String {
    let s = name.to_string_lossy();
    s.trim_start_matches("./")
        .trim_start_matches('/')
        .to_owned()
}

/// A symlink member's target as a member key (relative to the link's directory).
fn link_key(link: &str, target: &Path) -> String {
    let mut parts: Vec<String> = link.split('/').map(String::from).collect();
    parts.pop();
    for c in target.to_string_lossy().split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c.to_owned()),
        }
    }
    parts.join("/")
}

/// One pass over the archive, to its very end (a truncated stream fails here):
/// `file(n, key, entry, place)` for each regular member; returns the symlink members as
/// key → target key, and the uncompressed archive's open file (what the places are
/// in). An uncompressed archive's data is skipped by seeking, each member
/// checked to lie inside the file; `place` is then where a member's data lies (offset,
/// length), unless it is sparse (not one run of the file).
fn walk(
    path: &Path,
    doing: &str,
    mut file: impl FnMut(usize, String, &mut dyn Read, Option<(u64, u64)>) -> io::Result<()>,
) -> Result<(HashMap<String, String>, Option<File>), ArchiveError> {
    let io_err = |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    };
    let mut links = HashMap::new();
    let mut each = |n: usize, entry: &mut dyn EntryLike, size: Option<u64>| -> io::Result<()> {
        let key = member_key(&entry.path()?);
        // (A sparse member's size is its expanded size: not a length in the file.)
        if let Some(size) = size
            && entry.kind() != tar::EntryType::GNUSparse
            && entry.end().is_none_or(|end| end > size)
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the archive ends inside {key}"),
            ));
        }
        let kind = entry.kind();
        if kind.is_symlink() {
            if let Some(target) = entry.link()? {
                links.insert(key.clone(), link_key(&key, &target));
            }
        } else if kind.is_file() {
            let place = match (size, entry.end()) {
                (Some(_), Some(end)) if kind != tar::EntryType::GNUSparse => {
                    Some((entry.offset(), end - entry.offset()))
                }
                _ => None,
            };
            file(n, key, entry.reader(), place)?;
        }
        Ok(())
    };
    if is_uncompressed(path) {
        let f = File::open(path).map_err(io_err)?;
        let size = f.metadata().map_err(io_err)?.len();
        let mut archive = tar::Archive::new(BufReader::with_capacity(64 << 10, &f));
        for (n, entry) in archive.entries_with_seek().map_err(io_err)?.enumerate() {
            each(n, &mut entry.map_err(io_err)?, Some(size)).map_err(io_err)?;
        }
        drop(archive);
        return Ok((links, Some(f)));
    } else {
        let reader = open_decompressed(path, doing).map_err(io_err)?;
        let mut archive = tar::Archive::new(reader);
        for (n, entry) in archive.entries().map_err(io_err)?.enumerate() {
            each(n, &mut entry.map_err(io_err)?, None).map_err(io_err)?;
        }
        io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(io_err)?;
    }
    Ok((links, None))
}

/// What [`walk`] needs of a member, streamed or seekable alike.
trait EntryLike {
    fn path(&self) -> io::Result<PathBuf>;
    fn kind(&self) -> tar::EntryType;
    fn link(&self) -> io::Result<Option<PathBuf>>;
    /// Where its data starts and ends in the archive.
    fn offset(&self) -> u64;
    fn end(&self) -> Option<u64>;
    fn reader(&mut self) -> &mut dyn Read;
}

impl<R: Read> EntryLike for tar::Entry<'_, R> {
    fn path(&self) -> io::Result<PathBuf> {
        tar::Entry::path(self).map(|p| p.into_owned())
    }
    fn kind(&self) -> tar::EntryType {
        self.header().entry_type()
    }
    fn link(&self) -> io::Result<Option<PathBuf>> {
        self.link_name().map(|l| l.map(|l| l.into_owned()))
    }
    fn offset(&self) -> u64 {
        self.raw_file_position()
    }
    fn end(&self) -> Option<u64> {
        self.raw_file_position().checked_add(self.size())
    }
    fn reader(&mut self) -> &mut dyn Read {
        self
    }
}

/// A member name through the archive's symlinks (a few hops), as a member key.
fn resolve(links: &HashMap<String, String>, name: &str) -> String {
    let mut key = name.trim_start_matches("./").to_owned();
    for _ in 0..8 {
        match links.get(&key) {
            Some(next) => key = next.clone(),
            None => break,
        }
    }
    key
}

/// One pass over a compressed archive, applying `plan`'s layers in order: a layer met in
/// its turn goes straight from the decompressor to `apply`; one met before its turn (or
/// needed twice) is spooled into `dir` first, numbered, and applied when its turn comes.
/// The reading, decompressing and hashing run on another thread: `apply` gets a stream
/// whose digest that thread computed. Every layer's diff_id is `apply`'s to check.
pub fn stream_layers<E: From<ArchiveError>>(
    path: &Path,
    plan: &LayerPlan,
    dir: &Path,
    mut apply: impl FnMut(usize, Streamed<'_, '_>) -> Result<(), E>,
) -> Result<(), E> {
    let io_err = |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    };
    let wanted: HashMap<&str, usize> = plan
        .members
        .iter()
        .enumerate()
        .rev()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let twice = |key: &str| plan.members.iter().filter(|m| *m == key).count() > 1;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(8);
    // Used pieces go back to be filled again (no fresh zeroed MiB per piece).
    let (back, recycled) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
    let mut spooled: HashMap<String, PathBuf> = HashMap::new();
    let mut next = 0;
    std::thread::scope(|scope| -> Result<(), E> {
        let reader = scope.spawn(move || pump_members(path, &tx, &recycled));
        let mut incoming = Incoming {
            rx: &rx,
            back,
            current: Vec::new(),
            pos: 0,
            end: None,
        };
        while let Some(key) = incoming.next_member().map_err(io_err)? {
            match wanted.get(key.as_str()) {
                // A compressed blob's digest is not its diff_id: spooled, decompressed there.
                Some(&i)
                    if i == next
                        && !twice(&key)
                        && !is_compressed(incoming.peek().map_err(io_err)?) =>
                {
                    apply(next, Streamed::Live(&mut incoming))?;
                    incoming.finish().map_err(io_err)?;
                    next += 1;
                }
                Some(_) => {
                    let file = dir.join(format!("layer-{}", spooled.len()));
                    let mut out = File::create(&file).map_err(io_err)?;
                    io::copy(&mut incoming, &mut out).map_err(io_err)?;
                    incoming.finish().map_err(io_err)?;
                    spooled.insert(key, file);
                }
                None => {
                    incoming.finish().map_err(io_err)?;
                }
            }
            while let Some(file) = plan.members.get(next).and_then(|m| spooled.get(m)) {
                apply(next, Streamed::Spooled(file))?;
                next += 1;
            }
        }
        drop(rx);
        reader
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the reading thread failed")))
            .map_err(io_err)?;
        match plan.members.get(next) {
            None => Ok(()),
            Some(missing) => Err(format_err(path, format!("member {missing} is missing")).into()),
        }
    })
}

/// A layer's bytes as [`stream_layers`] hands them over.
pub enum Streamed<'a, 'b> {
    /// Straight from the archive; hashed as it passes.
    Live(&'a mut Incoming<'b>),
    /// Spooled earlier, to be applied (and hashed) from the file.
    Spooled(&'a Path),
}

/// What the reading thread of [`stream_layers`] sends: a member's start, its bytes, its
/// end and digest; an error ends it.
enum Piece {
    Start(String),
    Data(Vec<u8>),
    End(String),
    Failed(io::Error),
}

/// The reading thread: every regular member's bytes, in 1 MiB pieces, hashed here.
fn pump_members(
    path: &Path,
    tx: &std::sync::mpsc::SyncSender<Piece>,
    recycled: &std::sync::mpsc::Receiver<Vec<u8>>,
) -> io::Result<()> {
    let failed = |e: io::Error| {
        let message = e.to_string();
        let _ = tx.send(Piece::Failed(e));
        io::Error::other(message)
    };
    let walked = walk(path, "unpacking", |_, key, entry, _| {
        tx.send(Piece::Start(key))
            .map_err(|_| io::Error::other("stopped"))?;
        let mut hasher = Sha256::new();
        loop {
            let mut buf = recycled.try_recv().unwrap_or_default();
            buf.resize(1 << 20, 0);
            let filled = crate::runtime::digest::fill(&mut *entry, &mut buf)?;
            if filled == 0 {
                break;
            }
            buf.truncate(filled);
            hasher.update(&buf);
            tx.send(Piece::Data(buf))
                .map_err(|_| io::Error::other("stopped"))?;
        }
        tx.send(Piece::End(hex(&hasher.finalize())))
            .map_err(|_| io::Error::other("stopped"))
    });
    match walked {
        Ok(_) => Ok(()),
        Err(ArchiveError::Io { source, .. }) => Err(failed(source)),
        Err(e) => Err(failed(io::Error::other(e.to_string()))),
    }
}

/// The current member's bytes, as the reading thread sends them.
pub struct Incoming<'a> {
    rx: &'a std::sync::mpsc::Receiver<Piece>,
    back: std::sync::mpsc::SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    /// The member's digest, once its end came.
    end: Option<String>,
}

impl Incoming<'_> {
    /// The next member's key; `None` after the last.
    fn next_member(&mut self) -> io::Result<Option<String>> {
        match self.rx.recv() {
            Ok(Piece::Start(key)) => {
                self.end = None;
                self.current.clear();
                self.pos = 0;
                Ok(Some(key))
            }
            Ok(Piece::Failed(e)) => Err(e),
            Ok(_) => Err(io::Error::other("the reading thread lost its place")),
            Err(_) => Ok(None),
        }
    }

    /// The member's first bytes (up to a chunk), without consuming them.
    fn peek(&mut self) -> io::Result<&[u8]> {
        if self.pos >= self.current.len() && self.end.is_none() {
            let mut byte = [0u8; 1];
            if self.read(&mut byte)? == 1 {
                self.pos -= 1;
            }
        }
        Ok(&self.current[self.pos.min(self.current.len())..])
    }

    /// Read to the member's end; its SHA-256, hex.
    pub fn finish(&mut self) -> io::Result<String> {
        io::copy(self, &mut io::sink())?;
        self.end
            .clone()
            .ok_or_else(|| io::Error::other("the member has no end"))
    }
}

impl super::layer::HashedStream for Incoming<'_> {
    fn finish(&mut self) -> io::Result<String> {
        Incoming::finish(self)
    }
}

impl Read for Incoming<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.current.len() {
                return Ok(crate::runtime::digest::serve(
                    &self.current,
                    &mut self.pos,
                    buf,
                ));
            }
            if self.end.is_some() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Piece::Data(chunk)) => {
                    let used = std::mem::replace(&mut self.current, chunk);
                    let _ = self.back.try_send(used);
                    self.pos = 0;
                }
                Ok(Piece::End(digest)) => self.end = Some(digest),
                Ok(Piece::Failed(e)) => return Err(e),
                Ok(Piece::Start(_)) | Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the archive ends inside a member",
                    ));
                }
            }
        }
    }
}

/// One pass over the archive: its images (tags and IDs), without keeping any layer.
pub fn index(path: &Path) -> Result<Vec<IndexedImage>, ArchiveError> {
    let mut json: HashMap<String, Vec<u8>> = HashMap::new();
    let mut kept = 0u64;
    let (links, _) = walk(path, "indexing", |_, key, entry, _| {
        // Configs are `<hex>.json` (docker save) or `blobs/sha256/<hex>` (OCI layout);
        // nothing larger than JSON_MAX is metadata.
        let wanted = key == "manifest.json" || key.ends_with(".json") || key.starts_with("blobs/");
        if wanted {
            // A layer blob is not read past its first byte.
            let mut bytes = vec![0u8];
            if entry.read(&mut bytes)? == 1 && (bytes[0] == b'{' || key == "manifest.json") {
                entry.take(JSON_MAX).read_to_end(&mut bytes)?;
                if (bytes.len() as u64) < JSON_MAX {
                    kept += bytes.len() as u64;
                    if kept > JSON_TOTAL_MAX {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "its JSON members add up to more than {} MiB (an image's metadata is a few KiB): not indexed",
                                JSON_TOTAL_MAX >> 20
                            ),
                        ));
                    }
                    json.insert(key, bytes);
                }
            }
        }
        Ok(())
    })?;
    let manifest = manifest_of(path, |key: &str| {
        let key = links.get(key).map(String::as_str).unwrap_or(key);
        Ok(json.get(key).cloned())
    })?;
    let mut images = Vec::new();
    for item in manifest {
        let key = links
            .get(&item.config)
            .cloned()
            .unwrap_or(item.config.clone());
        let config = json
            .get(&key)
            .ok_or_else(|| format_err(path, format!("config {} is missing", item.config)))?;
        // Only a usable plan is kept; a checkout without one reports the config's fault.
        let layers = serde_json::from_slice::<ImageConfig>(config)
            .ok()
            .filter(|c| c.rootfs.diff_ids.len() == item.layers.len())
            .map(|c| LayerPlan {
                members: item.layers.iter().map(|l| resolve(&links, l)).collect(),
                diff_ids: c.rootfs.diff_ids,
            });
        images.push(IndexedImage {
            tags: item.repo_tags.unwrap_or_default(),
            id: format!("sha256:{}", hex(&Sha256::digest(config))),
            layers,
        });
    }
    Ok(images)
}

/// The images of an archive: docker save's `manifest.json`, or else an OCI image layout's
/// `index.json` (its manifests' tags are their `io.containerd.image.name` and
/// `org.opencontainers.image.ref.name` annotations, read as full references).
fn manifest_of(
    path: &Path,
    read: impl Fn(&str) -> Result<Option<Vec<u8>>, ArchiveError>,
) -> Result<Vec<ManifestItem>, ArchiveError> {
    if let Some(bytes) = read("manifest.json")? {
        return serde_json::from_slice(&bytes)
            .map_err(|e| format_err(path, format!("manifest.json: {e}")));
    }
    let Some(index) = read("index.json")? else {
        return Err(format_err(
            path,
            "it has neither manifest.json nor an OCI index.json",
        ));
    };
    let json = |bytes: &[u8], what: &str| -> Result<serde_json::Value, ArchiveError> {
        serde_json::from_slice(bytes).map_err(|e| format_err(path, format!("{what}: {e}")))
    };
    let blob = |digest: &str| -> Result<(String, Vec<u8>), ArchiveError> {
        let key = format!("blobs/{}", digest.replacen(':', "/", 1));
        let bytes =
            read(&key)?.ok_or_else(|| format_err(path, format!("blob {digest} is missing")))?;
        Ok((key, bytes))
    };
    let digest_of = |v: &serde_json::Value| v["digest"].as_str().unwrap_or_default().to_owned();
    let mut items = Vec::new();
    for descriptor in json(&index, "index.json")?["manifests"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let media = descriptor["mediaType"].as_str().unwrap_or_default();
        if media.contains("index") || media.contains("manifest.list") {
            return Err(format_err(
                path,
                "multi-platform image indexes are not supported: save one platform",
            ));
        }
        let annotations = &descriptor["annotations"];
        let repo_tags: Vec<String> = [
            "io.containerd.image.name",
            "org.opencontainers.image.ref.name",
        ]
        .iter()
        .filter_map(|k| annotations[*k].as_str().map(String::from))
        .collect();
        let (_, manifest) = blob(&digest_of(descriptor))?;
        let manifest = json(&manifest, "image manifest")?;
        let (config, _) = blob(&digest_of(&manifest["config"]))?;
        let mut layers = Vec::new();
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            layers.push(format!("blobs/{}", digest_of(layer).replacen(':', "/", 1)));
        }
        items.push(ManifestItem {
            config,
            repo_tags: Some(repo_tags),
            layers,
        });
    }
    Ok(items)
}

/// A metadata member (manifest, index, config), no larger than an index keeps.
fn read_member(archive: &Path, member: Member<'_>) -> Result<Vec<u8>, ArchiveError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ArchiveError::Io { path, source }
    };
    match member {
        Member::Spooled(path) => crate::bounded::read(path, JSON_MAX).map_err(io_err(path)),
        Member::InPlace { file, offset, len } => {
            if len >= JSON_MAX {
                return Err(ArchiveError::Io {
                    path: archive.to_owned(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a metadata member is larger than {} MiB", JSON_MAX >> 20),
                    ),
                });
            }
            let mut bytes = Vec::new();
            Range::new(file, offset, len)
                .read_to_end(&mut bytes)
                .map_err(io_err(archive))?;
            Ok(bytes)
        }
    }
}

/// Where a member's bytes are: in the (uncompressed) archive itself, or spooled.
#[derive(Clone, Copy)]
pub enum Member<'s> {
    InPlace {
        file: &'s File,
        offset: u64,
        len: u64,
    },
    Spooled(&'s Path),
}

#[derive(Clone, Copy)]
enum Stored {
    InPlace { offset: u64, len: u64 },
    Spooled(usize),
}

/// A layer's bytes for a checkout: an uncompressed tar lying in the archive (applied in
/// place), or a stream (a compressed blob, a spooled member).
pub enum LayerBytes<'s> {
    InPlace {
        file: &'s File,
        offset: u64,
        len: u64,
    },
    Stream(Box<dyn Read + Send + 's>),
}

/// `len` bytes of a file from `offset`, by positional reads.
pub struct Range<'f> {
    file: &'f File,
    pos: u64,
    end: u64,
}

impl<'f> Range<'f> {
    pub fn new(file: &'f File, offset: u64, len: u64) -> Self {
        Range {
            file,
            pos: offset,
            end: offset.saturating_add(len),
        }
    }
}

impl Read for Range<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let left = self.end.saturating_sub(self.pos);
        if left == 0 {
            return Ok(0);
        }
        let want = usize::try_from(left).map_or(buf.len(), |n| n.min(buf.len()));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a member",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Whether an archive's name says it is an uncompressed tar (read in place, not spooled).
pub fn is_uncompressed(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "tar")
}

/// An archive's members for a checkout: an uncompressed archive's are read where they lie
/// (its layers' offsets are recorded, nothing is copied); a compressed one's are spooled.
pub struct Spool {
    files: HashMap<String, Stored>,
    spooled: Vec<PathBuf>,
    links: HashMap<String, String>,
    archive: PathBuf,
    file: Option<File>,
}

impl Spool {
    /// Index every regular member of `archive`: recorded where it lies when the archive is
    /// uncompressed, else copied into `dir` (which must exist and be ours).
    pub fn create(archive: &Path, dir: &Path) -> Result<Spool, ArchiveError> {
        let mut files = HashMap::new();
        let mut spooled = Vec::new();
        let (links, file) = walk(archive, "unpacking", |n, key, entry, place| {
            if let Some((offset, len)) = place {
                files.insert(key, Stored::InPlace { offset, len });
                return Ok(());
            }
            // Numbered names: a member's name never decides where anything is written.
            let path = dir.join(format!("member-{n}"));
            io::copy(entry, &mut File::create(&path)?)?;
            files.insert(key, Stored::Spooled(spooled.len()));
            spooled.push(path);
            Ok(())
        })?;
        Ok(Spool {
            files,
            spooled,
            links,
            archive: archive.to_owned(),
            file,
        })
    }

    /// Where a member is, following the archive's own symlinks (a few hops).
    pub fn member(&self, name: &str) -> Result<Member<'_>, ArchiveError> {
        match (self.files.get(&resolve(&self.links, name)), &self.file) {
            (Some(Stored::Spooled(i)), _) => Ok(Member::Spooled(&self.spooled[*i])),
            (Some(Stored::InPlace { offset, len }), Some(file)) => Ok(Member::InPlace {
                file,
                offset: *offset,
                len: *len,
            }),
            _ => Err(format_err(
                &self.archive,
                format!("member {name} is missing"),
            )),
        }
    }

    /// A layer member's bytes: decompressed by its magic bytes (docker save writes plain
    /// tars; OCI layouts and newer tools write gzip or zstd); a plain one lying in the
    /// archive is handed over as its range, to be applied in place.
    pub fn layer(&self, name: &str) -> Result<LayerBytes<'_>, ArchiveError> {
        let io_err = |source| ArchiveError::Io {
            path: self.archive.clone(),
            source,
        };
        match self.member(name)? {
            Member::Spooled(path) => {
                let file = File::open(path).map_err(io_err)?;
                Ok(LayerBytes::Stream(layer_reader(file).map_err(io_err)?))
            }
            Member::InPlace { file, offset, len } => {
                let mut magic = [0u8; 4];
                let n = Range::new(file, offset, len)
                    .read(&mut magic)
                    .map_err(io_err)?;
                if is_compressed(&magic[..n]) {
                    let range = BufReader::with_capacity(1 << 20, Range::new(file, offset, len));
                    Ok(LayerBytes::Stream(decoder(range).map_err(io_err)?))
                } else {
                    Ok(LayerBytes::InPlace { file, offset, len })
                }
            }
        }
    }

    pub fn manifest(&self) -> Result<Vec<ManifestItem>, ArchiveError> {
        manifest_of(&self.archive, |key: &str| match self.member(key) {
            Err(_) => Ok(None),
            Ok(member) => read_member(&self.archive, member).map(Some),
        })
    }

    /// The manifest item and config of the image tagged `reference`.
    pub fn image(
        &self,
        reference: &str,
    ) -> Result<(ManifestItem, ImageConfig, String), ArchiveError> {
        let wanted = normalize_reference(reference);
        let item = self
            .manifest()?
            .into_iter()
            .find(|i| {
                i.repo_tags
                    .iter()
                    .flatten()
                    .any(|t| normalize_reference(t) == wanted)
            })
            .ok_or_else(|| format_err(&self.archive, format!("it has no image {reference}")))?;
        let bytes = read_member(&self.archive, self.member(&item.config)?)?;
        let config: ImageConfig = serde_json::from_slice(&bytes)
            .map_err(|e| format_err(&self.archive, format!("image config: {e}")))?;
        if config.rootfs.diff_ids.len() != item.layers.len() {
            return Err(format_err(
                &self.archive,
                format!(
                    "the image has {} layers but its config lists {} diff_ids",
                    item.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            ));
        }
        let id = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
        Ok((item, config, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_compare_as_docker_does() {
        for (a, b) in [
            ("docker.io/busybox", "busybox:latest"),
            ("docker.io/library/busybox:1", "busybox:1"),
            ("docker.io/gscrivano/etcd", "gscrivano/etcd:latest"),
            ("localhost:5000/x", "localhost:5000/x:latest"),
        ] {
            assert_eq!(normalize_reference(a), normalize_reference(b), "{a} {b}");
        }
        assert_ne!(normalize_reference("a/etcd"), normalize_reference("b/etcd"));
    }

    #[test]
    fn link_keys_resolve_relative_to_the_link() {
        assert_eq!(
            link_key("abc/layer.tar", Path::new("../def/layer.tar")),
            "def/layer.tar"
        );
    }
}
