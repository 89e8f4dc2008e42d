//! Throwaway PostgreSQL servers for tests.
//!
//! [`TestPostgres::start`] runs `initdb` and `pg_ctl` from the PostgreSQL installation on this
//! machine into a temporary directory, on a free local port, with durability off (`fsync=off`);
//! dropping the value stops the server and deletes everything. Nothing but the `postgres` database
//! and superuser exist; tests create what they need.
//!
//! When PostgreSQL is not installed, `start` prints `skipped: <why>` to stderr and returns `Ok(None)`,
//! and the test returns early and passes, unless `DELEGATE_REQUIRE_ALL` is set (to anything but `0`
//! or empty): then a missing PostgreSQL is an error, so CI cannot silently skip.
//!
//! ```no_run
//! # fn demo() -> Result<(), String> {
//! let Some(pg) = delegate_testkit::postgres::TestPostgres::start()? else {
//!     return Ok(()); // skipped; the reason is on stderr
//! };
//! println!("{}", pg.url);
//! # Ok(())
//! # }
//! ```
//!
//! Everything here blocks; call it before a test's async work or inside `spawn_blocking`.

// Setting up and tearing down the server is synchronous on purpose (`Drop` stops it, and must
// block until it has): callers start it before their async work, or on the blocking pool.
#![allow(clippy::disallowed_methods)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running PostgreSQL server owned by a test; stopped and deleted on drop.
#[derive(Debug)]
pub struct TestPostgres {
    /// `postgres://postgres@127.0.0.1:PORT/postgres` (trust authentication, no password).
    pub url: String,
    /// The port the server listens on, on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    /// Run the PostgreSQL tools as user `postgres` (we are root, which `initdb` refuses).
    as_postgres: bool,
    // Declared last so that it is removed only after `Drop` stopped the server.
    dir: tempfile::TempDir,
}

/// `Ok(None)` after saying why on stderr, or an error when skipping is not allowed.
fn unavailable(why: String) -> Result<Option<TestPostgres>, String> {
    if crate::real::require_all() {
        Err(format!(
            "PostgreSQL is required (DELEGATE_REQUIRE_ALL) but {why}"
        ))
    } else {
        eprintln!("skipped: PostgreSQL test: {why}");
        Ok(None)
    }
}

impl TestPostgres {
    /// Starts a fresh server. `Ok(None)` means PostgreSQL is not installed here and skipping is
    /// allowed (`skipped: <why>` is already on stderr); see the module docs.
    pub fn start() -> Result<Option<TestPostgres>, String> {
        let Some(bin) = find_bin_dir() else {
            return unavailable(
                "initdb/pg_ctl not found on PATH or in /usr/lib/postgresql/*/bin".into(),
            );
        };
        let as_postgres = is_root()?;
        let owner = if as_postgres {
            match user_ids("postgres") {
                Some(ids) => Some(ids),
                None => {
                    return unavailable("running as root and there is no user `postgres`".into());
                }
            }
        } else {
            None
        };

        let dir = tempfile::Builder::new()
            .prefix("delegate-pg-")
            .tempdir()
            .map_err(|e| format!("creating a temp dir: {e}"))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| format!("chown {} to postgres: {e}", dir.path().display()))?;
        }

        let mut pg = TestPostgres {
            url: String::new(),
            port: 0,
            bin,
            as_postgres,
            dir,
        };
        pg.initdb()?;
        // Another process can take the free port between our probe and the server's bind: retry.
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            match pg.pg_ctl_start(port) {
                Ok(()) => {
                    pg.port = port;
                    pg.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
                    return Ok(Some(pg));
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// Stops the server (`fast`: every connection is cut, committed work kept; `immediate` would
    /// lose commits here, where `synchronous_commit` is off for speed) and starts it again on the
    /// same port and data: what a database restart or failover looks like to delegate.
    pub fn restart(&self) -> Result<(), String> {
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "stop"])
            .current_dir(self.dir.path());
        check(cmd.output(), "pg_ctl stop")?;
        self.pg_ctl_start(self.port)
    }

    /// The server's data and log directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command for a PostgreSQL tool, run as `postgres` when we are root.
    fn tool(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(exe);
            cmd
        } else {
            Command::new(exe)
        }
    }

    fn initdb(&self) -> Result<(), String> {
        let mut cmd = self.tool("initdb");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            // initdb reads the current directory's permissions; root's home is not postgres's.
            .current_dir(self.dir.path());
        check(cmd.output(), "initdb")
    }

    fn pg_ctl_start(&self, port: u16) -> Result<(), String> {
        let log = self.dir.path().join("pg.log");
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            self.dir.path().display()
        );
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .current_dir(self.dir.path());
        check(cmd.output(), "pg_ctl start").map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{e}\n--- pg.log ---\n{}", tail.join("\n"))
        })
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if self.port == 0 {
            return; // never started
        }
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .current_dir(self.dir.path());
        if let Err(e) = check(cmd.output(), "pg_ctl stop") {
            eprintln!("stopping the test PostgreSQL: {e}");
        }
        // `self.dir` (a TempDir) deletes the directory when it is dropped after this.
    }
}

/// Turns a finished command into `Ok` or an error carrying its output.
fn check(out: std::io::Result<Output>, what: &str) -> Result<(), String> {
    let out = out.map_err(|e| format!("running {what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// A directory holding both `initdb` and `pg_ctl`: from `PATH` first, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian and Ubuntu keep them off `PATH`).
fn find_bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_tools(&dir) {
                // Resolve symlinks (/usr/local/bin/initdb -> .../15/bin/initdb) so that both tools
                // come from one installation.
                let initdb = std::fs::canonicalize(dir.join("initdb")).ok()?;
                let real = initdb.parent()?.to_path_buf();
                return Some(if has_tools(&real) { real } else { dir });
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_tools(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> Result<bool, String> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("running id -u: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The uid and gid of `user`, if it exists.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}
