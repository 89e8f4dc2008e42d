//! The `delegate` binary: sets up tracing, parses the command line, dispatches.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_tracing(&args);
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("delegate: {e:#}");
            ExitCode::from(2)
        }
    }
}
