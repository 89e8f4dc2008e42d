//! Moving a work dir between the host and a container as tar archives (Docker's archive API).
//!
//! The host keeps a mirror of each sandbox's work dir, tracked by delegate's own git dir outside
//! it (see `workdir.rs`). Seeding packs the mirror into the container's volume; after a run the
//! container's `/workspace` comes back and replaces the mirror. That archive is written by the
//! sandbox, so it is unpacked like hostile input: only files, directories and links, nothing
//! outside the destination (the tar crate checks every path and link target against it), and
//! a cap on the total size.

use std::io::Read;
use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::sandbox::SandboxError;

/// The most bytes a work dir may hold when it comes back from a container.
pub const MAX_WORKSPACE_BYTES: u64 = 4 << 30;
/// The most entries it may hold.
pub const MAX_WORKSPACE_ENTRIES: u64 = 500_000;

/// Packs the directory `dir` (its contents, not itself) into a tar archive whose entries belong
/// to `uid:gid`, the sandbox's user.
pub async fn pack(dir: PathBuf, uid: u64, gid: u64) -> Result<Vec<u8>, SandboxError> {
    tokio::task::spawn_blocking(move || {
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        append_tree(&mut builder, &dir, Path::new("."), uid, gid)?;
        builder.into_inner()
    })
    .await
    .map_err(|e| SandboxError::Io(format!("pack work dir: {e}")))?
    .map_err(|e| SandboxError::Io(format!("pack work dir: {e}")))
}

fn append_tree(
    builder: &mut tar::Builder<Vec<u8>>,
    dir: &Path,
    name: &Path,
    uid: u64,
    gid: u64,
) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    header.set_uid(uid);
    header.set_gid(gid);
    builder.append_data(&mut header, name, std::io::empty())?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let child = name.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            append_tree(builder, &path, &child, uid, gid)?;
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        header.set_uid(uid);
        header.set_gid(gid);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            builder.append_link(&mut header, &child, target)?;
        } else if meta.is_file() {
            builder.append_data(&mut header, &child, std::fs::File::open(&path)?)?;
        }
    }
    Ok(())
}

/// Unpacks a container's `/workspace` archive (entries under `workspace/`) so that `dest`
/// afterwards holds exactly what the container's work dir held. Unpacks beside `dest` first and
/// swaps, so a refused archive leaves the previous mirror in place.
pub async fn unpack_workspace<S, E>(archive: S, dest: PathBuf) -> Result<(), SandboxError>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    let staging = dest.with_extension("incoming");
    let _ = tokio::fs::remove_dir_all(&staging).await;
    tokio::fs::create_dir_all(&staging)
        .await
        .map_err(|e| SandboxError::Io(format!("unpack work dir: {e}")))?;
    let reader = StreamReader::new(
        archive.map(|chunk| chunk.map_err(|e| std::io::Error::other(e.to_string()))),
    );
    let bridge = SyncIoBridge::new(reader);
    let into = staging.clone();
    let unpacked = tokio::task::spawn_blocking(move || unpack_blocking(bridge, &into))
        .await
        .map_err(|e| SandboxError::Io(format!("unpack work dir: {e}")))?;
    let moved = match unpacked {
        Ok(()) => {
            let _ = tokio::fs::remove_dir_all(&dest).await;
            tokio::fs::rename(staging.join("workspace"), &dest)
                .await
                .map_err(|e| SandboxError::Io(format!("unpack work dir: {e}")))
        }
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_dir_all(&staging).await;
    moved
}

fn unpack_blocking(reader: impl Read, into: &Path) -> Result<(), SandboxError> {
    let refuse = |why: String| SandboxError::Io(format!("the work dir archive was refused: {why}"));
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut bytes = 0u64;
    let mut count = 0u64;
    let mut saw_root = false;
    for entry in archive.entries().map_err(|e| refuse(e.to_string()))? {
        let mut entry = entry.map_err(|e| refuse(e.to_string()))?;
        count += 1;
        bytes = bytes.saturating_add(entry.size());
        if count > MAX_WORKSPACE_ENTRIES || bytes > MAX_WORKSPACE_BYTES {
            return Err(refuse(format!(
                "more than {MAX_WORKSPACE_ENTRIES} entries or {} GiB",
                MAX_WORKSPACE_BYTES >> 30
            )));
        }
        let path = entry
            .path()
            .map_err(|e| refuse(e.to_string()))?
            .into_owned();
        match path.components().next() {
            Some(std::path::Component::Normal(first)) if first == "workspace" => {}
            _ => return Err(refuse(format!("unexpected entry {}", path.display()))),
        }
        saw_root |= path.components().count() == 1;
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Continuous | T::Directory | T::Symlink | T::Link | T::GNUSparse => {}
            // Devices, fifos and the like mean nothing in a diff; never make them on the host.
            _ => continue,
        }
        match entry.unpack_in(into) {
            Ok(true) => {}
            Ok(false) => return Err(refuse(format!("{} leaves the work dir", path.display()))),
            Err(e) => return Err(refuse(format!("{}: {e}", path.display()))),
        }
    }
    if !saw_root {
        std::fs::create_dir_all(into.join("workspace"))
            .map_err(|e| SandboxError::Io(format!("unpack work dir: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, body: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, body).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_entry_type(kind);
        b.append_link(&mut h, path, target).unwrap();
    }

    async fn unpack(bytes: Vec<u8>, dest: &Path) -> Result<(), SandboxError> {
        let stream =
            futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]);
        unpack_workspace(stream, dest.to_path_buf()).await
    }

    #[tokio::test]
    async fn a_packed_tree_unpacks_to_the_same_files() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::write(src.join("a/b/c.txt"), "deep").unwrap();
        std::fs::write(src.join("top.txt"), "top").unwrap();
        std::os::unix::fs::symlink("top.txt", src.join("link")).unwrap();
        let packed = pack(src.clone(), 1000, 1000).await.unwrap();
        // As Docker returns it: the same tree under `workspace/`.
        let mut rebuilt = tar::Builder::new(Vec::new());
        let mut original = tar::Archive::new(&packed[..]);
        for entry in original.entries().unwrap() {
            let mut entry = entry.unwrap();
            assert_eq!(entry.header().uid().unwrap(), 1000);
            let path = Path::new("workspace").join(entry.path().unwrap().as_ref());
            let mut header = entry.header().clone();
            let mut body = Vec::new();
            entry.read_to_end(&mut body).unwrap();
            if header.entry_type() == tar::EntryType::Symlink {
                let target = entry.link_name().unwrap().unwrap().into_owned();
                rebuilt.append_link(&mut header, &path, target).unwrap();
            } else {
                rebuilt.append_data(&mut header, &path, &body[..]).unwrap();
            }
        }
        let dest = tmp.path().join("mirror");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::write(dest.join("stale.txt"), "gone after unpack").unwrap();
        unpack(rebuilt.into_inner().unwrap(), &dest).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("a/b/c.txt")).unwrap(),
            "deep"
        );
        assert_eq!(
            std::fs::read_link(dest.join("link")).unwrap(),
            Path::new("top.txt")
        );
        assert!(
            !dest.join("stale.txt").exists(),
            "the mirror is replaced, not merged"
        );
    }

    #[tokio::test]
    async fn hostile_archives_are_refused_and_the_mirror_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let dest = tmp.path().join("mirror");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::write(dest.join("kept.txt"), "kept").unwrap();
        let target = outside.to_string_lossy().into_owned();
        let cases = vec![
            // A file written through a symlink that points out of the work dir.
            archive(|b| {
                link(b, tar::EntryType::Symlink, "workspace/esc", &target);
                file(b, "workspace/esc/pwned.txt", b"x");
            }),
            // A hard link to a file outside.
            archive(|b| link(b, tar::EntryType::Link, "workspace/hard", "/etc/passwd")),
            // An entry outside `workspace/`.
            archive(|b| file(b, "elsewhere.txt", b"x")),
        ];
        for bytes in cases {
            let err = unpack(bytes, &dest).await.unwrap_err();
            assert!(err.to_string().contains("refused"), "{err}");
            assert_eq!(
                std::fs::read_to_string(dest.join("kept.txt")).unwrap(),
                "kept"
            );
            assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        }
        // Garbage is an error too, never a panic.
        let err = unpack(b"not a tar archive at all".repeat(40), &dest)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
    }
}
