//! Memory and pids limits for process sandboxes with cgroup v1 controllers, made by hand (no
//! systemd here). Each sandbox gets a child group of delegate's own group per controller; the
//! sandbox's first process joins them before it execs, so every descendant is counted. The same
//! groups let delegate kill every process of a sandbox and tell an OOM kill from a crash.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The memory and pids groups of one sandbox; either is `None` when its controller is unavailable.
#[derive(Debug)]
pub struct Cgroup {
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
}

impl Cgroup {
    /// Makes the groups; `None` (with the reason) when this host does not allow it, e.g. without
    /// root or on a cgroup v2-only host.
    pub fn create(name: &str, memory_bytes: u64, pids_max: u64) -> Result<Cgroup, String> {
        let memory = make_group("memory", name)?;
        let pids = match make_group("pids", name) {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_dir(&memory);
                return Err(e);
            }
        };
        let cg = Cgroup {
            memory: Some(memory.clone()),
            pids: Some(pids.clone()),
        };
        std::fs::write(
            memory.join("memory.limit_in_bytes"),
            memory_bytes.to_string(),
        )
        .map_err(|e| format!("set memory limit: {e}"))?;
        // Keep the sandbox out of swap so the limit means what it says.
        let _ = std::fs::write(memory.join("memory.swappiness"), "0");
        std::fs::write(pids.join("pids.max"), pids_max.to_string())
            .map_err(|e| format!("set pids limit: {e}"))?;
        Ok(cg)
    }

    /// The `cgroup.procs` files a process writes its pid into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        [&self.memory, &self.pids]
            .into_iter()
            .flatten()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Whether the kernel OOM-killed anything in the group.
    pub fn oom_killed(&self) -> bool {
        let Some(mem) = &self.memory else {
            return false;
        };
        std::fs::read_to_string(mem.join("memory.oom_control"))
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
        self.procs_files()
            .first()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every process of the group.
    pub fn kill_all(&self) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// SIGKILLs every process of the group but `spared` (which its parent will reap).
    pub fn kill_all_except(&self, spared: i32) {
        for pid in self.pids().into_iter().filter(|p| *p != spared) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// Removes the groups; they must be empty, so kill first.
    pub fn remove(&self) {
        for dir in [&self.memory, &self.pids].into_iter().flatten() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
        self.remove();
    }
}

fn make_group(controller: &str, name: &str) -> Result<PathBuf, String> {
    let root = Path::new("/sys/fs/cgroup").join(controller);
    if !root.join("cgroup.procs").exists() {
        return Err(format!(
            "no cgroup v1 {controller} controller at {}",
            root.display()
        ));
    }
    let own = own_group(controller).unwrap_or_default();
    let dir = root.join(own.trim_start_matches('/')).join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// This process's group under `controller`, from /proc/self/cgroup.
fn own_group(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}
