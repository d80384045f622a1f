//! Compiles the test workload (tests/workloads/workload.c) once per build, with frame
//! pointers everywhere so that every stack the tests expect can be walked (bench/workloads.py
//! builds it with the same flags), and once without them, for the unwinding tests; and the
//! library its `dlopen` mode loads (tests/workloads/dlopen_lib.c), without frame pointers.

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
