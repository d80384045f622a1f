//! Pushing a real recording to a Pyroscope ingest endpoint (a minimal HTTP server here).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use crate::support::{bpf_test, decode_gz_pprof, pprof_functions, record, spawn_until, Workload};

struct Captured {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Serves one HTTP request, answers 200 and hands back what it read.
fn serve_one(listener: TcpListener, tx: mpsc::Sender<Captured>) {
    let (stream, _) = listener.accept().expect("accept");
    serve(stream, Duration::ZERO, &tx);
}

/// Reads one request from `stream`, answers 200 after `delay`, and hands it over.
fn serve(stream: std::net::TcpStream, delay: Duration, tx: &mpsc::Sender<Captured>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request_line = String::new();
    reader.read_line(&mut request_line).expect("request line");
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().expect("content length"))
        .expect("a content-length header");
    let mut body = vec![0; len];
    reader.read_exact(&mut body).expect("body");
    std::thread::sleep(delay);
    let mut stream = stream;
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .expect("answer");
    let _ = tx.send(Captured {
        request_line,
        headers,
        body,
    });
}

/// A Pyroscope that takes `delay` to answer each push, one after another; stops when the
/// receiver is gone.
fn slow_pyroscope(delay: Duration) -> (String, mpsc::Receiver<Captured>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            serve(stream, delay, &tx);
        }
    });
    (url, rx)
}

/// The intervals an agent said it exported, and its summary line for Pyroscope.
fn agent_against(url: &str, extra: &[&str]) -> (u64, String, bool) {
    let w = Workload::start(&["cpu-split"]);
    let pid = w.pid().to_string();
    let mut args = vec![
        "agent",
        "--pid",
        &pid,
        "--interval",
        "1s",
        "--pyroscope-url",
        url,
        "--shutdown-timeout",
        "30s",
    ];
    args.extend_from_slice(extra);
    let (mut agent, mut stderr, mut log) = spawn_until(&args, "agent running");
    std::thread::sleep(Duration::from_millis(4500));
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) }, 0);
    std::io::Read::read_to_string(&mut stderr, &mut log).expect("reading the log");
    let ok = agent.wait().expect("waiting for the agent").success();
    let intervals = log
        .lines()
        .find_map(|l| l.strip_prefix("emberprof: agent stopped after "))
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no interval count in\n{log}"));
    let summary = log
        .lines()
        .find(|l| l.starts_with("emberprof: Pyroscope "))
        .unwrap_or_else(|| panic!("no Pyroscope summary in\n{log}"))
        .to_string();
    (intervals, summary, ok)
}

fn a_slow_pyroscope_loses_no_interval_while_the_queue_has_room() {
    let Some(_serial) = bpf_test() else { return };
    // Each push takes longer than an interval: pushes queue up behind it.
    let (url, received) = slow_pyroscope(Duration::from_millis(1500));
    let (intervals, summary, ok) = agent_against(&url, &[]);
    assert!(ok, "{summary}");
    let pushed: Vec<Captured> = received.try_iter().collect();
    assert!(intervals >= 4, "{intervals} intervals");
    assert_eq!(
        pushed.len() as u64,
        intervals,
        "one push per interval: {summary}"
    );
    // A retry resends the same bytes; two intervals never have the same profile (its time
    // differs). The `from=` second is no key: a late tick makes an interval shorter than 1 s.
    let mut bodies: Vec<&[u8]> = pushed.iter().map(|c| c.body.as_slice()).collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), pushed.len(), "no interval pushed twice");
    assert!(summary.contains(" 0 failed, 0 dropped"), "{summary}");
}

fn pushes_beyond_the_queue_are_dropped_and_counted() {
    let Some(_serial) = bpf_test() else { return };
    let (url, _received) = slow_pyroscope(Duration::from_millis(1500));
    // No room for any profile: each is dropped, counted, and the run ends in an error.
    let (intervals, summary, ok) = agent_against(&url, &["--pyroscope-queue-bytes", "1"]);
    assert!(!ok, "lost data must fail the run: {summary}");
    assert!(
        summary.contains(&format!(" {intervals} dropped")),
        "{intervals} intervals: {summary}"
    );
}

crate::harness::tests![
    cpu_profile_is_pushed_to_pyroscope_with_service_name,
    a_slow_pyroscope_loses_no_interval_while_the_queue_has_room,
    pushes_beyond_the_queue_are_dropped_and_counted,
];

fn cpu_profile_is_pushed_to_pyroscope_with_service_name() {
    let Some(_serial) = bpf_test() else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || serve_one(listener, tx));
    let w = Workload::start_with_env(&["cpu-split"], &[("OTEL_SERVICE_NAME", "payments")]);
    let pid = w.pid().to_string();
    let rec = record(
        "pyroscope.pb.gz",
        &[
            "--pid",
            &pid,
            "--duration",
            "2",
            "--pyroscope-url",
            &url,
            "--pyroscope-tenant",
            "team-b",
            "--pyroscope-user",
            "u",
            "--pyroscope-password",
            "p",
        ],
    );
    drop(w);
    server.join().unwrap();
    let got = rx.recv().unwrap();
    assert!(
        got.request_line.starts_with("POST /ingest?"),
        "{}",
        got.request_line
    );
    let query = got
        .request_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    // name=payments{service_name=payments,host_name=...}, URL-encoded.
    assert!(
        query.contains("name=payments%7Bservice_name%3Dpayments"),
        "{query}"
    );
    assert!(query.contains("format=pprof"), "{query}");
    assert!(query.contains("sampleRate=99"), "{query}");
    assert!(
        query.contains("from=") && query.contains("until="),
        "{query}"
    );
    let header = |k: &str| {
        got.headers
            .iter()
            .find(|(h, _)| h == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("x-scope-orgid"), Some("team-b"));
    assert_eq!(header("authorization"), Some("Basic dTpw"));

    let profile = decode_gz_pprof(&got.body);
    let names = pprof_functions(&profile);
    assert!(names.iter().any(|n| n == "burn_heavy"), "{names:?}");
    let st = &profile.sample_type[0];
    assert_eq!(profile.string_table[st.ty as usize], "samples");
    assert!(rec.stderr.contains("1 profiles pushed"), "{}", rec.stderr);
}
