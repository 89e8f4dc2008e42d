//! Searching for secrets where they must not be (issue 14: "the real key is found nowhere but the
//! server process's memory"): files and directories, a running sandbox container (its whole file
//! system as `docker export` streams it, every mount it writes to, and its environment), and a
//! PostgreSQL dump. Everything is streamed through a [`Scanner`] in chunks, so nothing is held
//! whole however large it is.
//!
//! Secrets are [`Needle`]s: a label for messages (the value itself is never printed) and a
//! distinctive ASCII value ([`canary`]), so a hit cannot be a coincidence. Every scan here is
//! shown able to fail by the tests that use it: each finds a value that is planted on purpose
//! (the sandbox's own proxy token in its environment and work dir, a control row in the
//! database).

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use futures::StreamExt;

/// A secret to look for.
#[derive(Clone, Debug)]
pub struct Needle {
    /// What it is, for messages.
    pub label: String,
    value: String,
}

impl Needle {
    /// `value` must be ASCII (see [`Scanner::feed`]) and long enough to be distinctive.
    pub fn new(label: &str, value: &str) -> Needle {
        assert!(
            value.is_ascii() && value.len() >= 16,
            "{label}: a needle is ASCII and at least 16 bytes"
        );
        Needle {
            label: label.into(),
            value: value.into(),
        }
    }
}

/// A value found nowhere unless it leaked: `canary-{label}-{random}`.
pub fn canary(label: &str) -> String {
    let random: String = (0..4).map(|_| format!("{:08x}", rand_u32())).collect();
    format!("canary-{label}-{random}")
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // A fresh random key per call (std's RandomState), no extra crate.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish() as u32
}

/// Where a needle was found.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hit {
    /// The needle's label.
    pub label: String,
    /// Where: a file, `docker export of …`, `pg_dump`, …
    pub place: String,
}

/// A streaming search for several needles at once: bytes arrive in chunks of any size, and a
/// needle split across two chunks is still found.
pub struct Scanner {
    needles: Vec<Needle>,
    /// The end of what came before, as long as the longest needle less one byte.
    carry: Vec<u8>,
    keep: usize,
    place: String,
    hits: BTreeSet<Hit>,
    bytes: u64,
}

impl Scanner {
    pub fn new(needles: &[Needle]) -> Scanner {
        let keep = needles.iter().map(|n| n.value.len()).max().unwrap_or(1) - 1;
        Scanner {
            needles: needles.to_vec(),
            carry: Vec::new(),
            keep,
            place: String::new(),
            hits: BTreeSet::new(),
            bytes: 0,
        }
    }

    /// The bytes fed next come from `place` (and do not continue what came before).
    pub fn at(&mut self, place: impl Into<String>) {
        self.place = place.into();
        self.carry.clear();
    }

    /// Searches `chunk` (and the end of the previous one).
    pub fn feed(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        let mut window = std::mem::take(&mut self.carry);
        window.extend_from_slice(chunk);
        // Needles are ASCII, and a UTF-8 decoder never swallows an ASCII byte into a replaced
        // sequence, so an ASCII needle is in the lossy text exactly where it is in the bytes.
        // (std's substring search is optimised even in a debug build; a byte loop here is not.)
        let text = String::from_utf8_lossy(&window);
        for n in &self.needles {
            if text.contains(n.value.as_str()) {
                self.hits.insert(Hit {
                    label: n.label.clone(),
                    place: self.place.clone(),
                });
            }
        }
        let from = window.len().saturating_sub(self.keep);
        self.carry = window.split_off(from);
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.iter().cloned().collect()
    }

    /// The labels found, wherever.
    pub fn labels(&self) -> BTreeSet<String> {
        self.hits.iter().map(|h| h.label.clone()).collect()
    }

    /// How many bytes were searched.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The needles found in `bytes`.
pub fn scan_bytes(needles: &[Needle], bytes: &[u8]) -> BTreeSet<String> {
    let mut s = Scanner::new(needles);
    s.feed(bytes);
    s.labels()
}

/// Every regular file under `dir` (links not followed), each streamed through `scanner`.
/// Blocking: call it from `spawn_blocking` or a test's synchronous part.
pub fn scan_dir(scanner: &mut Scanner, dir: &Path) {
    use std::io::Read;
    for file in files(dir) {
        let Ok(mut f) = std::fs::File::open(&file) else {
            continue;
        };
        scanner.at(file.display().to_string());
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            scanner.feed(&buf[..n]);
        }
    }
}

/// Every regular file under `dir` (links not followed).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            out.extend(files(&p));
        } else if meta.is_file() {
            out.push(p);
        }
    }
    out
}

/// Streams `pg_dump` of the database at `url` (plain SQL, every table's rows) through
/// `scanner`. `None` when no `pg_dump` is installed (the caller skips).
pub async fn scan_pg_dump(scanner: &mut Scanner, url: &str) -> Option<()> {
    use tokio::io::AsyncReadExt;
    let pg_dump = pg_dump_bin()?;
    let mut child = tokio::process::Command::new(&pg_dump)
        .arg("--dbname")
        .arg(url)
        .args(["--no-owner", "--no-privileges"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run pg_dump");
    let mut out = child.stdout.take().unwrap();
    scanner.at("pg_dump");
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = out.read(&mut buf).await.expect("read pg_dump's output");
        if n == 0 {
            break;
        }
        scanner.feed(&buf[..n]);
    }
    let done = child.wait_with_output().await.expect("pg_dump ends");
    assert!(
        done.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    Some(())
}

/// `pg_dump` on PATH or in the newest `/usr/lib/postgresql/*/bin`.
fn pg_dump_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    dirs.sort();
    dirs.reverse();
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    dirs.into_iter()
        .map(|d| d.join("pg_dump"))
        .find(|p| p.is_file())
}

/// What a scan of a running container searched, for the figures.
#[derive(Debug, Default)]
pub struct ContainerScan {
    /// Bytes of `docker export` (the container's whole root file system).
    pub export_bytes: u64,
    /// Bytes of the archive of its writable mounts (volumes, binds, tmpfs).
    pub mount_bytes: u64,
    /// Its mounts' paths inside the container.
    pub mounts: Vec<String>,
    /// Its environment's entries.
    pub env_entries: usize,
}

/// Scans a running container `name`: its whole root file system (`docker export`), every mount
/// it has (volumes, binds and tmpfs, which an export leaves out: read by `tar` inside the
/// container as the sandbox's own user, so what the sandbox can read is what is searched) and
/// its environment (`docker inspect`'s Config.Env).
pub async fn scan_container(
    scanner: &mut Scanner,
    docker: &bollard::Docker,
    name: &str,
) -> ContainerScan {
    use bollard::exec::StartExecResults;
    use bollard::models::ExecConfig;
    let mut scan = ContainerScan::default();
    let info = docker
        .inspect_container(name, None)
        .await
        .expect("inspect the container");
    assert!(
        info.state.as_ref().and_then(|s| s.running).unwrap_or(false),
        "{name} is not running: scan it while it is live"
    );

    scanner.at(format!("the environment of {name}"));
    let env = info
        .config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default();
    scan.env_entries = env.len();
    for entry in &env {
        scanner.feed(entry.as_bytes());
        scanner.at(format!("the environment of {name}"));
    }

    scanner.at(format!("docker export of {name}"));
    let before = scanner.bytes();
    let mut export = docker.export_container(name);
    while let Some(chunk) = export.next().await {
        scanner.feed(&chunk.expect("a chunk of the export"));
    }
    scan.export_bytes = scanner.bytes() - before;

    let mut mounts: Vec<String> = info
        .mounts
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.destination)
        .collect();
    mounts.extend(
        info.host_config
            .and_then(|h| h.tmpfs)
            .unwrap_or_default()
            .into_keys(),
    );
    mounts.sort();
    mounts.dedup();
    scan.mounts = mounts.clone();
    let user = info.config.and_then(|c| c.user);
    let mut cmd = vec!["tar".to_string(), "-cf".into(), "-".into()];
    cmd.extend(mounts);
    let exec = docker
        .create_exec(
            name,
            ExecConfig {
                cmd: Some(cmd),
                user,
                attach_stdout: Some(true),
                attach_stderr: Some(false),
                ..Default::default()
            },
        )
        .await
        .expect("create the tar exec");
    scanner.at(format!("the mounts of {name}"));
    let before = scanner.bytes();
    match docker
        .start_exec(&exec.id, None)
        .await
        .expect("start the tar exec")
    {
        StartExecResults::Attached { mut output, .. } => {
            while let Some(out) = output.next().await {
                if let bollard::container::LogOutput::StdOut { message } =
                    out.expect("tar's output")
                {
                    scanner.feed(&message);
                }
            }
        }
        StartExecResults::Detached => panic!("the exec did not attach"),
    }
    scan.mount_bytes = scanner.bytes() - before;
    scan
}
