//! The agent's HTTP endpoints (hyper, HTTP/1.1), served from their own thread and runtime:
//! `/metrics` (Prometheus text), `/healthz`, `/readyz`, and with `--debug-pprof` on-demand
//! profiles of the machine at `/debug/pprof/profile?seconds=N[&pid=P]` (pprof) and
//! `/debug/pprof/flamegraph` (SVG), and emberprof's own in-process profile at
//! `/debug/pprof/self?seconds=N`.

mod access;
mod debug;
mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Set while a /debug/pprof/profile or flamegraph request is sampling.
static PROFILE_IN_PROGRESS: AtomicBool = AtomicBool::new(false);

use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

use emberprof_model::HealthCounter;

use crate::cli::DebugArgs;
use access::{DebugAccess, Denied};

/// What the agent's loop publishes for the endpoints.
#[derive(Default)]
pub struct Status {
    /// Probes are attached and sampling.
    pub attached: bool,
    /// The last export succeeded, or is still being retried.
    pub export_ok: bool,
    /// The latest values of emberprof's own counters.
    pub counters: Vec<HealthCounter>,
}

/// Shared between the agent loop (writer) and the server (reader).
pub type SharedStatus = Arc<Mutex<Status>>;

/// The agent's settings that its on-demand profiles follow too.
#[derive(Clone, Copy, Debug)]
pub struct OnDemand {
    /// Profile emberprof itself too.
    pub profile_self: bool,
    /// The CPU sampler's unwind table entries (`None`: frame pointers only).
    pub unwind_entries: Option<u32>,
    /// Walk Python stacks.
    pub python: bool,
}

/// Binds `addr` now (so that a port in use is a start-up error) and serves on a thread.
/// `/debug/pprof` is served as `debug` says; a token file it cannot use is a start-up error.
/// Its profiles are taken as `on_demand` says, like the agent's own.
pub fn serve(
    addr: SocketAddr,
    debug: &DebugArgs,
    on_demand: OnDemand,
    status: SharedStatus,
) -> anyhow::Result<()> {
    let access = Arc::new(DebugAccess::from_args(debug, addr)?);
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!("--http-listen {addr}: cannot listen there (is the port already in use?)")
    })?;
    listener
        .set_nonblocking(true)
        .context("configuring the HTTP listener")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    std::thread::Builder::new()
        .name("emberprof-http".into())
        .spawn(move || runtime.block_on(accept_loop(listener, status, access, on_demand)))
        .context("starting the HTTP thread")?;
    tracing::info!(%addr, "HTTP endpoints listening");
    Ok(())
}

async fn accept_loop(
    listener: std::net::TcpListener,
    status: SharedStatus,
    access: Arc<DebugAccess>,
    on_demand: OnDemand,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "HTTP listener unusable");
            return;
        }
    };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors, say: do not spin on the error.
                tracing::warn!(error = %e, "accepting an HTTP connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = status.clone();
        let access = access.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                route(req, status.clone(), access.clone(), on_demand)
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

fn text(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Whether `path` is one of the /debug/pprof endpoints, which `DebugAccess` guards.
fn is_debug(path: &str) -> bool {
    path == "/debug/pprof" || path.starts_with("/debug/pprof/")
}

/// The answer to a /debug/pprof request that `DebugAccess` turned away.
fn denied(why: Denied) -> Response<Full<Bytes>> {
    match why {
        Denied::Off => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "/debug/pprof is off: start the agent with --debug-pprof (and \
             --debug-pprof-token-file FILE)\n",
        ),
        Denied::Unauthorized => {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "send the token of --debug-pprof-token-file as `Authorization: Bearer TOKEN`\n",
            );
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer realm=\"emberprof\""),
            );
            r
        }
    }
}

async fn route<B>(
    req: Request<B>,
    status: SharedStatus,
    access: Arc<DebugAccess>,
    on_demand: OnDemand,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if is_debug(req.uri().path()) {
        // Before anything else, so that a refused client learns nothing, not even whether
        // a profile is being taken.
        if let Err(why) = access.check(req.headers().get(hyper::header::AUTHORIZATION)) {
            return Ok(denied(why));
        }
    }
    let query = req.uri().query().unwrap_or("").to_string();
    Ok(match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            let s = status.lock().unwrap_or_else(|e| e.into_inner());
            if s.attached && s.export_ok {
                text(StatusCode::OK, "text/plain", "ready\n")
            } else if !s.attached {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "probes not attached\n",
                )
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "last export failed\n",
                )
            }
        }
        "/metrics" => {
            let body = {
                let s = status.lock().unwrap_or_else(|e| e.into_inner());
                metrics::render(&s.counters)
            };
            text(StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        "/debug/pprof/self" => match debug::Params::parse(&query) {
            Err(e) => text(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
            Ok(params) => {
                match tokio::task::spawn_blocking(move || debug::self_profile(&params)).await {
                    Ok(Ok(body)) => text(StatusCode::OK, "application/octet-stream", body),
                    Ok(Err(e)) => text(StatusCode::CONFLICT, "text/plain", format!("{e:#}\n")),
                    Err(e) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("{e}\n"),
                    ),
                }
            }
        },
        "/debug/pprof/profile" | "/debug/pprof/flamegraph" => {
            let svg = req.uri().path().ends_with("flamegraph");
            match debug::Params::parse(&query) {
                Err(e) => text(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
                // Each request loads its own sampler: one at a time.
                Ok(_) if PROFILE_IN_PROGRESS.swap(true, Ordering::AcqRel) => text(
                    StatusCode::TOO_MANY_REQUESTS,
                    "text/plain",
                    "another profile is being taken; try again when it is done\n",
                ),
                Ok(params) => {
                    let result = tokio::task::spawn_blocking(move || {
                        let r = debug::profile(&params, svg, on_demand);
                        PROFILE_IN_PROGRESS.store(false, Ordering::Release);
                        r
                    })
                    .await;
                    match result {
                        Ok(Ok(body)) => text(
                            StatusCode::OK,
                            if svg {
                                "image/svg+xml"
                            } else {
                                "application/octet-stream"
                            },
                            body,
                        ),
                        Ok(Err(e)) => text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "text/plain",
                            format!("{e:#}\n"),
                        ),
                        Err(e) => text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "text/plain",
                            format!("{e}\n"),
                        ),
                    }
                }
            }
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::os::unix::fs::PermissionsExt;

    const TOKEN: &str = "test-token-0123456789";

    fn access(on: bool, token: bool) -> Arc<DebugAccess> {
        let file = token.then(|| {
            // One file per call: the tests run in parallel.
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("ep-http-token-{}-{n}", std::process::id()));
            std::fs::write(&p, TOKEN).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p
        });
        let args = DebugArgs {
            debug_pprof: on,
            debug_pprof_token_file: file,
        };
        Arc::new(DebugAccess::from_args(&args, "127.0.0.1:7071".parse().unwrap()).unwrap())
    }

    /// Status, WWW-Authenticate and body of one request.
    fn call(access: &Arc<DebugAccess>, path: &str, auth: Option<&str>) -> (u16, String, String) {
        let mut req = Request::builder().uri(path);
        if let Some(a) = auth {
            req = req.header(hyper::header::AUTHORIZATION, a);
        }
        let req = req.body(()).unwrap();
        let status: SharedStatus = Arc::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let on_demand = OnDemand {
                profile_self: false,
                unwind_entries: None,
                python: false,
            };
            let r = route(req, status, access.clone(), on_demand).await.unwrap();
            let challenge = r
                .headers()
                .get(hyper::header::WWW_AUTHENTICATE)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let code = r.status().as_u16();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            (code, challenge, String::from_utf8_lossy(&body).into_owned())
        })
    }

    const DEBUG_PATHS: [&str; 4] = [
        "/debug/pprof/profile?seconds=1",
        "/debug/pprof/flamegraph?seconds=1",
        "/debug/pprof/self?seconds=1",
        "/debug/pprof/",
    ];

    #[test]
    fn debug_pprof_is_off_by_default_and_says_how_to_switch_it_on() {
        let off = access(false, false);
        for path in DEBUG_PATHS {
            let (code, _, body) = call(&off, path, Some(&format!("Bearer {TOKEN}")));
            assert_eq!(code, 404, "{path}");
            assert!(
                body.contains("start the agent with --debug-pprof"),
                "{body}"
            );
            assert_eq!(body.lines().count(), 1, "{body}");
        }
    }

    #[test]
    fn with_a_token_debug_pprof_needs_it() {
        let on = access(true, true);
        for path in DEBUG_PATHS {
            for auth in [None, Some("Bearer wrong-token-0123456789"), Some(TOKEN)] {
                let (code, challenge, _) = call(&on, path, auth);
                assert_eq!(code, 401, "{path} {auth:?}");
                assert!(challenge.starts_with("Bearer"), "{challenge}");
            }
        }
        // The right token gets past the check to the handler, which rejects the query
        // (rather than loading a sampler in a unit test).
        let (code, _, body) = call(
            &on,
            "/debug/pprof/profile?seconds=0",
            Some(&format!("Bearer {TOKEN}")),
        );
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("seconds=0"), "{body}");
    }

    #[test]
    fn health_and_metrics_need_no_switch_and_no_token() {
        for a in [access(false, false), access(true, true)] {
            assert_eq!(call(&a, "/healthz", None).0, 200);
            assert_eq!(call(&a, "/readyz", None).0, 503);
            let (code, _, body) = call(&a, "/metrics", None);
            assert_eq!(code, 200);
            assert!(body.contains("process_cpu_seconds_total"), "{body}");
            assert_eq!(call(&a, "/nope", None).0, 404);
        }
    }

    #[test]
    fn switched_on_without_a_token_loopback_clients_get_through() {
        let open = access(true, false);
        assert_eq!(call(&open, "/debug/pprof/profile?seconds=0", None).0, 400);
    }
}
