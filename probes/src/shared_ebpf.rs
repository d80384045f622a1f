//! The loaded object, whose programs belong to more than one loader (the CPU sampler, the
//! off-CPU profiler and the latency histograms share `emberprof.bpf.c`, and the last two
//! share its sched_switch program): each holds it to attach and detach its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf};

use crate::error::ProbeError;

/// One loaded object, shared.
#[derive(Clone)]
pub(crate) struct SharedEbpf(Arc<Mutex<Object>>);

/// The object and how many holders use each attached tracepoint program.
pub(crate) struct Object {
    ebpf: Ebpf,
    users: HashMap<&'static str, usize>,
}

impl std::ops::Deref for Object {
    type Target = Ebpf;
    fn deref(&self) -> &Ebpf {
        &self.ebpf
    }
}

impl std::ops::DerefMut for Object {
    fn deref_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

impl SharedEbpf {
    pub(crate) fn new(ebpf: Ebpf) -> Self {
        SharedEbpf(Arc::new(Mutex::new(Object {
            ebpf,
            users: HashMap::new(),
        })))
    }

    /// The object. A holder that panicked leaves nothing half-done that matters here:
    /// each call on it is one syscall on a program or map.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Object> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads and attaches BTF tracepoint program `name`, unless another holder did: a
    /// program attached twice would run twice per event.
    pub(crate) fn attach_tracepoint(
        &self,
        name: &'static str,
        tracepoint: &str,
        btf: &Btf,
    ) -> Result<(), ProbeError> {
        let mut object = self.lock();
        if let Some(n) = object.users.get_mut(name) {
            *n += 1;
            return Ok(());
        }
        let program_err = |source| ProbeError::Program { name, source };
        let program: &mut BtfTracePoint = object
            .ebpf
            .program_mut(name)
            .ok_or(ProbeError::MissingMap(name))?
            .try_into()
            .map_err(program_err)?;
        program.load(tracepoint, btf).map_err(program_err)?;
        if let Err(e) = program.attach() {
            // Loaded and not attached: unloaded again, so that a retry starts clean.
            let _ = program.unload();
            return Err(program_err(e));
        }
        object.users.insert(name, 1);
        Ok(())
    }

    /// Undoes one `attach_tracepoint`: the last holder detaches and unloads the program.
    pub(crate) fn detach_tracepoint(&self, name: &'static str) -> Result<(), ProbeError> {
        let mut object = self.lock();
        match object.users.get_mut(name) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return Ok(());
            }
            Some(_) => {
                object.users.remove(name);
            }
            None => return Ok(()),
        }
        if let Some(program) = object.ebpf.program_mut(name) {
            let program_err = |source| ProbeError::Program { name, source };
            let program: &mut BtfTracePoint = program.try_into().map_err(program_err)?;
            program.unload().map_err(program_err)?;
        }
        Ok(())
    }
}

/// The sched_switch program of the off-CPU profiler and the scheduler histograms.
pub(crate) const SCHED_SWITCH: &str = "ep_sched_switch";

/// Its parts running now (`ep_switch_on[0]`, bits `abi::SWITCH_*`).
const SWITCH_ON: &str = "ep_switch_on";

/// How long a program run that began before a change of `ep_switch_on` may still write:
/// BPF programs run for microseconds without sleeping; this is generous.
const SWITCH_GRACE: std::time::Duration = std::time::Duration::from_millis(2);

fn switch_err(source: aya::maps::MapError) -> ProbeError {
    ProbeError::Map {
        name: SWITCH_ON,
        source,
    }
}

impl SharedEbpf {
    /// Changes which parts of the sched_switch program run: `update` gets the bits now
    /// and returns the new ones.
    fn update_switch_parts(&self, update: impl FnOnce(u32) -> u32) -> Result<(), ProbeError> {
        let mut object = self.lock();
        let map = object
            .ebpf
            .map_mut(SWITCH_ON)
            .ok_or(ProbeError::MissingMap(SWITCH_ON))?;
        let mut on: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(map).map_err(switch_err)?;
        let bits = on.get(&0, 0).map_err(switch_err)?;
        on.set(0, update(bits), 0).map_err(switch_err)
    }

    /// Sets which parts of the sched_switch program run (at load: the parts loaded).
    pub(crate) fn set_switch_parts(&self, bits: u32) -> Result<(), ProbeError> {
        self.update_switch_parts(|_| bits)
    }

    /// Stops one part of the sched_switch program, which may stay attached for the other,
    /// and waits until no run that began before can still write: its user's last drain
    /// then reads buffers nothing writes to.
    pub(crate) fn stop_switch_part(&self, bit: u32) -> Result<(), ProbeError> {
        self.update_switch_parts(|bits| bits & !bit)?;
        std::thread::sleep(SWITCH_GRACE);
        Ok(())
    }
}
