//! pprof (profile.proto) output. User locations carry file offsets in their module, and
//! mappings are per file (not per process), so one profile can hold many processes.

use std::collections::HashMap;
use std::io::Write;

use emberprof_symbolizer::{FrameKind, Location, Module};
use flate2::write::GzEncoder;
use pprof::protos::{self, Message};

use crate::{ExportError, Profile};

/// Writes the profile as gzipped protobuf, what `go tool pprof` and Pyroscope read.
pub fn write(profile: &Profile, out: impl Write) -> Result<(), ExportError> {
    let bytes = encode(profile)?;
    let mut gz = GzEncoder::new(out, flate2::Compression::default());
    gz.write_all(&bytes)?;
    gz.finish()?;
    Ok(())
}

/// The uncompressed protobuf bytes.
pub fn encode(profile: &Profile) -> Result<Vec<u8>, ExportError> {
    let message = to_proto(profile);
    let mut bytes = Vec::with_capacity(message.encoded_len());
    message
        .encode(&mut bytes)
        .map_err(|e| ExportError::Encode(e.to_string()))?;
    Ok(bytes)
}

/// The profile as pprof messages.
pub fn to_proto(profile: &Profile) -> protos::Profile {
    let mut t = Tables::default();
    t.string(""); // index 0 is the empty string, by the format's rule

    let sample_type = profile
        .sample_types
        .iter()
        .map(|v| protos::ValueType {
            ty: t.string(&v.kind),
            unit: t.string(&v.unit),
        })
        .collect();
    let period_type = Some(protos::ValueType {
        ty: t.string(&profile.period_type.kind),
        unit: t.string(&profile.period_type.unit),
    });
    let (pid, tid, thread_name, process_name) = (
        t.string("pid"),
        t.string("tid"),
        t.string("thread_name"),
        t.string("process_name"),
    );

    let samples = profile
        .samples
        .iter()
        .map(|s| protos::Sample {
            location_id: s.stack.iter().map(|l| t.location(l)).collect(),
            value: s.values.clone(),
            label: vec![
                num_label(pid, s.pid),
                num_label(tid, s.tid),
                protos::Label {
                    key: thread_name,
                    str: t.string(&s.thread_name),
                    ..Default::default()
                },
                protos::Label {
                    key: process_name,
                    str: t.string(&s.process_name),
                    ..Default::default()
                },
            ],
        })
        .collect();

    let default_sample_type = profile.sample_types.last().map_or(0, |v| t.string(&v.kind));
    protos::Profile {
        sample_type,
        sample: samples,
        mapping: t.mappings,
        location: t.locations,
        function: t.functions,
        string_table: t.strings,
        time_nanos: profile.start_unix_nanos(),
        duration_nanos: i64::try_from(profile.duration.as_nanos()).unwrap_or(i64::MAX),
        period_type,
        period: profile.period,
        default_sample_type,
        ..Default::default()
    }
}

fn num_label(key: i64, value: u32) -> protos::Label {
    protos::Label {
        key,
        num: i64::from(value),
        ..Default::default()
    }
}

/// Deduplicating tables; ids are 1-based positions, as pprof requires them non-zero.
#[derive(Default)]
struct Tables<'p> {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<protos::Function>,
    function_ids: HashMap<(i64, i64), u64>,
    mappings: Vec<protos::Mapping>,
    mapping_ids: HashMap<&'p Module, u64>,
    locations: Vec<protos::Location>,
    location_ids: HashMap<&'p Location, u64>,
}

impl<'p> Tables<'p> {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let name = self.string(name);
        let file = file.map_or(0, |f| self.string(f));
        if let Some(&id) = self.function_ids.get(&(name, file)) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        self.functions.push(protos::Function {
            id,
            name,
            system_name: name,
            filename: file,
            start_line: 0,
        });
        self.function_ids.insert((name, file), id);
        id
    }

    fn mapping(&mut self, module: &'p Module, kind: FrameKind) -> u64 {
        if let Some(&id) = self.mapping_ids.get(module) {
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let filename = self.string(&module.path);
        let build_id = module.build_id.as_deref().map_or(0, |b| self.string(b));
        self.mappings.push(protos::Mapping {
            id,
            // User addresses are file offsets, kernel addresses absolute: both map 1:1.
            memory_start: 0,
            memory_limit: if kind == FrameKind::Kernel {
                u64::MAX
            } else {
                0
            },
            file_offset: 0,
            filename,
            build_id,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        });
        self.mapping_ids.insert(module, id);
        id
    }

    fn location(&mut self, location: &'p Location) -> u64 {
        if let Some(&id) = self.location_ids.get(location) {
            return id;
        }
        let mapping_id = match &location.module {
            Some(m) => self.mapping(m, location.kind),
            None => 0,
        };
        let line = if location.frames.is_empty() {
            // Unnamed but without a module to resolve it later: name it what we know.
            match location.module {
                Some(_) => Vec::new(),
                None => vec![protos::Line {
                    function_id: self.function(&location.to_string(), None),
                    line: 0,
                }],
            }
        } else {
            location
                .frames
                .iter()
                .map(|f| protos::Line {
                    function_id: self.function(&f.function, f.file.as_deref()),
                    line: i64::from(f.line),
                })
                .collect()
        };
        let id = self.locations.len() as u64 + 1;
        self.locations.push(protos::Location {
            id,
            mapping_id,
            address: location.address,
            line,
            is_folded: false,
        });
        self.location_ids.insert(location, id);
        id
    }
}

/// Checks that every id a pprof profile references exists and every string index is in
/// range; the first problem found is returned.
pub fn validate(p: &protos::Profile) -> Result<(), String> {
    let strings = p.string_table.len() as i64;
    if p.string_table.first().map(String::as_str) != Some("") {
        return Err("string_table[0] must be the empty string".into());
    }
    let str_ok = |i: i64, what: &str| {
        if (0..strings).contains(&i) {
            Ok(())
        } else {
            Err(format!(
                "{what}: string index {i} out of range (table has {strings})"
            ))
        }
    };
    let ids = |ids: Vec<u64>, what: &str| -> Result<std::collections::HashSet<u64>, String> {
        let mut set = std::collections::HashSet::new();
        for id in ids {
            if id == 0 || !set.insert(id) {
                return Err(format!("{what} id {id} is zero or repeated"));
            }
        }
        Ok(set)
    };
    let mappings = ids(p.mapping.iter().map(|m| m.id).collect(), "mapping")?;
    let functions = ids(p.function.iter().map(|f| f.id).collect(), "function")?;
    let locations = ids(p.location.iter().map(|l| l.id).collect(), "location")?;
    for v in p.sample_type.iter().chain(p.period_type.as_ref()) {
        str_ok(v.ty, "value type")?;
        str_ok(v.unit, "value unit")?;
    }
    for m in &p.mapping {
        str_ok(m.filename, "mapping filename")?;
        str_ok(m.build_id, "mapping build_id")?;
    }
    for f in &p.function {
        str_ok(f.name, "function name")?;
        str_ok(f.system_name, "function system_name")?;
        str_ok(f.filename, "function filename")?;
    }
    for l in &p.location {
        if l.mapping_id != 0 && !mappings.contains(&l.mapping_id) {
            return Err(format!(
                "location {} names missing mapping {}",
                l.id, l.mapping_id
            ));
        }
        if let Some(line) = l.line.iter().find(|x| !functions.contains(&x.function_id)) {
            return Err(format!(
                "location {} names missing function {}",
                l.id, line.function_id
            ));
        }
    }
    for (i, s) in p.sample.iter().enumerate() {
        if s.value.len() != p.sample_type.len() {
            return Err(format!(
                "sample {i} has {} values for {} types",
                s.value.len(),
                p.sample_type.len()
            ));
        }
        if let Some(id) = s.location_id.iter().find(|id| !locations.contains(id)) {
            return Err(format!("sample {i} names missing location {id}"));
        }
        for label in &s.label {
            str_ok(label.key, "label key")?;
            str_ok(label.str, "label value")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;
    use std::io::Read;

    fn decode(gz: &[u8]) -> protos::Profile {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut raw)
            .unwrap();
        protos::Profile::decode(raw.as_slice()).unwrap()
    }

    #[test]
    fn round_trips_with_consistent_tables() {
        let profile = testdata::profile();
        let mut gz = Vec::new();
        write(&profile, &mut gz).unwrap();
        let p = decode(&gz);
        validate(&p).unwrap();

        let s = |i: i64| p.string_table[i as usize].as_str();
        let types: Vec<(&str, &str)> = p.sample_type.iter().map(|v| (s(v.ty), s(v.unit))).collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        let period_type = p.period_type.as_ref().unwrap();
        assert_eq!(
            (s(period_type.ty), s(period_type.unit)),
            ("cpu", "nanoseconds")
        );
        assert_eq!(p.period, 1_000_000_000 / 99);
        assert_eq!(p.sample.len(), profile.samples.len());
        let total: i64 = p.sample.iter().map(|x| x.value[0]).sum();
        assert_eq!(total, profile.total(0));
    }

    #[test]
    fn validate_catches_dangling_ids() {
        let mut p = to_proto(&testdata::profile());
        p.sample[0].location_id.push(9999);
        assert!(validate(&p).unwrap_err().contains("missing location 9999"));
        let mut p = to_proto(&testdata::profile());
        p.location[0].line[0].function_id = 777;
        assert!(validate(&p).unwrap_err().contains("missing function 777"));
        let mut p = to_proto(&testdata::profile());
        p.string_table[0] = "x".into();
        assert!(validate(&p).is_err());
    }

    #[test]
    fn labels_mappings_and_inlined_lines() {
        let p = to_proto(&testdata::profile());
        let s = |i: i64| p.string_table[i as usize].as_str();
        let first = &p.sample[0];
        let label = |k: &str| first.label.iter().find(|l| s(l.key) == k).unwrap();
        assert_eq!(label("pid").num, 100);
        assert_eq!(label("tid").num, 101);
        assert_eq!(s(label("thread_name").str), "worker");

        let app = p
            .mapping
            .iter()
            .find(|m| s(m.filename) == "/opt/app/bin/app")
            .unwrap();
        assert_eq!(s(app.build_id), "abcdef0123");
        // The inlined location: innermost line first, caller last.
        let inl = p.location.iter().find(|l| l.line.len() == 2).unwrap();
        let names: Vec<&str> = inl
            .line
            .iter()
            .map(|l| s(p.function[l.function_id as usize - 1].name))
            .collect();
        assert_eq!(names, ["inlined_helper", "compute"]);
        assert_eq!(inl.line[0].line, 12);
        // An unnamed user frame keeps its module and offset for server-side symbolization.
        let unnamed = p.location.iter().find(|l| l.line.is_empty()).unwrap();
        assert_eq!(unnamed.address, 0x4242);
        assert_ne!(unnamed.mapping_id, 0);
    }
}
