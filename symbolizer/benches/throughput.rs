//! Symbolization throughput and memory, emberprof's symbolizer against blazesym called
//! directly (one `Source::Process` per process, its own caches), on the same stacks in the
//! same run. Not a test: it prints a table. Run: `cargo bench -p emberprof-symbolizer`.
//!
//! Many processes share libraries, as on a real host: PROCESSES copies of one binary are
//! started, and each contributes stacks drawn from the same pool of code addresses (in the
//! binary, libc and the dynamic loader), so the host-wide cache's sharing shows.

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{Input, Symbolizer as Blaze};
use emberprof_model::KernelSample;
use emberprof_symbolizer::{parse_maps, Symbolizer};

const PROCESSES: usize = 40;
const STACKS_PER_PROCESS: usize = 100;
const FRAMES: usize = 12;
/// Distinct code offsets per mapped file that stacks are drawn from.
const POOL: usize = 600;

fn main() {
    if std::env::var_os("EP_BENCH_SLEEP").is_some() {
        // A target: it only needs to exist with its mappings.
        std::thread::sleep(std::time::Duration::from_secs(600));
        return;
    }
    if let Some(variant) = std::env::args()
        .nth(1)
        .filter(|a| a.starts_with("--variant="))
    {
        return measure(variant.trim_start_matches("--variant="));
    }
    let exe = std::env::current_exe().expect("own path");
    let mut targets: Vec<Child> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .env("EP_BENCH_SLEEP", "1")
                .stdout(Stdio::null())
                .spawn()
                .expect("starting a target")
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pids: Vec<String> = targets.iter().map(|c| c.id().to_string()).collect();
    println!(
        "{PROCESSES} processes x {STACKS_PER_PROCESS} stacks x {FRAMES} frames, \
         drawn from {POOL} offsets per file\n"
    );
    println!(
        "{:<26} {:>12} {:>12} {:>12} {:>10}",
        "variant", "cold addr/s", "warm addr/s", "peak RSS MiB", "files"
    );
    let mut rows = Vec::new();
    for variant in ["emberprof", "blazesym"] {
        let out = Command::new(&exe)
            .arg(format!("--variant={variant}"))
            .env("EP_BENCH_PIDS", pids.join(","))
            .output()
            .expect("running a variant");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let nums: Vec<f64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if nums.len() < 4 {
            eprintln!(
                "{variant} failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        }
        println!(
            "{:<26} {:>12.0} {:>12.0} {:>12.1} {:>10}",
            variant, nums[0], nums[1], nums[2], nums[3]
        );
        rows.push(nums);
    }
    if let [ours, theirs] = rows.as_slice() {
        println!(
            "\nratio emberprof/blazesym: cold {:.2}x, warm {:.2}x, peak RSS {:.2}x",
            ours[0] / theirs[0],
            ours[1] / theirs[1],
            ours[2] / theirs[2]
        );
    }
    for t in &mut targets {
        let _ = t.kill();
        let _ = t.wait();
    }
}

/// Deterministic pseudo-random numbers (xorshift), so both variants see the same stacks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Each process's stacks: absolute addresses inside its executable file mappings.
fn stacks(pid: u32) -> Vec<Vec<u64>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let text: Vec<_> = parse_maps(&maps)
        .into_iter()
        .filter(|m| m.executable && m.is_file())
        .collect();
    if text.is_empty() {
        return Vec::new();
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(pid));
    (0..STACKS_PER_PROCESS)
        .map(|_| {
            (0..FRAMES)
                .map(|_| {
                    let m = &text[(rng.next() % text.len() as u64) as usize];
                    // The same pool of offsets in every process: shared code.
                    let slot = rng.next() % POOL as u64;
                    let span = m.end - m.start;
                    m.start + (slot * 0x9e37 * 16) % span
                })
                .collect()
        })
        .collect()
}

fn measure(variant: &str) {
    let pids: Vec<u32> = std::env::var("EP_BENCH_PIDS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|p| p.parse().ok())
        .collect();
    let all: Vec<(u32, Vec<Vec<u64>>)> = pids.iter().map(|&p| (p, stacks(p))).collect();
    let addrs: usize = all
        .iter()
        .map(|(_, s)| s.iter().map(Vec::len).sum::<usize>())
        .sum();
    let (cold, warm, files) = match variant {
        "emberprof" => {
            let mut s = Symbolizer::new();
            let mut pass = || {
                let t = Instant::now();
                for (pid, stacks) in &all {
                    let requests: Vec<KernelSample> = stacks
                        .iter()
                        .map(|st| KernelSample::of(*pid, st, &[]))
                        .collect();
                    std::hint::black_box(s.symbolize(&requests));
                }
                t.elapsed().as_secs_f64()
            };
            let cold = pass();
            let warm = pass();
            (cold, warm, s.stats().files_parsed)
        }
        _ => {
            let blaze = Blaze::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .build();
            let pass = || {
                let t = Instant::now();
                for (pid, stacks) in &all {
                    let flat: Vec<u64> = stacks.iter().flatten().copied().collect();
                    let src = Source::Process(Process::new((*pid).into()));
                    let _ = std::hint::black_box(blaze.symbolize(&src, Input::AbsAddr(&flat)));
                }
                t.elapsed().as_secs_f64()
            };
            let cold = pass();
            let warm = pass();
            (cold, warm, 0)
        }
    };
    let hwm_kib: f64 = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    println!(
        "{} {} {} {}",
        addrs as f64 / cold,
        addrs as f64 / warm,
        hwm_kib / 1024.0,
        files
    );
}
