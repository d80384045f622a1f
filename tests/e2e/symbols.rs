//! Symbolization on real hosts: a process that lives 200 ms between two drains, a binary
//! that only exists inside another mount namespace, inlined frames in pprof.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

crate::harness::tests![
    process_that_lives_200ms_between_drains_is_named,
    binary_inside_a_private_mount_namespace_is_named,
    inlined_functions_are_their_own_pprof_lines,
    bpf_programs_in_kernel_stacks_are_named_from_kallsyms,
    an_exited_process_is_forgotten_by_the_kernel_so_a_reused_pid_is_announced_again,
    off_cpu_only_recordings_name_a_short_lived_process_too,
    a_process_that_execs_every_quarter_second_keeps_its_frames,
    frames_in_the_vdso_are_named,
];

fn process_that_lives_200ms_between_drains_is_named() {
    let Some(_serial) = bpf_test() else { return };
    let mut exited = false;
    // Drains every 30 s: the only drain the process could meet is the final one, long
    // after it exited. Only the capture at its first sample can name its frames.
    let rec = record_around(
        "short-lived.folded",
        &["--frequency", "99", "--drain-interval", "30s"],
        || {
            let status = Command::new(workload_binary())
                .args(["short", "200"])
                .status()
                .expect("running the short workload");
            assert!(status.success());
            exited = true;
            std::thread::sleep(Duration::from_millis(300));
        },
    );
    assert!(exited);
    let lines = read_folded(&rec.file);
    let named = total_under(&lines, "short_lived_burn");
    assert!(
        named >= 5,
        "expected ~20 samples under short_lived_burn, got {named}:\n{}",
        std::fs::read_to_string(&rec.file).unwrap_or_default()
    );
    let main_too = lines
        .iter()
        .filter(|l| l.frames.iter().any(|f| f == "short_lived_burn"))
        .all(|l| l.frames.iter().any(|f| f == "main"));
    assert!(main_too, "the whole stack is named, up to main");
}

fn binary_inside_a_private_mount_namespace_is_named() {
    let Some(_serial) = bpf_test() else { return };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mntns-root");
    std::fs::create_dir_all(&dir).expect("creating the mount point");
    let private = dir.join("ns-workload");
    let _ = std::fs::remove_file(&private);
    // A tmpfs only this mount namespace sees, holding a copy of the workload.
    let script = format!(
        "mount -t tmpfs tmpfs '{d}' && cp '{w}' '{p}' && exec '{p}' cpu-split",
        d = dir.display(),
        w = workload_binary().display(),
        p = private.display()
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .spawn()
        .expect("unshare (util-linux) is needed");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .as_deref()
        != Some(&private)
    {
        assert!(
            Instant::now() < deadline,
            "the workload never started in its namespace"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !private.exists(),
        "the binary's path must not exist outside the namespace"
    );
    let pid_arg = pid.to_string();
    let rec = record(
        "mntns.folded",
        &["--pid", &pid_arg, "--duration", "2", "--frequency", "99"],
    );
    let _ = child.kill();
    let _ = child.wait();
    let lines = read_folded(&rec.file);
    let counts = self_counts(&lines, &["burn_heavy", "burn_medium", "burn_light"]);
    let total: u64 = lines.iter().map(|l| l.count).sum();
    let named: u64 = counts.values().sum();
    assert!(
        total > 100 && named * 10 >= total * 9,
        "named {named} of {total} samples: {counts:?}"
    );
}

fn inlined_functions_are_their_own_pprof_lines() {
    let Some(_serial) = bpf_test() else { return };
    let w = Workload::start(&["cpu-split"]);
    let pid = w.pid().to_string();
    let rec = record(
        "inlined.pb.gz",
        &["--pid", &pid, "--duration", "2", "--frequency", "99"],
    );
    drop(w);
    let profile = decode_gz_pprof(&std::fs::read(&rec.file).expect("reading the profile"));
    let name = |id: u64| {
        let f = profile
            .function
            .iter()
            .find(|f| f.id == id)
            .expect("function");
        profile.string_table[f.name as usize].as_str()
    };
    // One location, two lines: the inlined callee first, then the function it is in.
    let inlined = profile.location.iter().find(|l| {
        l.line.len() >= 2
            && name(l.line[0].function_id) == "light_inner"
            && name(l.line[1].function_id) == "burn_light"
    });
    let loc = inlined.expect("a location whose lines are light_inner inlined in burn_light");
    assert!(
        loc.line.iter().all(|l| l.line > 0),
        "lines carry line numbers"
    );
    let mapping = profile
        .mapping
        .iter()
        .find(|m| m.id == loc.mapping_id)
        .expect("the location keeps its mapping");
    assert!(profile.string_table[mapping.filename as usize].ends_with("epworkload"));
    assert!(!profile.string_table[mapping.build_id as usize].is_empty());
}

fn bpf_programs_in_kernel_stacks_are_named_from_kallsyms() {
    let Some(_serial) = bpf_test() else { return };
    // While a recording runs, its BPF programs are in kallsyms as `bpf_prog_<tag>_<name>
    // [bpf]`, the same way kernel modules' symbols are listed. The symbolizer reads kallsyms
    // before they are loaded, so naming them needs its re-read (at most every 5 s).
    use emberprof_model::KernelSample;
    use emberprof_symbolizer::Symbolizer;
    let mut s = Symbolizer::new();
    let kernel_symbol = |s: &mut Symbolizer, addr: u64| {
        s.symbolize(&[KernelSample::of(std::process::id(), &[], &[addr])])
            .remove(0)
    };
    let before = std::time::Instant::now();
    // Any kernel address makes it read kallsyms now.
    let _ = kernel_symbol(&mut s, 0);
    let mut found = None;
    let _ = record_around("bpf-syms.folded", &["--frequency", "19"], || {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").expect("reading kallsyms");
        found = kallsyms.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, _, name, module) = (f.next()?, f.next()?, f.next()?, f.next()?);
            (module == "[bpf]" && name.ends_with("_ep_cpu_sample"))
                .then(|| (u64::from_str_radix(addr, 16).ok(), name.to_string()))
        });
        let (Some(addr), _) = found.clone().expect("ep_cpu_sample in kallsyms") else {
            panic!("unparsable kallsyms address");
        };
        std::thread::sleep(Duration::from_secs(6).saturating_sub(before.elapsed()));
        let stack = kernel_symbol(&mut s, addr + 8);
        let loc = &stack[0];
        assert_eq!(
            loc.frames.first().map(|f| f.function.to_string()),
            found.as_ref().map(|f| f.1.clone())
        );
        assert_eq!(loc.module.as_ref().map(|m| &*m.path), Some("[bpf]"));
    });
    assert!(found.is_some());
}

fn an_exited_process_is_forgotten_by_the_kernel_so_a_reused_pid_is_announced_again() {
    let Some(_serial) = bpf_test() else { return };
    let busy = Workload::start(&["busy", "1"]);
    let mut short_pid = 0;
    let mut seen = (None, None);
    let _ = record_around(
        "announce.folded",
        &["--frequency", "99", "--drain-interval", "30s"],
        || {
            let mut child = Command::new(workload_binary())
                .args(["short", "200"])
                .spawn()
                .expect("running the short workload");
            short_pid = child.id();
            std::thread::sleep(Duration::from_millis(100));
            let while_running = bpf_map_has_u32_key::<u8>("ep_announced", short_pid);
            assert!(child.wait().expect("waiting").success());
            std::thread::sleep(Duration::from_millis(100));
            seen = (
                while_running,
                bpf_map_has_u32_key::<u8>("ep_announced", short_pid),
            );
            // The long-running process stays announced: the lookup can see entries.
            assert_eq!(
                bpf_map_has_u32_key::<u8>("ep_announced", busy.pid()),
                Some(true)
            );
        },
    );
    assert_eq!(
        seen,
        (Some(true), Some(false)),
        "pid {short_pid}: (while running, after exit)"
    );
}

fn off_cpu_only_recordings_name_a_short_lived_process_too() {
    let Some(_serial) = bpf_test() else { return };
    let rec = record_around(
        "short-offcpu.folded",
        &["--off-cpu", "--drain-interval", "30s"],
        || {
            // Ten 20 ms sleeps: a process that lives about 200 ms, blocked most of it.
            let mut w = Workload::start_paused(&["sleep", "10", "20"]);
            w.go_and_wait();
            std::thread::sleep(Duration::from_millis(300));
        },
    );
    let lines = read_folded(&rec.file);
    let blocked_ns = total_under(&lines, "sleep_in_nanosleep");
    assert!(
        blocked_ns >= 150_000_000,
        "expected ~200 ms under sleep_in_nanosleep, got {blocked_ns} ns:\n{}",
        std::fs::read_to_string(&rec.file).unwrap_or_default()
    );
}

fn a_process_that_execs_every_quarter_second_keeps_its_frames() {
    let Some(_serial) = bpf_test() else { return };
    // A new image (new addresses) every 250 ms under one PID: samples of the image before
    // an exec and after it meet in one drain, and each must be named from its own image.
    let w = Workload::start(&["exec-loop", "40", "250"]);
    let pid = w.pid().to_string();
    let rec = record(
        "exec-loop.folded",
        &["--pid", &pid, "--duration", "3", "--frequency", "199"],
    );
    drop(w);
    let lines = read_folded(&rec.file);
    let total: u64 = lines.iter().map(|l| l.count).sum();
    let named = total_under(&lines, "burn_heavy");
    assert!(total > 200, "{total} samples:\n{}", rec.stderr);
    assert!(
        named as f64 >= 0.9 * total as f64,
        "{named} of {total} samples named in burn_heavy:\n{}",
        std::fs::read_to_string(&rec.file).unwrap_or_default()
    );
}

/// A program reading the clock in a loop spends most of its time in the vdso: those frames
/// carry the vdso's function names (`[vdso]+0x…` before), under a `[vdso]` mapping.
fn frames_in_the_vdso_are_named() {
    let Some(_serial) = bpf_test() else { return };
    let w = Workload::start(&["vdso", "6000"]);
    let pid = w.pid().to_string();
    let rec = record(
        "vdso.pb.gz",
        &["--pid", &pid, "--duration", "2", "--frequency", "99"],
    );
    drop(w);
    let profile = decode_gz_pprof(&std::fs::read(&rec.file).expect("reading the profile"));
    let functions = crate::support::pprof_functions(&profile);
    assert!(
        !functions.iter().any(|f| f.starts_with("[vdso]")),
        "unnamed vdso frames: {functions:?}"
    );
    let leaf_name = |sample: &pprof::protos::Sample| -> Option<(String, String)> {
        let leaf = *sample.location_id.first()?;
        let loc = profile.location.iter().find(|l| l.id == leaf)?;
        let function_id = loc.line.first()?.function_id;
        let function = profile.function.iter().find(|f| f.id == function_id)?;
        let mapping = profile.mapping.iter().find(|m| m.id == loc.mapping_id)?;
        Some((
            profile.string_table[function.name as usize].clone(),
            profile.string_table[mapping.filename as usize].clone(),
        ))
    };
    // Weighed by samples (the first value), not by distinct stacks.
    let weight = |s: &pprof::protos::Sample| s.value.first().copied().unwrap_or(0);
    let total: i64 = profile.sample.iter().map(weight).sum();
    let in_vdso: i64 = profile
        .sample
        .iter()
        .filter(|s| leaf_name(s).is_some_and(|(f, m)| f == "__vdso_clock_gettime" && m == "[vdso]"))
        .map(weight)
        .sum();
    eprintln!("vdso: {in_vdso} of {total} samples end in __vdso_clock_gettime");
    assert!(
        total >= 50 && in_vdso * 4 >= total,
        "{in_vdso} of {total} samples end in __vdso_clock_gettime: {functions:?}"
    );
}
