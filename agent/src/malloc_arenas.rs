//! One malloc arena for the whole process.
//!
//! glibc gives threads that allocate at the same time arenas of their own, and what a
//! thread frees stays in its arena: the unwind-table thread's compiles of a large binary's
//! `.eh_frame` left 13–15 MiB resident for good (bench/run.py --phases memory: `record`
//! 80 → 65 MiB steady, the agent 77 → 64 MiB, with one arena). emberprof's threads rarely
//! allocate at the same moment, so sharing one costs nothing measurable.

/// Limits glibc to one arena, unless `MALLOC_ARENA_MAX` says otherwise. Call before any
/// thread starts.
pub fn use_one() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable; no thread allocates yet.
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        if ok != 1 {
            eprintln!("emberprof: warning: cannot limit malloc arenas; memory freed by worker threads may stay resident");
        }
    }
}
