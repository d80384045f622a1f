//! The `ProfilesDictionary` of one export request: every table deduplicated, entry 0 the
//! zero value, as the format requires.

use std::collections::HashMap;

use emberprof_model::{FrameKind, Location, Module, Segment};

use super::proto::profiles::v1development as pb;
use super::resource::to_any;
use emberprof_model::AttrValue;

/// Builds the dictionary; every `*_index` it returns points into it.
pub struct DictionaryBuilder {
    dict: pb::ProfilesDictionary,
    strings: HashMap<String, i32>,
    functions: HashMap<(i32, i32), i32>,
    mappings: HashMap<(String, Option<String>, Option<Segment>, FrameKind), i32>,
    locations: HashMap<Location, i32>,
    stacks: HashMap<Vec<i32>, i32>,
    attributes: HashMap<(String, AttrValue), i32>,
}

impl Default for DictionaryBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl DictionaryBuilder {
    /// A dictionary holding only the zero entries.
    pub fn new() -> Self {
        let dict = pb::ProfilesDictionary {
            mapping_table: vec![pb::Mapping::default()],
            location_table: vec![pb::Location::default()],
            function_table: vec![pb::Function::default()],
            link_table: vec![pb::Link::default()],
            string_table: vec![String::new()],
            attribute_table: vec![pb::KeyValueAndUnit::default()],
            stack_table: vec![pb::Stack::default()],
        };
        let mut strings = HashMap::new();
        strings.insert(String::new(), 0);
        // The zero entries are real values too: an empty stack or a nameless function must
        // map to them, not to a duplicate.
        let mut functions = HashMap::new();
        functions.insert((0, 0), 0);
        let mut stacks = HashMap::new();
        stacks.insert(Vec::new(), 0);
        DictionaryBuilder {
            dict,
            strings,
            functions,
            mappings: HashMap::new(),
            locations: HashMap::new(),
            stacks,
            attributes: HashMap::new(),
        }
    }

    /// Index of a string.
    pub fn string(&mut self, s: &str) -> i32 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.dict.string_table.len() as i32;
        self.dict.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    /// Index of an attribute (key, value) without a unit.
    pub fn attribute(&mut self, key: &str, value: AttrValue) -> i32 {
        let id = (key.to_string(), value);
        if let Some(&i) = self.attributes.get(&id) {
            return i;
        }
        let key_strindex = self.string(key);
        let i = self.dict.attribute_table.len() as i32;
        self.dict.attribute_table.push(pb::KeyValueAndUnit {
            key_strindex,
            value: Some(to_any(&id.1)),
            unit_strindex: 0,
        });
        self.attributes.insert(id, i);
        i
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> i32 {
        let name = self.string(name);
        let file = file.map_or(0, |f| self.string(f));
        let next = self.dict.function_table.len() as i32;
        let i = *self.functions.entry((name, file)).or_insert(next);
        if i == next {
            self.dict.function_table.push(pb::Function {
                name_strindex: name,
                system_name_strindex: name,
                filename_strindex: file,
                start_line: 0,
            });
        }
        i
    }

    fn mapping(&mut self, module: &Module, segment: Option<Segment>, kind: FrameKind) -> i32 {
        let id = (
            module.path.to_string(),
            module.build_id.as_deref().map(str::to_string),
            segment,
            kind,
        );
        if let Some(&i) = self.mappings.get(&id) {
            return i;
        }
        let filename_strindex = self.string(&module.path);
        let attribute_indices = match &module.build_id {
            Some(b) => vec![self.attribute(
                "process.executable.build_id.gnu",
                AttrValue::Str(b.to_string()),
            )],
            None => Vec::new(),
        };
        let i = self.dict.mapping_table.len() as i32;
        // User addresses are link-time addresses in their segment, so that address − start +
        // offset is the file offset (pprof's rule) and the address is what Pyroscope's
        // symbolizer looks up; without a segment they are file offsets (identity mapping);
        // kernel addresses are absolute.
        let (memory_start, memory_limit, file_offset) = match (segment, kind) {
            (Some(s), _) => (s.start, s.limit, s.file_offset),
            (None, FrameKind::Kernel) => (0, u64::MAX, 0),
            (None, _) => (0, 0, 0),
        };
        self.dict.mapping_table.push(pb::Mapping {
            memory_start,
            memory_limit,
            file_offset,
            filename_strindex,
            attribute_indices,
        });
        self.mappings.insert(id, i);
        i
    }

    /// Index of a location, its mapping, functions and frame-type attribute.
    pub fn location(&mut self, loc: &Location) -> i32 {
        if let Some(&i) = self.locations.get(loc) {
            return i;
        }
        let mapping_index = loc
            .module
            .as_deref()
            .map_or(0, |m| self.mapping(m, loc.segment, loc.kind));
        let mut lines: Vec<pb::Line> = loc
            .frames
            .iter()
            .map(|f| pb::Line {
                function_index: self.function(&f.function, f.file.as_deref()),
                line: i64::from(f.line),
                column: 0,
            })
            .collect();
        // Pyroscope deletes a location with neither lines nor an address, and every sample
        // that holds it: an unnamed frame keeps only its address for a backend to name when
        // it has a module to name it from, and is otherwise named what we know.
        if lines.is_empty() && (loc.module.is_none() || loc.address == 0) {
            lines.push(pb::Line {
                function_index: self.function(&loc.to_string(), None),
                line: 0,
                column: 0,
            });
        }
        // The frame type of the OpenTelemetry semantic conventions (the eBPF profiler sets
        // it too). Pyroscope ignores location attributes; other consumers may not.
        let frame_type = loc.kind.otel_frame_type();
        let attribute_indices =
            vec![self.attribute("profile.frame.type", AttrValue::Str(frame_type.to_string()))];
        let i = self.dict.location_table.len() as i32;
        self.dict.location_table.push(pb::Location {
            mapping_index,
            address: loc.address,
            lines,
            attribute_indices,
        });
        self.locations.insert(loc.clone(), i);
        i
    }

    /// Index of a stack of locations, leaf first.
    pub fn stack(&mut self, locations: &[std::sync::Arc<Location>]) -> i32 {
        let indices: Vec<i32> = locations.iter().map(|l| self.location(l)).collect();
        if let Some(&i) = self.stacks.get(&indices) {
            return i;
        }
        let i = self.dict.stack_table.len() as i32;
        self.dict.stack_table.push(pb::Stack {
            location_indices: indices.clone(),
        });
        self.stacks.insert(indices, i);
        i
    }

    /// The finished dictionary.
    pub fn finish(self) -> pb::ProfilesDictionary {
        self.dict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emberprof_model::Frame;
    use std::sync::Arc;

    fn loc(name: &str, addr: u64) -> Arc<Location> {
        Arc::new(Location {
            kind: FrameKind::Native,
            module: Some(Arc::new(Module {
                path: Arc::from("/bin/app"),
                build_id: Some(Arc::from("abcd")),
            })),
            address: addr,
            segment: None,
            frames: vec![Frame {
                function: Arc::from(name),
                file: Some(Arc::from("app.c")),
                line: 3,
            }],
        })
    }

    #[test]
    fn tables_start_with_zero_values_and_deduplicate() {
        let mut d = DictionaryBuilder::new();
        let a = d.stack(&[loc("f", 1), loc("main", 2)]);
        let b = d.stack(&[loc("f", 1), loc("main", 2)]);
        let c = d.stack(&[loc("main", 2)]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let dict = d.finish();
        assert_eq!(dict.string_table[0], "");
        assert_eq!(dict.stack_table[0], pb::Stack::default());
        assert_eq!(dict.location_table[0], pb::Location::default());
        assert_eq!(dict.function_table[0], pb::Function::default());
        assert_eq!(dict.mapping_table[0], pb::Mapping::default());
        assert_eq!(dict.attribute_table[0], pb::KeyValueAndUnit::default());
        assert_eq!(dict.stack_table.len(), 3);
        let mut d = DictionaryBuilder::new();
        assert_eq!(d.stack(&[]), 0, "the empty stack is entry 0");
        assert_eq!(dict.location_table.len(), 3);
        assert_eq!(dict.function_table.len(), 3);
        assert_eq!(dict.mapping_table.len(), 2);
        let mut strings = dict.string_table.clone();
        strings.sort();
        strings.dedup();
        assert_eq!(
            strings.len(),
            dict.string_table.len(),
            "no duplicate strings"
        );
    }

    #[test]
    fn python_frames_are_typed_cpython_with_their_file_and_line() {
        let mut d = DictionaryBuilder::new();
        let py = Arc::new(Location {
            kind: FrameKind::Python,
            module: None,
            address: 0,
            segment: None,
            frames: vec![Frame {
                function: Arc::from("work.hot_a"),
                file: Some(Arc::from("/srv/work.py")),
                line: 12,
            }],
        });
        d.stack(&[py, loc("_PyEval_EvalFrameDefault", 7)]);
        let dict = d.finish();
        let s = |i: i32| dict.string_table[i as usize].as_str();
        let type_of = |l: &pb::Location| {
            let a = &dict.attribute_table[l.attribute_indices[0] as usize];
            assert_eq!(s(a.key_strindex), "profile.frame.type");
            match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(crate::otlp::proto::common::v1::any_value::Value::StringValue(t)) => t.clone(),
                other => panic!("frame type {other:?}"),
            }
        };
        let py = &dict.location_table[1];
        assert_eq!(type_of(py), "cpython");
        assert_eq!(py.mapping_index, 0, "no ELF mapping for a Python frame");
        let f = &dict.function_table[py.lines[0].function_index as usize];
        assert_eq!(
            (s(f.name_strindex), s(f.filename_strindex)),
            ("work.hot_a", "/srv/work.py")
        );
        assert_eq!(py.lines[0].line, 12);
        assert_eq!(type_of(&dict.location_table[2]), "native");
    }
}
