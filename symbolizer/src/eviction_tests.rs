//! The byte bound (measured memory, parsed state first, re-parses counted), the file limit,
//! and forgetting exited processes.

use crate::heap::HeapDelta;
use crate::test_support::{marker_function_for_symbolizer_test, symbolize_one};
use crate::{MapsEntry, Symbolizer, SymbolizerStats};
use emberprof_model::{KernelSample, Stack};

fn own_libc() -> MapsEntry {
    crate::parse_maps(&std::fs::read_to_string("/proc/self/maps").unwrap())
        .into_iter()
        .find(|m| m.executable && m.path.contains("libc.so"))
        .expect("the test binary maps libc")
}

/// An address inside a long function of the test binary (its DWARF is large).
fn own_code() -> u64 {
    Symbolizer::symbolize as fn(&mut Symbolizer, &[KernelSample]) -> Vec<Stack> as usize as u64
}

fn parts(st: &SymbolizerStats) -> u64 {
    st.parsed_heap_bytes + st.mapped_resident_bytes + st.location_bytes + st.kernel_bytes
}

#[test]
fn the_bound_holds_under_a_working_set_larger_than_it_at_the_price_of_reparses() {
    let mut s = Symbolizer::new();
    let pid = std::process::id();
    let (own, libc) = (own_code(), own_libc().start + 0x100);
    symbolize_one(&mut s, pid, &[own, libc], &[]);
    let full = s.stats();
    // Measured, not file sizes: heap kept by parsing, pages mapped, locations. The pages
    // read in place are given back after the call.
    assert!(full.parsed_heap_bytes > 0, "{full:?}");
    assert!(full.mapped_peak_bytes > 0, "{full:?}");
    assert_eq!(full.mapped_resident_bytes, 0, "{full:?}");
    assert!(full.location_bytes > 0, "{full:?}");
    assert_eq!(full.cache_bytes, parts(&full), "{full:?}");
    assert_eq!((full.files_parsed, full.reparses), (2, 0), "{full:?}");

    // Half of what the two files take: both cannot stay parsed.
    let bound = full.cache_bytes / 2;
    s.set_cache_bytes(bound);
    for round in 1..=6u64 {
        // New addresses in both files: each needs its file parsed.
        let stack = symbolize_one(&mut s, pid, &[own + round, libc + round * 16], &[]);
        assert!(
            stack[0].frames[0].function.contains("symbolize"),
            "round {round}: {:?}",
            stack[0]
        );
        let st = s.stats();
        assert!(
            st.cache_bytes <= bound,
            "round {round}: {} bytes held over a bound of {bound}: {st:?}",
            st.cache_bytes
        );
        assert_eq!(st.cache_bytes, parts(&st));
    }
    let st = s.stats();
    // The first round finds both parsed; from then on the bigger one is parsed each round.
    assert!(st.reparses >= 5, "each round parses again: {st:?}");
    assert!(st.parsed_released >= 6, "{st:?}");
    assert!(st.parse_ns > 0, "{st:?}");
    // Addresses resolved before are answered from their locations: no parse.
    let parsed = st.files_parsed;
    symbolize_one(&mut s, pid, &[own + 1, libc + 16], &[]);
    assert_eq!(s.stats().files_parsed, parsed, "{:?}", s.stats());
}

#[test]
fn letting_parsed_state_go_frees_what_was_counted() {
    let mut s = Symbolizer::new();
    let pid = std::process::id();
    symbolize_one(&mut s, pid, &[own_code()], &[]);
    let held = s.stats();
    let freed = HeapDelta::start();
    s.set_cache_bytes(1);
    s.symbolize(&[]);
    let after = s.stats();
    assert_eq!(
        (
            after.parsed_heap_bytes,
            after.mapped_resident_bytes,
            after.location_bytes
        ),
        (0, 0, 0),
        "{after:?}"
    );
    // The heap the counts named is the heap that went (within a little for the call).
    let counted = (held.parsed_heap_bytes + held.location_bytes) as i64;
    let went = -freed.kept();
    assert!(
        went >= counted * 9 / 10 && went <= counted + (64 << 10),
        "counted {counted} bytes, {went} freed"
    );
}

#[test]
fn exited_processes_are_forgotten_and_the_file_limit_resets_everything() {
    let mut s = Symbolizer::new();
    let pid = std::process::id();
    let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
    symbolize_one(&mut s, pid, &[addr, own_libc().start + 0x100], &[]);
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
