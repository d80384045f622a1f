//! `emberprof`: a profiler for every process on a Linux host, built on eBPF.

mod cli;
mod collect;
mod config;
mod config_file;
mod continuous;
mod export;
mod health;
mod histograms;
mod http;
mod kubernetes;
mod log_setup;
mod malloc_arenas;
mod metadata;
mod output;
mod pprof_dir;
mod probe_points;
mod progress;
mod python_procs;
mod record;
mod selection;
mod session;
mod sinks;
mod stop_signal;
mod symbols;
mod timings;
mod unwind_loader;
mod unwind_ranges;
mod watcher;

use std::process::ExitCode;

use clap::FromArgMatches;

/// Exit status of a usage or configuration error, as clap uses.
const USAGE_ERROR: u8 = 2;

/// Counts heap per thread so that the symbolizer measures what its caches hold.
#[global_allocator]
static ALLOCATOR: emberprof_symbolizer::heap::CountingAllocator =
    emberprof_symbolizer::heap::CountingAllocator;

fn main() -> ExitCode {
    malloc_arenas::use_one();
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let file = config::config_file(&raw);
    let argv = match config::merged_argv(raw) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("emberprof: error: {e}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    // With a config file, the same flag may come twice: the later (real) one wins.
    let matches = match cli::command().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => {
            // A bad value from the file is reported against its key, not the flag it became.
            if let Some(Err(config_error)) = file.map(|f| config::check(std::path::Path::new(&f))) {
                if e.exit_code() != 0 {
                    eprintln!("emberprof: error: {config_error}");
                    return ExitCode::from(USAGE_ERROR);
                }
            }
            e.exit()
        }
    };
    let cli = match cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    log_setup::init();
    let result = match cli.command {
        cli::Command::Record(args) => record::run(*args),
        cli::Command::Agent(args) => {
            // What `config check` refuses, the agent refuses before it starts anything.
            if let Err(e) = config::validate(&args) {
                match file.map(|f| config::check(std::path::Path::new(&f))) {
                    Some(Err(config_error)) => eprintln!("emberprof: error: {config_error}"),
                    _ => eprintln!("emberprof: error: {e:#}"),
                }
                return ExitCode::from(USAGE_ERROR);
            }
            continuous::run(*args)
        }
        cli::Command::Config(cli::ConfigCommand::Default) => {
            print!("{}", config::default_text());
            Ok(())
        }
        cli::Command::Config(cli::ConfigCommand::Check { file }) => match config::check(&file) {
            Ok(()) => {
                println!("{}: ok", file.display());
                Ok(())
            }
            Err(e) => {
                eprintln!("emberprof: error: {e}");
                return ExitCode::from(USAGE_ERROR);
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emberprof: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
