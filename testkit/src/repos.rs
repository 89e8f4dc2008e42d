//! Caller repositories for tests and benchmarks: plain synchronous git with no user or system
//! config, a project with every kind of entry a snapshot must carry, and a fingerprint of
//! everything a caller would notice changing.
//!
//! These are fixtures: they block, and run between the awaited steps under test.

#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs git in `dir` without user or system config (a fixed identity, `main` as the first
/// branch, file-protocol submodules allowed, paths printed as they are); panics with git's stderr when it fails. Returns
/// stdout, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "protocol.file.allow=always",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "core.quotepath=false",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Writes a file, making its parent directories.
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().expect("a file has a parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

/// Everything a caller would notice changing: HEAD, the current branch, the index file's bytes,
/// and every file of the working tree (names, contents, link targets).
pub fn fingerprint(root: &Path) -> String {
    let mut out = String::new();
    out += &git(root, &["rev-parse", "HEAD"]);
    out += &git(root, &["symbolic-ref", "HEAD"]);
    out += &format!(
        "{:?}",
        std::fs::read(root.join(".git/index")).expect("index")
    );
    fn walk(dir: &Path, out: &mut String) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("dir entry"))
            .collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            let p = e.path();
            if e.file_name() == ".git" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p).expect("stat");
            out.push_str(&format!("{}\n", p.display()));
            if meta.file_type().is_symlink() {
                out.push_str(&format!("-> {:?}\n", std::fs::read_link(&p).expect("link")));
            } else if meta.is_dir() {
                walk(&p, out);
            } else {
                out.push_str(&format!("{:?}\n", std::fs::read(&p).expect("read")));
            }
        }
    }
    walk(root, &mut out);
    out
}

/// A project under `base` with history, a dirty tracked file (`README.md`), an untracked file
/// (`notes/untracked.txt`), ignored files (`target/build.o`, `debug.log`), a binary file
/// (`data/blob.bin`), a symlink (`link-to-readme`), a name with spaces and non-ASCII, and a
/// submodule (`vendor/sub`). Returns its root.
pub fn project(base: &Path) -> PathBuf {
    let sub = base.join("sub-origin");
    std::fs::create_dir_all(&sub).expect("mkdir");
    git(&sub, &["init", "-q"]);
    write(&sub.join("lib.txt"), "submodule file\n");
    git(&sub, &["add", "."]);
    git(&sub, &["commit", "-q", "-m", "sub"]);

    let root = base.join("project");
    std::fs::create_dir_all(&root).expect("mkdir");
    git(&root, &["init", "-q"]);
    write(&root.join("README.md"), "# project\n");
    write(&root.join(".gitignore"), "target/\n*.log\n");
    git(&root, &["add", "."]);
    git(&root, &["commit", "-q", "-m", "first"]);
    write(&root.join("src/main.rs"), "fn main() {}\n");
    write(
        &root.join("data/blob.bin"),
        [0u8, 159, 146, 150, 0, 1, 2, 3],
    );
    write(&root.join("name with spaces ü.txt"), "odd name\n");
    std::os::unix::fs::symlink("README.md", root.join("link-to-readme")).expect("symlink");
    let sub = sub.to_str().expect("a UTF-8 temp path");
    git(&root, &["submodule", "add", "-q", sub, "vendor/sub"]);
    git(&root, &["add", "."]);
    git(&root, &["commit", "-q", "-m", "second"]);
    // Uncommitted state.
    write(&root.join("README.md"), "# project\n\ndirty line\n");
    write(&root.join("notes/untracked.txt"), "not yet added\n");
    write(&root.join("target/build.o"), "ignored\n");
    write(&root.join("debug.log"), "ignored too\n");
    root
}
