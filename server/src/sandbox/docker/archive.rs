//! Moving a work dir between the host and a container as tar archives (Docker's archive API).
//!
//! The host prepares each sandbox's work dir (see `workdir.rs`) and seeding packs it into the
//! container's volume. What comes back out is written by the sandbox, so it is unpacked like
//! hostile input: only files, directories and links, nothing outside the destination (the tar
//! crate checks every path and link target against it), and a cap on the total size; a run's
//! change comes back as one plain file ([`unpack_file`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::sandbox::SandboxError;

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
    entries.sort_by_key(std::fs::DirEntry::file_name);
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

/// Reads an archive that must hold exactly one plain file named `name` (as Docker's archive API
/// returns a single file) and writes its bytes to `dest`, refusing anything else or more than
/// `max` bytes. `dest` is replaced, never followed if it is a link.
pub async fn unpack_file<S, E>(
    archive: S,
    name: &'static str,
    dest: PathBuf,
    max: u64,
) -> Result<(), SandboxError>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    let reader = StreamReader::new(
        archive.map(|chunk| chunk.map_err(|e| std::io::Error::other(e.to_string()))),
    );
    let bridge = SyncIoBridge::new(reader);
    tokio::task::spawn_blocking(move || unpack_one(bridge, name, &dest, max))
        .await
        .map_err(|e| SandboxError::Io(format!("unpack the change: {e}")))?
}

/// [`unpack_file`]'s blocking core, over any reader (public for the fuzz target).
pub fn unpack_one(
    archive: impl Read,
    name: &str,
    dest: &Path,
    max: u64,
) -> Result<(), SandboxError> {
    let refuse = |why: String| SandboxError::Io(format!("the sandbox's change was refused: {why}"));
    let mut archive = tar::Archive::new(archive);
    let mut entries = archive.entries().map_err(|e| refuse(e.to_string()))?;
    let mut entry = match entries.next() {
        Some(entry) => entry.map_err(|e| refuse(e.to_string()))?,
        None => return Err(refuse("the archive is empty".into())),
    };
    let path = entry
        .path()
        .map_err(|e| refuse(e.to_string()))?
        .into_owned();
    if path != Path::new(name) || entry.header().entry_type() != tar::EntryType::Regular {
        return Err(refuse(format!("unexpected entry {}", path.display())));
    }
    let declared = entry.size();
    if declared > max {
        return Err(refuse(format!("over {max} bytes")));
    }
    let _ = std::fs::remove_file(dest);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| SandboxError::Io(format!("{}: {e}", dest.display())))?;
    let copied = std::io::copy(&mut (&mut entry).take(max + 1), &mut out);
    // A cut archive reads as a short file, and a second entry means it is not what Docker makes
    // of one file: refuse both rather than import half a change or the wrong one.
    let why = match copied {
        Err(e) => Some(e.to_string()),
        Ok(copied) if copied > max => Some(format!("over {max} bytes")),
        Ok(copied) if copied != declared => Some(format!(
            "the archive ends after {copied} of the file's {declared} bytes"
        )),
        Ok(_) => match entries.next() {
            None => None,
            Some(Ok(_)) => Some("the archive holds more than the one file".to_string()),
            Some(Err(e)) => Some(e.to_string()),
        },
    };
    if let Some(why) = why {
        let _ = std::fs::remove_file(dest);
        return Err(refuse(why));
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

    async fn unpack(bytes: Vec<u8>, dest: &Path, max: u64) -> Result<(), SandboxError> {
        let stream =
            futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]);
        unpack_file(stream, "change.bundle", dest.to_path_buf(), max).await
    }

    #[tokio::test]
    async fn a_packed_tree_keeps_its_files_links_and_the_sandbox_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::write(src.join("a/b/c.txt"), "deep").unwrap();
        std::os::unix::fs::symlink("a/b/c.txt", src.join("link")).unwrap();
        let packed = pack(src.clone(), 1000, 1000).await.unwrap();
        let mut seen = Vec::new();
        for entry in tar::Archive::new(&packed[..]).entries().unwrap() {
            let mut entry = entry.unwrap();
            assert_eq!(entry.header().uid().unwrap(), 1000);
            assert_eq!(entry.header().gid().unwrap(), 1000);
            let path = entry.path().unwrap().into_owned();
            let mut body = String::new();
            if entry.header().entry_type() == tar::EntryType::Symlink {
                body = entry.link_name().unwrap().unwrap().display().to_string();
            } else if entry.header().entry_type() == tar::EntryType::Regular {
                entry.read_to_string(&mut body).unwrap();
            }
            seen.push((path.display().to_string(), body));
        }
        assert!(
            seen.contains(&("a/b/c.txt".into(), "deep".into())),
            "{seen:?}"
        );
        assert!(
            seen.contains(&("link".into(), "a/b/c.txt".into())),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn the_change_comes_out_as_one_plain_file_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("changes.bundle");
        unpack(
            archive(|b| file(b, "change.bundle", b"bundle bytes")),
            &dest,
            100,
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"bundle bytes");

        // A symlink put where the file goes is replaced, never written through.
        let outside = tmp.path().join("outside.txt");
        std::fs::write(&outside, "host file").unwrap();
        std::fs::remove_file(&dest).unwrap();
        std::os::unix::fs::symlink(&outside, &dest).unwrap();
        unpack(archive(|b| file(b, "change.bundle", b"new")), &dest, 100)
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "host file");
        assert!(
            !std::fs::symlink_metadata(&dest)
                .unwrap()
                .file_type()
                .is_symlink()
        );

        let hostile = vec![
            archive(|b| link(b, tar::EntryType::Symlink, "change.bundle", "/etc/passwd")),
            archive(|b| link(b, tar::EntryType::Link, "change.bundle", "/etc/passwd")),
            archive(|b| file(b, "other.bundle", b"x")),
            archive(|b| file(b, "dir/change.bundle", b"x")),
            archive(|b| file(b, "change.bundle", &[7u8; 101])),
            archive(|_| {}),
            b"not a tar archive at all".repeat(40),
        ];
        for bytes in hostile {
            let err = unpack(bytes, &dest, 100).await.unwrap_err();
            assert!(err.to_string().contains("refused"), "{err}");
            assert_eq!(std::fs::read_to_string(&outside).unwrap(), "host file");
        }
    }

    /// tests/corpus/tar.jsonl: every archive is refused with a reason, and nothing is left
    /// where the change would go.
    #[tokio::test]
    async fn every_archive_in_the_bad_input_corpus_is_refused_and_leaves_nothing() {
        use base64::Engine;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/corpus/tar.jsonl");
        let corpus = std::fs::read_to_string(path).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("changes.bundle");
        let mut count = 0;
        for line in corpus.lines() {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(entry["b64"].as_str().unwrap())
                .unwrap();
            let Err(err) = unpack(bytes, &dest, 1024).await else {
                panic!("archive #{count} was accepted");
            };
            assert!(err.to_string().contains("refused"), "{err}");
            assert!(!dest.exists(), "archive #{count} left a file");
            count += 1;
        }
        assert!(count >= 20, "{count}");
    }
}
