//! What one row of x86-64 CFI becomes: a rule the kernel's walker can follow in a few
//! instructions, or a marker saying why it cannot (so that a stack ends visibly there).

use gimli::{CfaRule, Reader, RegisterRule, UnwindSection, UnwindTableRow, X86_64};

/// How to find the caller's frame at an address (x86-64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// CFA = `cfa` + `cfa_offset`; the return address is at CFA − 8; RBP per `rbp`.
    Frame {
        cfa: CfaBase,
        cfa_offset: i32,
        rbp: RbpRule,
    },
    /// A PLT entry: CFA = RSP + 8, plus 8 from byte 11 of each 16-byte entry on (after its
    /// `push`). GNU ld describes `.plt` with one DWARF expression that says exactly this.
    Plt,
    /// The signal return trampoline (`__restore_rt`): the interrupted registers are in the
    /// `ucontext` on the stack, and the PC found there is not a return address.
    Signal,
    /// The outermost frame (`_start`, the thread's entry): its return address is undefined.
    Stop,
    /// Nothing here can be followed; the stack ends with a frame naming why.
    Invalid(Unsupported),
}

/// The register the CFA is computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CfaBase {
    Rsp,
    Rbp,
}

/// Where the caller's RBP is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RbpRule {
    /// Unchanged by this frame.
    Same,
    /// Saved at CFA + offset.
    AtCfa(i32),
}

/// Why an address has no rule the walker can follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unsupported {
    /// No CFI covers it (a gap between functions, or code without CFI).
    NoInfo,
    /// The CFA is computed from a register other than RSP or RBP (hand-written crypto
    /// assembly, stack realignment prologues).
    CfaRegister,
    /// The CFA is a DWARF expression other than the PLT's.
    CfaExpression,
    /// The CFA offset does not fit 32 bits.
    CfaOffset,
    /// RBP is restored by an expression or from another register.
    RbpRule,
    /// The return address is not at CFA − 8 (`__vfork`, `longjmp`, `setcontext`).
    ReturnAddress,
}

/// GNU ld's expression for `.plt`: `DW_OP_breg7 (rsp) +8; DW_OP_breg16 (rip) +0; lit15;
/// and; lit11; ge; lit3; shl; plus`.
const PLT_EXPRESSION: [u8; 11] = [
    0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
];

/// The rule of one CFI row. `section` is the `.eh_frame` (or `.debug_frame`) the row's
/// expressions point into.
pub(crate) fn rule_of<R, S>(row: &UnwindTableRow<R::Offset>, section: &S) -> Rule
where
    R: Reader,
    S: UnwindSection<R>,
{
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => return Rule::Stop,
        Some(RegisterRule::Offset(-8)) => {}
        _ => return Rule::Invalid(Unsupported::ReturnAddress),
    }
    let (cfa, cfa_offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let base = match *register {
                X86_64::RSP => CfaBase::Rsp,
                X86_64::RBP => CfaBase::Rbp,
                _ => return Rule::Invalid(Unsupported::CfaRegister),
            };
            match i32::try_from(*offset) {
                Ok(o) => (base, o),
                Err(_) => return Rule::Invalid(Unsupported::CfaOffset),
            }
        }
        CfaRule::Expression(e) => {
            let is_plt = e
                .get(section)
                .ok()
                .and_then(|e| e.0.to_slice().ok().map(|b| *b == PLT_EXPRESSION))
                .unwrap_or(false);
            return if is_plt {
                Rule::Plt
            } else {
                Rule::Invalid(Unsupported::CfaExpression)
            };
        }
    };
    let rbp = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) => RbpRule::Same,
        Some(RegisterRule::Offset(o)) => match i32::try_from(o) {
            Ok(o) => RbpRule::AtCfa(o),
            Err(_) => return Rule::Invalid(Unsupported::RbpRule),
        },
        Some(_) => return Rule::Invalid(Unsupported::RbpRule),
    };
    Rule::Frame {
        cfa,
        cfa_offset,
        rbp,
    }
}
