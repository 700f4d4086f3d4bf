//! The allocator of the `dimegate` binary: jemalloc (`tikv-jemallocator`, declared in
//! `main.rs`), with the settings in [`CONF`].
//!
//! glibc's malloc could not give both a small and a fast server. It gives threads their own
//! arenas (up to eight per core), and memory freed into one arena is reused only from that
//! arena. The store's page cache churns: a page is loaded by whichever thread reads it and freed
//! by whichever evicts it, so every arena that ever held a good part of the cache keeps that
//! much as free but resident memory. benches/queue-scale.sh, 100,000 queued 1 KiB messages and
//! 20 of 25 MiB, peak RSS while `queue retry --domain` made them all due: 102-104 MiB with
//! glibc's default of 16 arenas (144 MiB at 1,000,000 queued, against the goal of 128), 79 MiB
//! with 2, 58-65 MiB with 1. Fewer arenas cost accepting, though: the store's 4 KiB pages are
//! too large for glibc's per-thread cache (1032 bytes at most), so every page allocation took an
//! arena lock. benches/accept-vs-postfix.sh, CPU per accepted message, alternating runs on 2
//! cores: 2 arenas 0.250-0.286 ms against 0.206-0.259 ms with the default.
//!
//! jemalloc with [`CONF`] is both: one arena (one heap, as glibc with one arena, so the cache's
//! churn cannot spread), per-thread caches only up to 1 KiB (with its default of 32 KiB the
//! thirty-odd threads of a busy server each kept pages of the cache: 96-109 MiB), and freed
//! pages given back within a second by a background thread. queue-scale.sh: peak RSS 73.6 MiB
//! over the whole 100,000-message run, 82.2 MiB over the whole 1,000,000-message run (queueing,
//! the 200 of 25 MiB, retry, restart and drain). Accepting: 0.209-0.265 ms of CPU per message,
//! against 0.235-0.285 ms for glibc's default arenas and 0.250-0.286 ms for 2, in alternating
//! runs; the end-to-end bench is as fast as with glibc's default or faster.
//!
//! An operator can change these at start with `_RJEM_MALLOC_CONF` (jemalloc's `MALLOC_CONF`,
//! under the prefix this build's jemalloc uses for its symbols), e.g. `narenas:4` on a machine
//! with many cores; it is read after [`CONF`] and wins. C libraries linked in (libsecp256k1,
//! ring's assembly) keep the system's malloc; they allocate next to nothing.

/// jemalloc's options (`malloc_conf`), NUL-terminated: see the module docs.
pub const CONF: &[u8] =
    b"narenas:1,tcache_max:1024,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_options_are_one_c_string() {
        // jemalloc reads up to the first NUL: one at the end, and none before it.
        assert_eq!(CONF.iter().position(|&b| b == 0), Some(CONF.len() - 1));
        let text = std::str::from_utf8(&CONF[..CONF.len() - 1]).unwrap();
        for option in text.split(',') {
            let (name, value) = option.split_once(':').unwrap();
            assert!(!name.is_empty() && !value.is_empty(), "{option}");
        }
    }
}
