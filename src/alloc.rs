//! The memory allocator.
//!
//! On Unix postern runs on jemalloc with its background threads on, so
//! memory freed after a burst of sessions goes back to the system within
//! seconds even when the gateway then sits idle (issue 14). glibc's
//! allocator keeps freed memory in the middle of its heaps until something
//! calls `malloc_trim`, and jemalloc without background threads purges only
//! on later allocator activity: a quiet gateway would keep its peak
//! resident for ever. Windows keeps the system allocator.

#[cfg(unix)]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Turns on jemalloc's background purging (Unix); a no-op elsewhere.
/// Called first thing in `main`, before any thread exists.
pub fn return_freed_memory() {
    #[cfg(unix)]
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        // Not fatal: memory is still reused, only returned later.
        eprintln!("postern: warning: jemalloc background purging is off: {e}");
    }
}
