//! A closed standard output (`blk map ... | head`) ends the program quietly, as the C tools do
//! when SIGPIPE kills them, instead of Rust's "failed printing to stdout" panic.

/// Restore the default SIGPIPE action, which Rust's runtime sets to ignore: a write to a closed
/// pipe then ends the process at once with the status a shell reports for SIGPIPE.
pub fn exit_quietly_on_closed_stdout() {
    // SAFETY: signal(2) with SIG_DFL for SIGPIPE installs no handler code and touches no Rust
    // state; it runs first thing in main, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
