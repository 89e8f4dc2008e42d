//! Memory, pids and CPU limits for process sandboxes, with cgroup v2 (one unified group per
//! sandbox) or, where that is what the host has, cgroup v1 (one group per controller). Made by
//! hand from the cgroup file system: no systemd is assumed. The sandbox's first process joins its
//! group(s) before it execs, so every descendant is counted. The same groups let delegate kill every
//! process of a sandbox and tell an OOM kill from a crash.
//!
//! On v2 the "no internal processes" rule applies: a group that hands controllers to its children
//! (through `cgroup.subtree_control`) may hold no process itself. delegate's own group therefore
//! gets a leaf, `delegate-server`, that the server moves into before enabling the controllers; the
//! sandboxes are siblings of that leaf. Under systemd, run delegate in a unit with `Delegate=yes`
//! so that the group is its to manage.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The leaf delegate's own process moves into on cgroup v2 (see the module docs).
const SERVER_LEAF: &str = "delegate-server";
/// The CPU bandwidth period, in microseconds, on both versions (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;
/// How long removing a group may wait for its killed processes to be gone.
const REMOVE_WAIT: Duration = Duration::from_secs(5);

/// The limits of one sandbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Memory, in bytes; swap is not allowed on top of it.
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids_max: u64,
    /// CPUs (fractions allowed), as a bandwidth quota.
    pub cpus: f64,
}

impl Limits {
    /// The CPU quota per [`CPU_PERIOD_US`], in microseconds (at least 1 ms, the kernel's floor).
    fn cpu_quota_us(&self) -> u64 {
        ((self.cpus * CPU_PERIOD_US as f64).round() as u64).max(1_000)
    }
}

/// Which cgroup hierarchy limits sandboxes, and where delegate's own group sits in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: one mount per controller under `mount` (`mount/memory`, `mount/pids`,
    /// `mount/cpu`); `own` maps a controller to this process's group in it.
    V1 {
        /// Usually `/sys/fs/cgroup`.
        mount: PathBuf,
        /// Controller name to this process's group path (`/` for the root).
        own: HashMap<String, String>,
    },
    /// cgroup v2: one unified hierarchy at `mount`; `base` is the group delegate manages, its
    /// own (or the parent of its [`SERVER_LEAF`]).
    V2 {
        /// Usually `/sys/fs/cgroup` (or `/sys/fs/cgroup/unified` on a hybrid host).
        mount: PathBuf,
        /// The group delegate's sandboxes are made in, relative to `mount` (`/` for the root).
        base: String,
    },
}

/// The controllers a sandbox needs.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

impl Hierarchy {
    /// The hierarchy that can limit sandboxes on this host: v2 where its unified hierarchy
    /// offers the memory, pids and cpu controllers, else v1 where those are mounted. `Err` says
    /// what the host lacks.
    pub fn detect() -> Result<Hierarchy, String> {
        let text = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let (v1, v2) = parse_proc_cgroup(&text);
        let root = Path::new(CGROUP_ROOT);
        if let Some(own) = &v2 {
            // Unified at /sys/fs/cgroup (a v2 host) or at /sys/fs/cgroup/unified (hybrid).
            for mount in [root.to_path_buf(), root.join("unified")] {
                let base = base_of(own);
                let offered = read_words(
                    &mount.join(base.trim_start_matches('/')),
                    "cgroup.controllers",
                );
                if CONTROLLERS.iter().all(|c| offered.iter().any(|o| o == c)) {
                    return Ok(Hierarchy::V2 { mount, base });
                }
            }
        }
        let missing: Vec<&str> = CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !v1.contains_key(*c) || !root.join(c).join("cgroup.procs").exists())
            .collect();
        if missing.is_empty() {
            return Ok(Hierarchy::V1 {
                mount: root.to_path_buf(),
                own: v1,
            });
        }
        Err(format!(
            "neither a cgroup v2 hierarchy with the memory, pids and cpu controllers nor cgroup v1 \
             controllers for {} were found (see /proc/self/cgroup and {CGROUP_ROOT})",
            missing.join(", ")
        ))
    }

    /// `v1` or `v2`, for messages.
    pub fn version(&self) -> &'static str {
        match self {
            Hierarchy::V1 { .. } => "v1",
            Hierarchy::V2 { .. } => "v2",
        }
    }
}

/// The v1 groups (controller to path) and the v2 group (from the `0::` line) of a
/// `/proc/<pid>/cgroup` text.
fn parse_proc_cgroup(text: &str) -> (HashMap<String, String>, Option<String>) {
    let mut v1 = HashMap::new();
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
            continue;
        }
        for c in controllers.split(',').filter(|c| !c.is_empty()) {
            v1.insert(c.to_string(), path.to_string());
        }
    }
    (v1, v2)
}

/// The group delegate manages on v2: its own, or the parent of the leaf it moved into earlier.
fn base_of(own: &str) -> String {
    match own.strip_suffix(SERVER_LEAF) {
        Some(parent) if parent.ends_with('/') => {
            let p = parent.trim_end_matches('/');
            if p.is_empty() { "/".into() } else { p.into() }
        }
        _ => own.to_string(),
    }
}

fn read_words(dir: &Path, file: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(file))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| format!("write {value:?} to {}: {e}", dir.join(file).display()))
}

/// Makes `base` (a v2 group) hand `controllers` to its children. A non-root group may not both do
/// that and hold processes, so `server_pid` (delegate itself) first moves into the
/// [`SERVER_LEAF`] below it. Idempotent.
fn prepare_v2(base: &Path, controllers: &[&str], server_pid: u32) -> Result<(), String> {
    let enabled = read_words(base, "cgroup.subtree_control");
    let wanted: Vec<&str> = controllers
        .iter()
        .copied()
        .filter(|c| !enabled.iter().any(|e| e == c))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let offered = read_words(base, "cgroup.controllers");
    if let Some(c) = wanted.iter().find(|c| !offered.iter().any(|o| o == *c)) {
        return Err(format!(
            "the cgroup v2 group {} does not offer the {c} controller (it offers: {})",
            base.display(),
            offered.join(" ")
        ));
    }
    // Even where `base` looks like the root: inside a cgroup namespace (a container) it is not,
    // and the rule applies. At the real root the move is merely unneeded.
    move_into_leaf(base, server_pid)?;
    let change: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
    write(base, "cgroup.subtree_control", &change.join(" ")).map_err(|e| {
        let others = read_words(base, "cgroup.procs").len();
        if others > 0 {
            format!(
                "{e}: {others} other process(es) still sit in {} and cgroup v2 forbids a group \
                 with processes to hand controllers to its children; run delegate in a group of \
                 its own (e.g. a systemd unit with Delegate=yes)",
                base.display()
            )
        } else {
            e
        }
    })
}

/// Moves `pid` from `base` (if it is there) into `base`'s [`SERVER_LEAF`].
fn move_into_leaf(base: &Path, pid: u32) -> Result<(), String> {
    if !read_words(base, "cgroup.procs").contains(&pid.to_string()) {
        return Ok(());
    }
    let leaf = base.join(SERVER_LEAF);
    match std::fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("create {}: {e}", leaf.display())),
    }
    write(&leaf, "cgroup.procs", &pid.to_string())
}

/// The group(s) of one sandbox.
#[derive(Debug)]
pub struct Cgroup {
    /// One dir on v2; memory, pids, cpu on v1 (memory first).
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl Cgroup {
    /// Makes the groups of sandbox `name` on this host's hierarchy and sets `limits`; `Err` says
    /// why it cannot (no cgroups, no permission, a controller missing). Nothing is left behind on
    /// failure.
    pub fn create(name: &str, limits: &Limits) -> Result<Cgroup, String> {
        let hierarchy = Hierarchy::detect()?;
        Cgroup::create_in(&hierarchy, name, limits, std::process::id())
    }

    /// [`Cgroup::create`] on a given hierarchy; `server_pid` is the process that must leave a v2
    /// base group before it can hand out controllers (delegate itself).
    pub fn create_in(
        hierarchy: &Hierarchy,
        name: &str,
        limits: &Limits,
        server_pid: u32,
    ) -> Result<Cgroup, String> {
        let cg = match hierarchy {
            Hierarchy::V2 { mount, base } => {
                let base_dir = mount.join(base.trim_start_matches('/'));
                prepare_v2(&base_dir, &CONTROLLERS, server_pid)?;
                let dir = base_dir.join(name);
                std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
                Cgroup {
                    dirs: vec![dir],
                    v2: true,
                }
            }
            Hierarchy::V1 { mount, own } => {
                let mut cg = Cgroup {
                    dirs: Vec::new(),
                    v2: false,
                };
                for c in CONTROLLERS {
                    let group = own.get(c).map(String::as_str).unwrap_or("/");
                    let dir = mount.join(c).join(group.trim_start_matches('/')).join(name);
                    // `cg` removes the groups made so far if a later one fails.
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| format!("create {}: {e}", dir.display()))?;
                    cg.dirs.push(dir);
                }
                cg
            }
        };
        cg.set_limits(limits)?;
        Ok(cg)
    }

    fn set_limits(&self, limits: &Limits) -> Result<(), String> {
        let memory = limits.memory_bytes.to_string();
        let pids = limits.pids_max.to_string();
        let quota = limits.cpu_quota_us();
        if self.v2 {
            let dir = &self.dirs[0];
            write(dir, "memory.max", &memory)?;
            // Absent without swap accounting, where there is no swap to keep out of.
            if dir.join("memory.swap.max").exists() {
                write(dir, "memory.swap.max", "0")?;
            }
            write(dir, "pids.max", &pids)?;
            write(dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
        } else {
            let [mem, pid, cpu] = [&self.dirs[0], &self.dirs[1], &self.dirs[2]];
            write(mem, "memory.limit_in_bytes", &memory)?;
            // Memory plus swap at the same figure: no swap on top (absent without swap accounting).
            if mem.join("memory.memsw.limit_in_bytes").exists() {
                write(mem, "memory.memsw.limit_in_bytes", &memory)?;
            }
            let _ = write(mem, "memory.swappiness", "0");
            write(pid, "pids.max", &pids)?;
            write(cpu, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            write(cpu, "cpu.cfs_quota_us", &quota.to_string())?;
        }
        Ok(())
    }

    /// `v1` or `v2`.
    pub fn version(&self) -> &'static str {
        if self.v2 { "v2" } else { "v1" }
    }

    /// The group directories (one on v2, memory, pids and cpu on v1).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The `cgroup.procs` files a process writes its pid into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Whether the kernel OOM-killed anything in the group (`oom_kill` in v2's `memory.events`,
    /// v1's `memory.oom_control`).
    pub fn oom_killed(&self) -> bool {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.dirs[0].join(file))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .is_some_and(|n| n > 0)
    }

    /// Pids of every process still in the group.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dirs[0].join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every process of the group: with `cgroup.kill` on v2 (Linux 5.14 and later),
    /// which also catches processes forked meanwhile, else one by one.
    pub fn kill_all(&self) {
        if self.v2 && write(&self.dirs[0], "cgroup.kill", "1").is_ok() {
            return;
        }
        self.kill_all_except(0);
    }

    /// SIGKILLs every process of the group but `spared` (which its parent will reap).
    pub fn kill_all_except(&self, spared: i32) {
        for pid in self.pids().into_iter().filter(|p| *p != spared) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// Kills what is left and removes the groups, waiting (a few seconds at most) for killed
    /// processes to be gone, since a group with processes cannot be removed.
    pub async fn remove(&self) {
        let deadline = tokio::time::Instant::now() + REMOVE_WAIT;
        loop {
            self.kill_all();
            if self.try_remove() || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One attempt at removing the groups; whether none is left.
    fn try_remove(&self) -> bool {
        let mut gone = true;
        for dir in &self.dirs {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(_) => gone = false,
            }
        }
        gone
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
        if !self.try_remove() {
            tracing::warn!(
                groups = ?self.dirs,
                "a sandbox's cgroups could not be removed (processes still exiting)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_lines_give_v1_groups_and_the_v2_group() {
        let text = "9:name=systemd:/\n4:memory:/a/b\n2:cpu,cpuacct:/c\n0::/user.slice/x\n";
        let (v1, v2) = parse_proc_cgroup(text);
        assert_eq!(v1.get("memory").map(String::as_str), Some("/a/b"));
        assert_eq!(v1.get("cpu").map(String::as_str), Some("/c"));
        assert_eq!(v1.get("cpuacct").map(String::as_str), Some("/c"));
        assert_eq!(v2.as_deref(), Some("/user.slice/x"));
        assert_eq!(base_of("/svc/delegate-server"), "/svc");
        assert_eq!(base_of("/delegate-server"), "/");
        assert_eq!(
            base_of("/svc/not-delegate-server"),
            "/svc/not-delegate-server"
        );
    }

    #[test]
    fn cpu_quota_follows_the_cpus_and_has_a_floor() {
        let l = |cpus| Limits {
            memory_bytes: 1,
            pids_max: 1,
            cpus,
        };
        assert_eq!(l(2.0).cpu_quota_us(), 200_000);
        assert_eq!(l(0.5).cpu_quota_us(), 50_000);
        assert_eq!(l(0.0001).cpu_quota_us(), 1_000);
    }

    /// A directory laid out like a cgroup v2 group delegate runs in (no real cgroup file system
    /// offers the controllers on this kind of host): what delegate writes and reads are files.
    fn fake_v2(procs: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("svc");
        std::fs::create_dir(&base).unwrap();
        std::fs::write(
            base.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        std::fs::write(base.join("cgroup.subtree_control"), "").unwrap();
        std::fs::write(base.join("cgroup.procs"), procs).unwrap();
        dir
    }

    #[test]
    fn v2_moves_the_server_into_a_leaf_enables_controllers_and_writes_the_limits() {
        let dir = fake_v2("4242\n");
        let h = Hierarchy::V2 {
            mount: dir.path().to_path_buf(),
            base: "/svc".into(),
        };
        let limits = Limits {
            memory_bytes: 512 << 20,
            pids_max: 64,
            cpus: 1.5,
        };
        // A fake group dir has no interface files; the kernel makes them on mkdir.
        let cg = Cgroup::create_in(&h, "delegate-sbx_1", &limits, 4242).unwrap();
        let base = dir.path().join("svc");
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(base.join(SERVER_LEAF).join("cgroup.procs")), "4242");
        assert_eq!(
            read(base.join("cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        let sbx = base.join("delegate-sbx_1");
        assert_eq!(cg.dirs(), std::slice::from_ref(&sbx));
        assert_eq!(cg.version(), "v2");
        assert_eq!(read(sbx.join("memory.max")), (512u64 << 20).to_string());
        assert_eq!(read(sbx.join("pids.max")), "64");
        assert_eq!(read(sbx.join("cpu.max")), "150000 100000");
        assert_eq!(cg.procs_files(), [sbx.join("cgroup.procs")]);
        // OOM kills are counted in memory.events.
        assert!(!cg.oom_killed());
        std::fs::write(
            sbx.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(cg.oom_killed());
        // A kernel with cgroup.kill gets the whole group killed through it.
        std::fs::write(sbx.join("cgroup.kill"), "").unwrap();
        cg.kill_all();
        assert_eq!(read(sbx.join("cgroup.kill")), "1");
        // Dropping it cannot remove a fake group (files in it): the tempdir goes instead.
        drop(cg);
    }

    #[test]
    fn v2_with_swap_accounting_forbids_swap() {
        let dir = fake_v2("");
        let h = Hierarchy::V2 {
            mount: dir.path().to_path_buf(),
            base: "/svc".into(),
        };
        let sbx = dir.path().join("svc/delegate-sbx_2");
        let limits = Limits {
            memory_bytes: 1 << 30,
            pids_max: 10,
            cpus: 2.0,
        };
        let cg = Cgroup::create_in(&h, "delegate-sbx_2", &limits, 1).unwrap();
        // Not there on mkdir in a fake: no swap accounting, nothing written.
        assert!(!sbx.join("memory.swap.max").exists());
        std::fs::write(sbx.join("memory.swap.max"), "max").unwrap();
        cg.set_limits(&limits).unwrap();
        assert_eq!(
            std::fs::read_to_string(sbx.join("memory.swap.max")).unwrap(),
            "0"
        );
        // The server was not in the base group: no leaf move was needed.
        assert!(
            !dir.path()
                .join("svc")
                .join(SERVER_LEAF)
                .join("cgroup.procs")
                .exists()
        );
        drop(cg);
    }

    #[test]
    fn v2_without_a_controller_refuses_and_names_it() {
        let dir = fake_v2("");
        std::fs::write(dir.path().join("svc/cgroup.controllers"), "cpu io\n").unwrap();
        let h = Hierarchy::V2 {
            mount: dir.path().to_path_buf(),
            base: "/svc".into(),
        };
        let limits = Limits {
            memory_bytes: 1 << 30,
            pids_max: 10,
            cpus: 2.0,
        };
        let err = Cgroup::create_in(&h, "delegate-sbx_3", &limits, 1).unwrap_err();
        assert!(err.contains("memory controller"), "{err}");
        assert!(!dir.path().join("svc/delegate-sbx_3").exists());
    }

    /// Whether the real-hierarchy tests must run rather than skip.
    fn required() -> bool {
        std::env::var("DELEGATE_REQUIRE_ALL").is_ok_and(|v| !v.is_empty() && v != "0")
    }

    /// A new group `name` in the host's real cgroup2 hierarchy, where this process may make
    /// groups (root).
    fn real_v2_group(name: &str) -> Option<PathBuf> {
        for mount in [
            Path::new(CGROUP_ROOT).join("unified"),
            PathBuf::from(CGROUP_ROOT),
        ] {
            if !mount.join("cgroup.subtree_control").exists() {
                continue;
            }
            let dir = mount.join(name);
            if std::fs::create_dir(&dir).is_ok() {
                return Some(dir);
            }
        }
        let why = "no writable cgroup2 hierarchy (needs root and cgroup2)";
        assert!(!required(), "{why}");
        eprintln!("skipped: {why}");
        None
    }

    /// Spawns `sh` that joins `procs` and then runs `script`.
    fn spawn_in(procs: &Path, script: &str) -> std::process::Child {
        std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("echo $$ > {} || exit 1; {script}", procs.display()))
            .spawn()
            .unwrap()
    }

    /// Polls (bounded) until `cond`; tests wait on what the kernel reports, not on time.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_real_cgroup2_tree_gets_the_server_leaf_and_sandbox_groups_are_killed_and_removed() {
        let Some(base) = real_v2_group(&format!("delegate-test-{}", std::process::id())) else {
            return;
        };
        // Stands in for the server: a process inside the group that is to hand out controllers.
        let mut server = spawn_in(&base.join("cgroup.procs"), "exec sleep 600");
        let server_pid = server.id();
        until("the stand-in server joined", || {
            read_words(&base, "cgroup.procs").contains(&server_pid.to_string())
        })
        .await;
        match read_words(&base, "cgroup.controllers").into_iter().next() {
            // The kernel refuses a controller while a process sits in the group, and takes it
            // once the server moved into its leaf.
            Some(controller) => {
                let enable = format!("+{controller}");
                assert!(write(&base, "cgroup.subtree_control", &enable).is_err());
                prepare_v2(&base, &[controller.as_str()], server_pid).unwrap();
                assert!(read_words(&base, "cgroup.subtree_control").contains(&controller));
                // Again: nothing to do.
                prepare_v2(&base, &[controller.as_str()], server_pid).unwrap();
            }
            // A hybrid host's cgroup2 hands no controller below its root (they are bound to
            // v1): only the move itself can be shown.
            None => {
                eprintln!("no controller offered below the cgroup2 root: leaf move only");
                move_into_leaf(&base, server_pid).unwrap();
            }
        }
        assert_eq!(
            read_words(&base.join(SERVER_LEAF), "cgroup.procs"),
            [server_pid.to_string()]
        );
        assert!(read_words(&base, "cgroup.procs").is_empty());

        // A sandbox group with a process tree in it (a child forked in the background).
        let sbx = base.join("delegate-sbx_test");
        std::fs::create_dir(&sbx).unwrap();
        let cg = Cgroup {
            dirs: vec![sbx.clone()],
            v2: true,
        };
        let mut first = spawn_in(&sbx.join("cgroup.procs"), "sleep 600 & exec sleep 600");
        until("two processes in the sandbox group", || {
            cg.pids().len() == 2
        })
        .await;
        cg.remove().await;
        assert!(!sbx.exists(), "the sandbox group is gone");
        let status = first.wait().unwrap();
        assert!(!status.success(), "killed: {status:?}");

        // Clean up the stand-in and the test's groups.
        let _ = server.kill();
        let _ = server.wait();
        until("the stand-in left", || {
            read_words(&base.join(SERVER_LEAF), "cgroup.procs").is_empty()
        })
        .await;
        // A group goes once the kernel is done with its last process, a moment after the wait.
        let leaf = base.join(SERVER_LEAF);
        until("the leaf removed", || std::fs::remove_dir(&leaf).is_ok()).await;
        until("the test's group removed", || {
            std::fs::remove_dir(&base).is_ok()
        })
        .await;
    }
}
