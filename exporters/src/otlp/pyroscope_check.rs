//! What Grafana Pyroscope does with an OTLP profiles request, applied here so that tests can
//! hold every request we send to it: which series it becomes, under which profile type and
//! labels, what its sanitizer deletes, and what it rejects. "Valid" is not enough: Pyroscope
//! accepts requests and then silently drops locations and whole samples.
//!
//! Read in grafana/pyroscope v2.2.1 (df3c0391, 2026-08-06) and cross-checked against v1.20.4
//! (2b49131f); both speak opentelemetry-proto 1.10. Each rule names its source as
//! `file:function`. Defaults are those of `pkg/validation/limits.go`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pprof::protos as pp;
use pprof::protos::Message;

use super::proto::collector::profiles::v1development::ExportProfilesServiceRequest;
use super::proto::common::v1::{any_value, AnyValue, KeyValue};
use super::proto::profiles::v1development as pb;

/// `validation.max-label-names-per-series`, `validate.go:ValidateLabels`.
pub const MAX_LABELS_PER_SERIES: usize = 30;
/// `validation.max-length-label-name`.
pub const MAX_LABEL_NAME: usize = 1024;
/// `validation.max-length-label-value`.
pub const MAX_LABEL_VALUE: usize = 2048;
/// `validation.max-profile-stacktrace-sample-labels`, `validate.go:ValidateProfile`.
pub const MAX_SAMPLE_LABELS: usize = 100;
/// `validation.max-profile-stacktrace-depth`: deeper stacks lose their leaf-most frames.
pub const MAX_STACK_DEPTH: usize = 1000;
/// `validation.max-profile-symbol-value-length`: longer strings are cut.
pub const MAX_SYMBOL_LENGTH: usize = 65535;
/// `validation.max-profile-stacktrace-samples`, counted before merging.
pub const MAX_SAMPLES: usize = 16000;
/// `validation.max-profile-size-bytes`, measured on the converted pprof.
pub const MAX_PROFILE_BYTES: usize = 4 << 20;
/// `distributor.ingestion-burst-size-mb`: a series costing more is refused (429) every time
/// (`distributor.go:rateLimit`; cost = converted size + label bytes).
pub const MAX_SERIES_COST: usize = 2 << 20;
/// `validation.reject-older-than` and `validation.reject-newer-than`.
pub const WINDOW_PAST: Duration = Duration::from_secs(3600);
pub const WINDOW_FUTURE: Duration = Duration::from_secs(600);

/// One series Pyroscope stores from the request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// Series labels, sample attributes included (`pprofsplit.VisitSampleSeries`).
    pub labels: BTreeMap<String, String>,
    /// The profile type ID, `__name__:type:unit:period_type:period_unit`
    /// (`phlaredb/labels/labels.go:CreateProfileLabels`).
    pub profile_type: String,
    /// Samples and the sum of their values as sent (after the CPU period is applied).
    pub samples_sent: usize,
    pub value_sent: i64,
    /// What survives the sanitizer (`pprof.go:Normalize`).
    pub samples_kept: usize,
    pub value_kept: i64,
}

/// What Pyroscope makes of one request.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub series: Vec<Series>,
    /// Why the request, or part of it, is refused or cut; empty when accepted whole.
    pub problems: Vec<String>,
}

impl Report {
    /// Whether every sample arrives whole and nothing is refused.
    pub fn lossless(&self) -> bool {
        self.problems.is_empty()
            && self
                .series
                .iter()
                .all(|s| s.samples_kept == s.samples_sent && s.value_kept == s.value_sent)
    }

    /// The distinct `service_name` labels.
    pub fn services(&self) -> HashSet<String> {
        self.series
            .iter()
            .filter_map(|s| s.labels.get("service_name").cloned())
            .collect()
    }
}

/// Applies Pyroscope's ingest rules to `req` as if it arrived at `now`.
pub fn check(req: &ExportProfilesServiceRequest, now: SystemTime) -> Report {
    let mut report = Report::default();
    // ingest_handler.go:export
    let Some(dict) = req.dictionary.as_ref() else {
        report
            .problems
            .push("rejected: missing profile metadata dictionary".into());
        return report;
    };
    if req.resource_profiles.is_empty() {
        report
            .problems
            .push("rejected: missing resource profiles".into());
        return report;
    }
    for rp in &req.resource_profiles {
        let resource: &[KeyValue] = rp.resource.as_ref().map_or(&[], |r| &r.attributes);
        for sp in &rp.scope_profiles {
            let scope: &[KeyValue] = sp.scope.as_ref().map_or(&[], |s| &s.attributes);
            for profile in &sp.profiles {
                if let Err(e) = check_profile(dict, resource, scope, profile, now, &mut report) {
                    report.problems.push(format!("rejected: {e}"));
                }
            }
        }
    }
    report
}

/// `ingest_handler.go:stringValueFromAnyValue`: strings, ints and one-element arrays of
/// them; anything else (and "") is not a label.
fn label_value(v: Option<&AnyValue>) -> Option<String> {
    let s = match v?.value.as_ref()? {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::ArrayValue(a) if a.values.len() == 1 => {
            return label_value(a.values.first());
        }
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

fn at<T>(table: &[T], i: i32, what: &str) -> Result<usize, String> {
    usize::try_from(i)
        .ok()
        .filter(|&i| i < table.len())
        .ok_or_else(|| format!("{what} index {i} outside a table of {}", table.len()))
}

fn string<'a>(dict: &'a pb::ProfilesDictionary, i: i32, what: &str) -> Result<&'a str, String> {
    Ok(&dict.string_table[at(&dict.string_table, i, what)?])
}

/// `convert.go:newProfileBuilder`/`profileType`: the metric name from the sample and period
/// types, the period counting only when it is not 0; "" is refused later as an invalid
/// metric name (`validate.go:ValidateLabels`).
fn profile_name(st: (&str, &str), pt: Option<(&str, &str)>) -> (String, String) {
    let pt = pt.unwrap_or(("", ""));
    let key = format!("{}:{}:{}:{}", st.0, st.1, pt.0, pt.1);
    let name = match key.as_str() {
        "samples:count:cpu:nanoseconds" => "process_cpu".to_string(),
        "off_cpu:nanoseconds::" => "off_cpu".to_string(),
        _ => pt.0.to_string(),
    };
    (name, key)
}

fn check_profile(
    dict: &pb::ProfilesDictionary,
    resource: &[KeyValue],
    scope: &[KeyValue],
    profile: &pb::Profile,
    now: SystemTime,
    report: &mut Report,
) -> Result<(), String> {
    // convert.go:ConvertOtelToGoogle skips a profile without samples.
    if profile.samples.is_empty() {
        return Ok(());
    }
    let st = profile.sample_type.ok_or("sample type is missing")?;
    let st = (
        string(dict, st.type_strindex, "sample type")?,
        string(dict, st.unit_strindex, "sample unit")?,
    );
    let period_type = match profile.period_type {
        Some(pt) if profile.period != 0 => Some((
            string(dict, pt.type_strindex, "period type")?,
            string(dict, pt.unit_strindex, "period unit")?,
        )),
        _ => None,
    };
    let (name, key) = profile_name(st, period_type);
    if name.is_empty() {
        return Err(format!(
            "invalid metric name: {key} names no profile type (validate.go:ValidateLabels)"
        ));
    }
    if st.0.contains('-') {
        return Err(format!("sample type {:?} contains '-'", st.0));
    }
    // The stored sample type: CPU counts become nanoseconds (convert.go:newProfileBuilder).
    let cpu = key == "samples:count:cpu:nanoseconds";
    let stored_type = if cpu { ("cpu", "nanoseconds") } else { st };
    let stored_period = period_type.map_or_else(|| ":".to_string(), |p| format!("{}:{}", p.0, p.1));
    let profile_type = format!("{name}:{}:{}:{stored_period}", stored_type.0, stored_type.1);

    // E1 (validate.go:ValidateProfile, newIngestionWindow): milliseconds, strict bounds.
    if profile.time_unix_nano > 0 {
        let t = UNIX_EPOCH + Duration::from_millis(profile.time_unix_nano / 1_000_000);
        let too_old = now
            .checked_sub(WINDOW_PAST)
            .is_some_and(|oldest| t <= oldest);
        if too_old || t >= now + WINDOW_FUTURE {
            return Err(format!(
                "profile time {} s is outside the ingestion window (now − 1 h, now + 10 min)",
                profile.time_unix_nano / 1_000_000_000
            ));
        }
    }

    // Series labels (ingest_handler.go:export): the fixed ones, then resource and scope
    // attributes, first key wins; service_name from service.name else unknown_service.
    let mut base: Vec<(String, String)> = vec![
        ("__name__".into(), name.clone()),
        ("__delta__".into(), "false".into()),
        ("__otel__".into(), "true".into()),
    ];
    let mut seen: HashSet<String> = HashSet::new();
    for kv in resource.iter().chain(scope) {
        if let Some(v) = label_value(kv.value.as_ref()) {
            if seen.insert(kv.key.clone()) {
                base.push((kv.key.clone(), v));
            }
        }
    }
    let resource_service = resource
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| label_value(kv.value.as_ref()))
        .unwrap_or_else(|| {
            let exe: Vec<String> = resource
                .iter()
                .filter(|kv| kv.key == "process.executable.name")
                .filter_map(|kv| label_value(kv.value.as_ref()))
                .collect();
            std::iter::once("unknown_service".to_string())
                .chain(exe)
                .collect::<Vec<_>>()
                .join(":")
        });

    // Samples by their sample-level service.name (convert.go:ConvertOtelToGoogle), then by
    // their sample labels (pprofsplit.VisitSampleSeries): one series each.
    struct Group {
        sample_labels: Vec<(String, String)>,
        sent: usize,
        value_sent: i64,
        kept: usize,
        value_kept: i64,
    }
    let mut groups: BTreeMap<(String, Vec<(String, String)>), Group> = BTreeMap::new();
    let mut converted: HashMap<String, Converted> = HashMap::new();
    let mut samples_per_service: HashMap<String, usize> = HashMap::new();
    for sample in &profile.samples {
        let mut service = String::new();
        let mut sample_labels = Vec::new();
        if sample.attribute_indices.len() > MAX_SAMPLE_LABELS {
            return Err(format!(
                "a sample has {} attributes, more than {MAX_SAMPLE_LABELS}",
                sample.attribute_indices.len()
            ));
        }
        for &i in &sample.attribute_indices {
            let a = &dict.attribute_table[at(&dict.attribute_table, i, "sample attribute")?];
            let k = string(dict, a.key_strindex, "attribute key")?;
            let Some(v) = label_value(a.value.as_ref()) else {
                continue;
            };
            if k == "service.name" {
                service = v;
            } else if !matches!(k, "trace_id" | "span_id") {
                sample_labels.push((k.to_string(), v));
            }
        }
        sample_labels.sort();
        let link = sample.link_index;
        if link != 0 {
            at(&dict.link_table, link, "link")?;
        }
        let mut values = sample.values.clone();
        if values.is_empty() && !sample.timestamps_unix_nano.is_empty() {
            values = vec![sample.timestamps_unix_nano.len() as i64];
        }
        if values.is_empty() {
            return Err("sample value is required".into());
        }
        if cpu {
            values = values
                .iter()
                .map(|v| v.saturating_mul(profile.period))
                .collect();
        } else if name == "off_cpu" && period_type.is_none() {
            values = vec![values.iter().sum()];
        }
        if period_type.is_some() && values.len() != 1 {
            return Err("sample values length mismatch".into());
        }
        if values.len() != 1 {
            return Err("sample value length mismatch (validate.go:ValidateProfile)".into());
        }
        let value = values[0];
        let stack = &dict.stack_table[at(&dict.stack_table, sample.stack_index, "stack")?];
        if stack.location_indices.len() > MAX_STACK_DEPTH {
            report.problems.push(format!(
                "a stack of {} frames loses its leaf-most frames beyond {MAX_STACK_DEPTH}",
                stack.location_indices.len()
            ));
        }
        // Normalize: negative or all-zero values, then locations with neither lines nor an
        // address (sanitizeProfile), each taking the whole sample with it.
        let mut keep = value > 0;
        let service_key = if service.is_empty() {
            resource_service.clone()
        } else {
            service.clone()
        };
        let conv = converted.entry(service_key.clone()).or_default();
        conv.sample(dict, stack, value)?;
        for &l in &stack.location_indices {
            let loc = &dict.location_table[at(&dict.location_table, l, "location")?];
            if loc.lines.is_empty() && loc.address == 0 {
                keep = false;
            }
        }
        *samples_per_service.entry(service_key.clone()).or_default() += 1;
        let g = groups
            .entry((service_key, sample_labels.clone()))
            .or_insert(Group {
                sample_labels,
                sent: 0,
                value_sent: 0,
                kept: 0,
                value_kept: 0,
            });
        g.sent += 1;
        g.value_sent += value;
        if keep {
            g.kept += 1;
            g.value_kept += value;
        }
    }
    for (service, n) in &samples_per_service {
        if *n > MAX_SAMPLES {
            return Err(format!(
                "service {service}: {n} samples in one profile, more than {MAX_SAMPLES}"
            ));
        }
    }
    for (service, c) in &converted {
        let size = c.encoded_len();
        if size > MAX_PROFILE_BYTES {
            return Err(format!(
                "service {service}: the converted profile has {size} bytes, more than {MAX_PROFILE_BYTES}"
            ));
        }
        if size > MAX_SERIES_COST {
            report.problems.push(format!(
                "service {service}: the converted profile has {size} bytes: past the ingestion burst of {MAX_SERIES_COST}, refused (429) every time"
            ));
        }
    }
    for ((service, _), g) in groups {
        let mut labels: Vec<(String, String)> = base.clone();
        labels.push(("service_name".into(), service));
        // "Existing labels take precedence" over sample labels.
        for (k, v) in g.sample_labels {
            if !labels.iter().any(|(name, _)| *name == k) {
                labels.push((k, v));
            }
        }
        check_labels(&labels, &mut report.problems);
        report.series.push(Series {
            labels: labels.into_iter().collect(),
            profile_type: profile_type.clone(),
            samples_sent: g.sent,
            value_sent: g.value_sent,
            samples_kept: g.kept,
            value_kept: g.value_kept,
        });
    }
    Ok(())
}

/// `validate.go:ValidateLabels` with both label-name regimes: v2.x keeps any UTF-8 name,
/// v1.x (label sanitization on) allows `[A-Za-z_.][A-Za-z0-9_.]*` and turns `.` into `_`,
/// refusing two names that then collide with different values.
fn check_labels(labels: &[(String, String)], problems: &mut Vec<String>) {
    if labels.len() > MAX_LABELS_PER_SERIES {
        problems.push(format!(
            "a series has {} labels, more than {MAX_LABELS_PER_SERIES}",
            labels.len()
        ));
    }
    let mut names: HashSet<&str> = HashSet::new();
    let mut sanitized: HashMap<String, &str> = HashMap::new();
    for (k, v) in labels {
        if !names.insert(k) {
            problems.push(format!("duplicate label name {k}"));
        }
        if k.is_empty() || k.len() > MAX_LABEL_NAME {
            problems.push(format!("label name {k:?} is empty or too long"));
        }
        if v.len() > MAX_LABEL_VALUE {
            problems.push(format!(
                "label {k} has a value of {} bytes, more than {MAX_LABEL_VALUE}",
                v.len()
            ));
        }
        let v1_name = k.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == '.' || (i > 0 && c.is_ascii_digit())
        });
        if !v1_name {
            problems.push(format!("label name {k:?} is refused by Pyroscope 1.x"));
        }
        let under = k.replace('.', "_");
        match sanitized.get(&under) {
            Some(other) if *other != v.as_str() => problems.push(format!(
                "label {k} collides with another as {under} in Pyroscope 1.x"
            )),
            _ => {
                sanitized.insert(under, v);
            }
        }
    }
}

/// The pprof a converted profile becomes, for its size (`convert.go`): locations, functions
/// and strings once each, and a fresh mapping per sample for each mapping its stack uses
/// (`convertMappingBack` appends without looking).
#[derive(Default)]
struct Converted {
    profile: pp::Profile,
    strings: HashMap<String, i64>,
    locations: HashSet<i32>,
    functions: HashSet<i32>,
}

impl Converted {
    fn string(&mut self, s: &str) -> Result<i64, String> {
        if s.len() > MAX_SYMBOL_LENGTH {
            return Err(format!(
                "a string of {} bytes is cut to its last {MAX_SYMBOL_LENGTH}",
                s.len()
            ));
        }
        if self.profile.string_table.is_empty() {
            self.profile.string_table.push(String::new());
            self.strings.insert(String::new(), 0);
        }
        if let Some(&i) = self.strings.get(s) {
            return Ok(i);
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        Ok(i)
    }

    fn sample(
        &mut self,
        dict: &pb::ProfilesDictionary,
        stack: &pb::Stack,
        value: i64,
    ) -> Result<(), String> {
        let mut mappings_of_sample: HashSet<i32> = HashSet::new();
        for &l in &stack.location_indices {
            let loc = &dict.location_table[at(&dict.location_table, l, "location")?];
            let mapping =
                &dict.mapping_table[at(&dict.mapping_table, loc.mapping_index, "mapping")?];
            if mappings_of_sample.insert(loc.mapping_index) {
                let filename =
                    self.string(string(dict, mapping.filename_strindex, "mapping file")?)?;
                let build_id = build_id(dict, mapping)?;
                let build_id = self.string(&build_id)?;
                self.profile.mapping.push(pp::Mapping {
                    id: self.profile.mapping.len() as u64 + 1,
                    memory_start: mapping.memory_start,
                    memory_limit: mapping.memory_limit,
                    file_offset: mapping.file_offset,
                    filename,
                    build_id,
                    ..Default::default()
                });
            }
            if self.locations.insert(l) {
                let mut lines = Vec::new();
                for line in &loc.lines {
                    let f = &dict.function_table
                        [at(&dict.function_table, line.function_index, "function")?];
                    if self.functions.insert(line.function_index) {
                        let name = self.string(string(dict, f.name_strindex, "function name")?)?;
                        let system_name =
                            self.string(string(dict, f.system_name_strindex, "system name")?)?;
                        let filename = self.string(string(dict, f.filename_strindex, "file")?)?;
                        self.profile.function.push(pp::Function {
                            id: self.profile.function.len() as u64 + 1,
                            name,
                            system_name,
                            filename,
                            start_line: f.start_line,
                        });
                    }
                    lines.push(pp::Line {
                        function_id: line.function_index as u64,
                        line: line.line,
                    });
                }
                self.profile.location.push(pp::Location {
                    id: self.profile.location.len() as u64 + 1,
                    mapping_id: self.profile.mapping.len() as u64,
                    address: loc.address,
                    line: lines,
                    is_folded: false,
                });
            }
        }
        self.profile.sample.push(pp::Sample {
            location_id: stack.location_indices.iter().map(|&l| l as u64).collect(),
            value: vec![value],
            label: Vec::new(),
        });
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.profile.encoded_len()
    }
}

/// The mapping's `process.executable.build_id.gnu`, the only build ID Pyroscope reads
/// (`convert.go:convertMappingBack`); its symbolizer fails the whole query on one outside
/// `[a-zA-Z0-9_-]` (`symbolizer.go:extractBuildID`).
fn build_id(dict: &pb::ProfilesDictionary, mapping: &pb::Mapping) -> Result<String, String> {
    for &i in &mapping.attribute_indices {
        let a = &dict.attribute_table[at(&dict.attribute_table, i, "mapping attribute")?];
        if string(dict, a.key_strindex, "attribute key")? == "process.executable.build_id.gnu" {
            let id = label_value(a.value.as_ref()).unwrap_or_default();
            if !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!("build ID {id:?} breaks Pyroscope's symbolizer"));
            }
            return Ok(id);
        }
    }
    Ok(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::profiles::request;
    use crate::testdata;
    use emberprof_model::AttrValue;

    fn now_profile() -> emberprof_model::Profile {
        let mut p = testdata::profile();
        p.start = SystemTime::now() - Duration::from_secs(10);
        p
    }

    fn processes() -> HashMap<u32, emberprof_model::Attributes> {
        [100u32, 200]
            .into_iter()
            .map(|pid| {
                (
                    pid,
                    vec![
                        (
                            "service.name".to_string(),
                            AttrValue::Str(format!("svc{pid}")),
                        ),
                        (
                            "process.executable.name".into(),
                            AttrValue::Str("app".into()),
                        ),
                    ],
                )
            })
            .collect()
    }

    #[test]
    fn our_cpu_profile_arrives_whole_as_process_cpu() {
        let req = request(&[&now_profile()], &processes(), &Vec::new());
        let report = check(&req, SystemTime::now());
        assert!(report.lossless(), "{report:#?}");
        assert!(report
            .series
            .iter()
            .all(|s| s.profile_type == "process_cpu:cpu:nanoseconds:cpu:nanoseconds"));
        let services = report.services();
        assert_eq!(services.len(), 2, "{services:?}");
        let kept: i64 = report.series.iter().map(|s| s.value_kept).sum();
        assert_eq!(
            kept,
            now_profile().total(1),
            "counts × period = nanoseconds"
        );
    }

    #[test]
    fn a_probe_profile_is_ingested_under_its_own_name() {
        let mut probe = emberprof_model::ProfileBuilder::probe(SystemTime::now());
        let p = now_profile();
        for s in &p.samples {
            probe.add(
                s.pid,
                &s.process_name,
                s.tid,
                &s.thread_name,
                &s.stack,
                &[3, 9_000],
            );
        }
        let probe = probe.finish(SystemTime::now());
        let report = check(
            &request(&[&probe], &processes(), &Vec::new()),
            SystemTime::now(),
        );
        assert!(report.lossless(), "{report:#?}");
        assert!(
            report
                .series
                .iter()
                .all(|s| s.profile_type == "probe_hits:probe_hits:count:probe_hits:count"),
            "{report:#?}"
        );
    }

    #[test]
    fn off_cpu_without_a_period_type_is_off_cpu() {
        let mut off = emberprof_model::ProfileBuilder::off_cpu(SystemTime::now());
        let p = now_profile();
        for s in &p.samples {
            off.add(
                s.pid,
                &s.process_name,
                s.tid,
                &s.thread_name,
                &s.stack,
                &[5_000],
            );
        }
        let off = off.finish(SystemTime::now());
        let report = check(
            &request(&[&off], &processes(), &Vec::new()),
            SystemTime::now(),
        );
        assert!(report.lossless(), "{report:#?}");
        assert!(report
            .series
            .iter()
            .all(|s| s.profile_type == "off_cpu:off_cpu:nanoseconds::"));
        // With a period type the same data is another profile type.
        assert_eq!(
            profile_name(("off_cpu", "nanoseconds"), Some(("off_cpu", "nanoseconds"))).1,
            "off_cpu:nanoseconds:off_cpu:nanoseconds"
        );
    }

    #[test]
    fn a_nameless_addressless_location_drops_its_samples() {
        let mut req = request(&[&now_profile()], &processes(), &Vec::new());
        let dict = req.dictionary.as_mut().unwrap();
        // What an unwalkable stack used to end in: no mapping, address 0, no lines.
        dict.location_table.push(pb::Location::default());
        let unknown = dict.location_table.len() as i32 - 1;
        for s in dict.stack_table.iter_mut().skip(1) {
            s.location_indices.push(unknown);
        }
        let report = check(&req, SystemTime::now());
        assert!(!report.lossless());
        assert!(
            report.series.iter().all(|s| s.samples_kept == 0),
            "{report:#?}"
        );
    }

    #[test]
    fn refusals_and_limits() {
        let now = SystemTime::now();
        // Too old: more than an hour before arrival.
        let mut old = now_profile();
        old.start = now - Duration::from_secs(3700);
        let report = check(&request(&[&old], &processes(), &Vec::new()), now);
        assert!(
            report.problems[0].contains("ingestion window"),
            "{report:?}"
        );
        // A sampled profile type Pyroscope has no name for.
        let mut odd = now_profile();
        odd.period_type = None;
        odd.period = 0;
        let report = check(&request(&[&odd], &processes(), &Vec::new()), now);
        assert!(
            report.problems[0].contains("invalid metric name"),
            "{report:?}"
        );
        // Per-thread sample attributes make a series each, and bad label names are named.
        let mut attrs = processes();
        for a in attrs.values_mut() {
            a.push(("bad-key".into(), AttrValue::Str("x".into())));
        }
        let report = check(&request(&[&now_profile()], &attrs, &Vec::new()), now);
        assert!(report
            .series
            .iter()
            .any(|s| s.labels.contains_key("thread.id")));
        assert!(report.series.len() > 2, "{report:#?}");
        assert!(report.problems.iter().any(|p| p.contains("bad-key")));
        // An empty request is refused outright.
        let report = check(&ExportProfilesServiceRequest::default(), now);
        assert!(report.problems[0].contains("dictionary"));
    }
}
