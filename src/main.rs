//! The `tunelake` binary: everything lives in the library; this only boots it.

/// jemalloc, not glibc's malloc: DataFusion and the Delta writer allocate and free large
/// buffers on many threads, and glibc kept the freed memory in the arena of the thread that
/// freed it (two arenas at most, set with `mallopt`, peaked at 290–345 MB in the scale-10
/// full benchmark, varying by 50 MB from run to run), so memory the code stopped holding did
/// not show. jemalloc with one arena (each thread keeps a small cache of its own), dirty
/// pages given back after 250 ms and none kept lazily: 300 → 274 MB on the same code, at
/// the same speed (more system time for the purging, less user time); see
/// benches/RESULTS.md, where mimalloc and jemalloc's default settings (4 arenas a core,
/// 10 s decay) were measured higher.
/// `_RJEM_MALLOC_CONF` in the environment still overrides these settings.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings (see [`ALLOCATOR`]), read by the allocator as a C string at start.
#[cfg(not(target_env = "msvc"))]
#[allow(unsafe_code, non_upper_case_globals)]
// SAFETY: jemalloc reads this symbol as a `const char *`; a reference to a byte array is one
// pointer to bytes that end with a NUL and live as long as the program.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 46] = b"narenas:1,dirty_decay_ms:250,muzzy_decay_ms:0\0";

fn main() -> std::process::ExitCode {
    tunelake::cli::main()
}
