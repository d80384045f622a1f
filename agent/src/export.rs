//! `--otlp-endpoint`: sends what was recorded to an OpenTelemetry collector, profiles and
//! histograms, through the exporters' retrying, byte-bounded pipeline.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use emberprof_exporters::delivery::{Batch, OtlpConfig, Pipeline};
use emberprof_exporters::health::{self, HealthCounter, HealthValue};
use emberprof_exporters::otlp::metrics::{self, HistogramPoint, Temporality};
use emberprof_exporters::otlp::profiles;
use emberprof_exporters::pyroscope::{self, PyroscopeConfig};
use emberprof_model::Profile;
use emberprof_model::{AttrValue, Attributes};

use crate::cli::{ExportArgs, TemporalityArg};
use crate::metadata::process::host_attributes;

/// Largest profiles request sent: collectors refuse gRPC messages over 4 MiB by default.
const MAX_REQUEST_BYTES: usize = 3 << 20;

/// The configured exporter and the resource attributes gathered for it.
pub struct Exporter {
    pipeline: Pipeline,
    config: OtlpConfig,
    endpoint: String,
    temporality: Temporality,
    flush_timeout: Duration,
    common: Attributes,
}

impl Exporter {
    /// The exporter the environment (`OTEL_EXPORTER_OTLP_*`) and flags ask for, if any;
    /// flags win.
    pub fn from_args(args: &ExportArgs) -> anyhow::Result<Option<Exporter>> {
        let config = otlp_config(args)?;
        if !config.enabled() {
            return Ok(None);
        }
        for path in [&config.ca_file, &config.client_cert, &config.client_key]
            .into_iter()
            .flatten()
        {
            if !path.is_file() {
                bail!("OTLP TLS file {} does not exist", path.display());
            }
        }
        let endpoint = config
            .profiles_endpoint
            .clone()
            .or_else(|| config.metrics_endpoint.clone())
            .unwrap_or_default();
        let mut common = config.resource_attributes.clone();
        for (k, v) in host_attributes() {
            if !common.iter().any(|(key, _)| *key == k) {
                common.push((k, v));
            }
        }
        let pipeline = Pipeline::start(config.clone()).context("starting the OTLP exporter")?;
        Ok(Some(Exporter {
            pipeline,
            config,
            endpoint,
            temporality: match args.otlp_temporality {
                TemporalityArg::Cumulative => Temporality::Cumulative,
                TemporalityArg::Delta => Temporality::Delta,
            },
            flush_timeout: args.otlp_flush_timeout,
            common,
        }))
    }

    /// Delivery counters so far.
    pub fn stats(&self) -> emberprof_exporters::delivery::PipelineStats {
        self.pipeline.stats()
    }

    /// The export's own health: batches by outcome, and bytes waiting in the queue.
    pub fn health(&self) -> Vec<HealthCounter> {
        let s = self.pipeline.stats();
        let mut out: Vec<HealthCounter> = [
            ("sent", s.sent),
            ("failed", s.failed),
            ("dropped", s.dropped),
            ("retried", s.retries),
        ]
        .into_iter()
        .map(|(result, n)| HealthCounter {
            name: "emberprof.export.batches",
            description: "OTLP export batches, by outcome",
            unit: "{batch}",
            attributes: vec![("result", result.to_string())],
            value: HealthValue::Count(n),
        })
        .collect();
        out.push(HealthCounter {
            name: "emberprof.export.latency.last",
            description: "Seconds the last delivered batch took, retries included",
            unit: "s",
            attributes: Vec::new(),
            value: HealthValue::Level(s.last_latency.as_secs_f64()),
        });
        out.push(HealthCounter {
            name: "emberprof.export.latency.milliseconds",
            description: "Milliseconds spent delivering batches, in total",
            unit: "ms",
            attributes: Vec::new(),
            value: HealthValue::Count(
                u64::try_from(s.total_latency.as_millis()).unwrap_or(u64::MAX),
            ),
        });
        out.push(HealthCounter {
            name: "emberprof.export.queue.limit",
            description: "Bytes the export queue may hold",
            unit: "By",
            attributes: Vec::new(),
            value: HealthValue::Level(self.config.queue_bytes as f64),
        });
        out.push(HealthCounter {
            name: "emberprof.export.queue.bytes",
            description: "Encoded bytes waiting in the export queue",
            unit: "By",
            attributes: Vec::new(),
            value: HealthValue::Level(s.queued_bytes as f64),
        });
        out
    }

    /// Gives queued batches up to `timeout` to be delivered, then drops the exporter
    /// (replaced on reload); what is left is logged.
    pub fn close(self, timeout: Duration) {
        if !self.pipeline.flush(timeout) {
            tracing::warn!(endpoint = %self.endpoint, "old exporter closed with data undelivered");
        }
    }

    /// How long `finish` waits for delivery.
    pub fn set_flush_timeout(&mut self, timeout: Duration) {
        self.flush_timeout = timeout;
    }

    /// Whether histograms are exported as deltas (reset after each export).
    pub fn delta(&self) -> bool {
        self.temporality == Temporality::Delta
    }

    /// The resource of what emberprof reports about itself and the host.
    fn own_resource(&self) -> Attributes {
        let mut resource = self.common.clone();
        resource.retain(|(k, _)| k != "service.name");
        resource.insert(
            0,
            ("service.name".into(), AttrValue::Str("emberprof".into())),
        );
        resource
    }

    /// Queues the profiles and histograms for sending.
    pub fn export(
        &mut self,
        recorded: &[&Profile],
        processes: &HashMap<u32, Attributes>,
        histograms: &[HistogramPoint],
        start: SystemTime,
        end: SystemTime,
    ) {
        if !recorded.is_empty() {
            for req in profiles::requests(recorded, processes, &self.common, MAX_REQUEST_BYTES) {
                self.pipeline.submit(Batch::Profiles(req));
            }
        }
        if !histograms.is_empty() {
            let resource = self.own_resource();
            let req = metrics::request(histograms, &resource, start, end, self.temporality);
            self.pipeline.submit(Batch::Metrics(req));
        }
    }

    /// Waits for delivery (up to the flush timeout), sends the health metrics (`health` plus
    /// the export's own results) and reports; an error if anything could not be delivered.
    pub fn finish(self, mut health: Vec<HealthCounter>) -> anyhow::Result<()> {
        let done = self.pipeline.flush(self.flush_timeout);
        let s = self.pipeline.stats();
        if self.config.metrics_endpoint.is_some() {
            health.extend(self.health());
            let resource = self.own_resource();
            if let Err(e) = health::send_once(&self.config, &resource, &health) {
                tracing::warn!(error = %e, "could not send emberprof's health metrics");
            }
        }
        eprintln!(
            "emberprof: OTLP {}: {} batches sent ({} bytes), {} retries, {} failed, {} dropped, {} items rejected",
            self.endpoint, s.sent, s.sent_bytes, s.retries, s.failed, s.dropped, s.rejected_items
        );
        if !done {
            bail!(
                "the OTLP export to {} did not finish within {:?} (is the collector up?)",
                self.endpoint,
                self.flush_timeout
            );
        }
        if s.failed > 0 || s.dropped > 0 {
            bail!("the OTLP export to {} lost data (see above)", self.endpoint);
        }
        Ok(())
    }
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

/// One push per profile kind and series: the service is the process's `service.name`, the
/// labels its other resource attributes (as sent over OTLP) and the host's.
pub fn push_to_pyroscope(
    config: &PyroscopeConfig,
    profiles: &[Profile],
    processes: &HashMap<u32, Attributes>,
) -> anyhow::Result<()> {
    let text = |v: &AttrValue| match v {
        AttrValue::Str(s) => s.clone(),
        AttrValue::Int(i) => i.to_string(),
    };
    let host = host_attributes();
    let series_of = |s: &emberprof_model::Sample| {
        let attrs = processes.get(&s.pid);
        let service = attrs
            .and_then(|attrs| {
                attrs.iter().find_map(|(k, v)| match v {
                    AttrValue::Str(name) if k == "service.name" => Some(name.clone()),
                    _ => None,
                })
            })
            .unwrap_or_else(|| s.process_name.to_string());
        let mut labels: Vec<(String, String)> = attrs
            .into_iter()
            .flatten()
            .chain(&host)
            .filter(|(k, _)| k != "service.name")
            .map(|(k, v)| (k.clone(), text(v)))
            .collect();
        labels.sort();
        labels.dedup_by(|a, b| a.0 == b.0);
        (service, labels)
    };
    let mut pushed = 0;
    for profile in profiles {
        pushed += pyroscope::push(config, profile, series_of).with_context(|| {
            format!(
                "pushing the {} profile to {}",
                profile.kind.title(),
                config.url
            )
        })?;
    }
    eprintln!(
        "emberprof: Pyroscope {}: {pushed} profiles pushed",
        config.url
    );
    Ok(())
}
