//! The `palisade` binary: parses the command line, runs the command, maps the outcome to an exit
//! code (0 ok, 1 failed, 2 bad usage, 3 partial, 75 busy).

mod alerting;
mod bucket;
mod cli;
mod commands;
mod config;
mod daemon;
mod gateway;
mod pg;
mod progress;
mod prove;
mod quickstart;
mod schedule;
mod scratch;
mod state;
mod tasks;

use std::process::ExitCode;

use clap::Parser;

/// What a command achieved, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything asked for was done.
    Done,
    /// Done, but some entries could not be read and were left out.
    Partial,
    /// The command ran and printed its report, and the report is a failure (a bucket that
    /// drifted from its settings, say).
    Failed,
    /// The daemon's backup did not run: the job was already running elsewhere (exit 75,
    /// sysexits' "try again later").
    Busy,
}

/// The exit code of [`Outcome::Busy`].
pub const EXIT_BUSY: u8 = 75;

/// mimalloc: the gateway allocates small, short-lived buffers per request from many threads,
/// which glibc's allocator serves markedly slower (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(&cli.global);
    // PostgreSQL's restore_command: any failure but a missing file (which the command reports
    // itself) must stop the recovery, or PostgreSQL takes it for the end of the archive.
    let fatal = match &cli.command {
        cli::Command::Pg(pg::PgCommand::ArchiveGet { .. }) => ExitCode::from(126),
        _ => ExitCode::FAILURE,
    };
    match commands::run(cli) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Partial) => ExitCode::from(3),
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        Ok(Outcome::Busy) => ExitCode::from(EXIT_BUSY),
        Err(err) => {
            eprintln!("palisade: {}", render(&err));
            fatal
        }
    }
}

/// One line per cause, outermost first, without repeating a cause already included.
fn render(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Warnings by default, with rustic_core's own log off: Palisade reports what it skipped and
/// what `check` found itself; rustls shows errors only unless `-v`. `-v` shows info and rustic_core's warnings, `-vv` debug, `-q`
/// errors only.
fn init_logging(global: &cli::Global) {
    let (ours, engine) = match (global.quiet, global.verbose) {
        (true, _) => (log::LevelFilter::Error, log::LevelFilter::Off),
        (false, 0) => (log::LevelFilter::Warn, log::LevelFilter::Off),
        (false, 1) => (log::LevelFilter::Info, log::LevelFilter::Warn),
        (false, _) => (log::LevelFilter::Debug, log::LevelFilter::Debug),
    };
    env_logger::Builder::new()
        .filter_level(ours)
        .filter_module("rustic_core", engine)
        .filter_module("rustic_backend", engine)
        // rustls warns per connection about what clients send (an IP address as SNI, say),
        // which is the client's business; its errors still show.
        .filter_module("rustls", engine.max(log::LevelFilter::Error))
        .format_target(false)
        .format_timestamp(None)
        .parse_env("PALISADE_LOG")
        .init();
}
