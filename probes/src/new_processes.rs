//! The ring buffer through which the CPU sampler announces each process at its first sample
//! (and again after an exec), so user space can capture its mappings while it still runs.

use std::os::fd::AsRawFd;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf};

use crate::abi::Announcement;
use crate::error::ProbeError;
use crate::maps;

/// Programs that keep the announcements right across exec and exit:
/// (program, BTF tracepoint).
const LIFECYCLE_PROGRAMS: [(&str, &str); 2] = [
    ("ep_process_exec", "sched_process_exec"),
    ("ep_process_exit", "sched_process_exit"),
];

/// The announcement ring of a loaded object (see bpf/announce.bpf.h).
pub(crate) fn take_ring(ebpf: &mut Ebpf) -> Result<NewProcesses, ProbeError> {
    let ring: RingBuf<MapData> = maps::take_as(ebpf, "ep_new_processes")?;
    Ok(NewProcesses::new(ring))
}

/// Attaches the exec and exit programs. Without them a process that execs after its first
/// sample is not announced again (its new mappings are found at the next drain instead),
/// nor is a new process that reuses an announced PID: not worth failing the start for.
pub(crate) fn attach_lifecycle(ebpf: &mut Ebpf) {
    let btf = match Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(error) => {
            tracing::warn!(%error, "no kernel BTF: exec and exit are not followed");
            return;
        }
    };
    for (name, tracepoint) in LIFECYCLE_PROGRAMS {
        let attached = (|| -> Result<(), String> {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .ok_or("missing program")?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| e.to_string())?;
            program.load(tracepoint, &btf).map_err(|e| e.to_string())?;
            program.attach().map_err(|e| e.to_string())?;
            Ok(())
        })();
        if let Err(error) = attached {
            tracing::warn!(%error, tracepoint, "cannot attach; processes are re-read at the next drain instead");
        }
    }
}

/// Unloads the exec and exit programs now rather than at drop: tracing programs are freed
/// after an RCU grace period, and a caller may check that nothing is left right after it
/// exits.
pub(crate) fn unload_lifecycle(ebpf: &mut Ebpf) {
    for (name, _) in LIFECYCLE_PROGRAMS {
        let program: Option<&mut BtfTracePoint> =
            ebpf.program_mut(name).and_then(|p| p.try_into().ok());
        if let Some(program) = program {
            if let Err(error) = program.unload() {
                tracing::debug!(%error, name, "cannot unload");
            }
        }
    }
}

/// Announcements of newly sampled processes.
pub struct NewProcesses {
    ring: RingBuf<MapData>,
}

impl NewProcesses {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Self {
        NewProcesses { ring }
    }

    /// Waits up to `timeout` for announcements and returns those that arrived, in order. An
    /// interrupted or failed wait returns what is there.
    pub fn wait(&mut self, timeout: Duration) -> Vec<Announcement> {
        let mut out = self.take();
        if !out.is_empty() {
            return out;
        }
        maps::wait_readable(self.ring.as_raw_fd(), timeout);
        out.extend(self.take());
        out
    }

    fn take(&mut self) -> Vec<Announcement> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            match Announcement::from_bytes(&item) {
                Some(a) => out.push(a),
                None => tracing::debug!(len = item.len(), "short announcement record"),
            }
        }
        out
    }
}
