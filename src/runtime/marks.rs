//! Small "done" records in the state directory: what was loaded or installed, so each
//! happens once. A record is written only after the work succeeded, atomically (temp file,
//! fsync, rename), so an interrupted stage leaves no record and is simply done again.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// `key=value` lines. Values never contain newlines (we write them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mark(pub BTreeMap<String, String>);

impl Mark {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value: String = value.into();
        self.0
            .insert(key.to_owned(), value.replace(['\n', '\r'], " "));
    }
    fn parse(text: &str) -> Self {
        Mark(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }
}

pub struct Marks {
    dir: PathBuf,
}

impl Marks {
    /// Records kept in `state_dir/kind/`.
    pub fn new(state_dir: &Path, kind: &str) -> io::Result<Self> {
        let dir = state_dir.join(kind);
        fs::create_dir_all(&dir)?;
        Ok(Marks { dir })
    }

    /// Records in `state_dir/kind/` when that directory exists (never creates it: for
    /// readers such as `atomic-preload status`).
    pub fn new_existing(state_dir: &Path, kind: &str) -> Option<Self> {
        let dir = state_dir.join(kind);
        dir.is_dir().then_some(Marks { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The record's file (its mtime is when the work was done).
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.path(name)
    }

    /// A missing or unreadable record reads as none: the work is then done again.
    pub fn read(&self, name: &str) -> Option<Mark> {
        fs::read_to_string(self.path(name))
            .ok()
            .map(|t| Mark::parse(&t))
    }

    pub fn write(&self, name: &str, mark: &Mark) -> io::Result<()> {
        let mut text = String::new();
        for (k, v) in &mark.0 {
            text.push_str(&format!("{k}={v}\n"));
        }
        let path = self.path(name);
        super::durable::write(&path, text.as_bytes(), None).map_err(|e| {
            let note = super::disk_full_note(&path, &e);
            io::Error::new(e.kind(), format!("{}: {e}{note}", path.display()))
        })
    }

    pub fn remove(&self, name: &str) -> io::Result<()> {
        super::durable::remove_file(&self.path(name))
    }
}

/// An exclusive lock on `state_dir/name`, held until dropped. When another run holds
/// it, the journal and the status line say what this one waits for.
pub fn lock_file(state_dir: &Path, name: &str) -> io::Result<File> {
    fs::create_dir_all(state_dir)?;
    let path = state_dir.join(name);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    take(file, &path, true)
}

/// One of `n` slots in `dir` (`slot-0` …), held until dropped: at most `n` loads at once
/// across every run (one per core, as within one run), so 40 units starting together
/// do not unpack 40 archives at once on two cores. When every slot is held, waits
/// (polling: any of them will do), and says so once.
pub fn lock_slot(dir: &Path, n: usize) -> io::Result<File> {
    fs::create_dir_all(dir)?;
    let mut slots = (0..n.max(1))
        .map(|k| {
            File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("slot-{k}")))
        })
        .collect::<io::Result<Vec<File>>>()?;
    let mut said = false;
    loop {
        for k in 0..slots.len() {
            match slots[k].try_lock() {
                Ok(()) => return Ok(slots.swap_remove(k)),
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        if !said {
            say_waiting(&format!(
                "waiting for one of the {} loads running at once to finish ({})",
                slots.len(),
                dir.display()
            ));
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// What a run waiting for a lock waits for: in the journal and on the status line.
fn say_waiting(message: &str) {
    println!("{message}");
    super::notify::status(message);
}

/// A lock on the archive directory `dir` itself (none when it does not exist): shared by
/// the stages that read an archive together with its recorded digest or its index,
/// exclusive for `stage` while it renames a new archive and its sidecar into place — so
/// a boot's load never sees a new archive beside the old digest (and fails it as
/// tampered) when an admin stages onto a live host.
pub fn lock_archives(dir: &Path, exclusive: bool) -> io::Result<Option<File>> {
    match File::open(dir) {
        Ok(file) => take(file, dir, exclusive).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Lock `file` (`path`, for the message), waiting if another run holds it; when it must
/// wait, the journal and the status line say for what.
fn take(file: File, path: &Path, exclusive: bool) -> io::Result<File> {
    let tried = if exclusive {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    match tried {
        Ok(()) => return Ok(file),
        Err(fs::TryLockError::WouldBlock) => {}
        Err(fs::TryLockError::Error(e)) => return Err(e),
    }
    say_waiting(&format!(
        "waiting for another atomic-preload run to finish (it holds {})",
        path.display()
    ));
    if exclusive {
        file.lock()?;
    } else {
        file.lock_shared()?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_missing_reads_as_none() {
        let dir = std::env::temp_dir().join(format!("ap-marks-{}", std::process::id()));
        let marks = Marks::new(&dir, "loaded").unwrap();
        assert_eq!(marks.read("a.tar"), None);
        let mut mark = Mark::default();
        mark.set("sha256", "abc");
        mark.set("images", "one\ntwo");
        marks.write("a.tar", &mark).unwrap();
        let back = marks.read("a.tar").unwrap();
        assert_eq!(back.get("sha256"), Some("abc"));
        assert_eq!(back.get("images"), Some("one two"));
        marks.remove("a.tar").unwrap();
        assert_eq!(marks.read("a.tar"), None);
        let _lock = lock_file(&dir.join("lock-load"), "a.tar").unwrap();
        // Two slots: two holders at once, each its own.
        let a = lock_slot(&dir.join("lock-load"), 2).unwrap();
        let b = lock_slot(&dir.join("lock-load"), 2).unwrap();
        let other = File::open(dir.join("lock-load/slot-0")).unwrap();
        assert!(other.try_lock().is_err(), "slot-0 is held");
        let other = File::open(dir.join("lock-load/slot-1")).unwrap();
        assert!(other.try_lock().is_err(), "slot-1 is held");
        drop(a);
        drop(b);
        assert!(other.try_lock().is_ok(), "released when dropped");
        fs::remove_dir_all(&dir).unwrap();
    }
}
