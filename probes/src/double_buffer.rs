//! The buffer switch. The kernel writes to the buffer a control map names; user space names
//! the other one, waits for programs still writing to the old one, then drains it.

use std::time::Duration;

use aya::maps::{Array, MapData};

use crate::error::ProbeError;

/// How long a program that read the old buffer index can still be running after the
/// switch. BPF programs run for microseconds without sleeping; this is generous.
const SWITCH_GRACE: Duration = Duration::from_millis(2);

pub(crate) struct DoubleBuffer {
    control: Array<MapData, u32>,
    name: &'static str,
    /// Buffer the kernel is writing to.
    active: u32,
}

impl DoubleBuffer {
    pub(crate) fn new(control: Array<MapData, u32>, name: &'static str) -> Self {
        DoubleBuffer {
            control,
            name,
            active: 0,
        }
    }

    /// Points the kernel at the other buffer; returns the one it was writing to, now quiet.
    pub(crate) fn switch(&mut self) -> Result<usize, ProbeError> {
        let old = self.active;
        let new = 1 - old;
        self.control
            .set(0, new, 0)
            .map_err(|source| ProbeError::Map {
                name: self.name,
                source,
            })?;
        self.active = new;
        std::thread::sleep(SWITCH_GRACE);
        Ok(old as usize)
    }
}
