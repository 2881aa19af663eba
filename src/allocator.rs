//! The memory allocator of fsdb's own programs (the `fsdb` binary, benchmarks, profiles).
//!
//! Our programs use jemalloc for **every** allocation of the process, RocksDB's C++
//! included (tikv-jemalloc-sys's `unprefixed_malloc_on_supported_platforms` makes it
//! `malloc`), configured to give freed memory back to the OS within about a second. With the
//! default `jemalloc` feature, linking fsdb makes jemalloc the process's `malloc`; a program
//! embedding fsdb that wants its own allocator turns the feature off, and `use_jemalloc!()`
//! then does nothing.
//!
//! Why (measured at scale M with `examples/profile_memory.rs`, docs/benchmarks.md): with
//! mimalloc for Rust and glibc for RocksDB, ~300 MiB of the process's RSS was memory already
//! freed — mimalloc holding pages with a few live blocks, glibc holding RocksDB's freed
//! memtable blocks (its mmap threshold grows to their size, so they come from the heap and
//! stay). Configured jemalloc held ~200 MiB less in the same phases.
//!
//! Use it once, at the top of a binary crate: `fsdb::use_jemalloc!();`

/// jemalloc's options, read from the `malloc_conf` symbol at start-up (the `MALLOC_CONF`
/// environment variable overrides them):
/// - `background_thread:true` — a thread purges unused pages, so that an idle process
///   also gives memory back;
/// - `dirty_decay_ms:1000` — freed pages go back to the OS after about a second (default
///   10 s, which keeps the memory of every entity eviction and checkpoint for 10 s);
/// - `muzzy_decay_ms:0` — no second, lazily-freed stage.
pub const JEMALLOC_CONF: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Make jemalloc, configured by [`JEMALLOC_CONF`], the allocator of this program.
#[cfg(feature = "jemalloc")]
#[macro_export]
macro_rules! use_jemalloc {
    () => {
        #[global_allocator]
        static ALLOC: $crate::allocator::Jemalloc = $crate::allocator::Jemalloc;

        /// jemalloc looks its configuration up by this symbol's name: a C string pointer.
        #[expect(unsafe_code, reason = "jemalloc finds its options by the symbol name")]
        // SAFETY: the symbol is a pointer to a NUL-terminated string that lives for the
        // whole program, which is what jemalloc's `const char *malloc_conf` is.
        #[unsafe(export_name = "malloc_conf")]
        static MALLOC_CONF: &u8 = &$crate::allocator::JEMALLOC_CONF[0];
    };
}

/// Without the `jemalloc` feature: the system allocator.
#[cfg(not(feature = "jemalloc"))]
#[macro_export]
macro_rules! use_jemalloc {
    () => {};
}

#[cfg(feature = "jemalloc")]
pub use tikv_jemallocator::Jemalloc;
