//! pprof (profile.proto) output. User locations carry link-time addresses and mappings are
//! per file segment (not per process), so one profile can hold many processes and a frame
//! left unnamed here can be named by a backend that has the file's debug info: address −
//! mapping start + file offset is its file offset, and the address is what Pyroscope's
//! symbolizer looks up by build ID.

use std::collections::HashMap;
use std::io::Write;

use emberprof_model::{FrameKind, Location, Module, Segment};
use flate2::write::GzEncoder;
use pprof::protos::{self, Message};

use crate::ExportError;
use emberprof_model::Profile;

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
    let period_type = profile.period_type.as_ref().map(|p| protos::ValueType {
        ty: t.string(&p.kind),
        unit: t.string(&p.unit),
    });
    let (pid, tid, thread_name, process_name) = (
        t.string("pid"),
        t.string("tid"),
        t.string("thread_name"),
        t.string("process_name"),
    );

    // Numeric labels are dropped by Pyroscope's ingest; string labels become series there, so
    // thread names go out only when the samples carry them (an opt-in).
    let samples = profile
        .samples
        .iter()
        .map(|s| {
            let mut label = vec![num_label(pid, s.pid)];
            if s.tid != 0 {
                label.push(num_label(tid, s.tid));
            }
            if !s.thread_name.is_empty() {
                label.push(str_label(thread_name, t.string(&s.thread_name)));
            }
            label.push(str_label(process_name, t.string(&s.process_name)));
            protos::Sample {
                location_id: s.stack.iter().map(|l| t.location(l)).collect(),
                value: s.values.clone(),
                label,
            }
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

fn str_label(key: i64, value: i64) -> protos::Label {
    protos::Label {
        key,
        str: value,
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
    mapping_ids: HashMap<(&'p Module, Option<Segment>), u64>,
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

    fn mapping(&mut self, module: &'p Module, segment: Option<Segment>, kind: FrameKind) -> u64 {
        if let Some(&id) = self.mapping_ids.get(&(module, segment)) {
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let filename = self.string(&module.path);
        let build_id = module.build_id.as_deref().map_or(0, |b| self.string(b));
        // A user segment is placed at its link-time address; without one (headers not
        // readable) addresses are file offsets and the mapping is the identity; kernel
        // addresses are absolute.
        let (memory_start, memory_limit, file_offset) = match (segment, kind) {
            (Some(s), _) => (s.start, s.limit, s.file_offset),
            (None, FrameKind::Kernel) => (0, u64::MAX, 0),
            (None, _) => (0, 0, 0),
        };
        self.mappings.push(protos::Mapping {
            id,
            memory_start,
            memory_limit,
            file_offset,
            filename,
            build_id,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        });
        self.mapping_ids.insert((module, segment), id);
        id
    }

    fn location(&mut self, location: &'p Location) -> u64 {
        if let Some(&id) = self.location_ids.get(location) {
            return id;
        }
        let mapping_id = match &location.module {
            Some(m) => self.mapping(m, location.segment, location.kind),
            None => 0,
        };
        let line = if location.frames.is_empty() {
            // An unnamed frame keeps only its address for a backend to name, if it has a
            // module to name it from and an address (a location with neither lines nor an
            // address is deleted by Pyroscope, with every sample that holds it). Else it is
            // named what we know.
            if location.module.is_some() && location.address != 0 {
                Vec::new()
            } else {
                vec![protos::Line {
                    function_id: self.function(&location.to_string(), None),
                    line: 0,
                }]
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
        // An unnamed user frame keeps its module, link-time address and segment for
        // server-side symbolization: address − start + offset is its file offset.
        let unnamed = p.location.iter().find(|l| l.line.is_empty()).unwrap();
        assert_eq!(unnamed.address, 0x4242);
        let m = &p.mapping[unnamed.mapping_id as usize - 1];
        assert_eq!(s(m.filename), "/usr/lib/libfoo.so");
        assert_eq!(
            (m.memory_start, m.memory_limit, m.file_offset),
            (0x4000, 0x5000, 0x3000)
        );
        assert_eq!(unnamed.address - m.memory_start + m.file_offset, 0x3242);
        // Every other location survives Pyroscope's sanitizer through a name.
        for l in p.location.iter().filter(|l| l.id != unnamed.id) {
            assert!(!l.line.is_empty(), "{l:?}");
        }
    }

    #[test]
    fn thread_labels_only_when_samples_carry_them_and_no_period_for_off_cpu() {
        let mut profile = testdata::profile();
        for s in &mut profile.samples {
            s.tid = 0;
            s.thread_name = std::sync::Arc::from("");
        }
        let p = to_proto(&profile);
        let keys: std::collections::BTreeSet<&str> = p
            .sample
            .iter()
            .flat_map(|x| &x.label)
            .map(|l| p.string_table[l.key as usize].as_str())
            .collect();
        assert_eq!(keys, ["pid", "process_name"].into_iter().collect());

        let off = emberprof_model::ProfileBuilder::off_cpu(std::time::UNIX_EPOCH)
            .finish(std::time::UNIX_EPOCH);
        let p = to_proto(&off);
        assert!(p.period_type.is_none());
        assert_eq!(p.period, 0);
        validate(&p).unwrap();
    }
}
