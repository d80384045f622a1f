//! Compiles the eBPF C programs with clang and measures the shared C structs' layout so that
//! a test can compare it with the Rust twins.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// BPF programs built from `bpf/<name>.bpf.c` into `$OUT_DIR/<name>.bpf.o`.
const PROGRAMS: &[&str] = &["cpu_sampler", "off_cpu"];

/// Fields whose offsets the layout test checks: (struct, field).
const LAYOUT_FIELDS: &[(&str, &str)] = &[
    ("ep_sample_key", "tgid"),
    ("ep_sample_key", "tid"),
    ("ep_sample_key", "user_stack_id"),
    ("ep_sample_key", "kernel_stack_id"),
    ("ep_sample_key", "comm"),
    ("ep_offcpu_key", "tgid"),
    ("ep_offcpu_key", "tid"),
    ("ep_offcpu_key", "comm"),
    ("ep_offcpu_key", "user_len"),
    ("ep_offcpu_key", "kernel_len"),
    ("ep_offcpu_key", "user"),
    ("ep_offcpu_key", "kernel"),
    ("ep_offcpu_value", "total_ns"),
    ("ep_offcpu_value", "blocks"),
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

/// Builds and runs a host program that prints the C layout as Rust constants.
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
    c.push_str(
        "printf(\"pub const EP_CNT_MAX: usize = %d;\\n\", (int)EP_CNT_MAX);\n\
printf(\"pub const EP_OFF_MAX: usize = %d;\\n\", (int)EP_OFF_MAX);\nreturn 0;\n}\n",
    );
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
