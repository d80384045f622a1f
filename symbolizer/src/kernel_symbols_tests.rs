//! Naming kernel functions from kallsyms.

use crate::test_support::symbolize_one;
use crate::Symbolizer;
use emberprof_model::FrameKind;

#[test]
fn names_kernel_functions_from_kallsyms() {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
    let address_of = |symbol: &str| {
        kallsyms
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                let (addr, _, name) = (f.next()?, f.next()?, f.next()?);
                (name == symbol).then(|| u64::from_str_radix(addr, 16).ok())?
            })
            .unwrap()
    };
    let addr = address_of("vfs_write");
    if addr == 0 {
        // kallsyms hides addresses from unprivileged readers.
        assert!(
            std::env::var_os("CI").is_none(),
            "kernel symbolization test needs root in CI"
        );
        return;
    }
    let mut s = Symbolizer::new();
    let stack = symbolize_one(&mut s, std::process::id(), &[], &[addr + 4, addr + 8]);
    assert_eq!(stack.len(), 2);
    for loc in stack.iter() {
        assert_eq!(loc.kind, FrameKind::Kernel);
        assert_eq!(&*loc.frames[0].function, "vfs_write");
        assert_eq!(&*loc.module.as_ref().unwrap().path, "[kernel.kallsyms]");
    }
    // Past the end of kernel text there is no symbol: unknown, not the last name.
    let etext = address_of("_etext");
    let stack = symbolize_one(&mut s, std::process::id(), &[], &[etext + 64]);
    assert!(stack[0].is_unknown(), "{:?}", stack[0]);
    assert_eq!(
        stack[0].to_string(),
        format!("[kernel.kallsyms]+{:#x}", etext + 64)
    );
}
