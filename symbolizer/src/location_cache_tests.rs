//! From addresses to cached locations: hits, and where a stack walk ends.

use std::sync::Arc;

use crate::test_support::{marker_function_for_symbolizer_test, symbolize_one};
use crate::Symbolizer;

#[test]
fn second_lookup_is_a_cache_hit() {
    let mut s = Symbolizer::new();
    let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
    let pid = std::process::id();
    let a = symbolize_one(&mut s, pid, &[addr], &[]);
    let misses = s.stats().cache_misses;
    let b = symbolize_one(&mut s, pid, &[addr], &[]);
    assert!(Arc::ptr_eq(&a[0], &b[0]));
    assert_eq!(s.stats().cache_misses, misses);
    assert_eq!(s.stats().cache_hits, 1);
}

#[test]
fn process_that_never_existed_gives_an_unknown_frame() {
    let mut s = Symbolizer::new();
    let stack = symbolize_one(&mut s, u32::MAX - 7, &[0x401000, 0x401234], &[]);
    assert_eq!(
        stack.len(),
        1,
        "the walk ends at the first unmapped address"
    );
    assert!(stack[0].is_unknown() && stack[0].to_string() == "[unknown]");
    assert_eq!(s.stats().processes_gone, 1);
}

#[test]
fn garbage_callers_end_the_stack_in_one_unknown_frame() {
    let mut s = Symbolizer::new();
    let real = marker_function_for_symbolizer_test as *const () as usize as u64;
    let stack = symbolize_one(&mut s, std::process::id(), &[real, 0x10, real, 0x20], &[]);
    assert_eq!(stack.len(), 2);
    assert!(!stack[0].is_unknown());
    assert_eq!(stack[1].to_string(), "[unknown]");
}

/// A frame in the vdso is named from the vdso's own symbols, where glibc's loader finds
/// the same function.
#[test]
fn a_frame_in_the_vdso_is_named() {
    // SAFETY: looking up an object the loader already has (RTLD_NOLOAD) and a symbol in it.
    let f = unsafe {
        let h = libc::dlopen(
            c"linux-vdso.so.1".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_NOLOAD,
        );
        assert!(!h.is_null(), "glibc lists the vdso as linux-vdso.so.1");
        libc::dlsym(h, c"__vdso_clock_gettime".as_ptr()) as u64
    };
    assert_ne!(f, 0);
    let mut s = Symbolizer::new();
    let stack = symbolize_one(&mut s, std::process::id(), &[f + 1], &[]);
    let leaf = &stack[0];
    assert_eq!(
        leaf.frames.first().map(|f| &*f.function),
        Some("__vdso_clock_gettime"),
        "{leaf}"
    );
    let module = leaf.module.as_ref().unwrap();
    assert_eq!(&*module.path, "[vdso]");
    assert!(module.build_id.is_some());
}
