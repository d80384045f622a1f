//! Pushing a real recording to a Pyroscope ingest endpoint (a minimal HTTP server here).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

use crate::support::{bpf_test, decode_gz_pprof, pprof_functions, record, Workload};

struct Captured {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Serves one HTTP request, answers 200 and hands back what it read.
fn serve_one(listener: TcpListener, tx: mpsc::Sender<Captured>) {
    let (stream, _) = listener.accept().expect("accept");
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
    let mut stream = stream;
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .expect("answer");
    tx.send(Captured {
        request_line,
        headers,
        body,
    })
    .expect("hand over");
}

crate::harness::tests![cpu_profile_is_pushed_to_pyroscope_with_service_name,];

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
