//! Compiles the eBPF C programs with clang and measures the shared C structs' layout so that
//! a test can compare it with the Rust twins.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// BPF programs built from `bpf/<name>.bpf.c` into `$OUT_DIR/<name>.bpf.o`.
const PROGRAMS: &[&str] = &["emberprof"];

/// Fields whose offsets the layout test checks: (struct, field).
const LAYOUT_FIELDS: &[(&str, &str)] = &[
    ("ep_sample_key", "tgid"),
    ("ep_sample_key", "tid"),
    ("ep_sample_key", "user_stack"),
    ("ep_sample_key", "kernel_stack"),
    ("ep_sample_key", "user_err"),
    ("ep_sample_key", "kernel_err"),
    ("ep_sample_key", "comm"),
    ("ep_sample_key", "exec_id"),
    ("ep_sample_key", "flags"),
    ("ep_sample_key", "py_stack"),
    ("ep_announcement", "tgid"),
    ("ep_announcement", "exec_id"),
    ("ep_announcement", "comm"),
    ("ep_stack", "ips"),
    ("ep_offcpu_key", "tgid"),
    ("ep_offcpu_key", "tid"),
    ("ep_offcpu_key", "comm"),
    ("ep_offcpu_key", "user_len"),
    ("ep_offcpu_key", "kernel_len"),
    ("ep_offcpu_key", "exec_id"),
    ("ep_offcpu_key", "flags"),
    ("ep_offcpu_key", "user"),
    ("ep_offcpu_key", "kernel"),
    ("ep_offcpu_key", "py_len"),
    ("ep_offcpu_key", "py"),
    ("ep_probe_sample_key", "sample"),
    ("ep_probe_sample_key", "slot"),
    ("ep_probe_sample_key", "reserved"),
    ("ep_probe_sample_value", "hits"),
    ("ep_probe_sample_value", "ns"),
    ("ep_offcpu_value", "total_ns"),
    ("ep_offcpu_value", "blocks"),
    ("ep_hist_key", "cgroup"),
    ("ep_hist_key", "kind"),
    ("ep_hist_key", "detail"),
    ("ep_hist_key", "major"),
    ("ep_hist_key", "minor"),
    ("ep_hist", "slots"),
    ("ep_hist", "zero"),
    ("ep_hist", "sum_ns"),
    ("ep_hist_cached", "key"),
    ("ep_hist_cached", "used"),
    ("ep_hist_cached", "hist"),
    ("ep_unwind_rule", "kind"),
    ("ep_unwind_rule", "rbp_saved"),
    ("ep_unwind_rule", "cfa_offset"),
    ("ep_unwind_rule", "rbp_offset"),
    ("ep_unwind_entry", "pc"),
    ("ep_unwind_entry", "rule"),
    ("ep_unwind_mapping", "start"),
    ("ep_unwind_mapping", "end"),
    ("ep_unwind_mapping", "bias"),
    ("ep_unwind_mapping", "first"),
    ("ep_unwind_mapping", "count"),
    ("ep_unwind_proc", "count"),
    ("ep_unwind_proc", "mappings"),
    ("ep_py_note", "tgid"),
    ("ep_py_note", "len"),
    ("ep_py_note", "frames"),
    ("ep_py_note_frame", "entry"),
    ("ep_py_note_frame", "fingerprint"),
    ("ep_py_proc", "runtime"),
    ("ep_py_proc", "version"),
    ("ep_py_proc", "entry_kind"),
    ("ep_py_proc", "instr_kind"),
    ("ep_py_proc", "entry_offset"),
    ("ep_py_proc", "interp_head"),
    ("ep_py_proc", "interp_next"),
    ("ep_py_proc", "interp_threads"),
    ("ep_py_proc", "tstate_next"),
    ("ep_py_proc", "tstate_thread_id"),
    ("ep_py_proc", "tstate_frame"),
    ("ep_py_proc", "cframe_current"),
    ("ep_py_proc", "frame_code"),
    ("ep_py_proc", "frame_previous"),
    ("ep_py_proc", "frame_instr"),
    ("ep_py_proc", "code_adaptive"),
    ("ep_py_proc", "frame_size"),
    ("ep_py_proc", "code_argcount"),
    ("ep_py_proc", "code_flags"),
    ("ep_py_proc", "code_firstlineno"),
];

/// (co_argcount, co_flags, co_firstlineno) whose C fingerprint the layout program prints.
const PY_FINGERPRINT_SAMPLES: &[(u32, u32, u32)] =
    &[(0, 0, 0), (2, 3, 17), (4095, 0xffff_ffff, 99999)];

/// Durations whose C histogram slot the layout program prints, for the bucket-mapping test.
const SLOT_SAMPLES: &[&str] = &[
    "0ULL",
    "1ULL",
    "2ULL",
    "3ULL",
    "4ULL",
    "5ULL",
    "7ULL",
    "8ULL",
    "9ULL",
    "1000ULL",
    "1023ULL",
    "1024ULL",
    "1025ULL",
    "10000000ULL",
    "20000000ULL",
    "(1ULL << 32)",
    "(1ULL << 32) + 1",
    "(1ULL << 62) + 1",
    "(1ULL << 63)",
    "(1ULL << 63) + 1",
    "~0ULL",
];

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = find_clang();
    let include = manifest.join("include");
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86",
        Ok("aarch64") => "arm64",
        Ok(other) => panic!("emberprof probes: unsupported target architecture {other}"),
        Err(_) => "x86",
    };

    println!("cargo:rerun-if-changed=include");
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=CLANG");

    for name in PROGRAMS {
        let src = manifest.join("bpf").join(format!("{name}.bpf.c"));
        let obj = out.join(format!("{name}.bpf.o"));
        run(Command::new(&clang)
            .args([
                "-g", "-O2", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
            ])
            .arg(format!("-D__TARGET_ARCH_{arch}"))
            .arg("-I")
            .arg(&include)
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj));
    }

    write_c_layout(&clang, &include, &out);
    write_syscall_names(arch, &out);
}

/// Writes `syscall_names.rs`: the target's syscall numbers and names, read from the kernel
/// UAPI header (linux-libc-dev). Without the header the table is empty and syscalls are
/// shown by number.
fn write_syscall_names(arch: &str, out: &Path) {
    let header = match arch {
        "x86" => "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
        _ => "/usr/include/asm-generic/unistd.h",
    };
    println!("cargo:rerun-if-changed={header}");
    let mut names: Vec<(u32, String)> = std::fs::read_to_string(header)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("#define __NR_")?;
            let mut parts = rest.split_whitespace();
            let name = parts.next()?;
            let nr = parts.next()?.parse().ok()?;
            Some((nr, name.to_string()))
        })
        .collect();
    names.sort();
    names.dedup_by_key(|(nr, _)| *nr);
    let mut rs = String::from("pub(crate) const SYSCALL_NAMES: &[(u32, &str)] = &[\n");
    for (nr, name) in names {
        rs.push_str(&format!("    ({nr}, \"{name}\"),\n"));
    }
    rs.push_str("];\n");
    std::fs::write(out.join("syscall_names.rs"), rs)
        .unwrap_or_else(|e| panic!("writing syscall_names.rs: {e}"));
}

/// Clang from $CLANG, else the newest versioned clang on PATH, else plain `clang`.
fn find_clang() -> String {
    if let Ok(c) = env::var("CLANG") {
        return c;
    }
    for candidate in [
        "clang-22", "clang-21", "clang-20", "clang-19", "clang-18", "clang",
    ] {
        if Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return candidate.to_string();
        }
    }
    panic!(
        "emberprof probes: clang not found. Install it with `make deps` \
         (apt-get install clang-19 libbpf-dev) or point $CLANG at a clang >= 14"
    );
}

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("emberprof probes: cannot run {cmd:?}: {e}"));
    if !status.success() {
        panic!(
            "emberprof probes: {cmd:?} failed ({status}); \
             the BPF headers come from libbpf-dev (`make deps`)"
        );
    }
}

/// Names of the numeric constants `emberprof.h` defines: its object-like `#define EP_*`
/// macros and its `EP_*` enumerators. Each one is printed for the test that checks every
/// constant has a Rust twin of the same value.
fn header_constants(header: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    for line in header.lines().map(str::trim_start) {
        let (name, rest) = match line.strip_prefix("#define") {
            Some(def) => {
                let def = def.trim_start();
                let name = ident(def);
                let rest = &def[name.len()..];
                // Function-like and empty macros are not constants.
                if rest.starts_with('(') || rest.trim().is_empty() {
                    continue;
                }
                (name, "=")
            }
            None => {
                let name = ident(line);
                (name.clone(), line[name.len()..].trim_start())
            }
        };
        if name.starts_with("EP_") && (rest.starts_with('=') || rest.starts_with(',')) {
            names.push(name);
        }
    }
    names
}

/// Builds and runs a host program that prints the C layout and constants as Rust constants.
fn write_c_layout(clang: &str, include: &Path, out: &Path) {
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"emberprof.h\"\nint main(void) {\n",
    );
    let mut structs: Vec<&str> = LAYOUT_FIELDS.iter().map(|(s, _)| *s).collect();
    structs.dedup();
    for s in &structs {
        c.push_str(&format!(
            "printf(\"pub const {u}_SIZE: usize = %zu;\\n\", sizeof(struct {s}));\n",
            u = s.to_uppercase()
        ));
    }
    for (s, f) in LAYOUT_FIELDS {
        c.push_str(&format!(
            "printf(\"pub const {u}_{fu}_OFFSET: usize = %zu;\\n\", offsetof(struct {s}, {f}));\n",
            u = s.to_uppercase(),
            fu = f.to_uppercase()
        ));
    }
    let header = include.join("emberprof.h");
    let header = std::fs::read_to_string(&header)
        .unwrap_or_else(|e| panic!("reading {}: {e}", header.display()));
    c.push_str("printf(\"pub const CONSTANTS: &[(&str, i64)] = &[\\n\");\n");
    for name in header_constants(&header) {
        c.push_str(&format!(
            "printf(\"    (\\\"{name}\\\", %lld),\\n\", (long long)({name}));\n"
        ));
    }
    c.push_str("printf(\"];\\n\");\n");
    c.push_str("printf(\"pub const SLOT_SAMPLES: &[(u64, usize)] = &[\\n\");\n");
    for v in SLOT_SAMPLES {
        c.push_str(&format!(
            "printf(\"    (%lluu64, %u),\\n\", (unsigned long long)({v}), ep_hist_slot({v}));\n"
        ));
    }
    c.push_str("printf(\"];\\n\");\n");
    c.push_str("printf(\"pub const PY_FINGERPRINTS: &[((u32, u32, u32), u64)] = &[\\n\");\n");
    for (a, f, l) in PY_FINGERPRINT_SAMPLES {
        c.push_str(&format!(
            "printf(\"    (({a}, {f}, {l}), %lluu64),\\n\", (unsigned long long)EP_PY_FINGERPRINT({a}u, {f}u, {l}u));\n"
        ));
    }
    c.push_str("printf(\"];\\n\");\nreturn 0;\n}\n");
    let src = out.join("c_layout.c");
    let exe = out.join("c_layout");
    std::fs::write(&src, c).unwrap_or_else(|e| panic!("writing {}: {e}", src.display()));
    run(Command::new(clang)
        .arg("-I")
        .arg(include)
        .arg(&src)
        .arg("-o")
        .arg(&exe));
    let output = Command::new(&exe)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    std::fs::write(out.join("c_layout.rs"), output.stdout)
        .unwrap_or_else(|e| panic!("writing c_layout.rs: {e}"));
}
