//! One attempt at sending an OTLP request over gRPC, with the configured TLS, compression,
//! headers and deadline. Retrying is the pipeline's job.

use std::str::FromStr;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::profiles::v1development::profiles_service_client::ProfilesServiceClient;
use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use thiserror::Error;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::config::OtlpConfig;
use super::retry;
use super::transport_fault::{transport_fault, TransportFault};

/// Why an export did not go through.
#[derive(Debug, Error)]
pub enum SendError {
    #[error("collector answered {code:?}: {message}")]
    Status {
        code: tonic::Code,
        message: String,
        /// Whether sending again may succeed.
        retryable: bool,
        /// The server's requested delay (RetryInfo).
        delay: Option<Duration>,
    },
    /// An HTTP receiver's answer (Pyroscope's ingest API).
    #[error("{url} answered HTTP {code}")]
    Http {
        url: String,
        code: u16,
        /// Whether sending again may succeed (5xx, 429).
        retryable: bool,
    },
    /// The request did not get an answer (connection refused, reset, timed out).
    #[error("{url}: {message}")]
    Unreachable { url: String, message: String },
    /// The endpoint answers, but not as its URL says it should (TLS against a plaintext
    /// port, an HTTP/1 server, an untrusted certificate). Retried, in case it is fixed.
    #[error("{url}: {problem}")]
    Misconfigured { url: String, problem: String },
    #[error("OTLP exporter set-up: {0}")]
    Setup(String),
    #[error("no endpoint configured for {0}")]
    NoEndpoint(&'static str),
}

impl SendError {
    /// Whether sending the same batch again may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            SendError::Status { retryable, .. } | SendError::Http { retryable, .. } => *retryable,
            SendError::Unreachable { .. } | SendError::Misconfigured { .. } => true,
            SendError::Setup(_) | SendError::NoEndpoint(_) => false,
        }
    }

    /// The receiver's requested delay before trying again, if it gave one.
    pub fn delay(&self) -> Option<Duration> {
        match self {
            SendError::Status { delay, .. } => *delay,
            _ => None,
        }
    }

    /// What a failed call to `url` means: a collector's answer, or a transport failure
    /// whatever code tonic gave it.
    fn from_status(s: tonic::Status, url: &str) -> Self {
        match transport_fault(&s) {
            Some(TransportFault::Unreachable(message)) => {
                return SendError::Unreachable {
                    url: url.to_string(),
                    message,
                }
            }
            Some(TransportFault::Misconfigured(problem)) => {
                return SendError::Misconfigured {
                    url: url.to_string(),
                    problem,
                }
            }
            None => {}
        }
        let (retryable, delay) = retry::retryable(s.code(), s.details());
        SendError::Status {
            code: s.code(),
            message: s.message().to_string(),
            retryable,
            delay,
        }
    }
}

/// gRPC clients for the profiles and metrics services.
pub struct OtlpClient {
    profiles: Option<ProfilesServiceClient<Channel>>,
    metrics: Option<MetricsServiceClient<Channel>>,
    profiles_url: String,
    metrics_url: String,
    headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
}

impl OtlpClient {
    /// Builds lazily-connecting clients: a collector that is down now is not an error
    /// until something is sent. Must be called inside a tokio runtime.
    pub fn new(config: &OtlpConfig) -> Result<Self, SendError> {
        let headers = config
            .headers
            .iter()
            .map(|(k, v)| {
                let key = AsciiMetadataKey::from_str(&k.to_ascii_lowercase())
                    .map_err(|_| SendError::Setup(format!("header name {k:?} is not valid")))?;
                let value = AsciiMetadataValue::try_from(v.as_str()).map_err(|_| {
                    SendError::Setup(format!(
                        "header {k:?} has a value gRPC cannot send (not ASCII, or a control character)"
                    ))
                })?;
                Ok((key, value))
            })
            .collect::<Result<_, SendError>>()?;
        let mut profiles = None;
        if let Some(e) = &config.profiles_endpoint {
            let c =
                ProfilesServiceClient::new(channel(e, config)?).max_decoding_message_size(16 << 20);
            profiles = Some(if config.gzip {
                c.send_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Gzip)
            } else {
                c
            });
        }
        let mut metrics = None;
        if let Some(e) = &config.metrics_endpoint {
            let c = MetricsServiceClient::new(channel(e, config)?);
            metrics = Some(if config.gzip {
                c.send_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Gzip)
            } else {
                c
            });
        }
        Ok(OtlpClient {
            profiles,
            metrics,
            profiles_url: config.profiles_endpoint.clone().unwrap_or_default(),
            metrics_url: config.metrics_endpoint.clone().unwrap_or_default(),
            headers,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        for (k, v) in &self.headers {
            r.metadata_mut().insert(k.clone(), v.clone());
        }
        r
    }

    /// Sends profiles once; returns how many profiles the collector rejected (partial
    /// success).
    pub async fn send_profiles(
        &mut self,
        req: ExportProfilesServiceRequest,
    ) -> Result<u64, SendError> {
        let request = self.request(req);
        let client = self
            .profiles
            .as_mut()
            .ok_or(SendError::NoEndpoint("profiles"))?;
        let response = client
            .export(request)
            .await
            .map_err(|s| SendError::from_status(s, &self.profiles_url))?;
        let partial = response.into_inner().partial_success;
        if let Some(p) = partial.filter(|p| p.rejected_profiles > 0 || !p.error_message.is_empty())
        {
            tracing::warn!(
                rejected = p.rejected_profiles,
                message = %p.error_message,
                "the collector rejected part of the profiles"
            );
            return Ok(u64::try_from(p.rejected_profiles).unwrap_or(0));
        }
        Ok(0)
    }

    /// Sends metrics once; returns how many data points the collector rejected.
    pub async fn send_metrics(
        &mut self,
        req: ExportMetricsServiceRequest,
    ) -> Result<u64, SendError> {
        let request = self.request(req);
        let client = self
            .metrics
            .as_mut()
            .ok_or(SendError::NoEndpoint("metrics"))?;
        let response = client
            .export(request)
            .await
            .map_err(|s| SendError::from_status(s, &self.metrics_url))?;
        let partial = response.into_inner().partial_success;
        if let Some(p) =
            partial.filter(|p| p.rejected_data_points > 0 || !p.error_message.is_empty())
        {
            tracing::warn!(
                rejected = p.rejected_data_points,
                message = %p.error_message,
                "the collector rejected part of the metrics"
            );
            return Ok(u64::try_from(p.rejected_data_points).unwrap_or(0));
        }
        Ok(0)
    }
}

pub(crate) fn channel(endpoint: &str, config: &OtlpConfig) -> Result<Channel, SendError> {
    let mut e = Endpoint::from_shared(endpoint.to_string())
        .map_err(|err| SendError::Setup(format!("endpoint {endpoint:?}: {err}")))?
        .timeout(config.timeout)
        .connect_timeout(config.timeout);
    if endpoint.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|err| SendError::Setup(format!("CA file {}: {err}", ca.display())))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => {
                let read = |p: &std::path::Path| {
                    std::fs::read(p)
                        .map_err(|err| SendError::Setup(format!("{}: {err}", p.display())))
                };
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(SendError::Setup(
                    "a client certificate needs its key, and a key its certificate".into(),
                ))
            }
        }
        e = e
            .tls_config(tls)
            .map_err(|err| SendError::Setup(format!("TLS for {endpoint}: {err}")))?;
    }
    Ok(e.connect_lazy())
}
