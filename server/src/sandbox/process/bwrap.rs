//! The process backend's command line: bubblewrap with every namespace unshared and only the
//! binds a sandbox needs, wrapped so that its first process joins the sandbox's cgroups before
//! anything of the sandbox runs.

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use super::*;

impl ProcessBackend {
    /// The command that runs `args` (opencode's arguments) in the sandbox.
    pub(super) async fn command(
        &self,
        live: &Live,
        args: &[String],
        serve: bool,
    ) -> Result<Command, SandboxError> {
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
                cmd = self.cgroup_wrapper(live, bwrap);
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
                    .args(["--chdir", IN_WORKSPACE, "--clearenv"]);
                for (k, v) in env {
                    cmd.args(["--setenv", &k, &v]);
                }
                if serve {
                    cmd.args(["--setenv", "OPENCODE_SERVER_PASSWORD"]);
                    cmd.arg(live_password(live)?);
                }
                cmd.args([
                    "--",
                    IN_DELEGATE,
                    "sandbox-relay",
                    "--forward",
                    &format!("tcp:{IN_PROXY}=unix:{IN_RUN}/proxy.sock"),
                ]);
                if serve {
                    cmd.args([
                        "--forward",
                        &format!("unix:{IN_RUN}/opencode.sock=tcp:127.0.0.1:{IN_SERVE_PORT}"),
                    ]);
                }
                cmd.arg("--").arg(IN_OPENCODE).args(args);
            }
            None => {
                let proxy = self.tcp_proxy().await?;
                let home = dirs.home.to_string_lossy().into_owned();
                cmd = self.cgroup_wrapper(live, &self.opencode);
                cmd.args(args)
                    .current_dir(&dirs.workspace)
                    .envs(crate::opencode::environment(
                        &home,
                        &format!("http://{proxy}/v1"),
                        live.token.expose(),
                        &self.model,
                        &self.small_model,
                    ));
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
