//! The test workloads (tests/workloads/workload.c, and workload.rs for Rust release builds):
//! CPU, off-CPU and I/O patterns with known shapes, built by this crate's build script.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The workload binary, built with frame pointers; its file name is `epworkload`.
pub fn workload_binary() -> &'static Path {
    Path::new(env!("EMBERPROF_TEST_WORKLOAD"))
}

/// The same workload built without frame pointers (`-O2 -fomit-frame-pointer`); its file
/// name is `epworkload-nofp`.
pub fn workload_binary_nofp() -> &'static Path {
    Path::new(env!("EMBERPROF_TEST_WORKLOAD_NOFP"))
}

/// The Rust workload (tests/workloads/workload.rs), built `-C opt-level=3` without frame
/// pointers; its file name is `epworkload-rust`.
pub fn workload_binary_rust() -> &'static Path {
    Path::new(env!("EMBERPROF_TEST_WORKLOAD_RUST"))
}

/// The probe-point test program (tests/workloads/probe_work.c: a timed function, a USDT
/// probe, a hot function), built without frame pointers; its file name is `epprobework`.
pub fn probe_work_binary() -> &'static Path {
    Path::new(env!("EMBERPROF_TEST_PROBE_WORK"))
}

/// The shared library the workload's `dlopen` mode loads (built without frame pointers);
/// its file name is `libepdlopen.so`.
pub fn dlopen_library() -> &'static Path {
    Path::new(env!("EMBERPROF_TEST_DLOPEN_LIB"))
}

/// A running workload, killed when dropped.
pub struct Workload {
    child: Child,
}

impl Workload {
    /// Starts a workload that waits for a line on its stdin before working (see `go`).
    pub fn start_paused(args: &[&str]) -> Workload {
        Workload::start_paused_binary(workload_binary(), args)
    }

    /// `start_paused` for the build without frame pointers.
    pub fn start_nofp_paused(args: &[&str]) -> Workload {
        Workload::start_paused_binary(workload_binary_nofp(), args)
    }

    fn start_paused_binary(binary: &Path, args: &[&str]) -> Workload {
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
            .expect("starting the workload");
        Workload { child }
    }

    /// Lets a paused workload start.
    pub fn go(&mut self) {
        let mut stdin = self.child.stdin.take().expect("a paused workload");
        stdin
            .write_all(b"go\n")
            .expect("telling the workload to go");
    }

    /// Lets a paused workload start, and waits until it has finished.
    pub fn go_and_wait(&mut self) {
        self.go();
        let status = self.child.wait().expect("waiting for the workload");
        assert!(status.success(), "workload failed: {status}");
    }

    /// Starts a workload and gives it time to reach its steady state.
    pub fn start(args: &[&str]) -> Workload {
        Workload::start_with_env(args, &[])
    }

    /// Like `start`, with the build without frame pointers.
    pub fn start_nofp(args: &[&str]) -> Workload {
        Workload::start_binary(workload_binary_nofp(), args, &[])
    }

    /// Starts the Rust workload (`cpu-split`, `recurse DEPTH`) like `start`.
    pub fn start_rust(args: &[&str]) -> Workload {
        Workload::start_binary(workload_binary_rust(), args, &[])
    }

    /// Like `start`, with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Workload {
        Workload::start_binary(workload_binary(), args, env)
    }

    fn start_binary(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Workload {
        let child = Command::new(binary)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the workload");
        // Let it reach its steady state before sampling starts.
        std::thread::sleep(Duration::from_millis(200));
        Workload { child }
    }

    /// The workload's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
