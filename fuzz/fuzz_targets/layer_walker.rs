//! Arbitrary bytes as an image layer, applied as root onto a rootfs: no panic, and nothing
//! outside the rootfs changes. The rootfs starts with symlinks aimed out of it (relative
//! and absolute) at a sentinel directory next to it; after every input the sentinel must
//! hold exactly its one file, unchanged. Run (as root):
//! `cargo +nightly fuzz run layer_walker -- -dict=fuzz/layer_walker.dict`.
#![no_main]

use atomic_preload::stages::system::{layer, rootfs::Root};
use libfuzzer_sys::fuzz_target;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

const SANDBOX: &str = "/dev/shm/ap-fuzz-layer";

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

fuzz_target!(|data: &[u8]| {
    reset();
    let root = Root::open(&Path::new(SANDBOX).join("root")).unwrap();
    // Errors are fine (most inputs are not tars); escaping is not.
    let _ = layer::apply(&root, data);
    check_outside();
});
