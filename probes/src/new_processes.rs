//! The ring buffer through which the CPU sampler announces each process at its first sample
//! (and again after an exec), so user space can capture its mappings while it still runs.

use std::os::fd::AsRawFd;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};

/// Announcements of newly sampled processes.
pub struct NewProcesses {
    ring: RingBuf<MapData>,
}

impl NewProcesses {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Self {
        NewProcesses { ring }
    }

    /// Waits up to `timeout` for announcements and returns the process ids (tgids) that
    /// arrived, in order. An interrupted or failed wait returns what is there.
    pub fn wait(&mut self, timeout: Duration) -> Vec<u32> {
        let mut out = self.take();
        if !out.is_empty() {
            return out;
        }
        let mut fd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd, living across the call.
        unsafe { libc::poll(&mut fd, 1, millis) };
        out.extend(self.take());
        out
    }

    fn take(&mut self) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some(bytes) = item.get(..4) {
                let mut raw = [0u8; 4];
                raw.copy_from_slice(bytes);
                out.push(u32::from_ne_bytes(raw));
            }
        }
        out
    }
}
