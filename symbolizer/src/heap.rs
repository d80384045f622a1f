//! Measuring the heap the symbolizer's caches hold. A program that installs
//! [`CountingAllocator`] as its global allocator lets each thread count the bytes it
//! allocated minus those it freed; the symbolizer reads that count before and after
//! parsing a file, so what a parse keeps is measured, not estimated from file sizes.
//! Without it installed the counts stay 0 and the symbolizer falls back to estimates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    /// Bytes allocated minus bytes freed on this thread. A const initializer: reading it
    /// never allocates, which an allocator must not do.
    static NET: Cell<i64> = const { Cell::new(0) };
}

/// Set by the first allocation through [`CountingAllocator`].
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting per thread; install with `#[global_allocator]`.
pub struct CountingAllocator;

fn count(bytes: i64) {
    // During thread teardown the thread-local may be gone: that count is not needed.
    let _ = NET.try_with(|n| n.set(n.get().wrapping_add(bytes)));
}

// SAFETY: every call is passed to the system allocator unchanged; only counting is added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
            if !INSTALLED.load(Ordering::Relaxed) {
                INSTALLED.store(true, Ordering::Relaxed);
            }
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

/// Whether heap use is being counted (the program installed [`CountingAllocator`]).
pub fn counting() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// Bytes this thread allocated minus those it freed, since it started.
pub fn thread_net() -> i64 {
    NET.try_with(Cell::get).unwrap_or(0)
}

/// Returns the heap just freed to the system. glibc keeps freed memory for reuse, and its
/// mmap threshold grows after large frees, so tens of MiB of a parse or an unwind table
/// compiled and let go would otherwise stay in our RSS until reused.
pub fn give_back_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator; no pointer is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What a piece of work on this thread kept on the heap: bytes allocated and not freed
/// between `start()` and `kept()`.
pub(crate) struct HeapDelta(i64);

impl HeapDelta {
    pub(crate) fn start() -> HeapDelta {
        HeapDelta(thread_net())
    }

    /// Bytes kept since `start` (negative when more was freed than allocated).
    pub(crate) fn kept(&self) -> i64 {
        thread_net().wrapping_sub(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_thread_keeps_is_counted_and_what_it_frees_is_taken_off() {
        assert!(
            counting(),
            "the test binary installs the counting allocator"
        );
        let d = HeapDelta::start();
        let kept: Vec<u8> = vec![1; 1 << 20];
        let freed: Vec<u8> = vec![2; 1 << 20];
        drop(freed);
        let after = d.kept();
        assert!(
            ((1 << 20)..(1 << 20) + 4096).contains(&after),
            "{after} bytes kept for one 1 MiB buffer"
        );
        // Another thread's allocations are not this thread's.
        std::thread::spawn(|| std::hint::black_box(vec![0u8; 4 << 20]).len())
            .join()
            .unwrap();
        assert!(d.kept() < (2 << 20), "{}", d.kept());
        drop(kept);
        assert!(d.kept().abs() < 4096, "{}", d.kept());
    }
}
