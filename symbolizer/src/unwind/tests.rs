//! The CFI compiler on real files of this machine: libc and the loader (GNU ld, with a PLT
//! expression and a signal trampoline), and this test binary (a Rust build by LLD), checked
//! row by row against gimli's own evaluation.

use std::path::{Path, PathBuf};

use gimli::{BaseAddresses, EhFrame, NativeEndian, UnwindContext, UnwindSection};
use object::{Object, ObjectSection, ObjectSymbol};

use super::compile::AT_ENTRY;
use super::rule::rule_of;
use super::*;

/// A file this process maps whose path contains `part`.
fn mapped(part: &str) -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    crate::parse_maps(&maps)
        .into_iter()
        .find(|m| m.executable && m.path.contains(part))
        .map(|m| PathBuf::from(m.path))
        .unwrap_or_else(|| panic!("this test binary maps no {part}"))
}

fn libc() -> PathBuf {
    mapped("libc.so")
}

fn loader() -> PathBuf {
    mapped("ld-linux-x86-64.so")
}

/// Every address where a CFI row starts or ends, and one inside, with the rule gimli itself
/// gives there (through the same classification): what the table must answer.
fn expected_rules(path: &Path) -> Vec<(u64, Rule)> {
    let data = std::fs::read(path).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let section = obj.section_by_name(".eh_frame").unwrap();
    let eh_data = section.uncompressed_data().unwrap();
    let eh = EhFrame::new(&eh_data, NativeEndian);
    let bases = BaseAddresses::default()
        .set_eh_frame(section.address())
        .set_eh_frame_hdr(
            obj.section_by_name(".eh_frame_hdr")
                .map_or(0, |s| s.address()),
        )
        .set_text(obj.section_by_name(".text").map_or(0, |s| s.address()));
    let mut ctx = UnwindContext::new();
    let mut out = Vec::new();
    let mut entries = eh.entries(&bases);
    while let Ok(Some(entry)) = entries.next() {
        let gimli::CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
            continue;
        };
        if fde.len() == 0 {
            continue;
        }
        if fde.is_signal_trampoline() {
            out.push((fde.initial_address(), Rule::Signal));
            continue;
        }
        let Ok(mut rows) = fde.rows(&eh, &bases, &mut ctx) else {
            continue;
        };
        while let Ok(Some(row)) = rows.next_row() {
            let rule = rule_of(row, &eh);
            for a in [
                row.start_address(),
                (row.start_address() + row.end_address()) / 2,
            ] {
                out.push((a, rule));
            }
            out.push((row.end_address() - 1, rule));
        }
    }
    out
}

fn agrees_with_gimli_everywhere(path: &Path) -> UnwindTable {
    let table = compile_file(path).unwrap();
    let expected = expected_rules(path);
    assert!(
        expected.len() > 1000,
        "{}: {} rows",
        path.display(),
        expected.len()
    );
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(a, rule)| table.lookup(*a) != Some(*rule))
        .take(5)
        .map(|(a, rule)| format!("{a:#x}: {rule:?} but the table says {:?}", table.lookup(*a)))
        .collect();
    assert!(wrong.is_empty(), "{}: {wrong:#?}", path.display());
    table
}

#[test]
fn libc_compiles_to_the_rules_gimli_evaluates_and_is_mostly_frames() {
    let table = agrees_with_gimli_everywhere(&libc());
    let st = table.stats();
    assert_eq!(st.fde_errors, 0, "{st:?}");
    assert!(st.fdes > 1000 && st.rows > 10_000, "{st:?}");
    // Merging keeps fewer entries than rows, and a few hundred distinct rules.
    assert!(
        (table.len() as u64) < st.rows,
        "{} entries, {st:?}",
        table.len()
    );
    assert!(table.distinct_rules() < 1000, "{}", table.distinct_rules());
    let counts = table.rule_counts();
    let frames = counts["frame"] as f64 / table.len() as f64;
    assert!(frames > 0.95, "{counts:?}");
    // About 8 bytes per entry in the kernel: under 20% of .text (FACTS: 187 KB for 1.4 MB).
    assert!(
        table.kernel_bytes() * 5 < st.text_bytes,
        "{} bytes for {} of text",
        table.kernel_bytes(),
        st.text_bytes
    );
}

#[test]
fn this_rust_binary_built_by_lld_compiles_and_agrees_with_gimli() {
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let table = agrees_with_gimli_everywhere(&exe);
    assert_eq!(table.stats().fde_errors, 0);
}

/// GNU ld's `.plt` is one FDE whose CFA is the PLT expression.
#[test]
fn the_plt_of_libc_and_the_loader_is_the_plt_rule() {
    for path in [libc(), loader()] {
        let data = std::fs::read(&path).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let Some(plt) = obj.section_by_name(".plt").filter(|s| s.size() > 16) else {
            continue;
        };
        let table = compile_file(&path).unwrap();
        // The first entry after PLT0, at its `jmp *GOT` and after its `push`.
        for offset in [16, 16 + 11] {
            assert_eq!(
                table.lookup(plt.address() + offset),
                Some(Rule::Plt),
                "{} .plt+{offset}",
                path.display()
            );
        }
    }
}

/// libc's `__restore_rt` (`mov $15, %rax; syscall`) is the signal trampoline; its FDE
/// starts one byte early so that a return address into it, looked up at −1, finds it.
#[test]
fn the_signal_trampoline_of_libc_is_the_signal_rule() {
    let path = libc();
    let data = std::fs::read(&path).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let table = compile_file(&path).unwrap();
    let signal: Vec<u64> = table
        .entries()
        .filter(|(_, r)| *r == Rule::Signal)
        .map(|(a, _)| a)
        .collect();
    assert_eq!(signal.len(), 1, "one signal trampoline in libc: {signal:?}");
    let text = obj.section_by_name(".text").unwrap();
    let code = text.data().unwrap();
    let at = (signal[0] + 1 - text.address()) as usize;
    assert_eq!(
        &code[at..at + 9],
        &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05],
        "mov $15, %rax; syscall (rt_sigreturn)"
    );
    assert_eq!(table.lookup(signal[0] + 1), Some(Rule::Signal));
}

/// `_start` has an undefined return address: the walk ends there, by design.
#[test]
fn the_entry_point_is_the_end_of_the_stack() {
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let data = std::fs::read(&exe).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let start = obj
        .symbols()
        .find(|s| s.name() == Ok("_start"))
        .expect("the test binary has _start")
        .address();
    let table = compile_file(&exe).unwrap();
    // Its first instruction (`endbr64` or `xor %ebp,%ebp`) is already inside the FDE.
    assert_eq!(
        table.lookup(start + 4),
        Some(Rule::Stop),
        "_start at {start:#x}"
    );
}

/// A function at its first instruction has pushed nothing: CFA = RSP + 8.
#[test]
fn a_function_entry_is_rsp_plus_8() {
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let table = compile_file(&exe).unwrap();
    let f = crate::test_support::marker_function_for_symbolizer_test as *const () as usize as u64;
    // This process is PIE: the link-time address is the runtime one less the load bias.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let text = crate::parse_maps(&maps)
        .into_iter()
        .find(|m| m.executable && Path::new(&m.path) == exe)
        .unwrap();
    let data = std::fs::read(&exe).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    // Runtime address → file offset → link-time address through the segment holding it.
    let file_offset = f - text.start + text.offset;
    let link_time = obj
        .segments()
        .find_map(|s| {
            use object::ObjectSegment;
            let (off, size) = s.file_range();
            (off <= file_offset && file_offset < off + size)
                .then(|| file_offset - off + s.address())
        })
        .expect("a segment holds the function");
    assert_eq!(table.lookup(link_time), Some(AT_ENTRY));
}

/// The bias listed for this process's own code takes a runtime address to its table
/// address. LLD starts the code segment inside the page that ends the read-only one, so the
/// code mapping's file offset also lies in that segment: placed by it, every lookup was a
/// page off.
#[test]
fn the_code_mapping_of_an_lld_build_is_placed_by_its_own_segment() {
    let pid = std::process::id();
    let f = crate::test_support::marker_function_for_symbolizer_test as *const () as usize as u64;
    let mut s = crate::Symbolizer::new();
    crate::test_support::symbolize_one(&mut s, pid, &[f], &[]);
    let m = s
        .unwind_mappings(pid)
        .into_iter()
        .find(|m| m.start <= f && f < m.end)
        .expect("a mapping holds our own function");
    let table = s.compile_unwind_table(m.source).expect("our own table");
    assert_eq!(table.lookup(f.wrapping_sub(m.bias)), Some(AT_ENTRY));
}

#[test]
fn gaps_between_functions_have_no_rule_and_lookups_outside_have_none() {
    let table = compile_file(&libc()).unwrap();
    assert_eq!(table.lookup(0), None);
    assert_eq!(table.lookup(u64::MAX), None);
    let gaps = table.rule_counts().get("no_info").copied().unwrap_or(0);
    assert!(gaps >= 1, "at least the end of the last FDE");
}

#[test]
fn a_file_without_cfi_or_not_elf_is_a_clear_error() {
    assert!(matches!(
        compile_bytes(b"not an ELF file"),
        Err(UnwindError::NotElf(_))
    ));
    assert!(matches!(
        compile_file(Path::new("/nonexistent/emberprof-test")),
        Err(UnwindError::Read(_))
    ));
}
