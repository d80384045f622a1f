//! Who gets the agent's /debug/pprof profiles: an unprivileged local user must not, unless
//! the endpoints are switched on and the user has the token.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::{
    bpf_test, decode_gz_pprof, pprof_functions, spawn_until, terminate, Workload, EMBERPROF,
};

/// The user the client runs as: nobody, in no group, with no capabilities.
const NOBODY: u32 = 65534;

/// A GET from a process running as nobody (setpriv, then the system's python, which a fresh
/// Debian has): its uid, the status code and the body.
fn get_as_nobody(port: u16, path: &str, token: Option<&str>) -> (u32, u16, Vec<u8>) {
    const CLIENT: &str = r#"
import os, sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    req.add_header("Authorization", "Bearer " + sys.argv[2])
try:
    r = urllib.request.urlopen(req, timeout=60)
    code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
sys.stdout.buffer.write(b"%d %d\n" % (os.getuid(), code) + body)
"#;
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            "/usr/bin/python3",
            "-c",
            CLIENT,
        ])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .args(token)
        // No proxy settings, no root's HOME.
        .env_clear()
        .output()
        .expect("setpriv (util-linux) and /usr/bin/python3");
    assert!(
        out.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let split = out.stdout.iter().position(|&b| b == b'\n').unwrap();
    let head = String::from_utf8_lossy(&out.stdout[..split]).into_owned();
    let (uid, code) = head.split_once(' ').unwrap();
    (
        uid.parse().unwrap(),
        code.parse().unwrap(),
        out.stdout[split + 1..].to_vec(),
    )
}

/// `get_as_nobody`'s status code, after checking the client really was nobody.
fn code_as_nobody(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let (uid, code, body) = get_as_nobody(port, path, token);
    assert_eq!(uid, NOBODY, "the client must be unprivileged");
    (code, String::from_utf8_lossy(&body).into_owned())
}

crate::harness::tests![
    an_unprivileged_user_gets_no_profile_unless_switched_on_and_holding_the_token,
    without_a_token_debug_pprof_is_refused_beyond_loopback_and_warned_about_on_it,
];

fn an_unprivileged_user_gets_no_profile_unless_switched_on_and_holding_the_token() {
    let Some(_serial) = bpf_test() else { return };
    let w = Workload::start(&["cpu-split"]);
    let pid = w.pid();
    let profile = format!("/debug/pprof/profile?seconds=1&pid={pid}");

    // By default the profiles are not served at all; health and metrics are, to anyone.
    let port = crate::collector::free_port();
    let listen = format!("127.0.0.1:{port}");
    let (mut agent, _stderr, log) =
        spawn_until(&["agent", "--http-listen", &listen], "agent running");
    let (code, body) = code_as_nobody(port, &profile, None);
    assert_eq!(
        code,
        404,
        "nobody got an answer of {} bytes from the root agent",
        body.len()
    );
    assert!(body.contains("--debug-pprof"), "{body}");
    assert_eq!(
        code_as_nobody(port, "/debug/pprof/self?seconds=1", None).0,
        404
    );
    assert_eq!(code_as_nobody(port, "/metrics", None).0, 200);
    assert_eq!(code_as_nobody(port, "/healthz", None).0, 200);
    terminate(&mut agent, &log);

    // Switched on with a token that only root can read.
    let token = "e2e-token-5f0c2b7d9a14e6c3";
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("debug-pprof-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = file.to_string_lossy().into_owned();
    let port = crate::collector::free_port();
    let listen = format!("127.0.0.1:{port}");
    let (mut agent, _stderr, log) = spawn_until(
        &[
            "agent",
            "--http-listen",
            &listen,
            "--debug-pprof",
            "--debug-pprof-token-file",
            &file,
        ],
        "agent running",
    );
    for guess in [None, Some("e2e-token-5f0c2b7d9a14e6c4"), Some("")] {
        let (code, body) = code_as_nobody(port, &profile, guess);
        assert_eq!(code, 401, "token {guess:?}: {} bytes", body.len());
    }
    assert_eq!(
        code_as_nobody(port, "/debug/pprof/self?seconds=1", None).0,
        401
    );
    assert_eq!(code_as_nobody(port, "/metrics", None).0, 200);
    // The token is what lets a request in, whoever sends it.
    let (uid, code, body) = get_as_nobody(port, &profile, Some(token));
    assert_eq!(
        (uid, code),
        (NOBODY, 200),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let names = pprof_functions(&decode_gz_pprof(&body));
    assert!(names.iter().any(|n| n == "burn_heavy"), "{names:?}");
    terminate(&mut agent, &log);
    assert!(!log.contains("every user of this host"), "{log}");
}

fn without_a_token_debug_pprof_is_refused_beyond_loopback_and_warned_about_on_it() {
    let Some(_serial) = bpf_test() else { return };
    let port = crate::collector::free_port();
    let out = Command::new(EMBERPROF)
        .args(["agent", "--debug-pprof", "--http-listen"])
        .arg(format!("0.0.0.0:{port}"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("give a token file, or listen on 127.0.0.1"),
        "{err}"
    );

    let listen = format!("127.0.0.1:{}", crate::collector::free_port());
    let (mut agent, _stderr, log) = spawn_until(
        &["agent", "--debug-pprof", "--http-listen", &listen],
        "agent running",
    );
    terminate(&mut agent, &log);
    assert!(log.contains("every user of this host can fetch"), "{log}");
}
