//! A one-line progress display on a terminal; silent otherwise.

use std::io::{IsTerminal, Write};
use std::time::Duration;

pub struct Progress {
    enabled: bool,
}

impl Progress {
    /// Progress on standard error, when it is a terminal.
    pub fn new() -> Self {
        Progress {
            enabled: std::io::stderr().is_terminal(),
        }
    }

    pub fn update(&self, elapsed: Duration, total: Duration, counts: &str) {
        if self.enabled {
            eprint!(
                "\r\x1b[2Krecording {:.1}/{:.1} s, {counts} (Ctrl-C to stop early)",
                elapsed.as_secs_f64(),
                total.as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    }

    pub fn finish(&self) {
        if self.enabled {
            eprint!("\r\x1b[2K");
        }
    }
}
