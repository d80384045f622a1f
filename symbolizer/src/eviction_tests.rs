//! The byte bound, the idle threshold, the file limit, and forgetting exited processes.

use crate::test_support::{marker_function_for_symbolizer_test, symbolize_one};
use crate::{Symbolizer, DEFAULT_CACHE_BYTES};

#[test]
fn the_cache_is_bounded_by_bytes_and_exited_processes_are_forgotten() {
    let mut s = Symbolizer::new();
    let pid = std::process::id();
    let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
    symbolize_one(&mut s, pid, &[addr], &[]);
    let st = s.stats();
    assert_eq!((st.files_parsed, st.evictions), (1, 0), "{st:?}");
    assert!(st.cache_bytes > 0, "{st:?}");
    // Under a bound smaller than one file, a file is let go once another is used...
    s.set_min_idle_calls(0);
    let libc = crate::parse_maps(&std::fs::read_to_string("/proc/self/maps").unwrap())
        .into_iter()
        .find(|m| m.executable && m.path.contains("libc.so"))
        .expect("the test binary maps libc");
    s.set_cache_bytes(1);
    symbolize_one(&mut s, pid, &[libc.start + 0x100], &[]);
    let st = s.stats();
    assert_eq!((st.evictions, st.files_parsed), (1, 2), "{st:?}");
    // ...and parsed again, still naming the function, when it is needed next; the file
    // in use is never the one let go.
    let stack = symbolize_one(&mut s, pid, &[addr], &[]);
    assert!(!stack[0].is_unknown());
    let st = s.stats();
    assert_eq!((st.evictions, st.files_parsed), (2, 3), "{st:?}");
    let stack = symbolize_one(&mut s, pid, &[addr + 1], &[]);
    assert!(!stack[0].is_unknown());
    assert_eq!(s.stats().files_parsed, 3, "no parse while it stays in use");
    // With an idle threshold, a file used a call ago stays even past the bound.
    s.set_min_idle_calls(5);
    symbolize_one(&mut s, pid, &[libc.start + 0x100], &[]);
    let st = s.stats();
    assert_eq!((st.evictions, st.files_parsed), (2, 4), "{st:?}");
    s.set_cache_bytes(DEFAULT_CACHE_BYTES);

    s.observe(u32::MAX - 2); // never existed
    assert_eq!(s.stats().processes_held, 2);
    // Gone at one call is kept until the next: its last samples may still come.
    assert_eq!(s.forget_exited(), 0);
    assert_eq!(s.forget_exited(), 1);
    assert_eq!(s.stats().processes_held, 1, "the live process stays");

    // Past the file limit everything is let go, and symbolizing works again after.
    s.set_file_limit(1);
    assert!(s.stats().files > 1);
    s.forget_exited();
    let st = s.stats();
    assert_eq!(
        (st.files, st.processes_held, st.file_resets),
        (0, 0, 1),
        "{st:?}"
    );
    let stack = symbolize_one(&mut s, pid, &[addr], &[]);
    assert!(!stack[0].frames.is_empty(), "named again after the reset");
}
