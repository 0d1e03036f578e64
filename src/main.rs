//! The `tunelake` binary: everything lives in the library; this only boots it.

/// jemalloc with one arena and freed pages given back soon, not glibc's malloc: DataFusion and
/// the Delta writer allocate and free large buffers on many threads, and glibc kept freed
/// memory in the arena of the thread that freed it (docs/decisions/003-allocator.md).
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

/// Purges every jemalloc arena's freed pages now (`arena.<MALLCTL_ARENAS_ALL>.purge`).
#[cfg(not(target_env = "msvc"))]
#[allow(unsafe_code)]
fn purge() {
    // SAFETY: a NUL-terminated control name, with no value read or written.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

fn main() -> std::process::ExitCode {
    #[cfg(not(target_env = "msvc"))]
    tunelake::memory::on_release(purge);
    tunelake::cli::main()
}
