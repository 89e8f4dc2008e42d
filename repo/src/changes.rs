//! The server's side of a change: what a sandbox hands back is hostile input. It arrives as a git
//! bundle, size-capped, and is fetched (with every object checked) into a bare repository that
//! only delegate writes, seeded from the snapshot the sandbox started from. Nothing of the
//! sandbox's own repository (config, hooks, attributes, filters) is ever read by the host: only
//! objects, and only through `fetch` with `fsckObjects`.
//!
//! Inside the sandbox, [`COMMIT_SCRIPT`] records the work tree's state as one commit on top of
//! the previous tip and bundles it; the host never runs git over a directory the sandbox can
//! still write to.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::RepoError;
use crate::git::Git;

/// Run inside the sandbox, as its user, in its work dir, after the agent: commits the work tree
/// (everything not ignored, plus what the base already tracked) as one commit whose parent is
/// `$DELEGATE_BASE`, whatever the agent did to the branch or the index, and writes it to
/// `$DELEGATE_OUT` as a bundle. `$DELEGATE_MESSAGE` is the commit message.
///
/// Fast on large trees: the index starts as a copy of the work tree's own, reset to the base's
/// entries with `read-tree -m`, which keeps the stat data of every entry whose content is the
/// base's; `add -A` then hashes only the files that changed since git last looked at them, not
/// every file of the tree (a plain `read-tree` has no stat data: 3 s for 10,000 files). When the
/// agent left an index `read-tree -m` refuses (a conflict), the base alone is the start. The
/// bundle's delta search looks at 2 neighbours instead of 10: an edited file still finds its
/// base version (same path, sorted next to it), while the search over new files, which finds
/// nothing, costs a fifth.
pub const COMMIT_SCRIPT: &str = r#"set -eu
index=$(mktemp)
trap 'rm -f "$index"' EXIT
own=$(git rev-parse --git-path index)
export GIT_INDEX_FILE="$index"
export GIT_AUTHOR_NAME="${GIT_AUTHOR_NAME:-delegate agent}" GIT_AUTHOR_EMAIL="${GIT_AUTHOR_EMAIL:-agent@delegate.invalid}"
export GIT_COMMITTER_NAME="$GIT_AUTHOR_NAME" GIT_COMMITTER_EMAIL="$GIT_AUTHOR_EMAIL"
if ! { cp "$own" "$index" 2>/dev/null && git -c core.hooksPath=/dev/null read-tree -m "$DELEGATE_BASE" 2>/dev/null; }; then
  rm -f "$index"
  git -c core.hooksPath=/dev/null read-tree "$DELEGATE_BASE"
fi
git -c core.hooksPath=/dev/null add -A -- .
tree=$(git write-tree)
commit=$(printf '%s\n' "$DELEGATE_MESSAGE" | git commit-tree "$tree" -p "$DELEGATE_BASE")
git update-ref refs/delegate/result "$commit"
git -c pack.window=2 bundle create -q "$DELEGATE_OUT" refs/delegate/result "^$DELEGATE_BASE"
"#;

/// The ref a sandbox's change has in the bundle [`COMMIT_SCRIPT`] writes.
pub const RESULT_REF: &str = "refs/delegate/result";

/// One changed path between two commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChange {
    /// Path relative to the repository root.
    pub path: String,
    /// `added`, `modified` or `deleted`.
    pub change: &'static str,
    /// Lines added; 0 for binary files.
    pub additions: u64,
    /// Lines removed; 0 for binary files.
    pub deletions: u64,
    /// git sees no lines in it, so the counts say nothing and the preview only names it.
    pub binary: bool,
}

/// A bare repository holding a sandbox's snapshot and every change that came back from it.
#[derive(Debug, Clone)]
pub struct ChangeRepo {
    git_dir: PathBuf,
}

impl ChangeRepo {
    /// Opens the repository at `git_dir` (made by [`ChangeRepo::create`]).
    pub fn open(git_dir: impl Into<PathBuf>) -> ChangeRepo {
        ChangeRepo {
            git_dir: git_dir.into(),
        }
    }

    /// The bare repository's directory (its `GIT_DIR`).
    pub fn path(&self) -> &Path {
        &self.git_dir
    }

    /// Makes the repository and seeds it from a snapshot bundle; returns the snapshot's tip.
    pub async fn create(git_dir: &Path, snapshot_bundle: &Path) -> Result<ChangeRepo, RepoError> {
        let repo = ChangeRepo::init(git_dir).await?;
        repo.fetch_snapshot(snapshot_bundle).await?;
        Ok(repo)
    }

    /// Makes the repository from a fresh clone of a snapshot bundle that nothing but delegate
    /// has touched yet (no sandbox has started over it), by copying the clone's packs: the
    /// clone's own fetch already indexed and checked every object (with `fsckObjects`), and
    /// indexing the same bundle a second time cost as much again (7 s for 1 GB). Copies, not
    /// hard links: the sandbox later owns the clone's files and must not reach these. `head`
    /// (the clone's HEAD commit) becomes `refs/delegate/snapshot`.
    ///
    /// Fails, leaving `git_dir` half made, when the clone holds anything but packs (a clone of a
    /// bundle never does); the caller then removes it and uses [`ChangeRepo::create`].
    pub async fn create_from_clone(
        git_dir: &Path,
        clone_git_dir: &Path,
        head: &str,
    ) -> Result<ChangeRepo, RepoError> {
        let objects = clone_git_dir.join("objects");
        let io = |e: std::io::Error| RepoError::Io(format!("{}: {e}", objects.display()));
        let mut packs = Vec::new();
        let mut dir = tokio::fs::read_dir(&objects).await.map_err(io)?;
        while let Some(entry) = dir.next_entry().await.map_err(io)? {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.len() == 2 && name.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(RepoError::Io(format!(
                    "{}: the clone has loose objects",
                    objects.display()
                )));
            }
        }
        let mut dir = tokio::fs::read_dir(objects.join("pack"))
            .await
            .map_err(io)?;
        while let Some(entry) = dir.next_entry().await.map_err(io)? {
            let path = entry.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if matches!(ext, "pack" | "idx" | "rev")
                && entry.file_type().await.map_err(io)?.is_file()
            {
                packs.push(path);
            }
        }
        if !packs
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "idx"))
        {
            return Err(RepoError::Io(format!("{}: no pack", objects.display())));
        }
        // An index is only looked for once its pack is there: packs first.
        packs.sort_by_key(|p| p.extension().is_some_and(|e| e == "idx"));
        let repo = ChangeRepo::init(git_dir).await?;
        let into = git_dir.join("objects/pack");
        for pack in &packs {
            let to = into.join(pack.file_name().unwrap_or_default());
            tokio::fs::copy(pack, &to)
                .await
                .map_err(|e| RepoError::Io(format!("{}: {e}", to.display())))?;
        }
        // update-ref refuses a commit that is not there.
        repo.set_ref("snapshot", head).await?;
        Ok(repo)
    }

    /// An empty bare repository at `git_dir`.
    async fn init(git_dir: &Path) -> Result<ChangeRepo, RepoError> {
        let parent = git_dir.parent().unwrap_or(Path::new("/"));
        Git::new(parent)
            .args(["init", "-q", "--bare"])
            .arg(git_dir)
            .run()
            .await?;
        Ok(ChangeRepo::open(git_dir))
    }

    /// Fetches a bundle's HEAD (every object checked) to `refs/delegate/snapshot`: the
    /// snapshot, or the seed commit on top of it.
    pub async fn fetch_snapshot(&self, bundle: &Path) -> Result<(), RepoError> {
        self.git()
            .args(["fetch", "-q", "--no-tags", "--no-write-fetch-head"])
            .arg(bundle)
            .arg("+HEAD:refs/delegate/snapshot")
            .run()
            .await
            .map_err(|e| RepoError::BadBundle(format!("the snapshot: {e}")))?;
        Ok(())
    }

    fn git(&self) -> Git {
        Git::new(&self.git_dir).dirs(&self.git_dir, None)
    }

    /// The commit a ref names.
    pub async fn resolve(&self, rev: &str) -> Result<String, RepoError> {
        self.git()
            .args(["rev-parse", "--verify", "-q", &format!("{rev}^{{commit}}")])
            .line()
            .await
    }

    /// Reads a bundle a sandbox wrote (at most `max_bytes`), checks every object, and returns
    /// its commit, which must have exactly `base` as its parent. The bundle is copied first, so a
    /// sandbox that keeps writing to it changes nothing here.
    pub async fn import(
        &self,
        bundle: &Path,
        base: &str,
        max_bytes: u64,
        scratch: &Path,
    ) -> Result<String, RepoError> {
        let copy = scratch.join("incoming.bundle");
        copy_capped(bundle, &copy, max_bytes).await?;
        let result = self
            .git()
            .args(["fetch", "-q", "--no-tags", "--no-write-fetch-head"])
            .arg(&copy)
            .arg(format!("+{RESULT_REF}:refs/delegate/incoming"))
            .run()
            .await;
        let _ = tokio::fs::remove_file(&copy).await;
        result.map_err(|e| RepoError::BadBundle(format!("the sandbox's change: {e}")))?;
        let commit = self.resolve("refs/delegate/incoming").await?;
        let parents = self
            .git()
            .args(["rev-list", "--parents", "-n", "1", &commit])
            .line()
            .await?;
        let parents: Vec<&str> = parents.split_whitespace().skip(1).collect();
        if parents != [base] {
            return Err(RepoError::BadBundle(format!(
                "the sandbox's change {commit} does not sit on {base}"
            )));
        }
        Ok(commit)
    }

    /// Points `refs/delegate/{name}` at `commit`.
    pub async fn set_ref(&self, name: &str, commit: &str) -> Result<(), RepoError> {
        self.git()
            .args(["update-ref", &format!("refs/delegate/{name}"), commit])
            .run()
            .await
            .map(|_| ())
    }

    /// The paths that differ between two commits, with line counts and whether each is binary.
    pub async fn files(&self, from: &str, to: &str) -> Result<Vec<FileChange>, RepoError> {
        let status = self
            .git()
            .args(["diff", "--no-renames", "--name-status", "-z", from, to])
            .run()
            .await?;
        let numstat = self
            .git()
            .args(["diff", "--no-renames", "--numstat", "-z", from, to])
            .run()
            .await?;
        let mut counts = std::collections::HashMap::new();
        // `<added>\t<deleted>\t<path>\0`, with `-` for binary files.
        for entry in numstat.split(|b| *b == 0).filter(|e| !e.is_empty()) {
            let text = String::from_utf8_lossy(entry);
            let mut parts = text.splitn(3, '\t');
            let (Some(a), Some(d), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            counts.insert(path.to_string(), (a.parse().ok(), d.parse().ok()));
        }
        let mut out = Vec::new();
        let mut fields = status.split(|b| *b == 0).filter(|f| !f.is_empty());
        while let (Some(kind), Some(path)) = (fields.next(), fields.next()) {
            let path = String::from_utf8_lossy(path).into_owned();
            let change = match kind.first() {
                Some(b'A') => "added",
                Some(b'D') => "deleted",
                _ => "modified",
            };
            let (a, d) = counts.get(&path).copied().unwrap_or((None, None));
            out.push(FileChange {
                binary: a.is_none() && d.is_none() && counts.contains_key(&path),
                additions: a.unwrap_or(0),
                deletions: d.unwrap_or(0),
                path,
                change,
            });
        }
        Ok(out)
    }

    /// The whole change from `from` to `to` as a binary-safe patch (`git apply` takes it) in
    /// `out`; fails past `max_bytes` instead of writing a cut patch.
    pub async fn write_patch(
        &self,
        from: &str,
        to: &str,
        out: &Path,
        max_bytes: u64,
    ) -> Result<u64, RepoError> {
        let git = self
            .git()
            .args([
                "diff",
                "--no-renames",
                "--binary",
                "--no-color",
                "--full-index",
            ])
            .args([from, to]);
        git.to_file(out, max_bytes).await
    }

    /// A readable preview of the change: the text diff in at most `max_bytes`, binary files
    /// named and not dumped. It holds whole files' diffs, smallest first, so one large file
    /// cannot push every small one out, in path order, after a note naming the files left out
    /// ([`PreviewCut`]). Returns the preview and whether anything was left out. git's output is
    /// read once, as it comes; memory holds about twice `max_bytes`.
    pub async fn preview(
        &self,
        from: &str,
        to: &str,
        max_bytes: usize,
    ) -> Result<(String, bool), RepoError> {
        let mut cut = PreviewCut::new(max_bytes);
        // The file being read: its header's path, its diff while that fits, its size.
        let mut current: Option<(String, Vec<u8>, usize)> = None;
        let mut line_start = true;
        self.git()
            .args(["diff", "--no-renames", "--no-color", from, to])
            .pieces(b'\n', 64 * 1024, |piece, _| {
                if line_start && piece.starts_with(b"diff --git ") {
                    if let Some((path, text, size)) = current.take() {
                        cut.add(path, text, size);
                    }
                    current = Some((header_path(piece), Vec::new(), 0));
                }
                let (_, text, size) = current.get_or_insert_with(Default::default);
                *size += piece.len();
                if *size <= max_bytes {
                    text.extend_from_slice(piece);
                } else {
                    // Too large to show whatever else fits: only its size is kept.
                    *text = Vec::new();
                }
                line_start = piece.ends_with(b"\n");
                true
            })
            .await?;
        if let Some((path, text, size)) = current {
            cut.add(path, text, size);
        }
        Ok(cut.finish())
    }

    /// A bundle of the commits from `from` (which the receiver has) to `to`, for the caller's
    /// machine to apply.
    pub async fn bundle(&self, from: &str, to: &str, out: &Path) -> Result<(), RepoError> {
        self.set_ref("export", to).await?;
        // No delta search: the deltas the sandbox's bundle brought are reused as they are, and
        // a second search over the same new files found nothing new for 1 s a 1,000 files.
        self.git()
            .args(["-c", "pack.window=0", "bundle", "create", "-q"])
            .arg(out)
            .args(["refs/delegate/export".to_string(), format!("^{from}")])
            .run()
            .await
            .map(|_| ())
    }
}

/// At most this many left-out files are named in a preview's note; the rest are counted.
const NAMED_LEFT_OUT: usize = 20;

/// Chooses which files' diffs a preview of at most `max_bytes` shows: whole files, smallest
/// first (the most files for the room), then puts them back in the order they came (path
/// order, for reading), after a note naming the files left out. Files are added one at a time
/// and only the chosen ones are held, so memory stays about `max_bytes` however large the
/// change.
#[derive(Debug)]
pub struct PreviewCut {
    max_bytes: usize,
    /// The files chosen so far: the smallest ones seen, as many as fit.
    chosen: Vec<CutFile>,
    chosen_bytes: usize,
    /// (order, path, diff bytes) of every file left out.
    left_out: Vec<(usize, String, usize)>,
    next: usize,
}

#[derive(Debug)]
struct CutFile {
    order: usize,
    path: String,
    text: Vec<u8>,
}

impl PreviewCut {
    /// An empty preview of at most `max_bytes`.
    pub fn new(max_bytes: usize) -> PreviewCut {
        PreviewCut {
            max_bytes,
            chosen: Vec::new(),
            chosen_bytes: 0,
            left_out: Vec::new(),
            next: 0,
        }
    }

    /// The next file's diff, `size` bytes long; `text` is all of it, or may be empty when
    /// `size` is over the preview's room anyway (it will be left out).
    pub fn add(&mut self, path: String, text: Vec<u8>, size: usize) {
        let order = self.next;
        self.next += 1;
        if size > self.max_bytes || text.len() != size {
            self.left_out.push((order, path, size));
            return;
        }
        self.chosen_bytes += size;
        self.chosen.push(CutFile { order, path, text });
        // Over the room: the largest go. What stays is always the smallest files seen so far,
        // as many as fit, exactly as if all had been sorted by size first.
        while self.chosen_bytes > self.max_bytes {
            self.drop_largest();
        }
    }

    /// Moves the largest chosen file (the later one of equals) to the left-out ones.
    fn drop_largest(&mut self) {
        let Some(at) = (0..self.chosen.len())
            .max_by_key(|&i| (self.chosen[i].text.len(), self.chosen[i].order))
        else {
            return;
        };
        let file = self.chosen.swap_remove(at);
        self.chosen_bytes -= file.text.len();
        self.left_out.push((file.order, file.path, file.text.len()));
    }

    /// What was left out, as the preview's first lines.
    fn note(&mut self) -> Vec<u8> {
        if self.left_out.is_empty() {
            return Vec::new();
        }
        self.left_out.sort_by_key(|(order, _, _)| *order);
        // Short: a reader (or a budget taking the smallest pieces first) gets it before any
        // file's diff.
        let mut note = String::from("# left out of this preview (the whole patch has them):\n");
        for (_, path, bytes) in self.left_out.iter().take(NAMED_LEFT_OUT) {
            note.push_str(&format!(
                "#   {path} ({})\n",
                crate::snapshot::human(*bytes as u64)
            ));
        }
        if self.left_out.len() > NAMED_LEFT_OUT {
            note.push_str(&format!(
                "#   and {} more\n",
                self.left_out.len() - NAMED_LEFT_OUT
            ));
        }
        note.into_bytes()
    }

    /// The preview and whether anything was left out. The note counts against the room: when
    /// it does not fit, more files go; with no room even for the note, it is cut at a line.
    pub fn finish(mut self) -> (String, bool) {
        let mut note = self.note();
        while !self.chosen.is_empty() && self.chosen_bytes + note.len() > self.max_bytes {
            self.drop_largest();
            note = self.note();
        }
        if note.len() > self.max_bytes {
            let end = note[..self.max_bytes]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            note.truncate(end);
        }
        self.chosen.sort_by_key(|f| f.order);
        let mut out = note;
        for file in &self.chosen {
            out.extend_from_slice(&file.text);
        }
        (
            String::from_utf8_lossy(&out).into_owned(),
            !self.left_out.is_empty(),
        )
    }
}

/// The path a `diff --git a/P b/P` header names (with --no-renames both are the same); the
/// header's rest when it is not so plain (quoted paths stay quoted).
fn header_path(line: &[u8]) -> String {
    let line = String::from_utf8_lossy(line);
    let rest = line
        .trim_end_matches('\n')
        .strip_prefix("diff --git ")
        .unwrap_or_default();
    let half = rest.len().saturating_sub(1) / 2;
    if rest.len() % 2 == 1
        && rest.is_char_boundary(half)
        && let (Some(a), Some(b)) = (
            rest[..half].strip_prefix("a/"),
            rest[half + 1..].strip_prefix("b/"),
        )
        && a == b
    {
        return a.to_string();
    }
    rest.to_string()
}

/// Copies at most `max` bytes of `from`, refusing a longer file or anything but a plain file. The
/// file is opened without following a symlink and checked through the open handle, so a sandbox
/// that swaps it for a link to a host file between the check and the read gains nothing.
async fn copy_capped(from: &Path, to: &Path, max: u64) -> Result<(), RepoError> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(from)
        .await
        .map_err(|e| RepoError::BadBundle(format!("no change came back: {e}")))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| RepoError::BadBundle(format!("the sandbox's change: {e}")))?;
    if !meta.is_file() {
        return Err(RepoError::BadBundle(
            "the sandbox's change is not a plain file".into(),
        ));
    }
    let mut capped = file.take(max + 1);
    let mut out = tokio::fs::File::create(to)
        .await
        .map_err(|e| RepoError::Io(format!("{}: {e}", to.display())))?;
    let copied = tokio::io::copy(&mut capped, &mut out)
        .await
        .map_err(|e| RepoError::Io(format!("copying the change: {e}")))?;
    if copied > max {
        let _ = tokio::fs::remove_file(to).await;
        return Err(RepoError::TooLarge(format!(
            "the sandbox's change is over {}",
            crate::snapshot::human(max)
        )));
    }
    Ok(())
}
