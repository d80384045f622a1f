//! Compiles the test workload (tests/workloads/workload.c) once per build, with frame
//! pointers everywhere so that every stack the tests expect can be walked (bench/workloads.py
//! builds it with the same flags), and once without them, for the unwinding tests; and the
//! Rust workload (tests/workloads/workload.rs) as a release build, and the library its
//! `dlopen` mode loads (tests/workloads/dlopen_lib.c), both without frame pointers.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let src = manifest.join("../workloads/workload.c");
    // The tests look for this name: it is the workload's comm and its mapping's file name.
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("epworkload");
    println!("cargo:rerun-if-changed={}", src.display());
    build(
        &src,
        &out,
        &["-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer"],
    );
    println!("cargo:rustc-env=EMBERPROF_TEST_WORKLOAD={}", out.display());
    // The same program as most software is built: no frame pointers, only .eh_frame.
    let nofp = out.with_file_name("epworkload-nofp");
    build(&src, &nofp, &["-fomit-frame-pointer"]);
    println!(
        "cargo:rustc-env=EMBERPROF_TEST_WORKLOAD_NOFP={}",
        nofp.display()
    );
    let rust_src = manifest.join("../workloads/workload.rs");
    let rust = out.with_file_name("epworkload-rust");
    println!("cargo:rerun-if-changed={}", rust_src.display());
    build_rust(&rust_src, &rust);
    println!(
        "cargo:rustc-env=EMBERPROF_TEST_WORKLOAD_RUST={}",
        rust.display()
    );
    let probe_src = manifest.join("../workloads/probe_work.c");
    println!("cargo:rerun-if-changed={}", probe_src.display());
    let probe = out.with_file_name("epprobework");
    build(&probe_src, &probe, &["-fomit-frame-pointer"]);
    println!(
        "cargo:rustc-env=EMBERPROF_TEST_PROBE_WORK={}",
        probe.display()
    );
    let lib_src = manifest.join("../workloads/dlopen_lib.c");
    println!("cargo:rerun-if-changed={}", lib_src.display());
    let lib = out.with_file_name("libepdlopen.so");
    build(
        &lib_src,
        &lib,
        &["-fomit-frame-pointer", "-shared", "-fPIC"],
    );
    println!(
        "cargo:rustc-env=EMBERPROF_TEST_DLOPEN_LIB={}",
        lib.display()
    );
}

/// Builds the Rust workload with rustc itself: it is a program of its own (plain std), and
/// a release profile's flags are what the tests are about, whatever profile builds the tests.
fn build_rust(src: &std::path::Path, out: &std::path::Path) {
    // Cargo gives build scripts the rustc it builds with.
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-name",
            "workload",
            "--crate-type",
            "bin",
        ])
        .args(["-C", "opt-level=3", "-C", "debuginfo=2"])
        // The default for this target, said explicitly: the tests need a build without them.
        .args(["-C", "force-frame-pointers=no"])
        .arg("-o")
        .arg(out)
        .arg(src)
        .status()
        .expect("running rustc for the Rust test workload");
    assert!(status.success(), "building {}", src.display());
}

fn build(src: &std::path::Path, out: &std::path::Path, frame_pointers: &[&str]) {
    let status = Command::new("cc")
        .args(["-O2", "-g"])
        .args(frame_pointers)
        .args(["-fno-optimize-sibling-calls", "-pthread", "-Wall", "-o"])
        .arg(out)
        .arg(src)
        .status()
        .expect("running cc (the C compiler) for the test workload");
    assert!(status.success(), "building {}", src.display());
}
