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

/// One image an archive holds: its tags and its ID (the SHA-256 of its config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedImage {
    pub tags: Vec<String>,
    pub id: String,
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
pub fn layer_reader(file: File) -> io::Result<Box<dyn Read>> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let magic = io::BufRead::fill_buf(&mut reader)?;
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
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

/// One pass over the archive, to its very end (a truncated compressed stream fails here):
/// `file(n, key, entry)` for each regular member; returns the symlink members as
/// key → target key.
fn walk(
    path: &Path,
    doing: &str,
    mut file: impl FnMut(usize, String, &mut dyn Read) -> io::Result<()>,
) -> Result<HashMap<String, String>, ArchiveError> {
    let io_err = |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    };
    let reader = open_decompressed(path, doing).map_err(io_err)?;
    let mut archive = tar::Archive::new(reader);
    let mut links = HashMap::new();
    for (n, entry) in archive.entries().map_err(io_err)?.enumerate() {
        let mut entry = entry.map_err(io_err)?;
        let key = member_key(&entry.path().map_err(io_err)?);
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            if let Some(target) = entry.link_name().map_err(io_err)? {
                links.insert(key.clone(), link_key(&key, &target));
            }
        } else if kind.is_file() {
            file(n, key, &mut entry).map_err(io_err)?;
        }
    }
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(io_err)?;
    Ok(links)
}

/// One pass over the archive: its images (tags and IDs), without keeping any layer.
pub fn index(path: &Path) -> Result<Vec<IndexedImage>, ArchiveError> {
    let mut json: HashMap<String, Vec<u8>> = HashMap::new();
    let mut kept = 0u64;
    let links = walk(path, "indexing", |_, key, entry| {
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
        images.push(IndexedImage {
            tags: item.repo_tags.unwrap_or_default(),
            id: format!("sha256:{}", hex(&Sha256::digest(config))),
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

/// A spooled metadata member (manifest, index, config), no larger than an index keeps.
fn read_member(path: &Path) -> Result<Vec<u8>, ArchiveError> {
    crate::bounded::read(path, JSON_MAX).map_err(|source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    })
}

/// An archive's files, spooled for a checkout.
pub struct Spool {
    pub dir: PathBuf,
    files: HashMap<String, PathBuf>,
    links: HashMap<String, String>,
    archive: PathBuf,
}

impl Spool {
    /// Copy every regular member of `archive` into `dir` (which must exist and be ours).
    pub fn create(archive: &Path, dir: &Path) -> Result<Spool, ArchiveError> {
        let mut files = HashMap::new();
        let links = walk(archive, "unpacking", |n, key, entry| {
            // Numbered names: a member's name never decides where anything is written.
            let spooled = dir.join(format!("member-{n}"));
            io::copy(entry, &mut File::create(&spooled)?)?;
            files.insert(key, spooled);
            Ok(())
        })?;
        Ok(Spool {
            dir: dir.to_owned(),
            files,
            links,
            archive: archive.to_owned(),
        })
    }

    /// The spooled file of a member, following the archive's own symlinks (a few hops).
    pub fn member(&self, name: &str) -> Result<&Path, ArchiveError> {
        let mut key = name.trim_start_matches("./").to_owned();
        for _ in 0..8 {
            if let Some(path) = self.files.get(&key) {
                return Ok(path);
            }
            match self.links.get(&key) {
                Some(next) => key = next.clone(),
                None => break,
            }
        }
        Err(format_err(
            &self.archive,
            format!("member {name} is missing"),
        ))
    }

    pub fn manifest(&self) -> Result<Vec<ManifestItem>, ArchiveError> {
        manifest_of(&self.archive, |key: &str| match self.member(key) {
            Err(_) => Ok(None),
            Ok(path) => read_member(path).map(Some),
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
        let bytes = read_member(self.member(&item.config)?)?;
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
