//! Naming kernel addresses (modules and BPF programs included) from kallsyms (read by
//! kallsyms.rs), in a cache of its own emptied when it grows too big or kallsyms changes.

use std::collections::HashSet;
use std::sync::Arc;

use crate::symbolizer::Symbolizer;
use emberprof_model::{Frame, FrameKind, Location, Module};

/// Kernel addresses kept resolved before that cache is emptied.
const KERNEL_CACHE_ENTRIES: usize = 200_000;

impl Symbolizer {
    /// Names kernel addresses not yet cached.
    pub(crate) fn fill_kernel(&mut self, kernel: HashSet<u64>) {
        if self.kernel_cache.len() > KERNEL_CACHE_ENTRIES {
            self.kernel_cache.clear();
            self.stats.cache_resets += 1;
        }
        if self.kallsyms.bytes() == 0 {
            self.kallsyms.load();
            if !self.kallsyms.usable() {
                tracing::warn!(
                    "kernel symbols are hidden: {}; kernel frames stay unnamed",
                    crate::kallsyms::hidden_cause()
                );
            }
        }
        let addrs: Vec<u64> = kernel.into_iter().collect();
        self.stats.cache_misses += addrs.len() as u64;
        // A BPF program or module loaded since the last read: read kallsyms again, and
        // forget what was resolved from the old table.
        if addrs.iter().any(|&a| self.kallsyms.refresh_for(a)) {
            self.kernel_cache.clear();
        }
        for addr in addrs {
            let location = match self.kallsyms.lookup(addr) {
                Some(sym) => Location {
                    kind: FrameKind::Kernel,
                    segment: None,
                    module: Some(match sym.module {
                        None => self.kernel_module.clone(),
                        Some(m) => Arc::new(Module {
                            path: Arc::from(format!("[{m}]")),
                            build_id: None,
                        }),
                    }),
                    address: addr,
                    frames: vec![Frame {
                        function: Arc::from(sym.name),
                        file: None,
                        line: 0,
                    }],
                },
                // Outside every symbol: say so rather than borrow a neighbour's name.
                None => Location {
                    kind: FrameKind::Kernel,
                    module: Some(self.kernel_module.clone()),
                    address: addr,
                    segment: None,
                    frames: Vec::new(),
                },
            };
            self.kernel_cache.insert(addr, Arc::new(location));
        }
    }
}
