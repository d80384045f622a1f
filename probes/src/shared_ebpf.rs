//! A loaded object whose programs belong to more than one loader (the CPU sampler and the
//! off-CPU profiler share `stacks.bpf.c`): each holds it to load, attach and detach its own.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use aya::Ebpf;

/// One loaded object, shared.
#[derive(Clone)]
pub(crate) struct SharedEbpf(Arc<Mutex<Ebpf>>);

impl SharedEbpf {
    pub(crate) fn new(ebpf: Ebpf) -> Self {
        SharedEbpf(Arc::new(Mutex::new(ebpf)))
    }

    /// The object. A holder that panicked leaves nothing half-done that matters here:
    /// each call on it is one syscall on a program or map.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Ebpf> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
