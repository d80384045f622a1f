//! Turns drained kernel aggregates into symbolized samples of a profile.

use std::collections::HashSet;
use std::sync::Arc;

use emberprof_exporters::ProfileBuilder;
use emberprof_probes::{Stack as RawStack, StackCount, StackLoss};
use emberprof_symbolizer::{FrameKind, Location, Stack, StackRequest, Symbolizer};

/// Running totals of what was collected, for the summary line.
#[derive(Default)]
pub struct Collected {
    pub samples: u64,
    pub pids: HashSet<u32>,
    pub stacks: HashSet<Stack>,
}

/// Symbolizes one drain's worth of counts and adds them to the profile.
pub fn add(
    counts: &[StackCount],
    symbolizer: &mut Symbolizer,
    builder: &mut ProfileBuilder,
    collected: &mut Collected,
) {
    let requests: Vec<StackRequest<'_>> = counts
        .iter()
        .map(|c| StackRequest {
            pid: c.tgid,
            user: addrs(&c.user),
            kernel: addrs(&c.kernel),
        })
        .collect();
    let stacks = symbolizer.symbolize(&requests);

    let period = builder.period();
    for (c, stack) in counts.iter().zip(stacks) {
        let stack = with_loss_markers(stack, &c.user, &c.kernel);
        let thread_name: Arc<str> = Arc::from(c.thread_name.as_str());
        let process_name = symbolizer
            .process_name(c.tgid)
            .unwrap_or_else(|| thread_name.clone());
        let count = i64::try_from(c.count).unwrap_or(i64::MAX);
        builder.add(
            c.tgid,
            &process_name,
            c.tid,
            &thread_name,
            &stack,
            &[count, count.saturating_mul(period)],
        );
        collected.samples += c.count;
        collected.pids.insert(c.tgid);
        collected.stacks.insert(stack);
    }
}

fn addrs(stack: &RawStack) -> &[u64] {
    match stack {
        RawStack::Addrs(a) => a,
        _ => &[],
    }
}

/// Makes lost stacks visible in the profile instead of silently shortening it.
fn with_loss_markers(stack: Stack, user: &RawStack, kernel: &RawStack) -> Stack {
    let marker = |kind: FrameKind, what: &str, loss: &StackLoss| {
        let why = match loss {
            StackLoss::MapFull => "stack map full".to_string(),
            StackLoss::Error(errno) => format!("error {errno}"),
        };
        Arc::new(Location::marker(
            kind,
            &format!("[{what} stack lost: {why}]"),
        ))
    };
    let mut locations: Vec<Arc<Location>> = Vec::with_capacity(stack.len() + 1);
    if let RawStack::Lost(loss) = kernel {
        locations.push(marker(FrameKind::Kernel, "kernel", loss));
    }
    locations.extend(stack.iter().cloned());
    if let RawStack::Lost(loss) = user {
        locations.push(marker(FrameKind::User, "user", loss));
    }
    if locations.is_empty() {
        locations.push(Arc::new(Location::marker(FrameKind::User, "[no stack]")));
    }
    Arc::from(locations)
}
