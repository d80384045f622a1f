//! emberprof's own counters in the Prometheus text exposition format, plus the process's
//! CPU seconds and resident memory.

use std::collections::BTreeMap;
use std::fmt::Write;

use emberprof_model::{HealthCounter, HealthValue};

/// `emberprof.cpu.samples` -> `emberprof_cpu_samples`.
fn metric_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the counters (grouped by metric, one HELP/TYPE each) and process metrics.
pub fn render(counters: &[HealthCounter]) -> String {
    let mut by_name: BTreeMap<String, Vec<&HealthCounter>> = BTreeMap::new();
    for c in counters {
        let name = match c.value {
            HealthValue::Count(_) => format!("{}_total", metric_name(c.name)),
            HealthValue::Level(_) => metric_name(c.name),
        };
        by_name.entry(name).or_default().push(c);
    }
    let mut out = String::new();
    for (name, series) in by_name {
        let first = series[0];
        let kind = match first.value {
            HealthValue::Count(_) => "counter",
            HealthValue::Level(_) => "gauge",
        };
        let _ = writeln!(out, "# HELP {name} {}", first.description);
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for c in series {
            let labels: Vec<String> = c
                .attributes
                .iter()
                .map(|(k, v)| format!("{}=\"{}\"", metric_name(k), escape(v)))
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let value = match c.value {
                HealthValue::Count(n) => n.to_string(),
                HealthValue::Level(x) => x.to_string(),
            };
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    }
    if let Some((cpu, rss)) = own_usage() {
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total CPU time emberprof used."
        );
        let _ = writeln!(out, "# TYPE process_cpu_seconds_total counter");
        let _ = writeln!(out, "process_cpu_seconds_total {cpu}");
        let _ = writeln!(
            out,
            "# HELP process_resident_memory_bytes emberprof's resident memory."
        );
        let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
        let _ = writeln!(out, "process_resident_memory_bytes {rss}");
    }
    out
}

/// (CPU seconds, resident bytes) of this process, from /proc/self.
fn own_usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the ")" that ends the command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(((utime + stime) / ticks, pages * page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges_with_labels() {
        let counters = vec![
            HealthCounter {
                name: "emberprof.cpu.samples",
                description: "samples",
                unit: "1",
                attributes: vec![],
                value: HealthValue::Count(7),
            },
            HealthCounter {
                name: "emberprof.map.fill",
                description: "fill",
                unit: "1",
                attributes: vec![("map", "cpu\"counts".into())],
                value: HealthValue::Level(0.5),
            },
        ];
        let text = render(&counters);
        assert!(
            text.contains(
                "# TYPE emberprof_cpu_samples_total counter\nemberprof_cpu_samples_total 7\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("emberprof_map_fill{map=\"cpu\\\"counts\"} 0.5\n"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }
}
