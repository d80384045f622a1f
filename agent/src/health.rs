//! emberprof's health catalogue: every metric it reports about itself beyond what each probe
//! (its kernel counters) and each sink (its deliveries) reports, as one table of data. A row names the metric, says what it
//! is, and reads its value from the session's sources; a source that is not there (no
//! off-CPU profiler, no Kubernetes) leaves its rows out. Adding a metric is adding a row.

use std::sync::atomic::Ordering;

use emberprof_model::{HealthCounter, HealthValue, ProfileKind};
use emberprof_symbolizer::SymbolizerStats;

use crate::kubernetes::Kubernetes;
use crate::unwind_loader::{entry_bytes, UnwindStats};

/// What the values are read from.
pub struct Sources<'a> {
    pub symbolizer: &'a SymbolizerStats,
    pub k8s: Option<&'a Kubernetes>,
    /// The unwind tables, unless they are off (`--unwind fp`) or there is no CPU sampler.
    pub unwind: Option<UnwindStats>,
}

/// One metric (or one labelled series of it).
struct Row {
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    /// The label telling series of one metric apart (a reason, a result), if any.
    label: Option<(&'static str, &'static str)>,
    value: fn(&Sources<'_>) -> Option<HealthValue>,
}

use HealthValue::{Count, Level};

/// Bytes of the unwind tables' array in one state.
fn table_bytes(s: &Sources<'_>, entries: fn(&UnwindStats) -> u32) -> Option<HealthValue> {
    s.unwind.map(|u| Level(entry_bytes(entries(&u)) as f64))
}

fn pods(s: &Sources<'_>) -> Option<HealthValue> {
    s.k8s.map(|k| Level(k.pods() as f64))
}

const CATALOGUE: &[Row] = &[
    Row {
        name: "emberprof.symbolizer.lookups",
        description: "Addresses symbolized, by cache result",
        unit: "{address}",
        label: Some(("result", "hit")),
        value: |s| Some(Count(s.symbolizer.cache_hits)),
    },
    Row {
        name: "emberprof.symbolizer.lookups",
        description: "Addresses symbolized, by cache result",
        unit: "{address}",
        label: Some(("result", "miss")),
        value: |s| Some(Count(s.symbolizer.cache_misses)),
    },
    Row {
        name: "emberprof.symbolizer.cache.entries",
        description: "Kernel addresses held resolved in the symbolizer's cache",
        unit: "1",
        label: None,
        value: |s| Some(Level(s.symbolizer.cache_entries as f64)),
    },
    Row {
        name: "emberprof.symbolizer.cache.bytes",
        description: "Memory the symbolizer's caches hold, by part (parsed: heap of parsed files; mapped: their resident pages; locations; kernel)",
        unit: "By",
        label: Some(("part", "parsed")),
        value: |s| Some(Level(s.symbolizer.parsed_heap_bytes as f64)),
    },
    Row {
        name: "emberprof.symbolizer.cache.bytes",
        description: "Memory the symbolizer's caches hold, by part (parsed: heap of parsed files; mapped: their resident pages; locations; kernel)",
        unit: "By",
        label: Some(("part", "mapped")),
        value: |s| Some(Level(s.symbolizer.mapped_resident_bytes as f64)),
    },
    Row {
        name: "emberprof.symbolizer.cache.bytes",
        description: "Memory the symbolizer's caches hold, by part (parsed: heap of parsed files; mapped: their resident pages; locations; kernel)",
        unit: "By",
        label: Some(("part", "locations")),
        value: |s| Some(Level(s.symbolizer.location_bytes as f64)),
    },
    Row {
        name: "emberprof.symbolizer.cache.bytes",
        description: "Memory the symbolizer's caches hold, by part (parsed: heap of parsed files; mapped: their resident pages; locations; kernel)",
        unit: "By",
        label: Some(("part", "kernel")),
        value: |s| Some(Level(s.symbolizer.kernel_bytes as f64)),
    },
    Row {
        name: "emberprof.symbolizer.processes",
        description: "Processes whose mappings the symbolizer holds",
        unit: "1",
        label: None,
        value: |s| Some(Level(s.symbolizer.processes_held as f64)),
    },
    Row {
        name: "emberprof.symbolizer.files",
        description: "Files the symbolizer holds open",
        unit: "1",
        label: None,
        value: |s| Some(Level(s.symbolizer.files as f64)),
    },
    Row {
        name: "emberprof.symbolizer.debuginfod.pending",
        description: "Debug files being fetched from debuginfod",
        unit: "1",
        label: None,
        value: |s| Some(Level(s.symbolizer.debuginfod_pending as f64)),
    },
    Row {
        name: "emberprof.symbolizer.files.resets",
        description: "Times the symbolizer's open files passed their limit and were all let go",
        unit: "1",
        label: None,
        value: |s| Some(Count(s.symbolizer.file_resets)),
    },
    Row {
        name: "emberprof.symbolizer.cache.resets",
        description: "Times the kernel address cache reached its limit and started over",
        unit: "1",
        label: None,
        value: |s| Some(Count(s.symbolizer.cache_resets)),
    },
    Row {
        name: "emberprof.symbolizer.files.parsed",
        description: "Times a file's symbols were parsed, the first time and again after its parsed state was let go",
        unit: "1",
        label: Some(("when", "first")),
        value: |s| Some(Count(s.symbolizer.files_parsed - s.symbolizer.reparses)),
    },
    Row {
        name: "emberprof.symbolizer.files.parsed",
        description: "Times a file's symbols were parsed, the first time and again after its parsed state was let go",
        unit: "1",
        label: Some(("when", "again")),
        value: |s| Some(Count(s.symbolizer.reparses)),
    },
    Row {
        name: "emberprof.unwind.tables",
        description: "Unwind tables compiled for the kernel's walker: one per file, however many processes map it",
        unit: "{table}",
        label: None,
        value: |s| s.unwind.map(|u| Count(u.tables_compiled)),
    },
    Row {
        name: "emberprof.unwind.table.misses",
        description: "Times a file's unwind table was wanted for a process and did not fit under --unwind-table-mib even after evicting unused tables (the file is walked by frame pointers)",
        unit: "{table}",
        label: None,
        value: |s| s.unwind.map(|u| Count(u.misses)),
    },
    Row {
        name: "emberprof.unwind.table.evictions",
        description: "Unwind tables no listed process used, evicted to make room for another",
        unit: "{table}",
        label: None,
        value: |s| s.unwind.map(|u| Count(u.evictions)),
    },
    Row {
        name: "emberprof.unwind.table.bytes",
        description: "Kernel memory of the unwind tables' array (--unwind-table-mib, allocated at start), by state (used: tables of listed processes; unused: kept until their room is needed; free)",
        unit: "By",
        label: Some(("state", "used")),
        value: |s| table_bytes(s, |u| u.used_entries),
    },
    Row {
        name: "emberprof.unwind.table.bytes",
        description: "Kernel memory of the unwind tables' array (--unwind-table-mib, allocated at start), by state (used: tables of listed processes; unused: kept until their room is needed; free)",
        unit: "By",
        label: Some(("state", "unused")),
        value: |s| table_bytes(s, |u| u.unused_entries),
    },
    Row {
        name: "emberprof.unwind.table.bytes",
        description: "Kernel memory of the unwind tables' array (--unwind-table-mib, allocated at start), by state (used: tables of listed processes; unused: kept until their room is needed; free)",
        unit: "By",
        label: Some(("state", "free")),
        value: |s| table_bytes(s, |u| u.capacity_entries - u.used_entries - u.unused_entries),
    },
    Row {
        name: "emberprof.symbolizer.parse.nanoseconds",
        description: "Time spent symbolizing in files not held parsed (first parses and re-parses)",
        unit: "ns",
        label: None,
        value: |s| Some(Count(s.symbolizer.parse_ns)),
    },
    Row {
        name: "emberprof.symbolizer.evictions",
        description: "Times the symbolizer let go of a file's parsed state, or of its resolved locations, to stay under its memory bound",
        unit: "1",
        label: Some(("what", "parsed")),
        value: |s| Some(Count(s.symbolizer.parsed_released)),
    },
    Row {
        name: "emberprof.symbolizer.evictions",
        description: "Times the symbolizer let go of a file's parsed state, or of its resolved locations, to stay under its memory bound",
        unit: "1",
        label: Some(("what", "locations")),
        value: |s| Some(Count(s.symbolizer.evictions)),
    },
    Row {
        name: "emberprof.symbolizer.debug_files",
        description: "Files named from a separate debug file",
        unit: "1",
        label: None,
        value: |s| Some(Count(s.symbolizer.debug_files)),
    },
    Row {
        name: "emberprof.symbolizer.jit_frames",
        description: "Frames named from a perf map (JIT code)",
        unit: "1",
        label: None,
        value: |s| Some(Count(s.symbolizer.jit_frames)),
    },
    Row {
        name: "emberprof.symbolizer.processes.adopted",
        description: "Processes captured when first sampled, before the next drain",
        unit: "1",
        label: None,
        value: |s| Some(Count(s.symbolizer.processes_adopted)),
    },
    Row {
        name: "emberprof.symbolizer.debuginfod.requests",
        description: "debuginfod lookups by outcome",
        unit: "1",
        label: Some(("result", "fetched")),
        value: |s| Some(Count(s.symbolizer.debuginfod_fetched)),
    },
    Row {
        name: "emberprof.symbolizer.debuginfod.requests",
        description: "debuginfod lookups by outcome",
        unit: "1",
        label: Some(("result", "not_found")),
        value: |s| Some(Count(s.symbolizer.debuginfod_not_found)),
    },
    Row {
        name: "emberprof.symbolizer.debuginfod.requests",
        description: "debuginfod lookups by outcome",
        unit: "1",
        label: Some(("result", "error")),
        value: |s| Some(Count(s.symbolizer.debuginfod_errors)),
    },
    Row {
        name: "emberprof.symbolizer.file_errors",
        description: "Files whose symbols could not be read",
        unit: "{file}",
        label: None,
        value: |s| Some(Count(s.symbolizer.file_errors)),
    },
    Row {
        name: "emberprof.symbolizer.perf_map.refused",
        description:
            "Perf maps not used: not a regular file, owned by another user, or writable by others",
        unit: "{file}",
        label: Some(("reason", "not_regular")),
        value: |s| Some(Count(s.symbolizer.perf_maps.refused_not_regular)),
    },
    Row {
        name: "emberprof.symbolizer.perf_map.refused",
        description:
            "Perf maps not used: not a regular file, owned by another user, or writable by others",
        unit: "{file}",
        label: Some(("reason", "owner")),
        value: |s| Some(Count(s.symbolizer.perf_maps.refused_owner)),
    },
    Row {
        name: "emberprof.symbolizer.perf_map.refused",
        description:
            "Perf maps not used: not a regular file, owned by another user, or writable by others",
        unit: "{file}",
        label: Some(("reason", "writable")),
        value: |s| Some(Count(s.symbolizer.perf_maps.refused_writable)),
    },
    Row {
        name: "emberprof.symbolizer.perf_map.lines.skipped",
        description: "Perf map lines skipped",
        unit: "{line}",
        label: Some(("reason", "not_utf8")),
        value: |s| Some(Count(s.symbolizer.perf_maps.lines_not_utf8)),
    },
    Row {
        name: "emberprof.symbolizer.perf_map.lines.skipped",
        description: "Perf map lines skipped",
        unit: "{line}",
        label: Some(("reason", "malformed")),
        value: |s| Some(Count(s.symbolizer.perf_maps.lines_malformed)),
    },
    Row {
        name: "emberprof.symbolizer.perf_map.names.cut",
        description: "Perf map names longer than the cap, cut",
        unit: "{name}",
        label: None,
        value: |s| Some(Count(s.symbolizer.perf_maps.names_cut)),
    },
    Row {
        name: "emberprof.symbolizer.perf_map.read_bytes",
        description: "Bytes read from perf maps (only what was appended since the last read)",
        unit: "By",
        label: None,
        value: |s| Some(Count(s.symbolizer.perf_maps.bytes_read)),
    },
    Row {
        name: "emberprof.symbolizer.perf_map.symbols.dropped",
        description: "Perf map symbols not kept: a process's or the host's bound was reached",
        unit: "{symbol}",
        label: None,
        value: |s| Some(Count(s.symbolizer.perf_maps.symbols_dropped)),
    },
    Row {
        name: "emberprof.symbolizer.perf_map.bytes",
        description: "Memory held for perf maps (symbol indexes and cached names)",
        unit: "By",
        label: None,
        value: |s| Some(Level(s.symbolizer.perf_maps.bytes as f64)),
    },
    Row {
        name: "emberprof.k8s.pods",
        description: "Pods of this node held from the Kubernetes API",
        unit: "1",
        label: None,
        value: pods,
    },
    Row {
        name: "emberprof.k8s.lists",
        description: "Complete pod lists received (first and re-lists)",
        unit: "1",
        label: None,
        value: |s| s.k8s.map(|k| Count(k.stats.lists.load(Ordering::Relaxed))),
    },
    Row {
        name: "emberprof.k8s.events",
        description: "Pod changes received from the watch",
        unit: "1",
        label: None,
        value: |s| s.k8s.map(|k| Count(k.stats.events.load(Ordering::Relaxed))),
    },
    Row {
        name: "emberprof.k8s.errors",
        description: "Pod watch errors (each retried with backoff)",
        unit: "1",
        label: None,
        value: |s| s.k8s.map(|k| Count(k.stats.errors.load(Ordering::Relaxed))),
    },
];

/// How full a profile kind's kernel count map got: the highest share in use at a drain. One
/// series per profile kind the session runs (`map=cpu_counts`, `offcpu_counts`, …).
pub fn map_fill(kind: ProfileKind, fill: f64) -> HealthCounter {
    HealthCounter {
        name: "emberprof.map.fill",
        description: "Highest share of a kernel count map in use at a drain",
        unit: "1",
        attributes: vec![("map", format!("{}_counts", kind.id()))],
        value: Level(fill),
    }
}

/// Every metric of the catalogue that `sources` has a value for.
pub fn counters(sources: &Sources<'_>) -> Vec<HealthCounter> {
    CATALOGUE
        .iter()
        .filter_map(|row| {
            Some(HealthCounter {
                name: row.name,
                description: row.description,
                unit: row.unit,
                attributes: row
                    .label
                    .map(|(k, v)| vec![(k, v.to_string())])
                    .unwrap_or_default(),
                value: (row.value)(sources)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_missing_sources_are_left_out_and_each_series_is_unique() {
        let stats = SymbolizerStats {
            cache_hits: 5,
            ..Default::default()
        };
        let without_k8s = Sources {
            symbolizer: &stats,
            k8s: None,
            unwind: None,
        };
        let all = counters(&without_k8s);
        let get = |name: &str, label: Option<&str>| {
            all.iter()
                .find(|c| c.name == name && c.attributes.first().map(|(_, v)| v.as_str()) == label)
                .map(|c| c.value)
        };
        assert_eq!(
            get("emberprof.symbolizer.lookups", Some("hit")),
            Some(Count(5))
        );
        assert!(all.iter().all(|c| !c.name.starts_with("emberprof.k8s")));
        assert!(
            all.iter()
                .all(|c| !c.name.starts_with("emberprof.unwind.table.")),
            "no table rows with --unwind fp"
        );
        let unwind = UnwindStats {
            capacity_entries: 1000,
            used_entries: 600,
            unused_entries: 100,
            misses: 3,
            ..Default::default()
        };
        let with_tables = counters(&Sources {
            symbolizer: &stats,
            k8s: None,
            unwind: Some(unwind),
        });
        let get = |name: &str, label: Option<&str>| {
            with_tables
                .iter()
                .find(|c| c.name == name && c.attributes.first().map(|(_, v)| v.as_str()) == label)
                .map(|c| c.value)
        };
        assert_eq!(get("emberprof.unwind.table.misses", None), Some(Count(3)));
        assert_eq!(
            get("emberprof.unwind.table.bytes", Some("free")),
            Some(Level(2400.0)),
            "300 free entries of 8 bytes"
        );
        // A metric's rows agree on description and unit, and no series repeats.
        let mut seen = std::collections::HashSet::new();
        for row in CATALOGUE {
            let first = CATALOGUE.iter().find(|r| r.name == row.name).unwrap();
            assert_eq!((first.description, first.unit), (row.description, row.unit));
            let key = (
                row.name,
                row.label
                    .map(|(k, v)| vec![(k, v.to_string())])
                    .unwrap_or_default(),
            );
            assert!(seen.insert(key), "{} repeated", row.name);
        }
        // The count maps keep the names the dashboards know.
        for (kind, label) in [
            (ProfileKind::Cpu, "cpu_counts"),
            (ProfileKind::OffCpu, "offcpu_counts"),
        ] {
            let c = map_fill(kind, 0.5);
            assert_eq!(c.attributes, vec![("map", label.to_string())]);
            assert_eq!(c.value, Level(0.5));
        }
    }
}
