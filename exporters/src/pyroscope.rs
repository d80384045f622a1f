//! Pushing pprof profiles to a Grafana Pyroscope server through its ingest API:
//! `POST /ingest?name=<service>{labels}&from=&until=&format=pprof` with the gzipped pprof as
//! the body, one request per series (service and labels), optional basic auth and
//! `X-Scope-OrgID` tenant.

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;

use crate::delivery::SendError;
use crate::{pprof, ExportError};
use emberprof_model::{Profile, Sample};

/// Where and how to push.
#[derive(Clone, Debug)]
pub struct PyroscopeConfig {
    /// Server base URL, e.g. `http://pyroscope:4040`.
    pub url: String,
    /// Basic-auth user and password.
    pub basic_auth: Option<(String, String)>,
    /// `X-Scope-OrgID` header for multi-tenant servers.
    pub tenant: Option<String>,
    /// Deadline of one request.
    pub timeout: Duration,
}

impl PyroscopeConfig {
    /// A server URL with 10 s requests.
    pub fn new(url: &str) -> Self {
        PyroscopeConfig {
            url: url.trim_end_matches('/').to_string(),
            basic_auth: None,
            tenant: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Label values may not hold the characters of the `name{k=v,…}` syntax (Pyroscope reads a
/// value up to the next `,` or `}`, with no escaping).
fn label_value(v: &str) -> String {
    v.chars()
        .map(|c| {
            if matches!(c, '{' | '}' | ',' | '=' | '"') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The application name: Pyroscope accepts `[A-Za-z0-9_./-]` there.
fn app_name(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Label names: Pyroscope accepts `[A-Za-z0-9_.]`.
fn label_name(k: &str) -> String {
    k.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The ingest `name` parameter: `service{service_name=service,k=v,…}`.
pub fn ingest_name(service: &str, labels: &[(String, String)]) -> String {
    let app = app_name(service);
    let mut name = format!("{app}{{service_name={}", label_value(service));
    for (k, v) in labels {
        if k != "service_name" && !k.starts_with("__") {
            name.push_str(&format!(",{}={}", label_name(k), label_value(v)));
        }
    }
    name.push('}');
    name
}

/// One series of a push: its service and labels.
pub type SeriesId = (String, Vec<(String, String)>);

/// One ingest request: a series' pprof of one profile kind.
#[derive(Clone, Debug)]
pub struct IngestRequest {
    /// The `name` parameter: `service{labels}`.
    pub name: String,
    pub from: u64,
    pub until: u64,
    pub sample_rate: Option<i64>,
    /// The gzipped pprof.
    pub body: Vec<u8>,
}

/// The requests of `profile` split by series: `series_of` names each sample's service and
/// labels.
pub fn requests(
    profile: &Profile,
    series_of: impl Fn(&Sample) -> SeriesId,
) -> Result<Vec<IngestRequest>, ExportError> {
    let mut services: Vec<(SeriesId, Vec<Sample>)> = Vec::new();
    for s in &profile.samples {
        let id = series_of(s);
        match services.iter_mut().find(|(n, _)| *n == id) {
            Some((_, v)) => v.push(s.clone()),
            None => services.push((id, vec![s.clone()])),
        }
    }
    let from = profile
        .start
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let until = from + profile.duration.as_secs().max(1);
    services
        .into_iter()
        .map(|((service, labels), samples)| {
            let part = Profile {
                samples,
                ..profile.clone()
            };
            let mut body = Vec::new();
            pprof::write(&part, &mut body)?;
            Ok(IngestRequest {
                name: ingest_name(&service, &labels),
                from,
                until,
                sample_rate: sample_rate(profile),
                body,
            })
        })
        .collect()
}

/// Samples per second of a sampled CPU profile (the ingest API's `sampleRate`).
fn sample_rate(profile: &Profile) -> Option<i64> {
    (profile
        .period_type
        .as_ref()
        .is_some_and(|p| p.kind == "cpu")
        && profile.period > 0)
        .then(|| 1_000_000_000 / profile.period)
}

/// An HTTP client for `config` (its timeout; HTTP errors are answers, not failures).
pub fn agent(config: &PyroscopeConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(config.timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

/// One attempt at sending `request`. A server error (5xx), 429 or no answer may pass on a
/// later attempt; any other refusal will not.
pub fn send(
    agent: &ureq::Agent,
    config: &PyroscopeConfig,
    request: &IngestRequest,
) -> Result<(), SendError> {
    let url = format!("{}/ingest", config.url);
    let mut req = agent
        .post(&url)
        .query("name", &request.name)
        .query("from", request.from.to_string())
        .query("until", request.until.to_string())
        .query("format", "pprof")
        .query("spyName", "emberprof")
        .header("Content-Type", "application/octet-stream");
    if let Some(rate) = request.sample_rate {
        req = req.query("sampleRate", rate.to_string());
    }
    if let Some(t) = &config.tenant {
        req = req.header("X-Scope-OrgID", t);
    }
    if let Some((user, password)) = &config.basic_auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        req = req.header("Authorization", format!("Basic {token}"));
    }
    match req.send(&request.body[..]) {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => {
            let code = resp.status().as_u16();
            Err(SendError::Http {
                url,
                code,
                retryable: code >= 500 || code == 429,
            })
        }
        Err(e) => Err(SendError::Unreachable {
            url,
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_names_escape_the_label_syntax() {
        assert_eq!(
            ingest_name("checkout", &[("host".into(), "node-1".into())]),
            "checkout{service_name=checkout,host=node-1}"
        );
        assert_eq!(ingest_name("a{b}", &[]), "a_b_{service_name=a_b_}");
        assert_eq!(
            ingest_name(
                "ns/web app",
                &[
                    ("k8s.pod.name".into(), "web-1,2".into()),
                    ("bad key".into(), "v".into()),
                    ("__name__".into(), "x".into())
                ]
            ),
            "ns/web_app{service_name=ns/web app,k8s.pod.name=web-1_2,bad_key=v}"
        );
    }
}
