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

/// The control map: entry 0 is the generation, whose low bit names the buffer the kernel
/// writes to (a program that keeps per-thread state can tell a new generation from the
/// last one that used the same buffer).
pub(crate) trait Control {
    fn point_at(&mut self, generation: u32) -> Result<(), aya::maps::MapError>;
}

impl Control for Array<MapData, u32> {
    fn point_at(&mut self, generation: u32) -> Result<(), aya::maps::MapError> {
        self.set(0, generation, 0)
    }
}

/// One of the two buffers: the maps a program writes while the control map names it.
pub(crate) trait Buffer {
    /// What draining yields; the two buffers' add up at stop.
    type Drained: Default;

    /// Reads and empties the buffer into `out`. The kernel is not writing to it.
    fn drain_into(&mut self, out: &mut Self::Drained) -> Result<(), ProbeError>;
}

/// Two buffers and the control map that names the one the kernel writes to.
pub(crate) struct DoubleBuffer<B, C = Array<MapData, u32>> {
    control: C,
    control_name: &'static str,
    /// Buffer the kernel is writing to.
    active: usize,
    generation: u32,
    buffers: [B; 2],
}

impl<B: Buffer> DoubleBuffer<B> {
    /// Takes the control map `control_name` out of the loaded object.
    pub(crate) fn take(
        ebpf: &mut Ebpf,
        control_name: &'static str,
        buffers: [B; 2],
    ) -> Result<Self, ProbeError> {
        Ok(DoubleBuffer::new(
            take_as(ebpf, control_name)?,
            control_name,
            buffers,
        ))
    }
}

impl<B: Buffer, C: Control> DoubleBuffer<B, C> {
    /// The kernel starts on buffer 0 (the control map's initial value).
    fn new(control: C, control_name: &'static str, buffers: [B; 2]) -> Self {
        DoubleBuffer {
            control,
            control_name,
            active: 0,
            generation: 0,
            buffers,
        }
    }

    /// Points the kernel at the other buffer and drains the one it was writing to.
    pub(crate) fn drain(&mut self) -> Result<B::Drained, ProbeError> {
        let old = self.active;
        // Wraps after 2^32 drains, keeping the low bit alternating.
        let generation = self.generation.wrapping_add(1);
        let new = (generation & 1) as usize;
        self.control
            .point_at(generation)
            .map_err(|source| ProbeError::Map {
                name: self.control_name,
                source,
            })?;
        self.active = new;
        self.generation = generation;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// What the kernel side saw, in order.
    type Log = Rc<RefCell<Vec<String>>>;

    struct FakeControl(Log);

    impl Control for FakeControl {
        fn point_at(&mut self, generation: u32) -> Result<(), aya::maps::MapError> {
            self.0.borrow_mut().push(format!(
                "write to {} (generation {generation})",
                generation & 1
            ));
            Ok(())
        }
    }

    /// A buffer holding its name once per fill.
    struct FakeBuffer {
        name: &'static str,
        filled: usize,
        log: Log,
    }

    impl Buffer for FakeBuffer {
        type Drained = Vec<&'static str>;

        fn drain_into(&mut self, out: &mut Vec<&'static str>) -> Result<(), ProbeError> {
            self.log.borrow_mut().push(format!("drain {}", self.name));
            out.extend(std::iter::repeat_n(self.name, self.filled));
            self.filled = 0;
            Ok(())
        }
    }

    fn double(log: &Log) -> DoubleBuffer<FakeBuffer, FakeControl> {
        let buffer = |name| FakeBuffer {
            name,
            filled: 1,
            log: log.clone(),
        };
        DoubleBuffer::new(
            FakeControl(log.clone()),
            "ep_test_control",
            [buffer("a"), buffer("b")],
        )
    }

    #[test]
    fn each_drain_switches_first_then_reads_the_buffer_the_kernel_left() {
        let log = Log::default();
        let mut d = double(&log);
        assert_eq!(d.drain().unwrap(), ["a"]);
        assert_eq!(d.drain().unwrap(), ["b"]);
        d.buffers[0].filled = 2;
        assert_eq!(d.drain().unwrap(), ["a", "a"]);
        assert_eq!(
            *log.borrow(),
            [
                "write to 1 (generation 1)",
                "drain a",
                "write to 0 (generation 2)",
                "drain b",
                "write to 1 (generation 3)",
                "drain a"
            ]
        );
    }

    #[test]
    fn stop_detaches_then_drains_both() {
        let log = Log::default();
        let mut d = double(&log);
        let detach_log = log.clone();
        let all = d
            .stop(|| {
                detach_log.borrow_mut().push("detach".into());
                Ok(())
            })
            .unwrap();
        assert_eq!(all, ["a", "b"]);
        assert_eq!(*log.borrow(), ["detach", "drain a", "drain b"]);
    }

    #[test]
    fn a_failed_detach_drains_nothing() {
        let log = Log::default();
        let mut d = double(&log);
        let err = d.stop(|| Err(ProbeError::MissingMap("ep_test_program")));
        assert!(err.is_err());
        assert!(log.borrow().is_empty());
    }
}
