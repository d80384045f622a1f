//! On-demand profiles for `/debug/pprof/profile` and `/debug/pprof/flamegraph`: a separate
//! CPU sampler for the requested seconds, so the agent's own intervals are untouched.

use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use emberprof_exporters::{pprof, svg};
use emberprof_probes::CpuSamplerConfig;
use emberprof_symbolizer::Symbolizer;

use super::OnDemand;
use crate::metadata::attributes::ExtraAttributes;
use crate::session::{Session, SessionConfig};

/// Longest profile one request may ask for.
const MAX_SECONDS: u64 = 300;

/// Query parameters: `seconds` (default 30, as Go's handler), `pid`, `hz` (default 99).
#[derive(Debug, PartialEq, Eq)]
pub struct Params {
    pub seconds: u64,
    pub pid: Option<u32>,
    pub hz: u64,
}

impl Params {
    /// Parses the query string; bad values are errors naming the parameter.
    pub fn parse(query: &str) -> anyhow::Result<Params> {
        let mut p = Params {
            seconds: 30,
            pid: None,
            hz: 99,
        };
        for pair in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "seconds" => {
                    p.seconds = v
                        .parse()
                        .ok()
                        .filter(|s| (1..=MAX_SECONDS).contains(s))
                        .with_context(|| format!("seconds={v}: use 1 to {MAX_SECONDS}"))?
                }
                "pid" => p.pid = Some(v.parse().with_context(|| format!("pid={v}: not a PID"))?),
                "hz" => {
                    p.hz = v
                        .parse()
                        .ok()
                        .filter(|h| (1..=1000).contains(h))
                        .with_context(|| format!("hz={v}: use 1 to 1000"))?
                }
                _ => bail!("unknown parameter {k:?} (seconds, pid, hz)"),
            }
        }
        Ok(p)
    }
}

/// Samples the machine (or one process) and returns a gzipped pprof, or an SVG; emberprof
/// itself only with `profile_self` (or its PID).
pub fn profile(params: &Params, svg_output: bool, on_demand: OnDemand) -> anyhow::Result<Vec<u8>> {
    let pids: Vec<u32> = params.pid.into_iter().collect();
    let mut symbolizer = Symbolizer::new();
    for pid in &pids {
        symbolizer.observe(*pid);
    }
    let start = SystemTime::now();
    let mut session = Session::start(SessionConfig {
        cpu: Some(CpuSamplerConfig {
            profile_self: on_demand.profile_self,
            unwind_entries: on_demand.unwind_entries,
            ..CpuSamplerConfig::new(params.hz, pids)
        }),
        off_cpu: None,
        latency: None,
        symbolizer,
        // An on-demand local profile: thread ids and names included.
        extra: ExtraAttributes::parse(&["all".to_string()]).map_err(anyhow::Error::msg)?,
        attributes: false,
        start,
        count_map_entries: CpuSamplerConfig::new(params.hz, Vec::new()).count_map_entries,
        python: on_demand.python,
        probe_points: None,
    })
    .context("starting a CPU sampler for the request")?;
    std::thread::sleep(Duration::from_secs(params.seconds));
    session.stop().context("stopping the request's sampler")?;
    let span = session.end_span(SystemTime::now());
    drop(session);
    let mut out = Vec::new();
    for profile in &span.profiles {
        if svg_output {
            svg::write(profile, 0, &mut out)?;
        } else {
            pprof::write(profile, &mut out)?;
        }
    }
    Ok(out)
}

/// emberprof's own CPU profile (`/debug/pprof/self`), sampled in-process with SIGPROF, for
/// debugging the agent itself. One at a time.
pub fn self_profile(params: &Params) -> anyhow::Result<Vec<u8>> {
    use ::pprof::protos::Message;
    let guard = ::pprof::ProfilerGuardBuilder::default()
        .frequency(i32::try_from(params.hz).unwrap_or(99))
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .context("starting the in-process profiler (is another /debug/pprof/self running?)")?;
    std::thread::sleep(Duration::from_secs(params.seconds));
    let report = guard
        .report()
        .build()
        .context("building the in-process profile")?;
    let profile = report.pprof().context("encoding the in-process profile")?;
    let mut raw = Vec::new();
    profile
        .encode(&mut raw)
        .context("encoding the in-process profile")?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &raw).context("compressing the profile")?;
    gz.finish().context("compressing the profile")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_bounds_the_query() {
        assert_eq!(
            Params::parse("").unwrap(),
            Params {
                seconds: 30,
                pid: None,
                hz: 99
            }
        );
        assert_eq!(Params::parse("seconds=2&pid=42").unwrap().pid, Some(42));
        assert!(Params::parse("seconds=0").is_err());
        assert!(Params::parse("seconds=100000").is_err());
        assert!(Params::parse("pid=abc").is_err());
        assert!(Params::parse("debug=1").is_err());
    }
}
