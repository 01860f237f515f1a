//! The process's allocator settings, shared by the server binary and the
//! benchmarks that measure its paths (so that they allocate as the server
//! does). The binary declares mimalloc as the global allocator; this module
//! only sets mimalloc's options and the process's huge-page flag, and must
//! never allocate or keep state.

/// `mi_option_purge_delay` and `mi_option_allow_thp` in mimalloc.h's `mi_option_t`.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// The server's allocator defaults; `MIMALLOC_PURGE_DELAY` and
/// `MIMALLOC_ALLOW_THP` still override them.
///
/// - Freed memory goes back to the OS after 10 ms (mimalloc v2's default)
///   instead of v3's 1 s: under overload a second of retained peaks is about
///   100 MiB of RSS, for a few percent of throughput.
/// - The process keeps to 4 KiB pages. mimalloc asks for transparent huge
///   pages, and with that prompt purging each reuse of a purged range faults
///   in and zeroes a whole 2 MiB page: under wrk that zeroing was 9 % of the
///   server's CPU, and peak RSS fell from 95 to 67 MiB without it
///   (docs/perf.md). mimalloc only turns THP off for the process at load,
///   before this default is set, so the kernel flag is set here.
pub fn tune() {
    // SAFETY: these set options' default values; mimalloc reads options atomically.
    unsafe {
        libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, 10);
        libmimalloc_sys::mi_option_set_default(MI_OPTION_ALLOW_THP, 0);
    }
    // SAFETY: reads an option.
    if !unsafe { libmimalloc_sys::mi_option_is_enabled(MI_OPTION_ALLOW_THP) } {
        // A kernel without PR_SET_THP_DISABLE (before 3.15) refuses it, and
        // only the saving is lost.
        // SAFETY: PR_SET_THP_DISABLE takes no pointers; it only sets a flag on this process.
        let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}
