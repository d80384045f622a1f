//! The mappings listed for the kernel's walker: the vdso's with the host's table, and when a
//! process's listing is stale.

use std::process::{Command, Stdio};

use crate::unwind::{CfaBase, RbpRule, Rule};
use crate::{ProcessSnapshot, Symbolizer, TableSource};

/// Where the loader put our vdso's `__vdso_clock_gettime`.
fn vdso_clock_gettime() -> u64 {
    // SAFETY: looking up an object the loader already has (RTLD_NOLOAD) and a symbol in it.
    unsafe {
        let h = libc::dlopen(
            c"linux-vdso.so.1".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_NOLOAD,
        );
        assert!(!h.is_null(), "glibc lists the vdso as linux-vdso.so.1");
        libc::dlsym(h, c"__vdso_clock_gettime".as_ptr()) as u64
    }
}

/// `pid`'s `[vdso]` mapping, as /proc shows it.
fn vdso_range(pid: u32) -> (u64, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let m = crate::parse_maps(&maps)
        .into_iter()
        .find(|m| m.path == "[vdso]")
        .expect("x86-64 Linux maps a vdso");
    (m.start, m.end)
}

#[test]
fn the_vdso_is_listed_with_one_table_for_the_host() {
    let mut child = Command::new("sleep")
        .arg("30")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let own = std::process::id();
    let mut s = Symbolizer::new();
    s.observe(own);
    s.observe(child.id());
    let vdso_of = |s: &mut Symbolizer, pid| {
        s.unwind_mappings(pid)
            .into_iter()
            .find(|m| m.source == TableSource::Vdso)
            .expect("the vdso is listed")
    };
    let ours = vdso_of(&mut s, own);
    let theirs = vdso_of(&mut s, child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!((ours.start, ours.end), vdso_range(own));
    assert_eq!(
        ours.file_key, theirs.file_key,
        "one table for every process"
    );
    // The image is linked at 0: the table's addresses are offsets in the mapping.
    assert_eq!(ours.bias, ours.start);
    assert_eq!(theirs.bias, theirs.start);

    let before = s.stats().unwind_tables;
    let table = s
        .compile_unwind_table(TableSource::Vdso)
        .expect("the vdso has .eh_frame");
    assert_eq!(s.stats().unwind_tables, before + 1);
    // At a function's first instruction nothing is pushed yet.
    assert_eq!(
        table.lookup(vdso_clock_gettime() - ours.bias),
        Some(Rule::Frame {
            cfa: CfaBase::Rsp,
            cfa_offset: 8,
            rbp: RbpRule::Same,
        })
    );
}

#[test]
fn a_vdso_of_another_size_is_left_to_frame_pointers() {
    let pid = std::process::id();
    let mut s = Symbolizer::new();
    s.observe(pid);
    let (start, _) = vdso_range(pid);
    let image = s
        .processes
        .get_mut(&pid)
        .unwrap()
        .images
        .last_mut()
        .unwrap();
    let vdso = image
        .mappings
        .iter_mut()
        .find(|m| m.start == start)
        .unwrap();
    // A 32-bit process's vdso is smaller than ours (not the same image).
    vdso.end = vdso.start + 4096;
    assert!(s
        .unwind_mappings(pid)
        .iter()
        .all(|m| m.source != TableSource::Vdso));
    assert!(!s.unwind_mappings(pid).is_empty(), "files are still listed");
}

#[test]
fn the_listing_is_stale_when_the_mappings_differ_not_when_read_again() {
    let pid = std::process::id();
    let mut s = Symbolizer::new();
    s.observe(pid);
    let first = s.image_key(pid).unwrap();
    // The watcher's capture of the same process: the same mappings, now of an announced exec.
    s.adopt(pid, ProcessSnapshot::capture_announced(pid, 4, "self"));
    assert_eq!(s.image_key(pid), Some(first));
    // One library unloaded and another mapped at its place: as many mappings as before.
    let image = s
        .processes
        .get_mut(&pid)
        .unwrap()
        .images
        .last_mut()
        .unwrap();
    let n = image.mappings.len();
    let m = image
        .mappings
        .iter_mut()
        .find(|m| m.file.is_some())
        .unwrap();
    m.offset += 4096;
    assert_eq!(s.processes[&pid].images.last().unwrap().mappings.len(), n);
    assert_ne!(s.image_key(pid), Some(first));
}
