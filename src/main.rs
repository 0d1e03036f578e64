//! The `tunelake` binary: everything lives in the library; this only boots it.

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    tunelake::cli::main()
}

/// glibc's malloc gives threads that contend for the heap arenas of their own, up to eight per
/// core, and memory freed into one arena is not reused by another. DataFusion and the Delta
/// writer hand large buffers between threads, so the spare memory of many arenas adds up: the
/// scale-10 full benchmark peaked at 640 MB with the default and about 500 MB with two
/// arenas, at the same speed (one arena: about 460 MB; mimalloc and jemalloc: 560 MB to 1 GB;
/// benches/RESULTS.md). `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` in the environment still win.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var_os("GLIBC_TUNABLES").is_some()
    {
        return;
    }
    // SAFETY: mallopt only sets a malloc parameter, and this runs first in main, before any
    // thread exists that could be allocating.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
