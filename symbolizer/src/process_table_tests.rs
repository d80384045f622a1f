//! The processes held: kept after exit, across an exec, by announced name alone, and
//! captured again when they map new code.

use std::process::{Command, Stdio};

use crate::test_support::{marker_function_for_symbolizer_test, symbolize_one};
use crate::{ProcessSnapshot, Symbolizer};
use emberprof_model::KernelSample;

#[test]
fn process_observed_then_exited_keeps_its_modules() {
    let mut child = Command::new("sleep")
        .arg("30")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait for exec to replace our image with sleep's.
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let maps = loop {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        if !text.contains(exe.to_str().unwrap()) && text.contains("sleep") {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let text_map = crate::parse_maps(&maps)
        .into_iter()
        .find(|m| m.executable && m.path.ends_with("/sleep"))
        .unwrap();
    let mut s = Symbolizer::new();
    s.observe(pid);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

    let addr = text_map.start + 0x10;
    let stack = symbolize_one(&mut s, pid, &[addr], &[]);
    let module = stack[0].module.as_ref().expect("module known after exit");
    assert!(module.path.ends_with("/sleep"));
    // The address is link-time; with its segment it gives back the file offset.
    let segment = stack[0].segment.expect("a readable ELF has segments");
    assert_eq!(
        stack[0].address - segment.start + segment.file_offset,
        addr - text_map.start + text_map.offset
    );
    assert!((segment.start..segment.limit).contains(&stack[0].address));
    assert_ne!(stack[0].to_string(), "[unknown]");
    assert_eq!(s.process_name(pid, None).as_deref(), Some("sleep"));
}

#[test]
fn samples_of_an_image_exec_d_away_from_use_that_image() {
    // Two images of one PID, as after an exec: ours (exec 1), then sleep's (exec 2).
    let mut child = Command::new("sleep")
        .arg("30")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{}/maps", child.id()))
        .is_ok_and(|m| m.contains(exe.to_str().unwrap()))
    {
        assert!(std::time::Instant::now() < deadline, "sleep never exec'd");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let pid = u32::MAX - 11; // stands for the process that exec'd
    let mut s = Symbolizer::new();
    s.adopt(
        pid,
        ProcessSnapshot::capture_announced(std::process::id(), 1, "before"),
    );
    s.adopt(
        pid,
        ProcessSnapshot::capture_announced(child.id(), 2, "after"),
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
    let request = |exec_id| KernelSample {
        exec_id,
        ..KernelSample::of(pid, std::slice::from_ref(&addr), &[])
    };
    let stacks = s.symbolize(&[request(1), request(2), request(7)]);
    assert!(
        stacks[0][0]
            .frames
            .last()
            .is_some_and(|f| f.function.ends_with("marker_function_for_symbolizer_test")),
        "the sample of the first image is named from it: {:?}",
        stacks[0]
    );
    for other in &stacks[1..] {
        assert!(other[0].is_unknown(), "{other:?}");
    }
    let own = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(
        s.process_name(pid, Some(1)).as_deref(),
        Some(own.trim_end())
    );
    assert_eq!(s.process_name(pid, Some(2)).as_deref(), Some("sleep"));
    assert_eq!(s.process_name(pid, Some(9)).as_deref(), Some("sleep"));
    // Two drains after the exec no sample of the old image can come: it is let go.
    s.symbolize(&[]);
    assert!(s
        .process_name(pid, Some(1))
        .is_some_and(|n| *n == *own.trim_end()));
    s.symbolize(&[]);
    assert_eq!(s.process_name(pid, Some(1)).as_deref(), Some("sleep"));
    assert_eq!(s.processes[&pid].images.len(), 1);
}

#[test]
fn a_process_gone_before_capture_keeps_its_announced_name() {
    let pid = u32::MAX - 12; // never existed: gone before the watcher read /proc
    let mut s = Symbolizer::new();
    s.adopt(
        pid,
        ProcessSnapshot::capture_announced(pid, 3, "short-lived"),
    );
    assert_eq!(s.process_name(pid, Some(3)).as_deref(), Some("short-lived"));
    let stack = symbolize_one(&mut s, pid, &[0x401000], &[]);
    assert!(stack[0].is_unknown());
}

#[test]
fn code_mapped_after_first_sight_is_found() {
    let mut s = Symbolizer::new();
    let pid = std::process::id();
    s.observe(pid);
    // Forget what was captured, as if the code had been mapped afterwards.
    s.processes.get_mut(&pid).unwrap().images[0]
        .mappings
        .clear();
    let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
    let stack = symbolize_one(&mut s, pid, &[addr], &[]);
    assert!(!stack[0].is_unknown(), "maps were not re-read");
}

#[test]
fn mappings_read_again_keep_what_was_read_of_the_perf_map() {
    // SAFETY: a fresh anonymous mapping, only looked up by address, unmapped below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let base = base as u64;
    let pid = std::process::id();
    let map = std::path::PathBuf::from(format!("/tmp/perf-{pid}.map"));
    std::fs::write(&map, format!("{base:x} 80 Function:kept\n")).unwrap();
    let mut s = Symbolizer::new();
    let first = symbolize_one(&mut s, pid, &[base + 0x10], &[]);
    let before = s.stats().perf_maps.bytes_read;
    // New JIT code is mapped all the time, and mappings are read again each time: a
    // big perf map must not be read again from the start.
    s.processes
        .get_mut(&pid)
        .unwrap()
        .images
        .last_mut()
        .unwrap()
        .mappings
        .clear();
    let again = symbolize_one(&mut s, pid, &[base + 0x20], &[]);
    let after = s.stats().perf_maps.bytes_read;
    let _ = std::fs::remove_file(&map);
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(base as *mut libc::c_void, 4096) };
    assert_eq!(first[0].to_string(), "Function:kept");
    assert_eq!(again[0].to_string(), "Function:kept");
    assert!(before > 0);
    assert_eq!(after, before, "read again from the start");
}

/// A library loaded after the announced capture: the mappings read again replace that
/// image, so that the samples tagged with its exec find the library.
#[test]
fn code_mapped_after_an_announced_capture_is_found_in_samples_of_that_exec() {
    let pid = std::process::id();
    let mut s = Symbolizer::new();
    s.adopt(pid, ProcessSnapshot::capture_announced(pid, 5, "self"));
    s.processes.get_mut(&pid).unwrap().images[0]
        .mappings
        .clear();
    let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
    let request = KernelSample {
        exec_id: 5,
        ..KernelSample::of(pid, std::slice::from_ref(&addr), &[])
    };
    let stack = &s.symbolize(&[request])[0];
    assert!(!stack[0].is_unknown(), "looked up in the image without it");
    assert_eq!(s.processes[&pid].images.len(), 1);
    assert_eq!(s.processes[&pid].images[0].exec_id, Some(5));
}

/// `observe_samples` reads the mappings again before `symbolize`, which then finds them.
#[test]
fn samples_observed_first_have_their_mappings_read_before_symbolizing() {
    let pid = std::process::id();
    let mut s = Symbolizer::new();
    s.observe(pid);
    let before = s.image_key(pid);
    s.processes.get_mut(&pid).unwrap().images[0]
        .mappings
        .clear();
    let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
    let request = KernelSample::of(pid, std::slice::from_ref(&addr), &[]);
    s.observe_samples(std::slice::from_ref(&request));
    assert_eq!(s.image_key(pid), before, "read again");
    assert!(!s.symbolize(&[request])[0][0].is_unknown());
}
