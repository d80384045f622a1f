//! `emberprof agent`: continuous profiling, exported every interval.

use std::process::Command;
use std::time::{Duration, Instant};

use emberprof_exporters::otlp::validate::{sample_functions, validate_profiles};

use crate::collector::TestCollector;
use crate::support::{
    bpf_programs_held_by, bpf_test, decode_gz_pprof, get, loaded_bpf_programs, pprof_functions,
    prometheus_value, spawn_until, terminate, Workload, EMBERPROF,
};

crate::harness::tests![
    intervals_are_contiguous_and_sigterm_exports_the_last_one_and_unloads_everything,
    without_an_exporter_the_agent_runs_and_says_so,
    http_endpoints_report_health_metrics_and_profiles,
    a_bad_config_file_exits_with_status_2_naming_the_key_and_config_check_agrees,
    the_config_file_drives_the_agent_and_flags_override_it,
    as_nobody_with_the_documented_capabilities_it_profiles_a_root_process,
    include_and_exclude_rules_decide_which_processes_appear,
    a_pprof_directory_gets_every_interval_and_is_rotated,
    sighup_reloads_the_config_file_without_losing_an_interval,
];

fn intervals_are_contiguous_and_sigterm_exports_the_last_one_and_unloads_everything() {
    let Some(_serial) = bpf_test() else { return };
    let collector = TestCollector::start();
    let w = Workload::start(&["cpu-split"]);
    let pid = w.pid().to_string();
    let spawned = Instant::now();
    let (mut agent, mut stderr, mut log) = spawn_until(
        &[
            "agent",
            "--pid",
            &pid,
            "--interval",
            "2s",
            "--frequency",
            "99",
            "--otlp-endpoint",
            &collector.endpoint(),
        ],
        "agent running",
    );
    let running = Instant::now();
    // This agent's programs, by id: other BPF users, another emberprof among them, may load
    // and unload theirs meanwhile. The kernel hands out program ids cyclically, so an id
    // still loaded after the exit is one of ours, not a newcomer's.
    let mut mine = bpf_programs_held_by(agent.id());
    let loaded = loaded_bpf_programs();
    // The listing sees the agent's probes while it runs (else the check after exit would
    // prove nothing).
    assert!(
        !mine.is_empty()
            && mine
                .iter()
                .all(|id| loaded.get(id).is_some_and(|n| n.starts_with("ep_"))),
        "the agent holds {mine:?}; loaded: {loaded:?}"
    );
    // Two full intervals, then SIGTERM in the middle of the third. Intervals count from
    // the agent's start, which is after `spawned` and before `running`.
    std::thread::sleep(Duration::from_millis(5000).saturating_sub(spawned.elapsed()));
    // And whatever it loaded since.
    mine.extend(bpf_programs_held_by(agent.id()));
    let terminated = Instant::now();
    // SAFETY: plain kill(2) of our child.
    assert_eq!(unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) }, 0);
    let status = agent.wait().unwrap();
    let exited = Instant::now();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    log.push_str(&rest);
    assert!(status.success(), "agent exited with {status}:\n{log}");
    drop(w);

    let loaded = loaded_bpf_programs();
    let left: Vec<_> = mine
        .iter()
        .filter_map(|id| loaded.get_key_value(id))
        .collect();
    assert!(left.is_empty(), "still loaded after exit: {left:?}");

    let received = collector.received();
    assert_eq!(
        received.profiles.len(),
        3,
        "two full intervals and the last partial one"
    );
    let mut ranges = Vec::new();
    for req in &received.profiles {
        validate_profiles(req).unwrap();
        let dict = req.dictionary.as_ref().unwrap();
        let profile = &req.resource_profiles[0].scope_profiles[0].profiles[0];
        let names: Vec<String> = profile
            .samples
            .iter()
            .flat_map(|s| sample_functions(dict, s))
            .collect();
        assert!(names.iter().any(|n| n == "burn_heavy"), "{names:?}");
        ranges.push((profile.time_unix_nano, profile.duration_nano));
    }
    ranges.sort();
    for pair in ranges.windows(2) {
        assert_eq!(
            pair[0].0 + pair[0].1,
            pair[1].0,
            "gap or overlap: {ranges:?}"
        );
    }
    // The intervals cover at least the time the agent ran attached, and at most its
    // whole life.
    let covered: u64 = ranges.iter().map(|r| r.1).sum();
    let at_least = (terminated - running).as_nanos() as u64;
    let at_most = (exited - spawned).as_nanos() as u64;
    assert!(
        (at_least..=at_most).contains(&covered),
        "intervals cover {covered} ns, the agent ran attached {at_least} ns and lived {at_most} ns: {ranges:?}"
    );
    assert!(log.contains("agent stopped after 3 intervals"), "{log}");
}

fn without_an_exporter_the_agent_runs_and_says_so() {
    let Some(_serial) = bpf_test() else { return };
    let listen = format!("127.0.0.1:{}", crate::collector::free_port());
    let (mut agent, _stderr, log) =
        spawn_until(&["agent", "--http-listen", &listen], "agent running");
    terminate(&mut agent, &log);
    assert!(log.contains("no exporter configured"), "{log}");
}

fn http_endpoints_report_health_metrics_and_profiles() {
    let Some(_serial) = bpf_test() else { return };
    let collector = TestCollector::start();
    let port = crate::collector::free_port();
    let w = Workload::start(&["cpu-split"]);
    let pid = w.pid().to_string();
    let listen = format!("127.0.0.1:{port}");
    let (mut agent, _stderr, _log) = spawn_until(
        &[
            "agent",
            "--pid",
            &pid,
            "--interval",
            "5s",
            "--frequency",
            "99",
            "--otlp-endpoint",
            &collector.endpoint(),
            "--http-listen",
            &listen,
            "--debug-pprof",
        ],
        "agent running",
    );
    assert_eq!(get(port, "/healthz").0, 200);
    assert_eq!(get(port, "/readyz").0, 200);

    let (code, first) = get(port, "/metrics");
    assert_eq!(code, 200);
    let first = String::from_utf8(first).unwrap();
    let before = prometheus_value(&first, "emberprof_cpu_samples_total");
    assert!(prometheus_value(&first, "process_resident_memory_bytes") > 0.0);
    assert!(prometheus_value(&first, "emberprof_export_queue_limit") > 0.0);
    assert!(prometheus_value(&first, "emberprof_symbolizer_cache_entries") >= 0.0);
    // One count for the process, not one per kernel map.
    assert!(prometheus_value(&first, "emberprof_processes_announce_lost_total") >= 0.0);
    assert!(
        !first.contains("emberprof_processes_announce_lost_total{"),
        "{first}"
    );
    // The counter is refreshed at every drain (1 s); give a slow first symbolization time.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut after = before;
    while after <= before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        after = prometheus_value(
            &String::from_utf8(get(port, "/metrics").1).unwrap(),
            "emberprof_cpu_samples_total",
        );
    }
    assert!(after > before, "{before} -> {after}");

    // A second agent cannot take the same port, and says why.
    let second = Command::new(EMBERPROF)
        .args([
            "agent",
            "--otlp-endpoint",
            &collector.endpoint(),
            "--http-listen",
            &listen,
        ])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already in use"), "{err}");

    let (code, body) = get(port, &format!("/debug/pprof/profile?seconds=2&pid={pid}"));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let profile = decode_gz_pprof(&body);
    let names = pprof_functions(&profile);
    assert!(names.iter().any(|n| n == "burn_heavy"), "{names:?}");
    assert!(!profile.sample.is_empty());
    assert_eq!(get(port, "/debug/pprof/profile?seconds=0").0, 400);
    // The agent's own profile: a pprof of emberprof itself.
    let (code, body) = get(port, "/debug/pprof/self?seconds=1");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let own = decode_gz_pprof(&body);
    assert!(!own.string_table.is_empty());
    assert_eq!(get(port, "/nope").0, 404);

    // SAFETY: plain kill(2) of our child.
    assert_eq!(unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) }, 0);
    assert!(agent.wait().unwrap().success());
}

fn a_bad_config_file_exits_with_status_2_naming_the_key_and_config_check_agrees() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    for (name, text, key) in [
        ("unknown.yaml", "intervall: 5s\n", "unknown key `intervall`"),
        ("type.yaml", "interval: soon\n", "key `interval`"),
        ("range.yaml", "frequency: 100000\n", "key `frequency`"),
        // A value starting with '-' is a value, reported under its own key.
        ("negative.yaml", "frequency: -19\n", "key `frequency`"),
        // Refused by the agent's start checks, which config check runs too.
        (
            "endpoint.yaml",
            "otlp_endpoint: ftp://collector:4317\n",
            "key `otlp_endpoint`",
        ),
        ("regex.yaml", "include_exe: '(nginx'\n", "key `include_exe`"),
    ] {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        let run = Command::new(EMBERPROF)
            .arg("agent")
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(
            err.contains(key) || err.contains(&key.replace('`', "'")),
            "{name}: {err}"
        );
        let check = Command::new(EMBERPROF)
            .args(["config", "check"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(check.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&check.stderr);
        assert!(err.contains(key), "{name}: {err}");
    }
    let good = dir.join("good.yaml");
    let default = Command::new(EMBERPROF)
        .args(["config", "default"])
        .output()
        .unwrap();
    std::fs::write(&good, &default.stdout).unwrap();
    let check = Command::new(EMBERPROF)
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

fn the_config_file_drives_the_agent_and_flags_override_it() {
    let Some(_serial) = bpf_test() else { return };
    let collector = TestCollector::start();
    let w = Workload::start(&["cpu-split"]);
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent.yaml");
    std::fs::write(
        &file,
        format!(
            "otlp_endpoint: {}\ninterval: 30s\npid: [{}]\nhttp_listen: 127.0.0.1:{}\n",
            collector.endpoint(),
            w.pid(),
            crate::collector::free_port()
        ),
    )
    .unwrap();
    let file_arg = file.to_string_lossy().into_owned();
    // The file says 30 s; the flag's 1 s wins.
    let (mut agent, _stderr, _log) = spawn_until(
        &["agent", "--config", &file_arg, "--interval", "1s"],
        "agent running",
    );
    // Two exports within 10 s: only the flag's interval gives them.
    let two = collector.wait_for(Duration::from_secs(10), |r| r.profiles.len() >= 2);
    // SAFETY: plain kill(2) of our child.
    assert_eq!(unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) }, 0);
    assert!(agent.wait().unwrap().success());
    let n = collector.received().profiles.len();
    assert!(
        two && n >= 3,
        "{n} exports: the 1 s interval from the flag was not used"
    );
}

/// The capabilities the README documents for running as a non-root user.
const AGENT_CAPS: &str = "+bpf,+perfmon,+sys_ptrace,+dac_read_search,+syslog";

fn as_nobody_with_the_documented_capabilities_it_profiles_a_root_process() {
    let Some(_serial) = bpf_test() else { return };
    let collector = TestCollector::start();
    let w = Workload::start(&["cpu-split"]); // runs as root
    let pid = w.pid().to_string();
    let listen = format!("127.0.0.1:{}", crate::collector::free_port());
    let caps = format!("-all,{AGENT_CAPS}");
    let agent = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(EMBERPROF)
        .args([
            "agent",
            "--pid",
            &pid,
            "--interval",
            "1s",
            "--frequency",
            "99",
        ])
        .args([
            "--otlp-endpoint",
            &collector.endpoint(),
            "--http-listen",
            &listen,
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)");
    let named = |r: &crate::collector::Received| {
        r.profiles.iter().any(|req| {
            let dict = req.dictionary.as_ref().unwrap();
            req.resource_profiles.iter().any(|rp| {
                rp.scope_profiles[0].profiles[0]
                    .samples
                    .iter()
                    .any(|s| sample_functions(dict, s).iter().any(|f| f == "burn_heavy"))
            })
        })
    };
    let found = collector.wait_for(Duration::from_secs(15), named);
    // SAFETY: plain kill(2) of our child (setpriv execs emberprof in place).
    assert_eq!(unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) }, 0);
    let out = agent.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(found, "no named frames of the root workload: {log}");
}

fn include_and_exclude_rules_decide_which_processes_appear() {
    let Some(_serial) = bpf_test() else { return };
    let collector = TestCollector::start();
    // Two copies of the workload under different executable names.
    let other_bin = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("epother");
    std::fs::copy(crate::support::workload_binary(), &other_bin).unwrap();
    let excluded = Workload::start(&["cpu-split"]);
    let mut other = Command::new(&other_bin).arg("cpu-split").spawn().unwrap();
    let listen = format!("127.0.0.1:{}", crate::collector::free_port());
    let excluded_pid = excluded.pid().to_string();
    let (mut agent, _stderr, log) = spawn_until(
        &[
            "agent",
            "--include-exe",
            "^ep(workload|other)$",
            "--exclude-pid",
            &excluded_pid,
            "--extra-attributes",
            "process.pid",
            "--interval",
            "1s",
            "--frequency",
            "99",
            "--otlp-endpoint",
            &collector.endpoint(),
            "--http-listen",
            &listen,
        ],
        "agent running",
    );
    std::thread::sleep(Duration::from_millis(3000));
    terminate(&mut agent, &log);
    let _ = other.kill();
    let _ = other.wait();

    let received = collector.received();
    let mut seen = std::collections::BTreeMap::new();
    for req in &received.profiles {
        for rp in &req.resource_profiles {
            let attrs = &rp.resource.as_ref().unwrap().attributes;
            let get = |k: &str| {
                attrs
                    .iter()
                    .find(|kv| kv.key == k)
                    .and_then(|kv| kv.value.as_ref()?.value.clone())
            };
            use opentelemetry_proto::tonic::common::v1::any_value::Value;
            let pid = match get("process.pid") {
                Some(Value::IntValue(i)) => i,
                other => panic!("no pid: {other:?}"),
            };
            let exe = match get("process.executable.name") {
                Some(Value::StringValue(s)) => s,
                other => panic!("no exe: {other:?}"),
            };
            seen.insert(pid, exe);
        }
    }
    assert!(
        seen.contains_key(&i64::from(other.id())),
        "the included process is missing: {seen:?}"
    );
    assert!(
        !seen.contains_key(&i64::from(excluded.pid())),
        "the excluded process appeared: {seen:?}"
    );
    assert!(
        seen.values().all(|e| e == "epother" || e == "epworkload"),
        "a process outside --include-exe appeared: {seen:?}"
    );
}

fn a_pprof_directory_gets_every_interval_and_is_rotated() {
    let Some(_serial) = bpf_test() else { return };
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pprof-dir");
    let _ = std::fs::remove_dir_all(&dir);
    let w = Workload::start(&["cpu-split"]);
    let pid = w.pid().to_string();
    let listen = format!("127.0.0.1:{}", crate::collector::free_port());
    let dir_arg = dir.to_string_lossy().into_owned();
    let (mut agent, _stderr, log) = spawn_until(
        &[
            "agent",
            "--pid",
            &pid,
            "--interval",
            "1s",
            "--frequency",
            "99",
            "--pprof-dir",
            &dir_arg,
            "--pprof-max-files",
            "2",
            "--http-listen",
            &listen,
        ],
        "agent running",
    );
    std::thread::sleep(Duration::from_millis(3500));
    terminate(&mut agent, &log);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        files.len(),
        2,
        "rotated down to 2 of 4 intervals: {files:?}"
    );
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("emberprof-") && name.ends_with(".cpu.pb.gz"),
            "{name}"
        );
        let profile = decode_gz_pprof(&std::fs::read(&f).unwrap());
        let names = pprof_functions(&profile);
        assert!(names.iter().any(|n| n == "burn_heavy"), "{name}: {names:?}");
    }
}

fn sighup_reloads_the_config_file_without_losing_an_interval() {
    let Some(_serial) = bpf_test() else { return };
    let first = TestCollector::start();
    let second = TestCollector::start();
    let w = Workload::start(&["cpu-split"]);
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reload.yaml");
    let listen = format!("127.0.0.1:{}", crate::collector::free_port());
    let config = |endpoint: &str| {
        format!(
            "otlp_endpoint: {endpoint}\ninterval: 1s\npid: [{}]\nhttp_listen: {listen}\n",
            w.pid()
        )
    };
    std::fs::write(&file, config(&first.endpoint())).unwrap();
    let file_arg = file.to_string_lossy().into_owned();
    let (mut agent, mut stderr, mut log) =
        spawn_until(&["agent", "--config", &file_arg], "agent running");
    let reached_first = first.wait_for(Duration::from_secs(10), |r| !r.profiles.is_empty());
    std::fs::write(&file, config(&second.endpoint())).unwrap();
    // SAFETY: plain kill(2) of our child.
    assert_eq!(unsafe { libc::kill(agent.id() as i32, libc::SIGHUP) }, 0);
    let reached_second = second.wait_for(Duration::from_secs(10), |r| r.profiles.len() >= 2);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) }, 0);
    let status = agent.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    log.push_str(&rest);
    assert!(status.success(), "{log}");
    assert!(reached_first && reached_second, "{log}");
    assert!(log.contains("configuration reloaded"), "{log}");

    let ranges = |c: &TestCollector| -> Vec<(u64, u64)> {
        c.received()
            .profiles
            .iter()
            .map(|r| {
                let p = &r.resource_profiles[0].scope_profiles[0].profiles[0];
                (p.time_unix_nano, p.duration_nano)
            })
            .collect()
    };
    let (before, after) = (ranges(&first), ranges(&second));
    assert!(!before.is_empty(), "nothing reached the first collector");
    assert!(after.len() >= 2, "the reloaded endpoint got {after:?}");
    let mut all: Vec<_> = before.iter().chain(&after).copied().collect();
    all.sort();
    for pair in all.windows(2) {
        assert_eq!(
            pair[0].0 + pair[0].1,
            pair[1].0,
            "interval lost across the reload: {all:?}"
        );
    }
}
