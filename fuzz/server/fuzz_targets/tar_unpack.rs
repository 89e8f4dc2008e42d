//! The docker backend's unpacker of a sandbox's change (Docker's archive API output) on arbitrary
//! bytes: it never panics, writes nothing when it refuses, and what it accepts is the one file's
//! bytes, within the cap.
#![no_main]

use std::sync::OnceLock;

use delegate_server::sandbox::docker::archive::unpack_one;
use libfuzzer_sys::fuzz_target;

const MAX: u64 = 4096;

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temp dir"))
}

fuzz_target!(|data: &[u8]| {
    let dest = dir().path().join("changes.bundle");
    match unpack_one(data, "change.bundle", &dest, MAX) {
        Ok(()) => {
            let meta = std::fs::symlink_metadata(&dest).expect("the file it wrote");
            assert!(meta.is_file() && meta.len() <= MAX);
            std::fs::remove_file(&dest).unwrap();
        }
        Err(_) => assert!(!dest.exists(), "a refused archive left a file"),
    }
});
