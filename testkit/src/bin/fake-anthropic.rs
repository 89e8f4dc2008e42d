//! `fake-anthropic`: the scripted fake Anthropic Messages API as a standalone server, for manual
//! checks against real clients.
//!
//! ```text
//! fake-anthropic [--host 127.0.0.1] [--port 0] [--script SCRIPT]
//! ```
//! Scripts: `write:PATH:CONTENT` (default `write:hello.txt:hi\n`), `read:PATH`, `text:MSG`,
//! `bash:COMMAND`, `status:CODE[:RETRY_AFTER_MS]`, `overloaded`, `midstream`, `slow:MS[:SCRIPT]`,
//! `hang`. In CONTENT and MSG, `\n`, `\t` and `\\` are unescaped. Prints
//! `listening on http://HOST:PORT` on stdout, then one line per request on stderr, until killed.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use delegate_testkit::anthropic::{FakeAnthropic, Script};

const USAGE: &str = "usage: fake-anthropic [--host ADDR] [--port PORT] [--script SCRIPT]
scripts: write:PATH:CONTENT  read:PATH  text:MSG  bash:COMMAND  status:CODE[:RETRY_AFTER_MS]
         overloaded  midstream  slow:MS[:SCRIPT]  hang";

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            eprintln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fake-anthropic: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let fake = match FakeAnthropic::start_on(args.addr, args.script).await {
        Ok(fake) => fake,
        Err(e) => {
            eprintln!("fake-anthropic: cannot listen on {}: {e}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "listening on {}", fake.base_url())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(stdout);

    let mut seen = 0;
    loop {
        let requests = fake.wait_for_requests(seen + 1).await;
        for r in requests.iter().skip(seen) {
            let tools = r
                .body
                .get("tools")
                .and_then(|t| t.as_array())
                .map_or(0, Vec::len);
            let model = r.body.get("model").and_then(|m| m.as_str()).unwrap_or("-");
            let text: String = r.last_user_text().chars().take(80).collect();
            eprintln!(
                "#{} {} {} model={model} tools={tools} x-api-key={} last_user={text:?}",
                r.number,
                r.method,
                r.path,
                r.header("x-api-key").unwrap_or("-"),
            );
        }
        seen = requests.len();
    }
}

struct Args {
    addr: SocketAddr,
    script: Script,
}

/// `Ok(None)` means `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut host: IpAddr = [127, 0, 0, 1].into();
    let mut port = 0u16;
    let mut script = Script::write_file("hello.txt", "hi\n", "done");
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg, None),
        };
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--host" => host = value()?.parse().map_err(|e| format!("--host: {e}"))?,
            "--port" => port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--script" => script = parse_script(&value()?)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(Args {
        addr: SocketAddr::new(host, port),
        script,
    }))
}

fn parse_script(spec: &str) -> Result<Script, String> {
    let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
    let number = |s: &str, what: &str| {
        s.parse::<u64>()
            .map_err(|e| format!("script {spec:?}: bad {what} {s:?}: {e}"))
    };
    Ok(match kind {
        "write" => {
            let (path, content) = rest
                .split_once(':')
                .ok_or_else(|| format!("script {spec:?}: expected write:PATH:CONTENT"))?;
            Script::write_file(path, &unescape(content), "done")
        }
        "read" if !rest.is_empty() => Script::read_file(rest),
        "bash" if !rest.is_empty() => Script::bash(rest, "done"),
        "text" => Script::text(&unescape(rest)),
        "status" => {
            let (code, retry) = rest
                .split_once(':')
                .map_or((rest, None), |(c, r)| (c, Some(r)));
            let code = u16::try_from(number(code, "status code")?)
                .ok()
                .filter(|c| (100..=999).contains(c))
                .ok_or_else(|| format!("script {spec:?}: status code out of range"))?;
            let mut script = Script::status(code);
            if let (Script::Status { retry_after_ms, .. }, Some(retry)) = (&mut script, retry) {
                *retry_after_ms = Some(number(retry, "retry-after-ms")?);
            }
            script
        }
        "overloaded" => Script::overloaded(),
        "midstream" => Script::MidStreamError,
        "hang" => Script::Hang,
        "slow" => {
            let (ms, then) = rest
                .split_once(':')
                .map_or((rest, None), |(m, t)| (m, Some(t)));
            let then = match then {
                Some(t) => parse_script(t)?,
                None => Script::text("done"),
            };
            Script::slow(number(ms, "delay")?, then)
        }
        _ => return Err(format!("unknown script {spec:?}")),
    })
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}
