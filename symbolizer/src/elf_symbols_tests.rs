//! Naming user code: Rust and C++ functions of real binaries with file, line and demangled
//! names, and a corrupt ELF file.

use std::process::{Command, Stdio};

use crate::test_support::{marker_function_for_symbolizer_test, symbolize_one};
use crate::Symbolizer;
use emberprof_model::FrameKind;

#[test]
fn names_own_rust_function_with_file_and_line() {
    let mut s = Symbolizer::new();
    let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
    let stack = symbolize_one(&mut s, std::process::id(), &[addr], &[]);
    let loc = &stack[0];
    assert_eq!(loc.kind, FrameKind::Native);
    let frame = loc.frames.last().expect("named");
    assert!(
        frame
            .function
            .ends_with("marker_function_for_symbolizer_test"),
        "demangled Rust path expected, got {}",
        frame.function
    );
    assert!(
        frame
            .file
            .as_deref()
            .unwrap_or("")
            .ends_with("test_support.rs"),
        "{frame:?}"
    );
    assert!(frame.line > 0);
    assert!(
        loc.module.as_ref().unwrap().build_id.is_some(),
        "Rust test binaries carry a build ID"
    );
}

#[test]
fn corrupt_elf_gives_module_offset_frames_and_is_counted() {
    use std::os::fd::AsRawFd;
    let path = std::env::temp_dir().join(format!("ep-corrupt-{}.so", std::process::id()));
    let mut junk = b"\x7fELF\x02\x01\x01".to_vec();
    junk.resize(8192, 0xa5);
    std::fs::write(&path, &junk).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: a fresh private read+exec mapping of a file we own, unmapped below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let addr = base as u64 + 0x1234;

    let mut s = Symbolizer::new();
    let pid = std::process::id();
    let first = symbolize_one(&mut s, pid, &[addr], &[]);
    let again = symbolize_one(&mut s, pid, &[addr + 8], &[]);
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(base, 8192) };
    let _ = std::fs::remove_file(&path);

    for (stack, offset) in [(first, 0x1234), (again, 0x1234 + 8)] {
        assert!(stack[0].is_unknown());
        assert_eq!(stack[0].address, offset);
        assert!(
            stack[0].to_string().starts_with("ep-corrupt-"),
            "{}",
            stack[0]
        );
    }
    assert_eq!(s.stats().file_errors, 1, "a broken file is tried once");
    assert_eq!(s.stats().addresses_unreadable, 2);
}

#[test]
fn demangles_cpp_names() {
    let dir = std::env::temp_dir().join(format!("ep-sym-cpp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("spin.cpp");
    std::fs::write(
        &src,
        r#"#include <cstdio>
#include <unistd.h>
namespace shop { struct Cart { __attribute__((noinline)) int total(int n); }; }
int shop::Cart::total(int n) { return n * 3; }
int main() {
    shop::Cart c;
    std::printf("%p\n", (void*)&shop::Cart::total);
    std::fflush(stdout);
    sleep(30);
    return c.total(1);
}
"#,
    )
    .unwrap();
    let exe = dir.join("spin");
    let built = Command::new("c++")
        .args(["-O1", "-g", "-Wno-pmf-conversions", "-o"])
        .arg(&exe)
        .arg(&src)
        .status();
    assert!(
        built.is_ok_and(|s| s.success()),
        "building the C++ test program needs g++"
    );
    let mut child = Command::new(&exe).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = u64::from_str_radix(line.trim().trim_start_matches("0x"), 16).unwrap();

    let mut s = Symbolizer::new();
    let stack = symbolize_one(&mut s, child.id(), &[addr], &[]);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let name = &stack[0].frames.last().expect("named").function;
    assert_eq!(&**name, "shop::Cart::total(int)");
}
