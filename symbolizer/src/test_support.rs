//! What the symbolizer's unit tests share: a function of ours to name, and one-sample calls.

use crate::Symbolizer;
use emberprof_model::{KernelSample, Stack};

/// A function of the test binary, with a name, a file and a line.
#[inline(never)]
pub(crate) fn marker_function_for_symbolizer_test() -> u64 {
    std::hint::black_box(42)
}

/// The stack of one sample of `pid`.
pub(crate) fn symbolize_one(s: &mut Symbolizer, pid: u32, user: &[u64], kernel: &[u64]) -> Stack {
    s.symbolize(&[KernelSample::of(pid, user, kernel)])
        .remove(0)
}
