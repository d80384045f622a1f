//! Compiling a file's CFI into an unwind table: every row of every FDE becomes a rule
//! (rule.rs), address-adjacent rows with the same rule become one entry, gaps between
//! functions become "no info" entries, and PLT sections that have no CFI get the PLT's
//! ordinary rule. Errors are per FDE: one bad FDE never drops the file.

use std::path::Path;

use gimli::{
    BaseAddresses, CieOrFde, DebugFrame, EhFrame, NativeEndian, Reader, UnwindContext,
    UnwindSection,
};
use object::read::ReadCache;
use object::{Object, ObjectSection};

use super::rule::{rule_of, CfaBase, RbpRule, Rule};
use super::table::{CompileStats, UnwindTable};
use super::UnwindError;

/// Gaps between FDEs up to this many bytes are alignment padding, never executed: the
/// rule before them covers them (the OpenTelemetry profiler's "minimum gap" is the same).
pub(crate) const PADDING: u64 = 15;

/// Compiles the unwind table of the ELF file at `path`, reading only its CFI sections.
pub fn compile_file(path: &Path) -> Result<UnwindTable, UnwindError> {
    let file = std::fs::File::open(path).map_err(|e| UnwindError::Read(e.to_string()))?;
    let cache = ReadCache::new(file);
    let obj = object::File::parse(&cache).map_err(|e| UnwindError::NotElf(e.to_string()))?;
    compile_object(&obj)
}

/// Compiles the unwind table of an ELF image held in memory (the vdso, tests).
pub fn compile_bytes(data: &[u8]) -> Result<UnwindTable, UnwindError> {
    let obj = object::File::parse(data).map_err(|e| UnwindError::NotElf(e.to_string()))?;
    compile_object(&obj)
}

fn compile_object<'d, R: object::ReadRef<'d>>(
    obj: &object::File<'d, R>,
) -> Result<UnwindTable, UnwindError> {
    if obj.architecture() != object::Architecture::X86_64 {
        return Err(UnwindError::Architecture(format!(
            "{:?}",
            obj.architecture()
        )));
    }
    let address = |name: &str| obj.section_by_name(name).map_or(0, |s| s.address());
    let bases = BaseAddresses::default()
        .set_eh_frame_hdr(address(".eh_frame_hdr"))
        .set_eh_frame(address(".eh_frame"))
        .set_text(address(".text"))
        .set_got(address(".got"));
    let text_bytes = obj.section_by_name(".text").map_or(0, |s| s.size());
    let mut rows = Vec::new();
    let mut stats = CompileStats {
        text_bytes,
        ..CompileStats::default()
    };
    let data = |name: &str| {
        obj.section_by_name(name)
            .filter(|s| s.size() > 0)
            .and_then(|s| s.uncompressed_data().ok())
    };
    if let Some(eh) = data(".eh_frame") {
        stats.cfi_bytes = eh.len() as u64;
        let section = EhFrame::new(&eh, NativeEndian);
        walk(&section, &bases, &mut rows, &mut stats);
    } else if let Some(debug) = data(".debug_frame") {
        stats.cfi_bytes = debug.len() as u64;
        let mut section = DebugFrame::new(&debug, NativeEndian);
        section.set_address_size(8);
        walk(&section, &bases, &mut rows, &mut stats);
    } else {
        return Err(UnwindError::NoCfi);
    }
    for (name, rule) in [
        (".plt", Rule::Plt),
        (".plt.sec", AT_ENTRY),
        (".plt.got", AT_ENTRY),
    ] {
        if let Some(s) = obj.section_by_name(name).filter(|s| s.size() > 0) {
            without_cfi(&mut rows, s.address(), s.address() + s.size(), rule);
        }
    }
    Ok(UnwindTable::from_rows(rows, stats))
}

/// One row of CFI, as the compiler keeps it: `[start, end)` and its rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) rule: Rule,
}

/// Every FDE's rows, in section order.
fn walk<R: Reader, S: UnwindSection<R>>(
    section: &S,
    bases: &BaseAddresses,
    rows: &mut Vec<Row>,
    stats: &mut CompileStats,
) {
    let mut ctx = UnwindContext::new();
    let mut entries = section.entries(bases);
    loop {
        let fde = match entries.next() {
            Ok(None) => break,
            Ok(Some(CieOrFde::Cie(_))) => continue,
            Ok(Some(CieOrFde::Fde(partial))) => {
                match partial.parse(|s, b, o| s.cie_from_offset(b, o)) {
                    Ok(fde) => fde,
                    Err(_) => {
                        stats.fde_errors += 1;
                        continue;
                    }
                }
            }
            // The section cannot be read past here; what was read stays.
            Err(_) => {
                stats.fde_errors += 1;
                break;
            }
        };
        stats.fdes += 1;
        if fde.len() == 0 {
            continue;
        }
        if fde.is_signal_trampoline() {
            stats.rows += 1;
            rows.push(Row {
                start: fde.initial_address(),
                end: fde.end_address(),
                rule: Rule::Signal,
            });
            continue;
        }
        let mut table = match fde.rows(section, bases, &mut ctx) {
            Ok(t) => t,
            Err(_) => {
                stats.fde_errors += 1;
                continue;
            }
        };
        let before = rows.len();
        loop {
            match table.next_row() {
                Ok(Some(row)) => {
                    stats.rows += 1;
                    rows.push(Row {
                        start: row.start_address(),
                        end: row.end_address(),
                        rule: rule_of(row, section),
                    });
                }
                Ok(None) => break,
                Err(_) => {
                    // Rows of a half-read FDE would be wrong somewhere: none of it counts.
                    rows.truncate(before);
                    stats.fde_errors += 1;
                    break;
                }
            }
        }
    }
}

/// Covers a PLT section with `rule` where no FDE does (LLD emits none for `.plt`). `.plt`
/// entries push before jumping on (the PLT rule); `.plt.sec` and `.plt.got` entries only
/// jump through the GOT, so RSP + 8 holds throughout.
fn without_cfi(rows: &mut Vec<Row>, start: u64, end: u64, rule: Rule) {
    let covered = rows.iter().any(|r| r.start < end && start < r.end);
    if !covered {
        rows.push(Row { start, end, rule });
    }
}

/// The rule at a function's first instruction: nothing pushed yet.
pub(crate) const AT_ENTRY: Rule = Rule::Frame {
    cfa: CfaBase::Rsp,
    cfa_offset: 8,
    rbp: RbpRule::Same,
};
