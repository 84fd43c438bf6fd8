//! Arbitrary bytes as an image layer, applied as root onto a rootfs: no panic, and nothing
//! outside the rootfs changes. The rootfs starts with symlinks aimed out of it (relative
//! and absolute) at a sentinel directory next to it; after every input the sentinel must
//! hold exactly its one file, unchanged. Each input is applied twice, as a stream (how
//! compressed archives are read) and in place from a file (how an uncompressed archive's
//! layers are read): both must fail, or both succeed with the same stats, diff_id and
//! tree. Run (as root):
//! `cargo +nightly fuzz run layer_walker -- -dict=fuzz/layer_walker.dict`.
#![no_main]

use atomic_preload::stages::system::{layer, rootfs::Root};
use libfuzzer_sys::fuzz_target;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

const SANDBOX: &str = "/dev/shm/ap-fuzz-layer";
/// The input as a file, for the in-place walk (outside the sandbox: its listing is checked).
const INPUT: &str = "/dev/shm/ap-fuzz-layer-input.tar";

fn reset() {
    let sandbox = Path::new(SANDBOX);
    let _ = fs::remove_dir_all(sandbox.join("root"));
    fs::create_dir_all(sandbox.join("root/etc")).unwrap();
    fs::create_dir_all(sandbox.join("outside")).unwrap();
    fs::write(sandbox.join("outside/sentinel"), b"untouched").unwrap();
    symlink("../outside", sandbox.join("root/out")).unwrap();
    symlink("../../outside", sandbox.join("root/etc/up")).unwrap();
    symlink(format!("{SANDBOX}/outside"), sandbox.join("root/abs")).unwrap();
    symlink("/", sandbox.join("root/slash")).unwrap();
    fs::write(sandbox.join("root/etc/passwd"), b"root:x:0:0::/:/bin/sh\n").unwrap();
    // A fixed time: the two walks' trees are compared, mtimes included.
    let epoch = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(sandbox.join("root/etc/passwd"))
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(epoch).set_accessed(epoch))
        .unwrap();
}

fn check_outside() {
    let sandbox = Path::new(SANDBOX);
    let mut top: Vec<String> = fs::read_dir(sandbox)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["outside", "root"], "something appeared next to the rootfs");
    let names: Vec<String> = fs::read_dir(sandbox.join("outside"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["sentinel"], "the sentinel directory changed");
    let meta = fs::symlink_metadata(sandbox.join("outside/sentinel")).unwrap();
    assert!(meta.is_file(), "the sentinel was replaced");
    assert_eq!(fs::read(sandbox.join("outside/sentinel")).unwrap(), b"untouched");
}

/// The rootfs as the two walks must agree on it: every path below the root with its
/// type, mode, owner, size, content or target, and mtime (directories' and symlinks'
/// excepted: the reset made its own at different times).
fn fingerprint() -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let root = Path::new(SANDBOX).join("root");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.is_dir() {
                stack.push(p.clone());
                String::from("dir")
            } else if m.file_type().is_symlink() {
                format!("-> {:?}", fs::read_link(&p).unwrap())
            } else {
                format!("{:?} {} nlink {}", fs::read(&p).unwrap(), m.mtime(), m.nlink())
            };
            out.push(format!(
                "{:?} {:o} {}:{} {what}",
                p.strip_prefix(&root).unwrap(),
                m.mode(),
                m.uid(),
                m.gid()
            ));
        }
    }
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    reset();
    let root = Root::open(&Path::new(SANDBOX).join("root")).unwrap();
    // Errors are fine (most inputs are not tars); escaping is not.
    let streamed = layer::apply(&root, data);
    check_outside();
    let streamed_tree = fingerprint();
    drop(root);

    reset();
    fs::write(INPUT, data).unwrap();
    let file = fs::File::open(INPUT).unwrap();
    let root = Root::open(&Path::new(SANDBOX).join("root")).unwrap();
    let in_place = layer::apply_in_place(&root, &file, 0, data.len() as u64);
    check_outside();
    match (&streamed, &in_place) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "the two walks' stats differ");
            assert_eq!(streamed_tree, fingerprint(), "the two walks' trees differ");
        }
        (Err(_), Err(_)) => {}
        _ => panic!("one walk failed, the other did not: streamed {streamed:?}, in place {in_place:?}"),
    }
});
