//! Unwind tables for stacks without frame pointers: a file's `.eh_frame` (or
//! `.debug_frame`) compiled into sorted address ranges, each with a rule the kernel's walker
//! can follow (CFA from RSP or RBP plus an offset, RBP saved at the CFA or unchanged), or a
//! marker for what real code also has: the PLT, the signal trampoline, the outermost frame,
//! and what cannot be followed, with why. x86-64 only.

mod compile;
mod rule;
mod table;
#[cfg(test)]
mod tests;

pub use compile::{compile_bytes, compile_file};
pub use rule::{CfaBase, RbpRule, Rule, Unsupported};
pub use table::{rule_kind, CompileStats, UnwindTable, ENTRY_BYTES};

/// Why a file has no unwind table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnwindError {
    #[error("cannot read the file: {0}")]
    Read(String),
    #[error("not an ELF file: {0}")]
    NotElf(String),
    #[error("unwind tables are built for x86-64 only, not {0}")]
    Architecture(String),
    #[error("no .eh_frame or .debug_frame")]
    NoCfi,
}
