//! SHA-256 as the stages use it: of a stream as it passes (archives, layers), of a file.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

/// A reader that hashes what passes through it.
pub struct Hashing<R> {
    pub inner: R,
    pub hasher: Sha256,
}

impl<R> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The lowercase hex SHA-256 of a file's content.
pub fn sha256_of(path: &Path) -> io::Result<String> {
    let mut reader = Hashing::new(BufReader::new(File::open(path)?));
    io::copy(&mut reader, &mut io::sink())?;
    Ok(hex(&reader.hasher.finalize()))
}

/// The recorded digest of an archive: `NAME.sha256` beside it, in `sha256sum`'s format
/// (`HEX  NAME`, so `sha256sum -c` checks it too), written by `atomic-preload stage`.
pub fn sidecar_path(archive: &Path) -> std::path::PathBuf {
    let mut name = archive.as_os_str().to_owned();
    name.push(".sha256");
    name.into()
}

/// The sidecar's text for an archive file name.
pub fn sidecar_text(hex: &str, archive_name: &str) -> String {
    format!("{hex}  {archive_name}\n")
}

/// A sidecar is one `sha256sum` line: 64 hex digits, two spaces and a file name.
pub const SIDECAR_SIZE_LIMIT: u64 = 4096;

/// The digest recorded for `archive`, lowercase hex; `None` when it has no sidecar. A
/// sidecar that is not `sha256sum` output is an error (it would otherwise check nothing).
pub fn recorded_digest(archive: &Path) -> io::Result<Option<String>> {
    let path = sidecar_path(archive);
    // Bounded and never blocking: a FIFO here must not hang a load that holds the
    // archive lock, nor `/dev/zero` fill memory.
    let bytes = match crate::bounded::read(&path, SIDECAR_SIZE_LIMIT) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let hex = text.split_whitespace().next().unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a SHA-256 digest (sha256sum format: HEX  NAME)",
                path.display()
            ),
        ));
    }
    Ok(Some(hex.to_ascii_lowercase()))
}

/// What a reader thread hands over: a chunk, the end (empty), or an error.
type Chunk = io::Result<Vec<u8>>;

/// The consuming end of [`read_ahead_hashing`]: the stream's bytes, in order.
pub struct Chunks {
    rx: Receiver<Chunk>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
}

/// Read into `buf` until it is full or the stream ends; how much was read.
pub fn fill(reader: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Copy what is left of `chunk` after `*pos` into `buf` (as much as fits), advancing
/// `*pos`; 0 when the chunk is used up.
pub fn serve(chunk: &[u8], pos: &mut usize, buf: &mut [u8]) -> usize {
    let n = buf.len().min(chunk.len().saturating_sub(*pos));
    buf[..n].copy_from_slice(&chunk[*pos..*pos + n]);
    *pos += n;
    n
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.current.len() {
                return Ok(serve(&self.current, &mut self.pos, buf));
            }
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => self.done = true,
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => self.done = true,
            }
        }
    }
}

/// Read `reader` to its end on another thread, hashing every byte there, and hand the
/// bytes over through a small queue: the SHA-256 is never in series with the consumer
/// (a `docker load`, a decompressor). The thread reads and hashes to the end even when
/// the consumer stops early (a zstd frame's end), so the digest is always the file's;
/// it returns the lowercase hex digest.
pub fn read_ahead_hashing<R: Read + Send + 'static>(
    reader: R,
) -> (Chunks, JoinHandle<io::Result<String>>) {
    let (tx, rx) = sync_channel::<Chunk>(8);
    let handle = std::thread::spawn(move || pump(reader, tx));
    (Chunks::new(rx), handle)
}

/// [`read_ahead_hashing`] on a thread of `scope`, for a reader that borrows.
pub fn read_ahead_hashing_scoped<'scope, R: Read + Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    reader: R,
) -> (
    Chunks,
    std::thread::ScopedJoinHandle<'scope, io::Result<String>>,
) {
    let (tx, rx) = sync_channel::<Chunk>(8);
    let handle = scope.spawn(move || pump(reader, tx));
    (Chunks::new(rx), handle)
}

impl Chunks {
    fn new(rx: Receiver<Chunk>) -> Chunks {
        Chunks {
            rx,
            current: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

/// The read-ahead thread: 1 MiB chunks, each hashed, then handed over.
fn pump(mut reader: impl Read, tx: std::sync::mpsc::SyncSender<Chunk>) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut consumer = true;
    loop {
        let mut buf = vec![0u8; 1 << 20];
        let filled = match fill(&mut reader, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                let message = e.to_string();
                let _ = tx.send(Err(e));
                return Err(io::Error::other(message));
            }
        };
        buf.truncate(filled);
        hasher.update(&buf);
        let end = filled == 0;
        if consumer && tx.send(Ok(buf)).is_err() {
            consumer = false;
        }
        if end {
            return Ok(hex(&hasher.finalize()));
        }
    }
}

/// The lowercase hex SHA-256 of `len` bytes of `file` from `offset` (positional reads:
/// the file's own offset is left alone, so another thread can read it meanwhile). Stops
/// early, with an error, once `stop` is set.
pub fn sha256_of_range(
    file: &File,
    offset: u64,
    len: u64,
    stop: &std::sync::atomic::AtomicBool,
) -> io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::Error::other("stopped"));
        }
        let want = usize::try_from(len - done).map_or(buf.len(), |n| n.min(buf.len()));
        let n = match file.read_at(&mut buf[..want], offset + done) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ends before the layer does",
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_round_trip_and_bad_ones_are_errors() {
        let dir = std::env::temp_dir().join(format!("ap-sidecar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("a.tar.gz");
        assert_eq!(recorded_digest(&archive).unwrap(), None);
        let hex = "AB".repeat(32);
        std::fs::write(sidecar_path(&archive), sidecar_text(&hex, "a.tar.gz")).unwrap();
        assert_eq!(recorded_digest(&archive).unwrap(), Some("ab".repeat(32)));
        assert_eq!(sidecar_path(&archive), dir.join("a.tar.gz.sha256"));
        std::fs::write(sidecar_path(&archive), "not a digest\n").unwrap();
        assert!(recorded_digest(&archive).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_ahead_gives_every_byte_and_the_files_digest() {
        let data: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
        let (mut chunks, hashed) = read_ahead_hashing(io::Cursor::new(data.clone()));
        let mut got = Vec::new();
        chunks.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
        assert_eq!(hashed.join().unwrap().unwrap(), hex(&Sha256::digest(&data)));
        // A consumer that stops early still gets the whole file's digest.
        let (mut chunks, hashed) = read_ahead_hashing(io::Cursor::new(data.clone()));
        let mut first = [0u8; 10];
        chunks.read_exact(&mut first).unwrap();
        drop(chunks);
        assert_eq!(hashed.join().unwrap().unwrap(), hex(&Sha256::digest(&data)));
    }
}
