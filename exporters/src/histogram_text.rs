//! Latency histograms as text, in the style of the classic BPF run-queue latency tools:
//! one row per log2 bucket with its range, count and a bar, then count, sum and p50/p90/p99.
//!
//! ```text
//! syscall latency, nanosleep, cgroup /
//!              range (lo, hi] :      count  distribution
//!    8.39 ms -> 16.8 ms           :         20 |****************************************|
//!   count 20, sum 201 ms, mean 10.1 ms, p50 12.6 ms, p90 16 ms, p99 16.7 ms
//! ```
//! A row `lo -> hi` holds durations d with lo < d <= hi (the OTLP scale-0 bucket).

use std::fmt::Write;

use emberprof_model::Log2Histogram;

const BAR_WIDTH: usize = 40;

/// Renders one histogram under a title line; an empty histogram renders as the title and
/// `(no events)`.
pub fn render(title: &str, h: &Log2Histogram) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let slots = h.slots();
    let first = slots.iter().position(|&c| c != 0);
    let last = slots.iter().rposition(|&c| c != 0);
    if h.is_empty() {
        let _ = writeln!(out, "  (no events)");
        return out;
    }
    let max = slots.iter().copied().max().unwrap_or(0).max(h.zero_count());
    let _ = writeln!(
        out,
        "{:>27} : {:>10}  distribution",
        "range (lo, hi]", "count"
    );
    if h.zero_count() > 0 {
        row(&mut out, "0", "0 ns", h.zero_count(), max);
    }
    if let (Some(first), Some(last)) = (first, last) {
        for (slot, &count) in slots.iter().enumerate().take(last + 1).skip(first) {
            let (lo, hi) = Log2Histogram::slot_bounds(slot);
            row(&mut out, &duration(lo), &duration(hi), count, max);
        }
    }
    let count = h.count();
    let q = |p: f64| h.quantile(p).map_or_else(|| "-".to_string(), duration);
    let _ = writeln!(
        out,
        "  count {count}, sum {}, mean {}, p50 {}, p90 {}, p99 {}",
        duration(h.sum_ns() as f64),
        duration(h.sum_ns() as f64 / count as f64),
        q(0.50),
        q(0.90),
        q(0.99),
    );
    out
}

fn row(out: &mut String, lo: &str, hi: &str, count: u64, max: u64) {
    let filled = if max == 0 {
        0
    } else {
        // Any non-zero count gets at least one star so that rare slow events stay visible.
        (((count as f64 / max as f64) * BAR_WIDTH as f64).round() as usize)
            .clamp(usize::from(count > 0), BAR_WIDTH)
    };
    let _ = writeln!(
        out,
        "{lo:>13} -> {hi:<10} : {count:>10} |{:<BAR_WIDTH$}|",
        "*".repeat(filled)
    );
}

/// A duration in ns with three significant digits and a unit: `512 ns`, `1.02 us`,
/// `16.8 ms`, `2.15 s`.
pub fn duration(ns: f64) -> String {
    let (value, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "us")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let text = format!("{value:.digits$}");
    // 1.00 -> 1, 2.50 -> 2.5: the trailing zeros carry no information here.
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_have_three_significant_digits() {
        assert_eq!(duration(0.5), "0.5 ns");
        assert_eq!(duration(512.0), "512 ns");
        assert_eq!(duration(1024.0), "1.02 us");
        assert_eq!(duration(8_388_608.0), "8.39 ms");
        assert_eq!(duration(16_777_216.0), "16.8 ms");
        assert_eq!(duration(2e9), "2 s");
    }

    #[test]
    fn renders_rows_from_first_to_last_bucket_with_quantiles() {
        let mut h = Log2Histogram::new();
        for _ in 0..20 {
            h.record(10_050_000);
        }
        h.record(3_000);
        let text = render("syscall latency, nanosleep, cgroup /", &h);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "syscall latency, nanosleep, cgroup /");
        // 3 us is in (2.05 us, 4.1 us]; 10 ms in (8.39 ms, 16.8 ms]: 12 rows from one to the other.
        let rows: Vec<&&str> = lines.iter().filter(|l| l.contains(" -> ")).collect();
        assert_eq!(rows.len(), 24 - 12 + 1);
        assert!(rows[0].contains("2.05 us -> 4.1 us"), "{}", rows[0]);
        let last = rows.last().unwrap();
        assert!(last.contains("8.39 ms -> 16.8 ms"), "{last}");
        assert!(
            last.contains(&format!(": {:>10} |{}|", 20, "*".repeat(40))),
            "{last}"
        );
        // 1 of 20 is 2 of 40 stars.
        assert!(rows[0].contains(&format!(": {:>10} |**{}|", 1, " ".repeat(38))));
        // Empty rows in between have no bar; a count far below the maximum still gets one star.
        assert!(rows[1].contains(&format!(": {:>10} |{}|", 0, " ".repeat(40))));
        let summary = lines.last().unwrap();
        assert!(summary.starts_with("  count 21, sum 201 ms"), "{summary}");
        assert!(summary.contains("p99 16."), "{summary}");
    }

    #[test]
    fn empty_histogram_says_so() {
        let text = render("run-queue latency, cgroup /", &Log2Histogram::new());
        assert_eq!(text, "run-queue latency, cgroup /\n  (no events)\n");
    }

    #[test]
    fn zero_durations_get_their_own_row() {
        let mut h = Log2Histogram::new();
        h.record(0);
        h.record(2);
        for _ in 0..1000 {
            h.record(4);
        }
        let text = render("t", &h);
        assert!(
            text.contains(&format!(
                "1 ns -> 2 ns       :          1 |*{}|",
                " ".repeat(39)
            )),
            "{text}"
        );
        assert!(text.contains("0 -> 0 ns"), "{text}");
        assert!(text.contains("count 1002, sum 4 us"), "{text}");
    }
}
