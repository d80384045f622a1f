//! Profiles as one OTLP `ExportProfilesServiceRequest`: one `ResourceProfiles` per process,
//! one `Profile` per kind (CPU, off-CPU) in it, all sharing one dictionary.

use std::collections::{BTreeMap, HashMap};

use super::dictionary::DictionaryBuilder;
use super::proto::collector::profiles::v1development::ExportProfilesServiceRequest;
use super::proto::profiles::v1development as pb;
use super::proto::resource::v1::Resource;
use super::resource::key_values;
use super::scope;
use crate::Profile;
use emberprof_model::{AttrValue, Attributes};

/// Builds the request. `processes` gives each PID's resource attributes (service.name,
/// process.*, container.id); `common` is added to every resource (host.*, and what
/// `OTEL_RESOURCE_ATTRIBUTES` says) unless the process already has that key.
///
/// The OTLP sample type of each profile is the model's first sample type (`samples/count`
/// for CPU, `off_cpu/nanoseconds` for off-CPU), with the model's period type and period
/// (none for off-CPU). Samples carry `thread.id` and `thread.name` only when the model's
/// samples have them (an opt-in: consumers make series of sample attributes), and samples
/// with the same stack and attributes are merged.
pub fn request(
    profiles: &[&Profile],
    processes: &HashMap<u32, Attributes>,
    common: &Attributes,
) -> ExportProfilesServiceRequest {
    let mut dict = DictionaryBuilder::new();
    let profiles_of = |pid: u32| {
        profiles
            .iter()
            .flat_map(|p| &p.samples)
            .filter(move |s| s.pid == pid)
    };
    let thread_id = "thread.id";
    let thread_name = "thread.name";

    // pid -> one profile per kind, in the order given.
    let mut by_pid: BTreeMap<u32, Vec<pb::Profile>> = BTreeMap::new();
    for profile in profiles {
        // pid -> (stack, attributes) -> value, in first-seen order.
        let mut samples: BTreeMap<u32, Vec<pb::Sample>> = BTreeMap::new();
        let mut index: HashMap<(u32, i32, Vec<i32>), usize> = HashMap::new();
        for s in &profile.samples {
            // A zero or negative value is dropped by Pyroscope's sanitizer: never sent.
            let Some(&value) = s.values.first().filter(|&&v| v > 0) else {
                continue;
            };
            let mut attribute_indices = Vec::new();
            if s.tid != 0 {
                attribute_indices.push(dict.attribute(thread_id, AttrValue::Int(i64::from(s.tid))));
            }
            if !s.thread_name.is_empty() {
                attribute_indices
                    .push(dict.attribute(thread_name, AttrValue::Str(s.thread_name.to_string())));
            }
            let stack_index = dict.stack(&s.stack);
            let of_pid = samples.entry(s.pid).or_default();
            match index.entry((s.pid, stack_index, attribute_indices)) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    let v = &mut of_pid[*e.get()].values[0];
                    *v = v.saturating_add(value);
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    let attribute_indices = e.key().2.clone();
                    e.insert(of_pid.len());
                    of_pid.push(pb::Sample {
                        stack_index,
                        attribute_indices,
                        link_index: 0,
                        values: vec![value],
                        timestamps_unix_nano: Vec::new(),
                    });
                }
            }
        }
        let Some(sample_type) = profile.sample_types.first() else {
            continue;
        };
        for (pid, samples) in samples {
            let sample_type = Some(pb::ValueType {
                type_strindex: dict.string(&sample_type.kind),
                unit_strindex: dict.string(&sample_type.unit),
            });
            let period_type = profile.period_type.as_ref().map(|p| pb::ValueType {
                type_strindex: dict.string(&p.kind),
                unit_strindex: dict.string(&p.unit),
            });
            by_pid.entry(pid).or_default().push(pb::Profile {
                sample_type,
                samples,
                time_unix_nano: u64::try_from(profile.start_unix_nanos()).unwrap_or(0),
                duration_nano: u64::try_from(profile.duration.as_nanos()).unwrap_or(u64::MAX),
                period_type,
                period: profile.period,
                profile_id: profile_id(),
                ..Default::default()
            });
        }
    }

    let resource_profiles = by_pid
        .into_iter()
        .map(|(pid, profiles)| {
            // A process nothing was read of is still a service: the name its samples carry.
            let mut attrs = processes.get(&pid).cloned().unwrap_or_else(|| {
                let name = profiles_of(pid)
                    .next()
                    .map(|s| s.process_name.to_string())
                    .unwrap_or_default();
                vec![("service.name".to_string(), AttrValue::Str(name))]
            });
            for (k, v) in common {
                if !attrs.iter().any(|(key, _)| key == k) {
                    attrs.push((k.clone(), v.clone()));
                }
            }
            pb::ResourceProfiles {
                resource: Some(Resource {
                    attributes: key_values(&attrs),
                    ..Default::default()
                }),
                scope_profiles: vec![pb::ScopeProfiles {
                    scope: Some(scope()),
                    profiles,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }
        })
        .collect();

    ExportProfilesServiceRequest {
        resource_profiles,
        dictionary: Some(dict.finish()),
    }
}

/// Like [`request`], split into several requests of about `max_bytes` at most (collectors
/// refuse gRPC messages over 4 MiB by default), by process: each request carries the
/// dictionary its processes need. A single process larger than the limit goes alone.
pub fn requests(
    profiles: &[&Profile],
    processes: &HashMap<u32, Attributes>,
    common: &Attributes,
    max_bytes: usize,
) -> Vec<ExportProfilesServiceRequest> {
    use prost::Message;
    let whole = request(profiles, processes, common);
    // Nothing to send: Pyroscope refuses a request without resource profiles.
    if whole.resource_profiles.is_empty() {
        return Vec::new();
    }
    if whole.encoded_len() <= max_bytes || whole.resource_profiles.len() < 2 {
        return vec![whole];
    }
    // Group processes greedily by the size of their samples; half the budget is left for
    // the dictionary each group needs. Resources are in the order of their PIDs.
    let pids: std::collections::BTreeSet<u32> = profiles
        .iter()
        .flat_map(|p| &p.samples)
        .filter(|s| s.values.first().is_some_and(|&v| v > 0))
        .map(|s| s.pid)
        .collect();
    let mut groups: Vec<Vec<u32>> = vec![Vec::new()];
    let mut size = 0;
    for (rp, pid) in whole.resource_profiles.iter().zip(pids) {
        let len = rp.encoded_len();
        if size > 0 && size + len > max_bytes / 2 {
            groups.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(g) = groups.last_mut() {
            g.push(pid);
        }
    }
    groups
        .into_iter()
        .filter(|g| !g.is_empty())
        .map(|pids| {
            let parts: Vec<Profile> = profiles
                .iter()
                .map(|p| Profile {
                    samples: p
                        .samples
                        .iter()
                        .filter(|s| pids.contains(&s.pid))
                        .cloned()
                        .collect(),
                    ..(*p).clone()
                })
                .collect();
            let refs: Vec<&Profile> = parts.iter().collect();
            request(&refs, processes, common)
        })
        .collect()
}

/// 16 random bytes, never all zero (the format's "invalid" id).
fn profile_id() -> Vec<u8> {
    let mut id = Vec::with_capacity(16);
    for _ in 0..2 {
        id.extend_from_slice(&crate::random::random_u64().to_le_bytes());
    }
    if id.iter().all(|&b| b == 0) {
        id[0] = 1;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::validate::validate_profiles;
    use crate::testdata;

    #[test]
    fn large_requests_split_by_process_and_keep_every_sample() {
        use prost::Message;
        let mut empty = testdata::profile();
        empty.samples.clear();
        assert!(
            requests(&[&empty], &HashMap::new(), &Vec::new(), 10).is_empty(),
            "an interval without samples sends no profiles request"
        );
        let profile = testdata::profile();
        let whole = request(&[&profile], &HashMap::new(), &Vec::new());
        assert!(whole.resource_profiles.len() >= 2);
        let parts = requests(&[&profile], &HashMap::new(), &Vec::new(), 10);
        assert_eq!(parts.len(), whole.resource_profiles.len());
        let mut total = 0;
        for part in &parts {
            validate_profiles(part).unwrap();
            assert_eq!(part.resource_profiles.len(), 1);
            total += part.resource_profiles[0].scope_profiles[0].profiles[0]
                .samples
                .iter()
                .map(|s| s.values[0])
                .sum::<i64>();
        }
        assert_eq!(total, profile.total(0));
        let one = requests(
            &[&profile],
            &HashMap::new(),
            &Vec::new(),
            whole.encoded_len(),
        );
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn one_resource_per_process_with_valid_indices() {
        let cpu = testdata::profile();
        let mut processes = HashMap::new();
        for s in &cpu.samples {
            processes.insert(
                s.pid,
                vec![
                    ("service.name".to_string(), AttrValue::Str("svc".into())),
                    ("process.pid".to_string(), AttrValue::Int(i64::from(s.pid))),
                ],
            );
        }
        let common = vec![
            ("host.name".to_string(), AttrValue::Str("node-1".into())),
            ("service.name".to_string(), AttrValue::Str("ignored".into())),
        ];
        let req = request(&[&cpu], &processes, &common);
        validate_profiles(&req).unwrap();
        let pids: std::collections::HashSet<u32> = cpu.samples.iter().map(|s| s.pid).collect();
        assert_eq!(req.resource_profiles.len(), pids.len());
        let dict = req.dictionary.as_ref().unwrap();
        for rp in &req.resource_profiles {
            let attrs = &rp.resource.as_ref().unwrap().attributes;
            let names: Vec<&str> = attrs.iter().map(|kv| kv.key.as_str()).collect();
            assert_eq!(names, ["service.name", "process.pid", "host.name"]);
            let p = &rp.scope_profiles[0].profiles[0];
            let st = p.sample_type.unwrap();
            assert_eq!(dict.string_table[st.type_strindex as usize], "samples");
            assert_eq!(dict.string_table[st.unit_strindex as usize], "count");
            let pt = p.period_type.unwrap();
            assert_eq!(dict.string_table[pt.type_strindex as usize], "cpu");
            assert_eq!(p.period, cpu.period);
            assert_eq!(p.profile_id.len(), 16);
        }
        let total: i64 = req
            .resource_profiles
            .iter()
            .flat_map(|rp| &rp.scope_profiles[0].profiles[0].samples)
            .map(|s| s.values[0])
            .sum();
        assert_eq!(total, cpu.total(0));
    }
}
