//! The diff preview takes whole files smallest first: one large file early in path order no
//! longer pushes every small file out, the files shown stay in path order, and a note names
//! what was left out. Real git over a real change.

// The fixtures are plain synchronous git calls made between the awaited steps under test.
#![allow(clippy::disallowed_methods)]

use delegate_repo::{ChangeRepo, PreviewCut};
use delegate_testkit::repos::{git, write};

/// Lines `1..=n`, one a line.
fn lines(n: usize) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

#[tokio::test]
async fn a_large_early_file_leaves_the_small_ones_in_the_preview() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    git(root, &["init", "-q"]);
    write(&root.join("README.md"), "# r\n");
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "base"]);
    let base = git(root, &["rev-parse", "HEAD"]);
    // Path order: the big one first, then files of growing size, and a binary one.
    write(&root.join("aa_big.txt"), lines(20_000));
    write(&root.join("b_tiny.txt"), "tiny\n");
    write(&root.join("c_mid.txt"), lines(300));
    write(&root.join("d_small.txt"), lines(10));
    write(&root.join("e.bin"), [0u8, 1, 2, 255, 0]);
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "change"]);
    let head = git(root, &["rev-parse", "HEAD"]);
    let repo = ChangeRepo::open(root.join(".git"));

    let (whole, cut) = repo.preview(&base, &head, 1 << 20).await.unwrap();
    assert!(!cut);
    assert!(
        whole.starts_with("diff --git a/aa_big.txt"),
        "no note when nothing is left out"
    );
    let section = |name: &str| {
        let start = whole.find(&format!("diff --git a/{name} ")).unwrap();
        let end = whole[start + 1..]
            .find("diff --git ")
            .map_or(whole.len(), |i| start + 1 + i);
        whole[start..end].to_string()
    };

    // Room for everything but the big file (and the note): in the old path-order cut, the big
    // file took all of it.
    let small = ["b_tiny.txt", "c_mid.txt", "d_small.txt", "e.bin"];
    let room = small.iter().map(|f| section(f).len()).sum::<usize>() + 200;
    let (preview, cut) = repo.preview(&base, &head, room).await.unwrap();
    assert!(cut);
    assert!(preview.len() <= room, "{} > {room}", preview.len());
    assert!(!preview.contains("diff --git a/aa_big.txt"), "{preview}");
    let at: Vec<usize> = small
        .iter()
        .map(|f| {
            preview
                .find(&section(f))
                .unwrap_or_else(|| panic!("{f} not whole in:\n{preview}"))
        })
        .collect();
    assert!(at.is_sorted(), "not in path order: {at:?}");
    let note = &preview[..at[0]];
    assert!(
        note.starts_with("# left out of this preview") && note.contains("\n#   aa_big.txt ("),
        "{note}"
    );

    // Less room: the smallest still come first, the middle one goes too; the note names both,
    // in path order.
    let room =
        section("b_tiny.txt").len() + section("d_small.txt").len() + section("e.bin").len() + 250;
    assert!(room < section("c_mid.txt").len() + section("b_tiny.txt").len());
    let (preview, cut) = repo.preview(&base, &head, room).await.unwrap();
    assert!(cut && preview.len() <= room);
    for f in ["b_tiny.txt", "d_small.txt", "e.bin"] {
        assert!(preview.contains(&section(f)), "{f} missing:\n{preview}");
    }
    assert!(!preview.contains("diff --git a/c_mid.txt"));
    let big = preview.find("#   aa_big.txt").unwrap();
    let mid = preview.find("#   c_mid.txt").unwrap();
    assert!(big < mid && preview.starts_with("# left out"), "{preview}");

    // No room even for the note: nothing, and cut.
    let (nothing, cut) = repo.preview(&base, &head, 10).await.unwrap();
    assert!(cut && nothing.is_empty(), "{nothing:?}");
}

/// Added one at a time, the cut keeps exactly what sorting every file by size first keeps.
#[test]
fn the_cut_keeps_the_smallest_files_that_fit_whatever_the_order() {
    let mut seed = 7u64;
    for round in 0..200 {
        let max = 50 + round * 7;
        let sizes: Vec<usize> = (0..1 + round % 30)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                4 + (seed >> 33) as usize % 120
            })
            .collect();
        let mut cut = PreviewCut::new(max + 10_000);
        let mut tight = PreviewCut::new(max);
        for (i, size) in sizes.iter().enumerate() {
            // Each file's text is one line naming it, padded to its size.
            let text = format!("{i:x<width$}\n", width = *size - 1).into_bytes();
            cut.add(format!("f{i}"), text.clone(), *size);
            tight.add(format!("f{i}"), text, *size);
        }
        let (all, left) = cut.finish();
        assert!(!left && all.len() == sizes.iter().sum::<usize>());

        // The offline answer: sort by size, take while the running total fits.
        let mut by_size: Vec<usize> = (0..sizes.len()).collect();
        by_size.sort_by_key(|&i| (sizes[i], i));
        let mut used = 0;
        let fit = by_size
            .iter()
            .take_while(|&&i| {
                used += sizes[i];
                used <= max
            })
            .count();
        let (preview, left) = tight.finish();
        assert!(preview.len() <= max, "round {round}");
        if fit == sizes.len() {
            assert!(!left && preview.len() == used, "round {round}");
        } else {
            // The note takes room too: the smallest files, at most as many as offline, in the
            // order they came.
            assert!(left, "round {round}");
            let shown: Vec<usize> = preview
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.trim_end_matches('x').parse().unwrap())
                .collect();
            assert!(shown.len() <= fit, "round {round}: {shown:?} > {fit}");
            assert!(shown.is_sorted(), "round {round}: {shown:?}");
            let mut smallest = by_size[..shown.len()].to_vec();
            smallest.sort_unstable();
            assert_eq!(shown, smallest, "round {round}");
        }
    }
}
