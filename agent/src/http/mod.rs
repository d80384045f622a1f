//! The agent's HTTP endpoints (hyper, HTTP/1.1), served from their own thread and runtime:
//! `/metrics` (Prometheus text), `/healthz`, `/readyz`, and on-demand profiles of the machine
//! at `/debug/pprof/profile?seconds=N[&pid=P]` (pprof) and `/debug/pprof/flamegraph` (SVG), and
//! emberprof's own in-process profile at `/debug/pprof/self?seconds=N`.

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

use emberprof_exporters::health::HealthCounter;

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

/// Binds `addr` now (so that a port in use is a start-up error) and serves on a thread.
pub fn serve(addr: SocketAddr, status: SharedStatus) -> anyhow::Result<()> {
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
        .spawn(move || runtime.block_on(accept_loop(listener, status)))
        .context("starting the HTTP thread")?;
    tracing::info!(%addr, "HTTP endpoints listening");
    Ok(())
}

async fn accept_loop(listener: std::net::TcpListener, status: SharedStatus) {
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
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| route(req, status.clone()));
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

async fn route(
    req: Request<Incoming>,
    status: SharedStatus,
) -> Result<Response<Full<Bytes>>, Infallible> {
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
                        let r = debug::profile(&params, svg);
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
