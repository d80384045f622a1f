//! `emberprof`: a profiler for every process on a Linux host, built on eBPF.

mod cli;
mod collect;
mod continuous;
mod export;
mod histograms;
mod http;
mod metadata;
mod output;
mod progress;
mod record;
mod session;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EMBERPROF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match cli.command {
        cli::Command::Record(args) => record::run(args),
        cli::Command::Agent(args) => continuous::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emberprof: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
