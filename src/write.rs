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

/// Create `path` exclusively (O_EXCL never follows a symlink). The directory is normally
/// empty; if something is in the way, it is unlinked and the creation tried once more.
fn create_new(path: &Path, create: impl Fn(&Path) -> io::Result<()>) -> io::Result<()> {
    match create(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            clear(path)?;
            create(path)
        }
        other => other,
    }
}

pub fn write_unit(dir: &Path, unit: &UnitFile) -> Result<(), WriteError> {
    let path = dir.join(&unit.name);
    check_component(&unit.name).map_err(at(&path))?;
    create_new(&path, |p| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)?
            .write_all(unit.text.as_bytes())
    })
    .map_err(at(&path))
}

/// A real directory `dir/name`, created if missing; a symlink there is refused.
fn subdir(dir: &Path, name: &str) -> Result<PathBuf, WriteError> {
    let path = dir.join(name);
    check_component(name).map_err(at(&path))?;
    match fs::create_dir(&path) {
        Ok(()) => return Ok(path),
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(WriteError { path, source: e });
        }
        Err(_) => {}
    }
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_dir() => Ok(path),
        Ok(_) => Err(WriteError {
            path,
            source: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            ),
        }),
        Err(e) => Err(WriteError { path, source: e }),
    }
}

/// Write every symlink, each `.wants` directory made once; returns all failures.
pub fn write_symlinks<'a>(
    dir: &Path,
    links: impl IntoIterator<Item = &'a Symlink>,
) -> Result<(), Vec<WriteError>> {
    let mut dirs: Vec<(&str, Result<PathBuf, ()>)> = Vec::new();
    let mut errors = Vec::new();
    for link in links {
        let sub = match dirs.iter().find(|(name, _)| *name == link.dir) {
            Some((_, made)) => made.clone(),
            None => {
                let made = subdir(dir, &link.dir).map_err(|e| errors.push(e));
                dirs.push((&link.dir, made.clone()));
                made
            }
        };
        let Ok(sub) = sub else { continue };
        let path = sub.join(&link.link);
        let result = check_component(&link.link)
            .and_then(|()| create_new(&path, |p| std::os::unix::fs::symlink(&link.target, p)));
        if let Err(source) = result {
            errors.push(WriteError { path, source });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
