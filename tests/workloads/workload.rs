//! The Rust test workload, built as a release build is: optimised, without frame pointers,
//! so that its stacks can only be walked by the unwind tables of its `.eh_frame`.
//!
//!   epworkload-rust cpu-split        a spawned thread: 60% rust_burn_heavy, 30%
//!                                    rust_burn_medium, 10% rust_burn_light, each burning
//!                                    in rust_spin
//!   epworkload-rust recurse DEPTH    the main thread burns CPU at the bottom of a DEPTH-deep
//!                                    recursion of rust_recurse
//!
//! Both run until killed. Plain std only: built by tests/support/build.rs with rustc.

use std::hint::black_box;
use std::process::ExitCode;

/// One unit of timed work. Not a divisor of the sampling periods (99 Hz, 999 Hz): a round
/// in lockstep with the sampler would alias the split (the C workload uses the same unit).
const TIME_UNIT_NS: u64 = 730_000;

/// The thread's own CPU time, so that the split holds however often the thread is preempted
/// on a busy host.
#[inline(always)]
fn thread_cpu_ns() -> u64 {
    const SYS_CLOCK_GETTIME: u64 = 228;
    const CLOCK_THREAD_CPUTIME_ID: u64 = 3;
    let mut ts = [0i64; 2];
    // A raw syscall rather than libc's clock_gettime: the sample taken in it stays in the
    // burning function's own frame, whatever the unwinder does with libc.
    // SAFETY: clock_gettime writes one timespec (two i64 on x86-64) to `ts`, which lives
    // until the syscall returns; rcx and r11 are the registers the syscall instruction
    // clobbers.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_CLOCK_GETTIME => _,
            in("rdi") CLOCK_THREAD_CPUTIME_ID,
            in("rsi") ts.as_mut_ptr(),
            out("rcx") _,
            out("r11") _,
            options(nostack),
        );
    }
    (ts[0] as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts[1] as u64)
}

/// Burns `units` of thread CPU time. Shared by the three split functions, so that each
/// one's share is seen only through its caller: a walk that loses the caller loses the split.
#[inline(never)]
fn rust_spin(units: u64) -> u64 {
    let end = thread_cpu_ns() + units * TIME_UNIT_NS;
    let mut acc = 0u64;
    loop {
        for i in 0..20_000u64 {
            acc = black_box(acc.wrapping_add(i));
        }
        if thread_cpu_ns() >= end {
            return acc;
        }
    }
}

// Each keeps a use of the result after the call: a tail call would leave it out of the stack.

#[inline(never)]
fn rust_burn_heavy(units: u64) -> u64 {
    black_box(rust_spin(black_box(units))).wrapping_add(1)
}

#[inline(never)]
fn rust_burn_medium(units: u64) -> u64 {
    black_box(rust_spin(black_box(units))).wrapping_add(2)
}

#[inline(never)]
fn rust_burn_light(units: u64) -> u64 {
    black_box(rust_spin(black_box(units))).wrapping_add(3)
}

/// The split, forever: 6, 3 and 1 units per round.
#[inline(never)]
fn rust_cpu_split() {
    loop {
        black_box(rust_burn_heavy(6));
        black_box(rust_burn_medium(3));
        black_box(rust_burn_light(1));
    }
}

/// Burns about a millisecond of CPU by iterations (the recursion test counts frames, not
/// time).
#[inline(never)]
fn rust_recursion_leaf() -> u64 {
    let mut acc = 0u64;
    for i in 0..400_000u64 {
        acc = black_box(acc.wrapping_add(i));
    }
    acc
}

/// Calls itself `depth` times, then the leaf; the work after the call and the frame's own
/// array keep it a real call, neither a loop nor a tail call.
#[inline(never)]
fn rust_recurse(depth: u32) -> u64 {
    let mut frame = [0u8; 16];
    frame[0] = depth as u8;
    black_box(&mut frame);
    let below = if depth == 0 {
        rust_recursion_leaf()
    } else {
        rust_recurse(black_box(depth - 1))
    };
    below.wrapping_add(u64::from(black_box(frame[0])))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("cpu-split") => {
            // On a spawned thread, so that its stacks are rooted at the thread's entry.
            match std::thread::spawn(rust_cpu_split).join() {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
        Some("recurse") => {
            let Some(depth) = args.get(2).and_then(|d| d.parse::<u32>().ok()) else {
                eprintln!("usage: epworkload-rust recurse DEPTH");
                return ExitCode::from(2);
            };
            loop {
                black_box(rust_recurse(black_box(depth)));
            }
        }
        _ => {
            eprintln!("usage: epworkload-rust cpu-split | recurse DEPTH");
            ExitCode::from(2)
        }
    }
}
