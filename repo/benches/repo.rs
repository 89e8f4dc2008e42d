//! The repository transport against plain git, side by side on the same repositories:
//!
//! 1. Snapshot + transfer + seed ÷ `git clone --depth 1 file://…` of the same repository (what a
//!    shallow checkout costs at best):
//!    - snapshot: `Snapshot::take` of a work tree with uncommitted changes;
//!    - transfer: the bundle copied into the server's snapshots dir and its heads read, as the
//!      embedded upload (`register_copy`, `check_bundle`) does when it cannot hard-link (a copy,
//!      the slower case; a remote upload streams the same bytes over HTTP instead);
//!    - seed: what `server/src/sandbox/workdir.rs` does with it: the sandbox's clone
//!      (`--no-hardlinks`, parallel checkout), and delegate's own change repository seeded with
//!      a copy of the clone's checked pack.
//! 2. A change of 1,000 files coming back: the in-sandbox commit and bundle, the server's checked
//!    import with its file list and preview, the export bundle and the branch written into the
//!    caller's repository, beside plain git doing the same: commit in a clone, `git fetch` of it
//!    into the caller's repository as a branch.
//!
//!   cargo bench -p delegate-repo --bench repo [-- --sizes 10,100,1000 --runs 3 --big-runs 1]
//!
//! `--big-runs` is the number of runs for sizes of 1,000 MB and more (default: `--runs`).
//! `--fixtures DIR` makes the test repositories in DIR and keeps them for the next run (which
//! then starts at once); without it they are made in a temporary directory and removed.
//!
//! Sizes are in MB of file content, about 10 KB a file (a 100 MB repository has 10,000 files).
//! Prints a Markdown table for BENCHMARKS.md.

// The fixtures are plain synchronous git and file writes outside the timed sections.
#![allow(clippy::disallowed_methods, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use delegate_repo::git::Git;
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
            // git's auto-gc packs a large fixture at its commit: in the foreground, so that it
            // does not repack beside the timed runs.
            "-c",
            "gc.autoDetach=false",
            "-c",
            "maintenance.autoDetach=false",
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
    // Odd and distinct for distinct seeds (`seed | 1` made pairs of files identical).
    let mut x = seed.wrapping_mul(2) | 1;
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
    if root.join(".git").is_dir() {
        // Kept from an earlier run (`--fixtures`).
        return root;
    }
    std::fs::create_dir_all(&root).unwrap();
    git(&root, &["init", "-q"]);
    let files = mb * 100;
    for i in 0..files {
        let path = root.join(format!("src/m{}/d{}/f{i}.rs", i % 20, i % 7));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text(i as u64 + 1, 10_000)).unwrap();
    }
    // Files last written an hour ago, as in a work tree one did not just create: git trusts its
    // index for them instead of hashing every file again as "racily clean".
    let status = Command::new("find")
        .args([
            "src",
            "-type",
            "f",
            "-exec",
            "touch",
            "-d",
            "1 hour ago",
            "{}",
            "+",
        ])
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(status.success());
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
    let big_runs: usize = arg("--big-runs")
        .and_then(|r| r.parse().ok())
        .unwrap_or(runs);
    let tmp = tempfile::tempdir().unwrap();
    // Where the test repositories are made, and kept for the next run when given.
    let fixtures = arg("--fixtures").map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);
    let mut out = String::from(
        "| repository | runs | snapshot | transfer | seed: sandbox clone | seed: change repo | total | `git clone --depth 1` | ratio |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut change_rows = String::new();
    for &mb in &sizes {
        let runs = if mb >= 1000 { big_runs } else { runs };
        let root = make_repo(&fixtures, mb);
        let mut steps: [Vec<Duration>; 4] = Default::default();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for run in 0..runs {
            // Interleaved, so machine noise hits both sides alike.
            let server = tmp.path().join(format!("server-{mb}-{run}"));
            std::fs::create_dir_all(&server).unwrap();
            let t = Instant::now();
            let snap = Snapshot::take(&root, Limits::default(), &tmp.path().join("scratch"))
                .await
                .unwrap();
            let snapshot_time = t.elapsed();

            let t = Instant::now();
            let uploaded = server.join("snp.bundle");
            std::fs::copy(snap.bundle(), &uploaded).unwrap();
            git(
                &server,
                &["bundle", "list-heads", uploaded.to_str().unwrap()],
            );
            let transfer_time = t.elapsed();

            let t = Instant::now();
            let work = server.join("workspace");
            let head = seed_clone(&uploaded, &work).await;
            let clone_time = t.elapsed();
            let t = Instant::now();
            ChangeRepo::create_from_clone(&server.join("changes.git"), &work.join(".git"), &head)
                .await
                .unwrap();
            let change_repo_time = t.elapsed();
            ours.push(snapshot_time + transfer_time + clone_time + change_repo_time);
            for (step, d) in
                steps
                    .iter_mut()
                    .zip([snapshot_time, transfer_time, clone_time, change_repo_time])
            {
                step.push(d);
            }
            drop(snap);
            std::fs::remove_dir_all(&server).unwrap();

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
        let [s, tr, cl, cr] = steps.map(median);
        let (a, b) = (median(ours), median(theirs));
        out += &format!(
            "| {mb} MB, {} files, dirty | {runs} | {} | {} | {} | {} | {} | {} | **{:.2}** |\n",
            mb * 100,
            secs(s),
            secs(tr),
            secs(cl),
            secs(cr),
            secs(a),
            secs(b),
            a.as_secs_f64() / b.as_secs_f64()
        );

        // A change of 1,000 files back out.
        let snap = Snapshot::take(&root, Limits::default(), &tmp.path().join("scratch"))
            .await
            .unwrap();
        let work = tmp.path().join(format!("agent-{mb}"));
        let head = seed_clone(&snap.bundle(), &work).await;
        // The server's side is seeded before the sandbox starts, as workdir.rs does.
        let server = tmp.path().join(format!("server-{mb}"));
        std::fs::create_dir_all(&server).unwrap();
        let repo =
            ChangeRepo::create_from_clone(&server.join("changes.git"), &work.join(".git"), &head)
                .await
                .unwrap();
        // The same change in a plain shallow clone, for git's own way back.
        let plain = tmp.path().join(format!("plain-{mb}"));
        git(
            tmp.path(),
            &[
                "clone",
                "-q",
                "--depth",
                "1",
                &format!("file://{}", root.display()),
                plain.to_str().unwrap(),
            ],
        );
        change_files(&work);
        change_files(&plain);
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
        let t = Instant::now();
        let result = repo
            .import(&bundle, &snap.tip, 1 << 30, &server)
            .await
            .unwrap();
        let files = repo.files(&snap.tip, &result).await.unwrap();
        let _ = repo.preview(&snap.tip, &result, 20_000).await.unwrap();
        let import_time = t.elapsed();
        let t = Instant::now();
        let export = server.join("export.bundle");
        repo.bundle(&snap.tip, &result, &export).await.unwrap();
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
        let ours = commit_time + import_time + apply_time;

        let t = Instant::now();
        git(&plain, &["add", "-A"]);
        git(&plain, &["commit", "-q", "-m", "bench"]);
        git(
            &root,
            &[
                "fetch",
                "-q",
                plain.to_str().unwrap(),
                &format!("+HEAD:refs/heads/plain-{mb}"),
            ],
        );
        let theirs = t.elapsed();
        change_rows += &format!(
            "| {mb} MB | {} | {} | {} | {} | {} | {} | **{:.2}** |\n",
            files.len(),
            secs(commit_time),
            secs(import_time),
            secs(apply_time),
            secs(ours),
            secs(theirs),
            ours.as_secs_f64() / theirs.as_secs_f64()
        );
        drop(snap);
        for dir in [&work, &plain, &server] {
            std::fs::remove_dir_all(dir).unwrap();
        }
        if arg("--fixtures").is_none() {
            std::fs::remove_dir_all(&root).unwrap();
        }
    }
    println!("## Repositories in and out (medians of the runs, interleaved; times in s)\n");
    println!("{out}");
    println!(
        "| repository | files changed | commit + bundle in the sandbox | import + describe on the server | export + branch in the caller's repo | total | plain git: commit + `git fetch` as a branch | ratio |\n|---|---|---|---|---|---|---|---|\n{change_rows}"
    );
}

/// The sandbox's clone of a snapshot bundle, as `server/src/sandbox/workdir.rs` makes it; returns
/// its HEAD commit.
async fn seed_clone(bundle: &Path, work: &Path) -> String {
    Git::new(work.parent().unwrap())
        .args(["-c", "checkout.workers=0", "clone", "-q", "--no-hardlinks"])
        .arg(bundle)
        .arg(work)
        .run()
        .await
        .unwrap();
    Git::new(work)
        .args(["remote", "remove", "origin"])
        .run()
        .await
        .unwrap();
    Git::new(work)
        .args(["rev-parse", "--verify", "-q", "HEAD^{commit}"])
        .line()
        .await
        .unwrap()
}

/// The agent's change: 1,000 files rewritten or added.
fn change_files(work: &Path) {
    for i in 0..1000 {
        let path = work.join(format!("src/m{}/d{}/f{i}.rs", i % 20, i % 7));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Fresh content (the seeds of the original files are 1..=files): new blobs.
        std::fs::write(&path, text(i as u64 + 10_000_000, 10_000)).unwrap();
    }
}
