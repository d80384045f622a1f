//! Turns drained kernel aggregates into symbolized samples of a profile.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use emberprof_model::{
    CapturedStack, FrameKind, KernelSample, Location, ProfileBuilder, Stack, StackLoss,
};
use emberprof_symbolizer::Symbolizer;

use crate::metadata::attributes::ThreadDetail;
use crate::metadata::process::kernel_thread_kind;

/// Running totals of what was collected, for the summary line.
#[derive(Default)]
pub struct Collected {
    /// Sum of the drained values: samples (CPU) or nanoseconds (off-CPU).
    pub total: u64,
    /// Every process sampled, with what the kernel told of it: its metadata falls back on
    /// this when the process is gone before /proc could be read.
    pub pids: HashMap<u32, Seen>,
    pub stacks: HashSet<Stack>,
    /// Most kernel count-map entries one drain returned: how full the map got.
    pub max_drained: usize,
}

/// What the samples say of a process.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Its name: the comm of its image, as read or announced, else the sampled thread's.
    pub name: Arc<str>,
    /// It is a kernel thread.
    pub kernel_thread: bool,
}

/// Symbolizes one drain's worth of counts and adds them to the profile.
pub fn add(
    counts: &[KernelSample],
    symbolizer: &mut Symbolizer,
    builder: &mut ProfileBuilder,
    collected: &mut Collected,
    threads: ThreadDetail,
    probe_names: &[String],
) {
    let stacks = symbolizer.symbolize(counts);
    collected.max_drained = collected.max_drained.max(counts.len());
    let no_name: Arc<str> = Arc::from("");

    for (c, stack) in counts.iter().zip(stacks) {
        let mut stack = with_loss_markers(without_probe_frames(stack), &c.user, &c.kernel);
        if let Some(hit) = c.probe {
            stack = under_probe(stack, probe_names.get(hit.slot as usize), hit.slot);
        }
        let thread_name: Arc<str> = Arc::from(c.thread_name.as_str());
        let mut process_name = match symbolizer.process_name(c.pid, Some(c.exec_id)) {
            Some(name) => name,
            // Gone before anything was read of it: the sampled thread's name is all there is.
            None => collected
                .pids
                .get(&c.pid)
                .map_or_else(|| thread_name.clone(), |s| s.name.clone()),
        };
        if c.kernel_thread {
            // `kworker/u8:2-events_unbound` is a kworker: one name per kind, not instance.
            process_name = Arc::from(kernel_thread_kind(&process_name));
        }
        let tid = if threads.id { c.tid } else { 0 };
        let shown_thread = if threads.name { &thread_name } else { &no_name };
        match c.probe {
            // Hits, and the time of a probed function's calls: two measured values.
            Some(hit) => {
                let values = [c.value, hit.ns].map(|v| i64::try_from(v).unwrap_or(i64::MAX));
                builder.add(c.pid, &process_name, tid, shown_thread, &stack, &values);
            }
            None => builder.add_periods(c.pid, &process_name, tid, shown_thread, &stack, c.value),
        }
        collected.total += c.value;
        collected.pids.insert(
            c.pid,
            Seen {
                name: process_name,
                kernel_thread: c.kernel_thread,
            },
        );
        collected.stacks.insert(stack);
    }
}

/// Drops the leaf kernel frames that belong to emberprof's own probe (a tracepoint program
/// captures its stack from inside the BPF trampoline).
fn without_probe_frames(stack: Stack) -> Stack {
    let is_probe = |l: &Arc<Location>| {
        l.kind == FrameKind::Kernel
            && l.frames.first().is_some_and(|f| {
                f.function.starts_with("bpf_prog_")
                    || f.function.starts_with("bpf_trace_run")
                    || f.function.starts_with("__bpf_trace_")
            })
    };
    let skip = stack.iter().take_while(|l| is_probe(l)).count();
    if skip == 0 {
        stack
    } else {
        Arc::from(&stack[skip..])
    }
}

/// Puts a probe's stack under a root frame naming the probe, so that a probe profile
/// keeps each probe's hits apart.
fn under_probe(stack: Stack, name: Option<&String>, slot: u32) -> Stack {
    let name = name.map_or_else(|| format!("probe {slot}"), |n| n.clone());
    let mut locations: Vec<Arc<Location>> = stack.iter().cloned().collect();
    locations.push(Arc::new(Location::marker(&format!("[probe {name}]"))));
    Arc::from(locations)
}

/// The frame that holds a process's off-CPU blocks shorter than `--min-block`.
pub const SHORT_BLOCKS_FRAME: &str = "[blocks shorter than --min-block]";

/// Makes lost stacks visible in the profile instead of silently shortening it.
fn with_loss_markers(stack: Stack, user: &CapturedStack, kernel: &CapturedStack) -> Stack {
    let marker = |what: &str, loss: &StackLoss| {
        let text = match loss {
            StackLoss::MapFull => format!("[{what} stack lost: stack map full]"),
            StackLoss::Error(errno) => format!("[{what} stack lost: error {errno}]"),
            // One frame for the whole process: its time is there, not under any stack.
            StackLoss::ShortBlocks => SHORT_BLOCKS_FRAME.to_string(),
        };
        Arc::new(Location::marker(&text))
    };
    let mut locations: Vec<Arc<Location>> = Vec::with_capacity(stack.len() + 1);
    if let CapturedStack::Lost(loss) = kernel {
        locations.push(marker("kernel", loss));
    }
    locations.extend(stack.iter().cloned());
    match user {
        CapturedStack::Lost(loss) => locations.push(marker("user", loss)),
        // Where the walk stopped, and why: never a stack that looks whole but is not.
        CapturedStack::Cut(_, why) => locations.push(Arc::new(Location::marker(&format!(
            "[user stack cut: {}]",
            why.describe()
        )))),
        CapturedStack::None | CapturedStack::Addrs(_) => {}
    }
    if locations.is_empty() {
        locations.push(Arc::new(Location::marker("[no stack]")));
    }
    Arc::from(locations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn count(pid: u32, tid: u32, comm: &str, kernel_thread: bool) -> KernelSample {
        KernelSample {
            pid,
            tid,
            thread_name: comm.to_string(),
            exec_id: 0,
            kernel_thread,
            user: CapturedStack::None,
            kernel: CapturedStack::Lost(StackLoss::MapFull),
            interpreted: CapturedStack::None,
            value: 2,
            probe: None,
        }
    }

    #[test]
    fn names_come_from_the_kernel_and_threads_only_when_asked() {
        // PIDs that do not exist: gone before anything was read of them.
        let counts = [
            count(u32::MAX - 20, 7, "kworker/u8:2-ev", true),
            count(u32::MAX - 20, 8, "kworker/u8:3-ev", true),
            count(u32::MAX - 21, 9, "short-lived", false),
            count(u32::MAX - 21, 10, "short-lived", false),
        ];
        let mut symbolizer = Symbolizer::new();
        let mut builder = ProfileBuilder::cpu(99, UNIX_EPOCH);
        let mut collected = Collected::default();
        add(
            &counts,
            &mut symbolizer,
            &mut builder,
            &mut collected,
            ThreadDetail::default(),
            &[],
        );
        let p = builder.finish(UNIX_EPOCH);
        assert_eq!(p.samples.len(), 2, "threads merge without thread detail");
        for s in &p.samples {
            assert_eq!((s.tid, &*s.thread_name), (0, ""));
            assert_eq!(s.values[0], 4);
        }
        let names: HashSet<&str> = p.samples.iter().map(|s| &*s.process_name).collect();
        assert_eq!(names, HashSet::from(["kworker", "short-lived"]));
        assert!(collected.pids[&(u32::MAX - 20)].kernel_thread);
        assert_eq!(&*collected.pids[&(u32::MAX - 21)].name, "short-lived");

        let mut builder = ProfileBuilder::cpu(99, UNIX_EPOCH);
        add(
            &counts,
            &mut symbolizer,
            &mut builder,
            &mut Collected::default(),
            ThreadDetail::ALL,
            &[],
        );
        assert_eq!(builder.finish(UNIX_EPOCH).samples.len(), 4);
    }

    #[test]
    fn probe_hits_go_under_their_probes_root_frame_with_hits_and_time() {
        let hit = |slot, ns| KernelSample {
            value: 3,
            probe: Some(emberprof_model::ProbeHit { slot, ns }),
            ..count(u32::MAX - 30, 1, "app", false)
        };
        let names = [
            "uprobe:/bin/app:f+stacks".to_string(),
            "tracepoint:a:b".to_string(),
        ];
        let mut builder = ProfileBuilder::probe(UNIX_EPOCH);
        add(
            &[hit(0, 4_000), hit(1, 0), hit(7, 0)],
            &mut Symbolizer::new(),
            &mut builder,
            &mut Collected::default(),
            ThreadDetail::default(),
            &names,
        );
        let p = builder.finish(UNIX_EPOCH);
        let mut roots: Vec<(String, Vec<i64>)> = p
            .samples
            .iter()
            .map(|s| {
                let root = s.stack.last().and_then(|l| l.frames.first());
                (
                    root.map_or(String::new(), |f| f.function.to_string()),
                    s.values.clone(),
                )
            })
            .collect();
        roots.sort();
        assert_eq!(
            roots,
            [
                ("[probe probe 7]".to_string(), vec![3, 0]),
                ("[probe tracepoint:a:b]".to_string(), vec![3, 0]),
                (
                    "[probe uprobe:/bin/app:f+stacks]".to_string(),
                    vec![3, 4_000]
                ),
            ]
        );
    }

    #[test]
    fn a_cut_user_stack_ends_in_a_marker_naming_why() {
        let frame = |name: &str| Arc::new(Location::marker(name));
        let stack: Stack = Arc::from(vec![frame("leaf"), frame("caller")]);
        let user = CapturedStack::Cut(Arc::from(&[1u64, 2][..]), emberprof_model::StackCut::NoRule);
        let marked = with_loss_markers(stack, &user, &CapturedStack::None);
        let names: Vec<&str> = marked
            .iter()
            .map(|l| l.frames.first().map_or("", |f| &*f.function))
            .collect();
        assert_eq!(
            names,
            ["leaf", "caller", "[user stack cut: no unwind rule]"]
        );
        assert_eq!(marked[2].kind, FrameKind::Synthetic);
    }
}
