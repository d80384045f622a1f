//! A small, fixed profile for the writers' tests.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use emberprof_model::{Frame, FrameKind, Location, Module, Segment, Stack};

use emberprof_model::{Profile, ProfileBuilder};

fn frame(name: &str, line: u32) -> Frame {
    Frame {
        function: Arc::from(name),
        file: Some(Arc::from("/src/app.c")),
        line,
    }
}

fn loc(kind: FrameKind, module: &Arc<Module>, address: u64, frames: Vec<Frame>) -> Arc<Location> {
    // User code sits in one segment per module, placed so that file offset = address − 0x1000.
    let segment = (kind == FrameKind::Native).then_some(Segment {
        start: address & !0xfff,
        limit: (address & !0xfff) + 0x1000,
        file_offset: (address & !0xfff) - 0x1000,
    });
    Arc::new(Location {
        kind,
        module: Some(module.clone()),
        address,
        segment,
        frames,
    })
}

/// Two processes, kernel and user frames, an inlined call, an unnamed and an unknown frame.
pub(crate) fn profile() -> Profile {
    let app = Arc::new(Module {
        path: Arc::from("/opt/app/bin/app"),
        build_id: Some(Arc::from("abcdef0123")),
    });
    let libfoo = Arc::new(Module {
        path: Arc::from("/usr/lib/libfoo.so"),
        build_id: None,
    });
    let kernel = Arc::new(Module {
        path: Arc::from("[kernel.kallsyms]"),
        build_id: None,
    });
    let main = loc(FrameKind::Native, &app, 0x1100, vec![frame("main", 30)]);
    let compute = loc(
        FrameKind::Native,
        &app,
        0x1200,
        vec![frame("inlined_helper", 12), frame("compute", 20)],
    );
    let unnamed = loc(FrameKind::Native, &libfoo, 0x4242, vec![]);
    let unknown = Arc::new(Location {
        kind: FrameKind::Native,
        module: None,
        address: 0xdead,
        segment: None,
        frames: vec![],
    });
    let write_k = loc(
        FrameKind::Kernel,
        &kernel,
        0xffff_ffff_8100_0000,
        vec![frame("ksys_write", 0)],
    );
    let syscall_k = loc(
        FrameKind::Kernel,
        &kernel,
        0xffff_ffff_8100_1000,
        vec![frame("do_syscall_64", 0)],
    );

    let s1: Stack = Arc::from(vec![compute.clone(), main.clone()]);
    let s2: Stack = Arc::from(vec![write_k, syscall_k, unnamed, main.clone()]);
    let s3: Stack = Arc::from(vec![unknown, main]);

    let mut b = ProfileBuilder::cpu(99, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let period = b.period();
    let (app_name, worker, other): (Arc<str>, Arc<str>, Arc<str>) =
        (Arc::from("app"), Arc::from("worker"), Arc::from("other"));
    b.add(100, &app_name, 101, &worker, &s1, &[3, 3 * period]);
    b.add(100, &app_name, 102, &app_name, &s1, &[2, 2 * period]);
    b.add(100, &app_name, 101, &worker, &s1, &[1, period]);
    b.add(100, &app_name, 101, &worker, &s2, &[4, 4 * period]);
    b.add(200, &other, 200, &other, &s3, &[5, 5 * period]);
    b.finish(UNIX_EPOCH + Duration::from_secs(1_700_000_010))
}
