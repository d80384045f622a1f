//! How much unwind table the processes running now need: the distinct executable files
//! every process maps (by device and inode), each compiled once, and their entries summed.
//! This is the figure `--unwind-table-mib`'s default is chosen from (README, "Stacks
//! without frame pointers"). Run as root to see every process:
//! `cargo run --release -p emberprof-symbolizer --example unwind_census`. Given
//! directories instead, it compiles every file directly in them (e.g. `/usr/bin
//! /usr/lib/x86_64-linux-gnu`): what the files a node could run would take.

use std::collections::HashMap;
use std::path::PathBuf;

use emberprof_symbolizer::unwind::{compile_file, ENTRY_BYTES};

/// An executable file mapping of a process: where to open it, and its identity.
fn executable_files(pid: &str) -> Vec<((String, u64), PathBuf)> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [range, perms, _offset, dev, inode, path, ..] = fields[..] else {
            continue;
        };
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        if !perms.contains('x') || inode == 0 || !path.starts_with('/') {
            continue;
        }
        // Through map_files the file is the one mapped, even if deleted or in another
        // mount namespace.
        let open = PathBuf::from(format!("/proc/{pid}/map_files/{range}"));
        out.push(((dev.to_string(), inode), open));
    }
    out
}

/// Every regular file directly in `dirs`, by identity.
fn files_in(dirs: &[String]) -> HashMap<(String, u64), PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut out = HashMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            eprintln!("cannot read {dir}");
            continue;
        };
        for e in entries.flatten() {
            // Through symlinks: a library's soname link and its file are one file.
            let Ok(meta) = std::fs::metadata(e.path()) else {
                continue;
            };
            if meta.is_file() {
                out.insert((meta.dev().to_string(), meta.ino()), e.path());
            }
        }
    }
    out
}

fn main() {
    let dirs: Vec<String> = std::env::args().skip(1).collect();
    if !dirs.is_empty() {
        let files = files_in(&dirs);
        report(&files, None);
        return;
    }
    let mut files: HashMap<(String, u64), PathBuf> = HashMap::new();
    let mut processes = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        eprintln!("cannot read /proc");
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let mapped = executable_files(&name);
        if !mapped.is_empty() {
            processes += 1;
        }
        for (id, path) in mapped {
            files.entry(id).or_insert(path);
        }
    }
    report(&files, Some(processes));
}

/// Compiles each file and prints the totals, the spread and the largest tables.
fn report(files: &HashMap<(String, u64), PathBuf>, processes: Option<usize>) {
    let mut sizes: Vec<(usize, String)> = Vec::new();
    let mut failed = 0;
    for path in files.values() {
        match compile_file(path) {
            Ok(t) => {
                let shown = std::fs::read_link(path).unwrap_or_else(|_| path.clone());
                sizes.push((t.len(), shown.display().to_string()));
            }
            Err(_) => failed += 1,
        }
    }
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let total: usize = sizes.iter().map(|s| s.0).sum();
    let mib = |n: usize| (n as u64 * ENTRY_BYTES) as f64 / f64::from(1 << 20);
    let whose = processes.map_or("the directories hold".to_string(), |n| {
        format!("{n} processes map")
    });
    println!(
        "{whose} {} distinct files; {} with tables, {failed} without",
        files.len(),
        sizes.len()
    );
    println!(
        "table entries: {total} ({:.1} MiB at {ENTRY_BYTES} B), mean {:.0} per file",
        mib(total),
        total as f64 / sizes.len().max(1) as f64
    );
    // Sorted largest first: the p-th percentile from the small end.
    for p in [50, 90, 99] {
        if let Some(s) = sizes.get(sizes.len() * (100 - p) / 100) {
            println!("p{p} {} entries", s.0);
        }
    }
    println!("largest:");
    for (n, path) in sizes.iter().take(10) {
        println!("  {n:>9} {:>6.2} MiB  {path}", mib(*n));
    }
}
