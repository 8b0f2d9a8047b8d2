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

/// Standard output buffered the way C's stdio buffers it, for `qemu-io`, whose users pipe its
/// stdout and stderr into one stream (`2>&1`, as every iotest does) and compare the result.
///
/// C stdio writes stdout through a line buffer on a terminal and through a block buffer of the
/// file's `st_blksize` otherwise, while stderr is unbuffered; so in a pipe qemu-io's error
/// messages come before the report lines printed earlier, and `abort` loses whatever was still
/// buffered. Rust's stdout is always line buffered; this buffer restores the C behaviour so
/// that the merged stream is byte-identical.
pub mod c_stdio {
    use std::cell::RefCell;
    use std::io::{IsTerminal, Write};

    /// What C stdio would do with stdout.
    struct Buffer {
        /// `None` on a terminal (line buffering, which Rust's stdout already does).
        block: Option<usize>,
        pending: Vec<u8>,
    }

    thread_local! {
        static STDOUT: RefCell<Option<Buffer>> = const { RefCell::new(None) };
    }

    /// The buffer size C stdio picks for fd 1: none on a terminal, else the file's block size.
    fn block_size() -> Option<usize> {
        if std::io::stdout().is_terminal() {
            return None;
        }
        // SAFETY: fstat only writes into the zeroed struct we own; fd 1 may be closed, which
        // makes it fail harmlessly.
        let blksize = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(1, &mut st) == 0 {
                st.st_blksize
            } else {
                0
            }
        };
        // glibc falls back to BUFSIZ (8192) when the file reports no block size.
        Some(if blksize > 0 { blksize as usize } else { 8192 })
    }

    fn write_through(bytes: &[u8]) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }

    /// Print `text` to stdout through the buffer.
    pub fn print(text: &str) {
        STDOUT.with(|cell| {
            let mut cell = cell.borrow_mut();
            let buf = cell.get_or_insert_with(|| Buffer {
                block: block_size(),
                pending: Vec::new(),
            });
            let Some(block) = buf.block else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                return;
            };
            // As glibc: fill the buffer to the brim and write it out whole; whole blocks of
            // what remains go straight to the file; the tail waits in the buffer.
            let mut rest = text.as_bytes();
            let room = block - buf.pending.len();
            let head = rest.len().min(room);
            buf.pending.extend_from_slice(&rest[..head]);
            rest = &rest[head..];
            if rest.is_empty() {
                return;
            }
            write_through(&buf.pending);
            buf.pending.clear();
            let direct = rest.len() - rest.len() % block;
            write_through(&rest[..direct]);
            buf.pending.extend_from_slice(&rest[direct..]);
        });
    }

    /// Write out what is buffered (`fflush(stdout)`, and what `exit` does).
    pub fn flush() {
        STDOUT.with(|cell| {
            if let Some(buf) = cell.borrow_mut().as_mut() {
                write_through(&buf.pending);
                buf.pending.clear();
            }
        });
        let _ = std::io::stdout().flush();
    }
}
