//! Who may fetch /debug/pprof/*: nobody (the default), anyone who can connect (switched on
//! without a token, loopback only), or whoever sends the bearer token read from a file at
//! start. The profiles name every process on the host, its paths and build IDs, so the
//! default is off and an open listener beyond loopback is refused.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context};
use hyper::header::HeaderValue;

use crate::cli::DebugArgs;

/// Shortest token accepted: a local user may guess as often as they like on loopback.
const MIN_TOKEN_LEN: usize = 16;
/// Longest token file read: anything bigger is not a token (and /dev/zero must not hang us).
const MAX_TOKEN_FILE: u64 = 4096;

/// How /debug/pprof requests are let in.
pub enum DebugAccess {
    /// Not served (404).
    Off,
    /// Served to anyone who can connect.
    Open,
    /// Served to requests carrying `Authorization: Bearer <token>`.
    Token(Vec<u8>),
}

/// Why a /debug/pprof request was turned away.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// The endpoints are switched off.
    Off,
    /// No token, or not the right one.
    Unauthorized,
}

impl DebugAccess {
    /// From `--debug-pprof` and `--debug-pprof-token-file`, refusing what would expose the
    /// profiles beyond the host's own users.
    pub fn from_args(args: &DebugArgs, listen: SocketAddr) -> anyhow::Result<DebugAccess> {
        if !args.debug_pprof {
            return Ok(DebugAccess::Off);
        }
        if let Some(file) = &args.debug_pprof_token_file {
            return Ok(DebugAccess::Token(read_token(file)?));
        }
        if !listen.ip().is_loopback() {
            bail!(
                "--debug-pprof on {listen} without --debug-pprof-token-file would serve \
                 profiles of the whole host to anyone who can reach it: give a token file, \
                 or listen on 127.0.0.1"
            );
        }
        tracing::warn!(
            %listen,
            "--debug-pprof without --debug-pprof-token-file: every user of this host can fetch \
             whole-host profiles from /debug/pprof; give a token file to restrict them"
        );
        Ok(DebugAccess::Open)
    }

    /// Whether a request with this `Authorization` header may be served.
    pub fn check(&self, authorization: Option<&HeaderValue>) -> Result<(), Denied> {
        match self {
            DebugAccess::Off => Err(Denied::Off),
            DebugAccess::Open => Ok(()),
            DebugAccess::Token(expected) => {
                let given = authorization
                    .map(HeaderValue::as_bytes)
                    .and_then(bearer)
                    .unwrap_or_default();
                if same(given, expected) {
                    Ok(())
                } else {
                    Err(Denied::Unauthorized)
                }
            }
        }
    }
}

/// The token of a `Bearer` credential (the scheme is case-insensitive, RFC 9110).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    Some(&rest[start..])
}

/// Compares in a time that depends only on the expected token's length, so that timing
/// the answers does not reveal how much of a guess was right.
fn same(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

/// Reads and checks the token file: a regular file that other users can neither read nor
/// write, holding one token of visible ASCII characters (a trailing newline is dropped).
fn read_token(path: &Path) -> anyhow::Result<Vec<u8>> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .with_context(|| format!("--debug-pprof-token-file {shown}: cannot read it"))?;
    if !meta.is_file() {
        bail!("--debug-pprof-token-file {shown}: not a regular file");
    }
    // Group access is allowed: Kubernetes grants it to the pod's fsGroup on Secret volumes.
    if meta.permissions().mode() & 0o006 != 0 {
        bail!(
            "--debug-pprof-token-file {shown}: other users can read or change it, so the token \
             keeps no one out: chmod o-rw {shown}"
        );
    }
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_FILE + 1).read_to_end(&mut raw))
        .with_context(|| format!("--debug-pprof-token-file {shown}: cannot read it"))?;
    if raw.len() as u64 > MAX_TOKEN_FILE {
        bail!("--debug-pprof-token-file {shown}: over {MAX_TOKEN_FILE} bytes, not a token");
    }
    while raw.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
        raw.pop();
    }
    if raw.is_empty() {
        bail!(
            "--debug-pprof-token-file {shown}: empty; write a token into it, e.g. \
             `openssl rand -hex 32 > {shown}`"
        );
    }
    if !raw.iter().all(|b| b.is_ascii_graphic()) {
        bail!(
            "--debug-pprof-token-file {shown}: the token must be one line of visible ASCII \
             characters, without spaces (it is sent in an HTTP header)"
        );
    }
    if raw.len() < MIN_TOKEN_LEN {
        bail!(
            "--debug-pprof-token-file {shown}: the token has {} characters; use at least \
             {MIN_TOKEN_LEN}, e.g. `openssl rand -hex 32 > {shown}`",
            raw.len()
        );
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const TOKEN: &str = "0123456789abcdef0123";

    fn token_file(name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ep-token-{}-{name}", std::process::id()));
        std::fs::write(&p, contents).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn args(file: Option<PathBuf>) -> DebugArgs {
        DebugArgs {
            debug_pprof: true,
            debug_pprof_token_file: file,
        }
    }

    fn header(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).unwrap()
    }

    const LOOPBACK: &str = "127.0.0.1:7071";

    #[test]
    fn off_unless_switched_on() {
        let a = DebugAccess::from_args(&DebugArgs::default(), LOOPBACK.parse().unwrap()).unwrap();
        assert_eq!(a.check(None), Err(Denied::Off));
        // Off means off, whatever the request sends.
        assert_eq!(a.check(Some(&header("Bearer x"))), Err(Denied::Off));
    }

    #[test]
    fn without_a_token_only_loopback_is_allowed() {
        let a = DebugAccess::from_args(&args(None), LOOPBACK.parse().unwrap()).unwrap();
        assert_eq!(a.check(None), Ok(()));
        assert!(DebugAccess::from_args(&args(None), "[::1]:7071".parse().unwrap()).is_ok());
        for addr in ["0.0.0.0:7071", "[::]:7071", "10.1.2.3:7071"] {
            let e = DebugAccess::from_args(&args(None), addr.parse().unwrap())
                .err()
                .unwrap();
            assert!(e.to_string().contains("give a token file"), "{addr}: {e}");
        }
    }

    #[test]
    fn the_token_is_required_and_compared_whole() {
        let file = token_file("ok", format!("{TOKEN}\n").as_bytes(), 0o600);
        let a = DebugAccess::from_args(&args(Some(file)), "0.0.0.0:7071".parse().unwrap()).unwrap();
        assert_eq!(a.check(Some(&header(&format!("Bearer {TOKEN}")))), Ok(()));
        assert_eq!(a.check(Some(&header(&format!("bearer  {TOKEN}")))), Ok(()));
        for bad in [
            String::new(),
            "Bearer".to_string(),
            "Bearer ".to_string(),
            format!("Basic {TOKEN}"),
            format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
            format!("Bearer {TOKEN}0"),
            format!("Bearer {}X", &TOKEN[..TOKEN.len() - 1]),
            format!("Bearer {TOKEN} extra"),
            format!("Bearer{TOKEN}"),
        ] {
            assert_eq!(
                a.check(Some(&header(&bad))),
                Err(Denied::Unauthorized),
                "{bad:?}"
            );
        }
        assert_eq!(a.check(None), Err(Denied::Unauthorized));
    }

    #[test]
    fn a_group_readable_token_file_is_accepted() {
        let file = token_file("group", format!("{TOKEN}\r\n").as_bytes(), 0o440);
        let a = DebugAccess::from_args(&args(Some(file)), LOOPBACK.parse().unwrap()).unwrap();
        assert_eq!(a.check(Some(&header(&format!("Bearer {TOKEN}")))), Ok(()));
    }

    #[test]
    fn bad_token_files_are_refused_with_the_fix() {
        let cases: [(&str, &[u8], u32, &str); 6] = [
            ("world", TOKEN.as_bytes(), 0o644, "chmod o-rw"),
            ("writable", TOKEN.as_bytes(), 0o602, "chmod o-rw"),
            ("empty", b"\n", 0o600, "empty"),
            ("short", b"secret\n", 0o600, "at least 16"),
            ("space", b"0123456789 abcdef0123\n", 0o600, "without spaces"),
            ("big", &[b'a'; 5000], 0o600, "not a token"),
        ];
        for (name, contents, mode, message) in cases {
            let file = token_file(name, contents, mode);
            let e = DebugAccess::from_args(&args(Some(file)), LOOPBACK.parse().unwrap())
                .err()
                .unwrap();
            let e = format!("{e:#}");
            assert!(e.contains(message), "{name}: {e}");
            assert!(e.starts_with("--debug-pprof-token-file "), "{name}: {e}");
        }
        let missing = std::env::temp_dir().join("ep-token-does-not-exist");
        let e = DebugAccess::from_args(&args(Some(missing)), LOOPBACK.parse().unwrap())
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("cannot read it"), "{e:#}");
        let e = DebugAccess::from_args(&args(Some("/dev/null".into())), LOOPBACK.parse().unwrap())
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
    }

    #[test]
    fn comparison_looks_at_every_byte() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abd", b"abc"));
        assert!(!same(b"ab", b"abc"));
        assert!(!same(b"abcd", b"abc"));
        assert!(!same(b"", b"abc"));
    }
}
