//! The C allocator's settings for the long-running server: what `serve` asks of glibc's malloc
//! before it starts any thread.
//!
//! glibc gives threads their own arenas (up to eight per core) so that they rarely contend on a
//! lock. Memory freed into one arena is only reused by allocations made from that arena, and an
//! arena gives pages back only from the top of its heap. The store's page cache churns: a page
//! is loaded by whichever thread reads it (the committer, a blocking-pool thread leasing or
//! retrying, the admin API's retry) and freed by whichever evicts it, so over time every arena
//! that ever held a good part of the cache keeps that much as free but resident memory. Measured
//! with benches/queue-scale.sh at 100,000 queued 1 KiB messages and 20 of 25 MiB (2 cores), peak
//! RSS while `queue retry --domain` made them all due: 102-104 MiB with glibc's default of 16
//! arenas, 79 MiB with 2, 58-65 MiB with 1; at 1,000,000 queued the default reached 144 MiB
//! against the goal of 128 MiB, one arena 70 MiB. Each arena can keep about the cache's size,
//! so the count bounds it. One arena cost accepting, though: benches/accept-vs-postfix.sh gave
//! a ratio to Postfix of 2.74-3.22 with one arena against 3.09-3.62 with glibc's default
//! (alternating runs, 2 cores), since the store's page-sized buffers are too large for glibc's
//! per-thread cache (tcache) and every thread then takes the one arena's lock for them. Two
//! arenas gave 3.31 and 3.50, as the default, so two it is.
//!
//! An operator who sets `MALLOC_ARENA_MAX` in the environment (a machine with many cores may
//! want more arenas) keeps that setting: glibc reads it itself, and it is not overridden here.
//!
//! Only glibc has arenas to limit: the release and the container's static binary
//! (`+crt-static` on `x86_64-unknown-linux-gnu`, docker/Dockerfile) both link glibc's malloc,
//! so both are covered. musl's allocator has no per-thread arenas and no `mallopt`, and other
//! systems' allocators other settings; there this does nothing.

/// The arenas `serve` allows glibc's malloc (see the module docs).
pub const ARENAS: i32 = 2;

/// Limits glibc's malloc to [`ARENAS`] arenas unless `MALLOC_ARENA_MAX` is set. Call before any
/// thread is started: a thread that already has an arena keeps it. Returns whether the limit was
/// set here.
pub fn limit_arenas() -> bool {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false;
    }
    set_arena_max(ARENAS)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(arenas: i32) -> bool {
    // SAFETY: mallopt only changes the allocator's parameters; M_ARENA_MAX is valid at any time
    // and takes effect for threads that have no arena yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: i32) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_the_arena_limit() {
        // mallopt returns 0 for a parameter or value it rejects; the limit must be one glibc
        // takes (the test process's arenas are not changed by it: the option only caps new ones).
        assert!(set_arena_max(ARENAS));
    }
}
