//! The repository transport against plain git, side by side on the same repositories:
//!
//! 1. Snapshot + seed: `Snapshot::take` of a work tree with uncommitted changes, then the clone of
//!    its bundle that a sandbox starts from ÷ `git clone --depth 1 file://…` of the same
//!    repository (what a shallow checkout costs at best).
//! 2. A change of 1,000 files coming back: the in-sandbox commit and bundle, the server's checked
//!    import with its file list and preview, and the branch written into the caller's repository.
//!
//!   cargo bench -p delegate-repo --bench repo [-- --sizes 10,100 --runs 5]
//!
//! Sizes are in MB of file content, about 10 KB a file (a 100 MB repository has 10,000 files).
//! Prints a Markdown table for BENCHMARKS.md.

// The fixtures are plain synchronous git and file writes outside the timed sections.
#![allow(clippy::disallowed_methods, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use delegate_repo::{ApplyTo, BranchName, COMMIT_SCRIPT, ChangeRepo, Limits, Snapshot, apply};

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .args([
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Source-like text: lines of hex from a fixed generator (compresses about as well as code).
fn text(seed: u64, bytes: usize) -> String {
    let mut x = seed | 1;
    let mut out = String::with_capacity(bytes + 80);
    while out.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!(
            "    let v{:x} = {:016x}; // {:x}\n",
            x % 4096,
            x,
            x >> 40
        ));
    }
    out
}

/// A repository with `mb` MB in files of about 10 KB across nested dirs, committed, plus a dirty
/// tracked file and an untracked one.
fn make_repo(dir: &Path, mb: usize) -> PathBuf {
    let root = dir.join(format!("repo-{mb}mb"));
    std::fs::create_dir_all(&root).unwrap();
    git(&root, &["init", "-q"]);
    let files = mb * 100;
    for i in 0..files {
        let path = root.join(format!("src/m{}/d{}/f{i}.rs", i % 20, i % 7));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text(i as u64 + 1, 10_000)).unwrap();
    }
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "all"]);
    std::fs::write(root.join("src/m0/d0/f0.rs"), text(999_999, 10_000)).unwrap();
    std::fs::write(root.join("NOTES.txt"), "untracked\n").unwrap();
    root
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes: Vec<usize> = arg("--sizes")
        .unwrap_or_else(|| "10,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runs: usize = arg("--runs").and_then(|r| r.parse().ok()).unwrap_or(5);
    let tmp = tempfile::tempdir().unwrap();
    let mut out = String::from(
        "| repository | snapshot + seed (s) | `git clone --depth 1` (s) | ratio |\n|---|---|---|---|\n",
    );
    let mut change_rows = String::new();
    for &mb in &sizes {
        let root = make_repo(tmp.path(), mb);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for run in 0..runs {
            // Interleaved, so machine noise hits both sides alike.
            let work = tmp.path().join(format!("seed-{mb}-{run}"));
            let t = Instant::now();
            let snap = Snapshot::take(&root, Limits::default(), &tmp.path().join("scratch"))
                .await
                .unwrap();
            git(
                tmp.path(),
                &[
                    "clone",
                    "-q",
                    snap.bundle().to_str().unwrap(),
                    work.to_str().unwrap(),
                ],
            );
            ours.push(t.elapsed());
            drop(snap);
            std::fs::remove_dir_all(&work).unwrap();

            let clone = tmp.path().join(format!("clone-{mb}-{run}"));
            let t = Instant::now();
            git(
                tmp.path(),
                &[
                    "clone",
                    "-q",
                    "--depth",
                    "1",
                    &format!("file://{}", root.display()),
                    clone.to_str().unwrap(),
                ],
            );
            theirs.push(t.elapsed());
            std::fs::remove_dir_all(&clone).unwrap();
        }
        let (a, b) = (median(ours), median(theirs));
        out += &format!(
            "| {mb} MB, {} files, dirty | {} | {} | **{:.2}** |\n",
            mb * 100,
            secs(a),
            secs(b),
            a.as_secs_f64() / b.as_secs_f64()
        );

        // A change of 1,000 files back out.
        let snap = Snapshot::take(&root, Limits::default(), &tmp.path().join("scratch"))
            .await
            .unwrap();
        let work = tmp.path().join(format!("agent-{mb}"));
        git(
            tmp.path(),
            &[
                "clone",
                "-q",
                snap.bundle().to_str().unwrap(),
                work.to_str().unwrap(),
            ],
        );
        for i in 0..1000 {
            let path = work.join(format!("src/m{}/d{}/f{i}.rs", i % 20, i % 7));
            if path.exists() {
                std::fs::write(&path, text(i as u64 + 7, 10_000)).unwrap();
            } else {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, text(i as u64 + 7, 10_000)).unwrap();
            }
        }
        let bundle = tmp.path().join(format!("change-{mb}.bundle"));
        let t = Instant::now();
        let status = Command::new("sh")
            .current_dir(&work)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("DELEGATE_BASE", &snap.tip)
            .env("DELEGATE_OUT", &bundle)
            .env("DELEGATE_MESSAGE", "bench")
            .args(["-c", COMMIT_SCRIPT])
            .status()
            .unwrap();
        assert!(status.success());
        let commit_time = t.elapsed();
        let server = tmp.path().join(format!("server-{mb}"));
        std::fs::create_dir_all(&server).unwrap();
        let repo = ChangeRepo::create(&server.join("changes.git"), &snap.bundle())
            .await
            .unwrap();
        let t = Instant::now();
        let result = repo
            .import(&bundle, &snap.tip, 1 << 30, &server)
            .await
            .unwrap();
        let files = repo.files(&snap.tip, &result).await.unwrap();
        let _ = repo.preview(&snap.tip, &result, 20_000).await.unwrap();
        let import_time = t.elapsed();
        let export = server.join("export.bundle");
        repo.bundle(&snap.tip, &result, &export).await.unwrap();
        let t = Instant::now();
        let applied = apply(
            &snap,
            &export,
            &result,
            &BranchName::Fresh(format!("bench-{mb}")),
            ApplyTo::Branch,
        )
        .await
        .unwrap();
        let apply_time = t.elapsed();
        assert!(applied.branch.is_some());
        change_rows += &format!(
            "| {mb} MB | {} | {} | {} | {} |\n",
            files.len(),
            secs(commit_time),
            secs(import_time),
            secs(apply_time)
        );
    }
    println!("## Repositories in and out ({runs} runs each, medians, interleaved)\n");
    println!("{out}");
    println!(
        "| repository | files changed | commit + bundle in the sandbox (s) | import + describe on the server (s) | branch in the caller's repo (s) |\n|---|---|---|---|---|\n{change_rows}"
    );
}
