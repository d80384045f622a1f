//! How long compiling a file's unwind table takes, and how large the table is: for each file
//! given, the best of N compilations (`--runs N`, default 5) with
//! `emberprof_symbolizer::unwind::compile_file`, printed as one JSON object per line.
//! The benchmark (bench/tables.py) runs it on libc, ld.so and large binaries:
//! `cargo run --release -p emberprof-symbolizer --example unwind_build -- [--runs N] FILE...`

use std::path::Path;
use std::time::{Duration, Instant};

use emberprof_symbolizer::unwind::{compile_file, UnwindTable};

const MIB: f64 = (1 << 20) as f64;

/// Compiles `path` `runs` times; the table and the shortest time. The best run is the one
/// least disturbed by whatever else the machine did: the cost of the work itself.
fn best_of(path: &Path, runs: u32) -> Result<(UnwindTable, Duration), String> {
    let mut best: Option<(UnwindTable, Duration)> = None;
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let table = compile_file(path).map_err(|e| e.to_string())?;
        let took = start.elapsed();
        if best.as_ref().is_none_or(|(_, t)| took < *t) {
            best = Some((table, took));
        }
    }
    best.ok_or_else(|| "no run".to_string())
}

/// A JSON string literal: paths are the only strings printed, and may hold anything.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn report(path: &Path, runs: u32) -> String {
    let file = json_string(&path.display().to_string());
    let (table, took) = match best_of(path, runs) {
        Ok(found) => found,
        Err(e) => return format!("{{\"file\":{file},\"error\":{}}}", json_string(&e)),
    };
    let s = table.stats();
    let ms = took.as_secs_f64() * 1e3;
    let per_mib = |x: f64, bytes: u64| {
        if bytes == 0 {
            "null".to_string()
        } else {
            format!("{:.3}", x / (bytes as f64 / MIB))
        }
    };
    format!(
        "{{\"file\":{file},\"runs\":{runs},\"text_bytes\":{},\"eh_frame_bytes\":{},\"fdes\":{},\
         \"fde_errors\":{},\"rows\":{},\"entries\":{},\"distinct_rules\":{},\"kernel_bytes\":{},\
         \"ms\":{ms:.3},\"ms_per_eh_frame_mib\":{},\"kernel_bytes_per_text_mib\":{}}}",
        s.text_bytes,
        s.cfi_bytes,
        s.fdes,
        s.fde_errors,
        s.rows,
        table.len(),
        table.distinct_rules(),
        table.kernel_bytes(),
        per_mib(ms, s.cfi_bytes),
        per_mib(table.kernel_bytes() as f64, s.text_bytes),
    )
}

fn main() {
    let mut runs = 5;
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--runs" {
            match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => runs = n,
                None => {
                    eprintln!("--runs takes a number");
                    std::process::exit(2);
                }
            }
        } else {
            files.push(arg);
        }
    }
    if files.is_empty() {
        eprintln!("usage: unwind_build [--runs N] FILE...");
        std::process::exit(2);
    }
    for f in files {
        println!("{}", report(Path::new(&f), runs));
    }
}
