//! The remote sinks the export settings ask for: OTLP (`--otlp-endpoint` or
//! `OTEL_EXPORTER_OTLP_*`) and Pyroscope (`--pyroscope-url`), and the checks of those
//! settings that `config check` runs too.

use anyhow::{bail, Context};
use emberprof_exporters::delivery::{Limits, OtlpConfig};
use emberprof_exporters::otlp::metrics::Temporality;
use emberprof_exporters::pyroscope::PyroscopeConfig;
use emberprof_exporters::sinks::{OtlpSink, PyroscopeSink, Sink};

use crate::cli::{ExportArgs, TemporalityArg};
use crate::metadata::process::host_attributes;

/// The OTLP and Pyroscope sinks `args` (and the environment) ask for.
pub fn remote_sinks(args: &ExportArgs) -> anyhow::Result<Vec<Box<dyn Sink>>> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let config = otlp_config(args)?;
    if config.enabled() {
        for path in [&config.ca_file, &config.client_cert, &config.client_key]
            .into_iter()
            .flatten()
        {
            if !path.is_file() {
                bail!("OTLP TLS file {} does not exist", path.display());
            }
        }
        let mut common = config.resource_attributes.clone();
        for (k, v) in host_attributes() {
            if !common.iter().any(|(key, _)| *key == k) {
                common.push((k, v));
            }
        }
        let temporality = match args.otlp_temporality {
            TemporalityArg::Cumulative => Temporality::Cumulative,
            TemporalityArg::Delta => Temporality::Delta,
        };
        let sink =
            OtlpSink::start(config, temporality, common).context("starting the OTLP exporter")?;
        sinks.push(Box::new(sink));
    }
    if let Some(config) = pyroscope_config(args)? {
        let limits = Limits {
            queue_bytes: args.pyroscope_queue_bytes,
            ..Limits::from(&OtlpConfig::default())
        };
        let sink = PyroscopeSink::start(config, limits, host_attributes())
            .context("starting the Pyroscope push")?;
        sinks.push(Box::new(sink));
    }
    Ok(sinks)
}

/// The OTLP settings the environment (`OTEL_EXPORTER_OTLP_*`) and flags give, flags winning,
/// with endpoints, headers and compression checked.
fn otlp_config(args: &ExportArgs) -> anyhow::Result<OtlpConfig> {
    let mut config = OtlpConfig::from_env(|k| std::env::var(k).ok())?;
    if let Some(e) = &args.otlp_endpoint {
        config.set_endpoint(e, "--otlp-endpoint")?;
    }
    for h in &args.otlp_header {
        config.add_header(h, "--otlp-header")?;
    }
    if let Some(c) = &args.otlp_compression {
        config.set_compression(c, "--otlp-compression")?;
    }
    config.queue_bytes = args.otlp_queue_bytes;
    if let Some(t) = args.otlp_timeout {
        config.timeout = t;
    }
    if let Some(ca) = &args.otlp_ca {
        config.ca_file = Some(ca.clone());
    }
    if let Some(cert) = &args.otlp_client_cert {
        config.client_cert = Some(cert.clone());
    }
    if let Some(key) = &args.otlp_client_key {
        config.client_key = Some(key.clone());
    }
    Ok(config)
}

/// The checks of the export settings that hold wherever the agent runs (not TLS files'
/// presence, nor a password that may come from the environment there): what `config
/// check` runs.
pub fn check(args: &ExportArgs) -> anyhow::Result<()> {
    otlp_config(args)?;
    if let Some(url) = &args.pyroscope_url {
        check_pyroscope_url(url)?;
    }
    Ok(())
}

fn check_pyroscope_url(url: &str) -> anyhow::Result<()> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("--pyroscope-url {url:?} must start with http:// or https://");
    }
    Ok(())
}

/// The Pyroscope server `--pyroscope-url` names, with its tenant and credentials.
pub fn pyroscope_config(args: &ExportArgs) -> anyhow::Result<Option<PyroscopeConfig>> {
    let Some(url) = &args.pyroscope_url else {
        return Ok(None);
    };
    check_pyroscope_url(url)?;
    let mut config = PyroscopeConfig::new(url);
    config.tenant = args.pyroscope_tenant.clone();
    config.basic_auth = match (&args.pyroscope_user, &args.pyroscope_password) {
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        (None, None) => None,
        _ => bail!("--pyroscope-user and --pyroscope-password go together"),
    };
    Ok(Some(config))
}
