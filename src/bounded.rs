//! Reading a file an operator or an image supplied (the config, a digest sidecar, an
//! image root's `storage.conf`): only a regular file, opened without blocking, and never
//! more than a limit. A FIFO would block the reader — the generator at boot, a load
//! holding the archive lock — and `/dev/zero` would be read until memory runs out.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The whole file at `path` (symlinks followed), at most `limit` bytes. Errors:
/// `NotFound` as the open gives it; `InvalidInput` "not a regular file" for FIFOs,
/// devices, sockets and directories (opened non-blocking, so a FIFO never waits for a
/// writer); `InvalidData` "larger than LIMIT bytes".
pub fn read(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        )
    };
    if meta.len() > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file that grows while it is read is cut at the limit, and refused.
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn only_regular_files_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "12345").unwrap();
        assert_eq!(read(&file, 5).unwrap(), b"12345");
        let err = read(&file, 4).unwrap_err();
        assert_eq!(err.to_string(), "larger than 4 bytes");
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Returns at once: no writer is waited for.
        assert_eq!(
            read(&fifo, 10).unwrap_err().to_string(),
            "not a regular file"
        );
        symlink("/dev/zero", dir.path().join("zero")).unwrap();
        assert_eq!(
            read(&dir.path().join("zero"), 10).unwrap_err().to_string(),
            "not a regular file"
        );
        assert_eq!(
            read(dir.path(), 10).unwrap_err().to_string(),
            "not a regular file"
        );
        assert_eq!(
            read(&dir.path().join("none"), 10).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
