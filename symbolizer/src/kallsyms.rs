//! Kernel symbols from /proc/kallsyms, kernel modules and JIT-compiled BPF programs (`[bpf]`)
//! included. kallsyms gives no sizes, so an address is only given the name of the symbol
//! below it when both are in the same text region: the core kernel's text, or the same
//! module within a bounded distance. Anything else is reported as unknown, never as the
//! nearest wrong name.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest a module symbol is taken to reach when no later symbol of that module ends
/// it (BPF programs and module functions are far smaller).
const MODULE_SYMBOL_REACH: u64 = 64 * 1024;

/// Re-reading kallsyms for an unknown module address happens at most this often.
const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// A kernel symbol an address resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KernelSymbol<'a> {
    pub(crate) name: &'a str,
    /// `None` for the core kernel, else the module (`bpf` for BPF programs).
    pub(crate) module: Option<&'a Arc<str>>,
}

#[derive(Default)]
pub(crate) struct Kallsyms {
    /// Text symbols sorted by address.
    addrs: Vec<u64>,
    name_starts: Vec<u32>,
    names: String,
    /// Index into `modules`, or `u16::MAX` for the core kernel.
    module_of: Vec<u16>,
    modules: Vec<Arc<str>>,
    /// Core kernel text ranges (`_stext.._etext`, `_sinittext.._einittext`).
    core: Vec<(u64, u64)>,
    loaded_at: Option<Instant>,
    /// Addresses were all zero: kallsyms is hidden from us (kptr_restrict, no privilege).
    hidden: bool,
}

const CORE: u16 = u16::MAX;

impl Kallsyms {
    /// Reads /proc/kallsyms now (and again later when module addresses are not found).
    pub(crate) fn load(&mut self) {
        match std::fs::read_to_string("/proc/kallsyms") {
            Ok(text) => *self = Self::parse(&text),
            Err(e) => tracing::warn!(error = %e, "cannot read /proc/kallsyms"),
        }
        self.loaded_at = Some(Instant::now());
    }

    pub(crate) fn parse(text: &str) -> Kallsyms {
        let mut rows: Vec<(u64, &str, u16)> = Vec::new();
        let mut modules: Vec<Arc<str>> = Vec::new();
        let mut marks = std::collections::HashMap::new();
        let mut any_nonzero = false;
        for line in text.lines() {
            let mut f = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            any_nonzero |= addr != 0;
            if matches!(name, "_stext" | "_etext" | "_sinittext" | "_einittext") {
                marks.insert(name, addr);
            }
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let module = match f.next() {
                Some(m) => {
                    let m = m.trim_start_matches('[').trim_end_matches(']');
                    match modules.iter().position(|x| &**x == m) {
                        Some(i) => i as u16,
                        None if modules.len() < usize::from(CORE) => {
                            modules.push(Arc::from(m));
                            (modules.len() - 1) as u16
                        }
                        None => continue,
                    }
                }
                None => CORE,
            };
            rows.push((addr, name, module));
        }
        rows.sort_by_key(|r| r.0);
        // Sized exactly: grown by doubling, the table would hold up to twice its ~5 MiB.
        let mut k = Kallsyms {
            modules,
            hidden: !any_nonzero,
            addrs: Vec::with_capacity(rows.len()),
            name_starts: Vec::with_capacity(rows.len()),
            names: String::with_capacity(rows.iter().map(|r| r.1.len()).sum()),
            module_of: Vec::with_capacity(rows.len()),
            ..Kallsyms::default()
        };
        for (start, end) in [("_stext", "_etext"), ("_sinittext", "_einittext")] {
            if let (Some(&s), Some(&e)) = (marks.get(start), marks.get(end)) {
                k.core.push((s, e));
            }
        }
        for (addr, name, module) in rows {
            let Ok(start) = u32::try_from(k.names.len()) else {
                break;
            };
            k.addrs.push(addr);
            k.name_starts.push(start);
            k.names.push_str(name);
            k.module_of.push(module);
        }
        k
    }

    /// Whether the table is usable (read, and addresses not hidden).
    pub(crate) fn usable(&self) -> bool {
        !self.hidden && !self.addrs.is_empty()
    }

    /// Reads kallsyms again if `addr` is outside the core kernel (a module or a BPF program
    /// loaded since) and the last read is old enough.
    pub(crate) fn refresh_for(&mut self, addr: u64) -> bool {
        let stale = self
            .loaded_at
            .is_none_or(|t| t.elapsed() >= RELOAD_INTERVAL);
        if stale && !self.in_core(addr) && self.lookup(addr).is_none() {
            self.load();
            return true;
        }
        false
    }

    fn in_core(&self, addr: u64) -> bool {
        self.core.iter().any(|&(s, e)| addr >= s && addr < e)
    }

    /// The symbol covering `addr`, if any does.
    pub(crate) fn lookup(&self, addr: u64) -> Option<KernelSymbol<'_>> {
        if self.hidden {
            return None;
        }
        let i = self.addrs.partition_point(|&a| a <= addr).checked_sub(1)?;
        let module = self.module_of[i];
        let end = if module == CORE {
            let &(_, region_end) = self
                .core
                .iter()
                .find(|&&(s, e)| self.addrs[i] >= s && self.addrs[i] < e)?;
            let next = self.addrs.get(i + 1).copied().unwrap_or(u64::MAX);
            next.min(region_end)
        } else {
            let next_same = self
                .addrs
                .get(i + 1)
                .filter(|_| self.module_of.get(i + 1) == Some(&module))
                .copied()
                .unwrap_or(u64::MAX);
            next_same.min(self.addrs[i].saturating_add(MODULE_SYMBOL_REACH))
        };
        if addr >= end {
            return None;
        }
        let from = self.name_starts[i] as usize;
        let to = self
            .name_starts
            .get(i + 1)
            .map_or(self.names.len(), |&n| n as usize);
        Some(KernelSymbol {
            name: &self.names[from..to],
            module: (module != CORE).then(|| &self.modules[usize::from(module)]),
        })
    }

    /// Bytes held, for the memory accounting.
    pub(crate) fn bytes(&self) -> u64 {
        (self.addrs.capacity() * 8
            + self.name_starts.capacity() * 4
            + self.module_of.capacity() * 2
            + self.names.capacity()) as u64
    }
}

/// `CAP_SYSLOG`'s bit in the effective capability set.
const CAP_SYSLOG: u32 = 34;

/// Why /proc/kallsyms shows us zero addresses, and the fix, read from the sysctls and our
/// capabilities (for the warning that kernel frames stay unnamed).
pub(crate) fn hidden_cause() -> String {
    let sysctl = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    let syslog = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| emberprof_model::effective_capabilities(&status))
        .map(|eff| eff & (1 << CAP_SYSLOG) != 0);
    explain_hidden(
        sysctl("kptr_restrict"),
        sysctl("perf_event_paranoid"),
        syslog,
    )
}

/// The kernel's rule (kallsyms_show_value): with kptr_restrict 0, addresses are shown when
/// perf_event_paranoid is at most 1 or the reader has CAP_SYSLOG; with 1, only with
/// CAP_SYSLOG (in the host's user namespace); with 2, never.
fn explain_hidden(
    kptr_restrict: Option<i64>,
    paranoid: Option<i64>,
    syslog: Option<bool>,
) -> String {
    const GRANT: &str = "grant emberprof CAP_SYSLOG";
    match (kptr_restrict, paranoid, syslog) {
        (Some(k), _, _) if k >= 2 => format!(
            "kernel.kptr_restrict is {k}, which hides kernel addresses from everyone \
             (set it to 1 and {GRANT}, or to 0)"
        ),
        (Some(1), _, Some(true)) => "kernel.kptr_restrict is 1 and CAP_SYSLOG is not held in \
             the host's user namespace (run emberprof in the host's user namespace)"
            .to_string(),
        (Some(1), _, _) => {
            format!("kernel.kptr_restrict is 1 and emberprof lacks CAP_SYSLOG ({GRANT})")
        }
        (Some(0), Some(p), Some(false) | None) if p > 1 => format!(
            "kernel.perf_event_paranoid is {p} and emberprof lacks CAP_SYSLOG \
             ({GRANT}, or set kernel.perf_event_paranoid to 1 or less)"
        ),
        (k, p, _) => {
            let shown = |v: Option<i64>| v.map_or("unreadable".to_string(), |v| v.to_string());
            format!(
                "kernel.kptr_restrict is {}, kernel.perf_event_paranoid is {} ({GRANT}, \
                 in the host's user namespace)",
                shown(k),
                shown(p)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81000100 t helper
ffffffff81002000 D some_data
ffffffff81003000 T _etext
ffffffff82000000 T _sinittext
ffffffff82000010 t init_fn
ffffffff82000100 T _einittext
ffffffffc0001000 t bpf_prog_3bfa159a1ef3121a_ep_cpu_sample\t[bpf]
ffffffffc0100000 t nft_do_chain\t[nf_tables]
ffffffffc0100400 t nft_other\t[nf_tables]
";

    #[test]
    fn names_only_inside_the_symbol_region() {
        let k = Kallsyms::parse(TEXT);
        assert!(k.usable());
        let name = |a| k.lookup(a).map(|s| s.name.to_string());
        assert_eq!(name(0xffffffff81000010).as_deref(), Some("startup_64"));
        // A data symbol does not end a text symbol; _etext does.
        assert_eq!(name(0xffffffff81002f00).as_deref(), Some("helper"));
        assert_eq!(name(0xffffffff81003010), None, "past _etext");
        assert_eq!(name(0xffffffff82000020).as_deref(), Some("init_fn"));
        assert_eq!(name(0xffffffff80000000), None, "below every symbol");
        let bpf = k.lookup(0xffffffffc0001040).unwrap();
        assert_eq!(bpf.name, "bpf_prog_3bfa159a1ef3121a_ep_cpu_sample");
        assert_eq!(bpf.module.map(|m| &**m), Some("bpf"));
        // The BPF program is followed by another module's symbol far away: bounded reach.
        assert_eq!(name(0xffffffffc0001000 + 0x10000), None);
        assert_eq!(name(0xffffffffc0100010).as_deref(), Some("nft_do_chain"));
        assert_eq!(name(0xffffffffc0100410).as_deref(), Some("nft_other"));
        assert_eq!(
            name(0xffffffffc0100400 + 0x20000),
            None,
            "last of its module"
        );
    }

    #[test]
    fn the_warning_names_the_real_cause_of_hidden_addresses() {
        // kptr_restrict 0: shown to all while perf_event_paranoid <= 1, so a higher
        // paranoia without CAP_SYSLOG is the cause, not kptr_restrict.
        let e = explain_hidden(Some(0), Some(2), Some(false));
        assert!(e.contains("kernel.perf_event_paranoid is 2"), "{e}");
        assert!(e.contains("lacks CAP_SYSLOG"), "{e}");
        assert!(!e.contains("kptr_restrict"), "{e}");
        let e = explain_hidden(Some(1), Some(2), Some(false));
        assert!(
            e.contains("kernel.kptr_restrict is 1 and emberprof lacks CAP_SYSLOG"),
            "{e}"
        );
        let e = explain_hidden(Some(1), Some(-1), Some(true));
        assert!(e.contains("user namespace"), "{e}");
        let e = explain_hidden(Some(2), Some(1), Some(true));
        assert!(
            e.contains("kernel.kptr_restrict is 2") && e.contains("from everyone"),
            "{e}"
        );
        let e = explain_hidden(None, None, None);
        assert!(e.contains("unreadable") && e.contains("CAP_SYSLOG"), "{e}");
    }

    #[test]
    fn hidden_addresses_resolve_nothing() {
        let k = Kallsyms::parse("0000000000000000 T _stext\n0000000000000000 T vfs_write\n");
        assert!(!k.usable());
        assert_eq!(k.lookup(0), None);
    }
}
