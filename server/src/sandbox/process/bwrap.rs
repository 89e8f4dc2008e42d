//! The process backend's command line: bubblewrap with every namespace unshared and only the
//! binds a sandbox needs, wrapped so that its first process joins the sandbox's cgroups before
//! anything of the sandbox runs.

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use super::*;

impl ProcessBackend {
    /// The command that runs `program` with `args` in the sandbox, with the sandbox's
    /// environment (the caller's env and secrets included) and relays.
    pub(super) async fn command(
        &self,
        live: &Live,
        program: Program,
        args: &[String],
        serve: bool,
    ) -> Result<Command, SandboxError> {
        // The caller's env and secrets go in the environment too, never on a command line.
        let extra = live.env.iter().map(|(k, v)| (k.as_str(), v.expose()));
        let dirs = &live.dirs;
        let mut cmd;
        match &self.bwrap {
            Some(bwrap) => {
                let env = crate::opencode::environment(
                    IN_HOME,
                    &format!("http://{IN_PROXY}/v1"),
                    live.token.expose(),
                    &self.model,
                    &self.small_model,
                );
                cmd = self.confined(live, bwrap);
                // Secrets go in the environment bubblewrap inherits (readable by delegate's own
                // user alone), never on its command line (readable by anyone in /proc).
                cmd.envs(env);
                if live.egress {
                    cmd.envs(crate::sandbox::egress_environment());
                }
                cmd.envs(extra);
                if serve {
                    cmd.env("OPENCODE_SERVER_PASSWORD", live_password(live)?);
                }
                cmd.args([
                    "--",
                    IN_DELEGATE,
                    "sandbox-relay",
                    "--forward",
                    &format!("tcp:{IN_PROXY}=unix:{IN_RUN}/proxy.sock"),
                ]);
                if live.egress {
                    cmd.args([
                        "--forward",
                        &format!(
                            "tcp:{}=unix:{IN_RUN}/egress.sock",
                            crate::sandbox::IN_EGRESS_PROXY
                        ),
                    ]);
                }
                if serve {
                    cmd.args([
                        "--forward",
                        &format!("unix:{IN_RUN}/opencode.sock=tcp:127.0.0.1:{IN_SERVE_PORT}"),
                    ]);
                }
                let inside = match program {
                    Program::Opencode => IN_OPENCODE,
                    Program::Shell => "/bin/sh",
                };
                cmd.arg("--").arg(inside).args(args);
            }
            None => {
                let proxy = self.tcp_proxy().await?;
                let home = dirs.home.to_string_lossy().into_owned();
                let host_program = match program {
                    Program::Opencode => self.opencode.as_path(),
                    Program::Shell => Path::new("/bin/sh"),
                };
                cmd = self.cgroup_wrapper(live, host_program);
                cmd.args(args)
                    .current_dir(&dirs.workspace)
                    .envs(crate::opencode::environment(
                        &home,
                        &format!("http://{proxy}/v1"),
                        live.token.expose(),
                        &self.model,
                        &self.small_model,
                    ))
                    .envs(extra);
                if serve {
                    cmd.env("OPENCODE_SERVER_PASSWORD", live_password(live)?);
                }
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// bubblewrap around a sandbox: every namespace unshared, uid 1000, no capabilities, the
    /// system read-only, the sandbox's own dirs bound in, its work dir current. Its environment is
    /// exactly what the caller sets on the returned command (the cgroup wrapper clears the rest)
    /// plus `PATH`; the caller then adds `--` and the program.
    fn confined(&self, live: &Live, bwrap: &Path) -> Command {
        let dirs = &live.dirs;
        let mut cmd = self.cgroup_wrapper(live, bwrap);
        cmd.args([
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--uid",
            "1000",
            "--gid",
            "1000",
            "--cap-drop",
            "ALL",
            "--hostname",
            "sandbox",
        ]);
        for dir in ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64"] {
            cmd.args(["--ro-bind-try", dir, dir]);
        }
        for path in ETC_BINDS {
            cmd.args(["--ro-bind-try", path, path]);
        }
        cmd.arg("--ro-bind")
            .arg(dirs.root.join("passwd"))
            .arg("/etc/passwd")
            .arg("--ro-bind")
            .arg(dirs.root.join("group"))
            .arg("/etc/group")
            .arg("--ro-bind")
            .arg(&self.opencode)
            .arg(IN_OPENCODE)
            .arg("--ro-bind")
            .arg(&self.relay_bin)
            .arg(IN_DELEGATE)
            .args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"])
            .arg("--bind")
            .arg(&dirs.workspace)
            .arg(IN_WORKSPACE)
            .arg("--bind")
            .arg(&dirs.home)
            .arg(IN_HOME)
            .arg("--bind")
            .arg(&dirs.run)
            .arg(IN_RUN)
            .args(["--chdir", IN_WORKSPACE]);
        cmd
    }

    /// Commits the work dir on top of `base` inside the sandbox — same confinement, the sandbox's
    /// user, no network, no token — and leaves the bundle in the run dir for the host's import.
    pub(super) async fn export_change(
        &self,
        live: &Live,
        base: &str,
        label: &str,
    ) -> Result<(), SandboxError> {
        let out_host = live.dirs.run.join("changes.bundle");
        let _ = tokio::fs::remove_file(&out_host).await;
        let env = [
            ("DELEGATE_BASE", base.to_string()),
            ("DELEGATE_MESSAGE", label.to_string()),
            ("PATH", "/usr/local/bin:/usr/bin:/bin".to_string()),
        ];
        let mut cmd = match &self.bwrap {
            Some(bwrap) => {
                let mut cmd = self.confined(live, bwrap);
                for (k, v) in &env {
                    cmd.args(["--setenv", k, v]);
                }
                cmd.args(["--setenv", "HOME", IN_HOME])
                    .args([
                        "--setenv",
                        "DELEGATE_OUT",
                        crate::sandbox::workdir::IN_CHANGE_BUNDLE,
                    ])
                    .args(["--", "/bin/sh", "-c", delegate_repo::COMMIT_SCRIPT]);
                cmd
            }
            None => {
                let mut cmd = self.cgroup_wrapper(live, Path::new("/bin/sh"));
                cmd.args(["-c", delegate_repo::COMMIT_SCRIPT])
                    .current_dir(&live.dirs.workspace)
                    .envs(env)
                    .env("HOME", &live.dirs.home)
                    .env("DELEGATE_OUT", &out_host);
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| {
            SandboxError::Io(format!("cannot start the commit in the sandbox: {e}"))
        })?;
        let done = tokio::time::timeout(COMMIT_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| {
                SandboxError::Io("committing the change inside the sandbox timed out".into())
            })?
            .map_err(|e| SandboxError::Io(format!("the commit in the sandbox: {e}")))?;
        if !done.status.success() {
            // The sandbox wrote this; keep it short and on one line.
            let said: String = String::from_utf8_lossy(&done.stderr)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(500)
                .collect();
            return Err(SandboxError::Io(format!(
                "committing the change inside the sandbox failed: {said}"
            )));
        }
        Ok(())
    }

    /// `sh` joins the sandbox's cgroups, then execs `program`, so no process of the sandbox ever
    /// runs outside its limits. The environment is cleared: no host secret reaches the sandbox,
    /// not even bubblewrap's own environment.
    fn cgroup_wrapper(&self, live: &Live, program: &Path) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.env_clear().env("PATH", "/usr/local/bin:/usr/bin:/bin");
        let procs: Vec<String> = live
            .cgroup
            .as_ref()
            .map(|c| {
                c.procs_files()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        cmd.arg("-c")
            .arg(r#"for f in $DELEGATE_CGROUPS; do echo $$ > "$f" || exit 111; done; unset DELEGATE_CGROUPS; exec "$@""#)
            .arg("sh")
            .arg(program)
            .env("DELEGATE_CGROUPS", procs.join(" "));
        cmd
    }
}
