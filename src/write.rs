//! Put rendered units and enablement symlinks into the generator's output directory.
//!
//! Only ever below `dir`: names are unit names (validated, no `/`), an existing entry of
//! the same name is unlinked first (never followed), files are created with O_EXCL.

use crate::plan::Symlink;
use crate::render::UnitFile;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError {
        path: path.to_owned(),
        source,
    }
}

/// A plain file or symlink component: no separators, no `.`/`..`.
fn check_component(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a plain file name",
        ));
    }
    Ok(())
}

/// Remove whatever is at `path` unless it is a directory; never follows a symlink.
fn clear(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a directory is in the way",
        )),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn write_unit(dir: &Path, unit: &UnitFile) -> Result<(), WriteError> {
    let path = dir.join(&unit.name);
    check_component(&unit.name).map_err(at(&path))?;
    clear(&path).map_err(at(&path))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(at(&path))?;
    file.write_all(unit.text.as_bytes()).map_err(at(&path))
}

/// A real directory `dir/name`, created if missing; a symlink there is refused.
fn subdir(dir: &Path, name: &str) -> Result<PathBuf, WriteError> {
    let path = dir.join(name);
    check_component(name).map_err(at(&path))?;
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_dir() => Ok(path),
        Ok(_) => Err(WriteError {
            path,
            source: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            ),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(&path).map_err(at(&path))?;
            Ok(path)
        }
        Err(e) => Err(WriteError { path, source: e }),
    }
}

pub fn write_symlink(dir: &Path, link: &Symlink) -> Result<(), WriteError> {
    let sub = subdir(dir, &link.dir)?;
    let path = sub.join(&link.link);
    check_component(&link.link).map_err(at(&path))?;
    clear(&path).map_err(at(&path))?;
    std::os::unix::fs::symlink(&link.target, &path).map_err(at(&path))
}
