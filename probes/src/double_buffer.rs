//! The buffer switch every loader uses. Each program writes to one of two buffers (its
//! aggregation maps come in pairs), the one a control map names; user space names the other,
//! waits for programs still writing to the old one, then drains it. At stop, once nothing
//! writes any more, both are drained.

use std::time::Duration;

use aya::maps::{Array, MapData};
use aya::Ebpf;

use crate::error::ProbeError;
use crate::maps::take_as;

/// How long a program that read the old buffer index can still be running after the
/// switch. BPF programs run for microseconds without sleeping; this is generous.
const SWITCH_GRACE: Duration = Duration::from_millis(2);

/// One of the two buffers: the maps a program writes while the control map names it.
pub(crate) trait Buffer {
    /// What draining yields; the two buffers' add up at stop.
    type Drained: Default;

    /// Reads and empties the buffer into `out`. The kernel is not writing to it.
    fn drain_into(&mut self, out: &mut Self::Drained) -> Result<(), ProbeError>;
}

/// Two buffers and the control map that names the one the kernel writes to.
pub(crate) struct DoubleBuffer<B> {
    control: Array<MapData, u32>,
    control_name: &'static str,
    /// Buffer the kernel is writing to.
    active: usize,
    buffers: [B; 2],
}

impl<B: Buffer> DoubleBuffer<B> {
    /// Takes the control map `control_name` out of the loaded object; the kernel starts on
    /// buffer 0 (the control map's initial value).
    pub(crate) fn take(
        ebpf: &mut Ebpf,
        control_name: &'static str,
        buffers: [B; 2],
    ) -> Result<Self, ProbeError> {
        Ok(DoubleBuffer {
            control: take_as(ebpf, control_name)?,
            control_name,
            active: 0,
            buffers,
        })
    }

    /// Points the kernel at the other buffer and drains the one it was writing to.
    pub(crate) fn drain(&mut self) -> Result<B::Drained, ProbeError> {
        let old = self.active;
        let new = 1 - old;
        self.control
            .set(0, new as u32, 0)
            .map_err(|source| ProbeError::Map {
                name: self.control_name,
                source,
            })?;
        self.active = new;
        std::thread::sleep(SWITCH_GRACE);
        let mut out = B::Drained::default();
        self.buffers[old].drain_into(&mut out)?;
        Ok(out)
    }

    /// Runs `detach`, which must stop every program that writes to the buffers, then drains
    /// both: everything still in the kernel.
    pub(crate) fn stop(
        &mut self,
        detach: impl FnOnce() -> Result<(), ProbeError>,
    ) -> Result<B::Drained, ProbeError> {
        detach()?;
        let mut out = B::Drained::default();
        for buffer in &mut self.buffers {
            buffer.drain_into(&mut out)?;
        }
        Ok(out)
    }
}
