//! `delegate run "TASK"`: delegate one task with an embedded orchestrator — or, with `--server URL
//! --token T`, on a running `delegate serve` — show live progress on stderr (a spinner on a
//! terminal, plain lines when piped), then print the result — as JSON on stdout with `--json`. The
//! exit code is 0 only when the run succeeded.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use delegate_mcp::RemoteDelegator;
use std::sync::Arc;

use delegate_mcp::delegator::{CLI_CLIENT, Caller, Delegator};
use delegate_mcp::tools::{ApplyMode, RunInSandboxInput};
use delegate_mcp::types::{Detail, RunResult, RunStatus};
use delegate_server::settings::{
    Isolation, SandboxLimits, Settings, UpstreamCredential, parse_duration,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::remote::RemoteArgs;

/// `--apply` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ApplyArg {
    /// Write branch delegate/<run>; touch nothing else.
    Branch,
    /// Also apply the change to the working tree when it applies cleanly.
    Worktree,
    /// Leave the repository alone.
    None,
}

impl ApplyArg {
    fn mode(self) -> ApplyMode {
        match self {
            ApplyArg::Branch => ApplyMode::Branch,
            ApplyArg::Worktree => ApplyMode::Worktree,
            ApplyArg::None => ApplyMode::None,
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  delegate run \"fix the failing test in tests/parse.rs\"   # inside a git repository: it goes in,
                                                    # the change comes back as branch delegate/<run>
  delegate run --apply worktree \"add a --verbose flag\"   # ... and lands in your working tree
  delegate run --no-repo \"write a haiku about rust\"      # an empty sandbox
  delegate run \"add a --verbose flag to main.py\" -f main.py
  delegate run --json --timeout 15m \"make the tests in tests/ pass\" -f src/lib.rs -f tests/it.rs
  delegate run --json --full \"regenerate the fixtures\" > result.json   # every file, the whole diff
  delegate run - < task.md                      # a long task from stdin
  DELEGATE_SERVER=https://delegate.example.com DELEGATE_TOKEN=dlg_... delegate run \\
    --sandbox sbx_... \"run the tests again\"     # on a team server, in a warm sandbox

Embedded (no --server): needs ANTHROPIC_API_KEY (kept in this process; the sandbox gets a proxy
token) and opencode (DELEGATE_OPENCODE_BIN). With --server the server does the work and needs
neither here.

Watch it in a browser: embedded, the first progress line is `watch it live: URL`, a link to the
run's page served by this process on loopback until it exits (it opens once, within 10 minutes;
DELEGATE_WATCH=off turns it off, DELEGATE_WATCH_ADDR picks the address). With --server, the
result's watch_url is on the server.

Exit code: 0 when the run succeeded, 1 when it did not, 2 on bad usage, 130 when interrupted.")]
pub struct RunArgs {
    /// What the agent should do, in plain words. `-` reads it from stdin.
    task: String,

    /// Seed a file into the sandbox's work dir: `PATH` copies a local file to the same relative
    /// path (an absolute PATH lands under its file name); `DEST=SRC` copies local SRC to DEST.
    /// Repeatable.
    #[arg(long = "file", short = 'f', value_name = "PATH|DEST=SRC")]
    files: Vec<String>,

    /// Model as provider/model [default: DELEGATE_MODEL].
    #[arg(long, short = 'm')]
    model: Option<String>,

    /// opencode agent to use (e.g. build, plan).
    #[arg(long)]
    agent: Option<String>,

    /// Give up after this long: seconds, or with a unit (90s, 15m, 2h) [default: 900s].
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,

    /// Workspace to account the run to [default: default].
    #[arg(long)]
    workspace: Option<String>,

    /// Run in this warm sandbox (from `create_sandbox` or `POST /api/sandboxes`) instead of a fresh one.
    /// Warm sandboxes live in a server: needs --server.
    #[arg(long, value_name = "ID")]
    sandbox: Option<String>,

    /// With --sandbox, continue the sandbox's previous opencode session.
    #[arg(long = "continue", requires = "sandbox")]
    continue_session: bool,

    /// Run the task N times (1 to 8), each in a fresh sandbox of its own, in parallel within the
    /// workspace's run quota, and print the attempts side by side (status, files, +/-, cost,
    /// duration, branch or patch); `delegate apply RUN` takes the attempt you choose. Not with
    /// --sandbox. Exit code 0 when any attempt succeeded.
    #[arg(long, value_name = "N", conflicts_with = "sandbox")]
    attempts: Option<u64>,

    /// How the process backend isolates opencode (embedded mode only). `none` runs it
    /// unconfined, as you.
    #[arg(long, value_enum, env = "DELEGATE_ISOLATION")]
    isolation: Option<Isolation>,

    /// Whether the sandbox must get its memory, pids and CPU limits (cgroup v2, or v1 where the
    /// host has that; needs root or a delegated cgroup). `required` [default] refuses to start
    /// a sandbox that cannot be limited; `optional` starts it unlimited, with a warning.
    /// `--isolation none` implies `optional`.
    #[arg(long, value_enum, env = "DELEGATE_SANDBOX_LIMITS")]
    sandbox_limits: Option<SandboxLimits>,

    /// The git work tree the sandbox starts from: its files as they are now, uncommitted and
    /// untracked (not ignored) ones included [default: the work tree the current directory is in,
    /// if any]. Your repository is only read, until the run's change comes back (see --apply).
    #[arg(long, value_name = "PATH", conflicts_with = "no_repo")]
    repo: Option<PathBuf>,

    /// Start from an empty sandbox, even inside a git work tree.
    #[arg(long)]
    no_repo: bool,

    /// The egress policy of the sandbox (one the workspace allows): its HTTP clients reach the
    /// policy's hosts through delegate's egress proxy [default: the workspace's, else `none`].
    #[arg(long, value_name = "POLICY")]
    network: Option<String>,

    /// Set an environment variable in the sandbox (not a secret: use --secret). Repeatable.
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    env: Vec<String>,

    /// Put a workspace secret in the sandbox's environment under its name; its value is never
    /// shown. Repeatable.
    #[arg(long = "secret", value_name = "NAME")]
    secrets: Vec<String>,

    /// A shell script run in the sandbox before the task, e.g. `npm ci`; `@FILE` reads it from a
    /// file. A failure ends the run `setup_failed` with the output's tail.
    #[arg(long, value_name = "SCRIPT|@FILE")]
    setup: Option<String>,

    /// The sandbox's container image: one the admin lists in DELEGATE_SANDBOX_IMAGES (container
    /// backends only).
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,

    /// What happens to your repository when the run ends: `branch` writes the change as branch
    /// delegate/<run> and touches nothing else; `worktree` also applies it to your working tree
    /// when it applies cleanly; `none` leaves the repository alone (`delegate apply RUN` later).
    #[arg(long, value_enum, value_name = "TO", default_value = "branch")]
    apply: ApplyArg,

    /// Print the result object as JSON on stdout (progress still goes to stderr), cut to about
    /// 20,000 characters as MCP hosts get it (`omitted` says what was left out and where it is).
    #[arg(long)]
    json: bool,

    /// With --json, print the whole result: every changed file and the diff up to
    /// DELEGATE_DIFF_MAX_BYTES.
    #[arg(long, requires = "json")]
    full: bool,

    /// No progress lines; only the result.
    #[arg(long, short = 'q')]
    quiet: bool,

    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// What the command line asks for, read from the arguments, stdin and the `--file`s.
struct TaskInput {
    task: String,
    files: BTreeMap<String, String>,
    timeout: Option<Duration>,
}

fn task_input(args: &RunArgs) -> anyhow::Result<TaskInput> {
    let task = if args.task == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the task from stdin")?;
        s
    } else {
        args.task.clone()
    };
    let files = read_files(&args.files)?;
    let timeout = args
        .timeout
        .as_deref()
        .map(|t| parse_duration("--timeout", t))
        .transpose()?;
    Ok(TaskInput {
        task,
        files,
        timeout,
    })
}

pub async fn main(mut settings: Settings, args: &RunArgs) -> anyhow::Result<ExitCode> {
    if let Some(id) = &args.sandbox {
        bail!(
            "--sandbox {id} needs --server URL --token T: warm sandboxes live in a running \
             `delegate serve`, while `delegate run` without --server embeds a throwaway \
             orchestrator whose every run gets a fresh sandbox"
        );
    }
    if let Some(isolation) = args.isolation {
        settings.isolation = isolation;
    }
    if let Some(limits) = args.sandbox_limits {
        settings.sandbox_limits = limits;
    }
    // One run and gone: a pool would only start a sandbox nobody claims, beside the run's own.
    settings.warm_pool = 0;
    if settings.upstream.credential.is_none() {
        bail!(
            "no model API credential: set ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN). It stays in \
             this process; the sandbox only gets a token for delegate's proxy."
        );
    }
    debug_assert!(matches!(
        settings.upstream.credential,
        Some(UpstreamCredential::ApiKey(_) | UpstreamCredential::AuthToken(_))
    ));
    let input = run_input(args)?;
    let orch = delegate_server::app::embedded(settings.clone()).await?;
    let caller = Caller {
        user_id: orch.local_user().id.clone(),
        ..cli_caller()
    };
    let (embedded, watch) = super::embedded_delegator(&orch, &settings).await;
    let delegator = super::local_repositories(Arc::new(embedded), &settings, args.repo.as_deref());
    let outcome = delegate(delegator, caller, input, args, None).await;
    if let Some(watch) = watch {
        watch.stop().await;
    }
    orch.shutdown().await;
    outcome
}

/// `delegate run --server URL --token T`: the same run, progress and result, done by a server.
pub async fn remote(
    delegator: RemoteDelegator,
    settings: &Settings,
    args: &RunArgs,
) -> anyhow::Result<ExitCode> {
    let input = run_input(args)?;
    let server = delegator.server().to_string();
    let delegator = super::local_repositories(Arc::new(delegator), settings, args.repo.as_deref());
    delegate(delegator, cli_caller(), input, args, Some(&server)).await
}

/// Who `delegate run` is: the server knows the user from the token (remote) or it is the
/// machine's local user (embedded, filled in by the caller).
fn cli_caller() -> Caller {
    Caller {
        user_id: "remote".into(),
        token_id: None,
        client: Some(CLI_CLIENT.into()),
        workspace_id: None,
    }
}

/// The tool input the command line asks for.
fn run_input(args: &RunArgs) -> anyhow::Result<RunInSandboxInput> {
    let TaskInput {
        task,
        files,
        timeout,
    } = task_input(args)?;
    let repo = match (&args.repo, args.no_repo) {
        (_, true) => Some("none".to_string()),
        (Some(path), false) => Some(path.display().to_string()),
        // The repository the command is started in, if any.
        (None, false) => None,
    };
    Ok(RunInSandboxInput {
        task,
        sandbox_id: args.sandbox.clone(),
        workspace: args.workspace.clone(),
        files: (!files.is_empty()).then_some(files),
        model: args.model.clone(),
        agent: args.agent.clone(),
        // Round up: `--timeout 1500ms` must not become 1 s.
        timeout_seconds: timeout.map(|t| t.as_secs() + u64::from(t.subsec_nanos() > 0)),
        continue_session: args.continue_session.then_some(true),
        wait: Some(true),
        repo,
        apply: Some(args.apply.mode()),
        network: args.network.clone(),
        env: read_env(&args.env)?,
        secrets: (!args.secrets.is_empty()).then(|| args.secrets.clone()),
        setup: args.setup.as_deref().map(read_setup).transpose()?,
        image: args.image.clone(),
        attempts: args.attempts,
        ..Default::default()
    })
}

/// `--env NAME=VALUE`s as the tool's `env`; the server checks the names and sizes.
fn read_env(specs: &[String]) -> anyhow::Result<Option<BTreeMap<String, String>>> {
    let mut env = BTreeMap::new();
    for spec in specs {
        let Some((name, value)) = spec.split_once('=') else {
            bail!("--env {spec}: expected NAME=VALUE");
        };
        if env.insert(name.to_string(), value.to_string()).is_some() {
            bail!("--env {name}: given twice");
        }
    }
    Ok((!env.is_empty()).then_some(env))
}

/// `--setup`: the script itself, or `@FILE`'s text.
fn read_setup(spec: &str) -> anyhow::Result<String> {
    match spec.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("--setup @{path}: cannot read it as text")),
        None => Ok(spec.to_string()),
    }
}

/// Runs the task through `delegator` with progress on stderr and Ctrl-C cancelling the run.
async fn delegate(
    delegator: Arc<dyn Delegator>,
    caller: Caller,
    input: RunInSandboxInput,
    args: &RunArgs,
    server: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let (progress_tx, mut progress_rx) = mpsc::channel(256);
    let cancel = CancellationToken::new();
    let call = {
        let cancel = cancel.clone();
        async move {
            delegator
                .run_in_sandbox(&caller, input, progress_tx, cancel)
                .await
        }
    };
    let mut call = std::pin::pin!(call);

    let mut progress = Progress::new(!args.quiet);
    if let Some(server) = server {
        progress.note(&format!("delegating to {server}"));
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut interrupted = false;
    let mut progress_open = true;
    let result = loop {
        tokio::select! {
            result = &mut call => break result,
            p = progress_rx.recv(), if progress_open => match p {
                Some(p) => progress.line(&p.message),
                None => progress_open = false,
            },
            _ = tick.tick() => progress.spin(),
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                progress.note("interrupted: cancelling the run…");
                cancel.cancel();
            }
        }
    };
    // Lines that arrived just before the end.
    while let Ok(p) = progress_rx.try_recv() {
        progress.line(&p.message);
    }
    progress.clear();
    let result = result?;
    finish(args, &result, interrupted)
}

/// Prints the result (JSON on stdout with `--json`, else a summary) and picks the exit code:
/// 0 succeeded, 130 interrupted, 1 any other end.
fn finish(args: &RunArgs, result: &RunResult, interrupted: bool) -> anyhow::Result<ExitCode> {
    if args.json {
        let detail = match args.full {
            true => Detail::Full,
            false => Detail::Normal,
        };
        let result = delegate_mcp::budget::run_result(result, detail);
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &result)?;
        writeln!(out)?;
    } else {
        print_summary(result);
    }
    Ok(match result.status {
        RunStatus::Succeeded => ExitCode::SUCCESS,
        _ if interrupted => ExitCode::from(130),
        _ => ExitCode::from(1),
    })
}

/// `--file` arguments to the `files` map, reading the local files.
fn read_files(specs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    for spec in specs {
        let (dest, src) = match spec.split_once('=') {
            Some((d, s)) => (d.to_string(), PathBuf::from(s)),
            None => {
                let src = PathBuf::from(spec);
                let dest = match src.is_absolute() {
                    true => src
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| spec.clone()),
                    false => spec.clone(),
                };
                (dest, src)
            }
        };
        let text = std::fs::read_to_string(&src)
            .with_context(|| format!("--file {spec}: cannot read {} as text", src.display()))?;
        files.insert(dest, text);
    }
    Ok(files)
}

/// Progress on stderr: one line per event; on a terminal also a spinner line kept at the bottom.
struct Progress {
    enabled: bool,
    tty: bool,
    started: Instant,
    frame: usize,
    status: String,
    spinner_shown: bool,
}

const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

impl Progress {
    fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            frame: 0,
            status: "queued".into(),
            spinner_shown: false,
        }
    }

    /// A progress line from a delegator (already described); a status line moves the spinner.
    fn line(&mut self, line: &str) {
        if let Some(status) = line.split(' ').next().and_then(RunStatus::parse) {
            self.status = status.to_string();
        }
        self.note(line);
    }

    fn note(&mut self, line: &str) {
        if !self.enabled {
            return;
        }
        self.clear();
        let secs = self.started.elapsed().as_secs_f64();
        eprintln!("[{secs:6.1}s] {line}");
        self.spin();
    }

    fn spin(&mut self) {
        if !self.enabled || !self.tty {
            return;
        }
        self.frame = (self.frame + 1) % FRAMES.len();
        let secs = self.started.elapsed().as_secs();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{} {} {secs}s",
            FRAMES[self.frame], self.status
        );
        let _ = err.flush();
        self.spinner_shown = true;
    }

    fn clear(&mut self) {
        if self.spinner_shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.spinner_shown = false;
        }
    }
}

fn print_summary(r: &RunResult) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "\nrun {} {} in {:.1}s",
        r.run_id,
        r.status,
        r.duration_ms as f64 / 1000.0
    );
    if let Some(e) = &r.error {
        let _ = writeln!(err, "error ({}): {}", e.kind.as_str(), e.message);
    }
    if !r.attempts.is_empty() {
        print_attempts(&mut err, r);
    }
    if !r.changed_files.is_empty() {
        let _ = writeln!(err, "changed files:");
        for f in &r.changed_files {
            let counts = if f.binary {
                "binary".to_string()
            } else {
                format!("+{} -{}", f.additions, f.deletions)
            };
            let _ = writeln!(err, "  {:?} {} ({counts})", f.change, f.path);
        }
    }
    if let Some(branch) = &r.branch {
        let _ = writeln!(err, "branch: {branch} (see it: git show {branch})");
        match r.applied {
            Some(true) => {
                let _ = writeln!(err, "applied to your working tree");
            }
            Some(false) => {
                let _ = writeln!(
                    err,
                    "not applied to your working tree: the change conflicts with {}",
                    r.conflicts.join(", ")
                );
            }
            None => {}
        }
    } else if let Some(message) = &r.apply_message {
        let _ = writeln!(err, "{message}");
    } else if r.commit.is_some() && r.base.is_some() {
        let _ = writeln!(
            err,
            "the change is kept: write it into your repository with `delegate apply {}`",
            r.run_id
        );
    }
    let u = &r.usage;
    let _ = writeln!(
        err,
        "usage: {} input, {} output, {} cache read, {} cache write tokens; ${:.4}",
        u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.cost_usd
    );
    drop(err);
    if !r.final_message.is_empty() {
        // The answer itself is the command's output.
        #[allow(clippy::print_stdout)]
        {
            println!("{}", r.final_message);
        }
    }
}

/// A parent's attempts side by side, one row each, for people to compare.
fn print_attempts(err: &mut impl Write, r: &RunResult) {
    let _ = writeln!(
        err,
        "  #  {:<36}  {:<9}  {:>5}  {:>13}  {:>9}  {:>8}  branch or patch",
        "attempt", "status", "files", "+/-", "cost", "time"
    );
    for (i, a) in r.attempts.iter().enumerate() {
        let link =
            a.branch
                .as_deref()
                .or(a.patch_url.as_deref())
                .unwrap_or(if a.commit.is_some() {
                    "delegate apply RUN"
                } else {
                    "-"
                });
        let _ = writeln!(
            err,
            "  {:<2} {:<36}  {:<9}  {:>5}  {:>13}  {:>9}  {:>7.1}s  {link}",
            i + 1,
            a.run_id,
            a.status.as_str(),
            a.files_changed,
            format!("+{} -{}", a.additions, a.deletions),
            format!("${:.4}", a.cost_usd),
            a.duration_ms as f64 / 1000.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{read_env, read_setup};

    #[test]
    fn env_flags_become_the_tools_env_and_bad_ones_say_why() {
        let env = read_env(&["A=1".into(), "B=x=y".into(), "EMPTY=".into()])
            .unwrap()
            .unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "x=y", "only the first = splits");
        assert_eq!(env["EMPTY"], "");
        assert!(read_env(&[]).unwrap().is_none());
        let err = read_env(&["NOVALUE".into()]).unwrap_err().to_string();
        assert!(err.contains("expected NAME=VALUE"), "{err}");
        let err = read_env(&["A=1".into(), "A=2".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("given twice"), "{err}");
    }

    #[test]
    fn setup_is_the_script_or_a_files_text() {
        assert_eq!(read_setup("npm ci").unwrap(), "npm ci");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("setup.sh");
        std::fs::write(&file, "set -e\npip install -r requirements.txt\n").unwrap();
        let script = read_setup(&format!("@{}", file.display())).unwrap();
        assert!(script.starts_with("set -e\n"), "{script}");
        let err = read_setup("@/nonexistent/setup.sh")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--setup @/nonexistent/setup.sh"), "{err}");
    }
}
