//! Syscall names by number, for the target architecture (from the kernel UAPI headers at
//! build time).

include!(concat!(env!("OUT_DIR"), "/syscall_names.rs"));

/// The syscall's name, e.g. `nanosleep` for 35 on x86_64; `None` if unknown.
pub fn name(nr: u32) -> Option<&'static str> {
    SYSCALL_NAMES
        .binary_search_by_key(&nr, |(n, _)| *n)
        .ok()
        .map(|i| SYSCALL_NAMES[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn knows_the_common_x86_64_syscalls() {
        assert_eq!(name(0), Some("read"));
        assert_eq!(name(1), Some("write"));
        assert_eq!(name(35), Some("nanosleep"));
        assert_eq!(name(230), Some("clock_nanosleep"));
        assert_eq!(name(100_000), None);
    }
}
