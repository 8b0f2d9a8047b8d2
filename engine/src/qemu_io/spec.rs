//! The command table: names, aliases, argument counts, whether a command needs an open image
//! or write access, and the one-line usage qemu-io prints for `help` and after a bad option.

/// Static facts about one command.
#[derive(Debug, PartialEq, Eq)]
pub struct CmdSpec {
    /// Canonical name.
    pub name: &'static str,
    /// Short alias (`r` for read), if any.
    pub alias: Option<&'static str>,
    /// Fewest words after the name (options included, as qemu-io counts them).
    pub argmin: usize,
    /// Most words after the name; `None` for no limit.
    pub argmax: Option<usize>,
    /// Runs without an open image (`help`, `sleep`, `open`, `quit`).
    pub nofile_ok: bool,
    /// Needs write (or resize) permission: refused up front on a read-only image.
    pub needs_write: bool,
    /// The argument synopsis in usage lines; `None` prints no synopsis at all.
    pub args: Option<&'static str>,
    /// The one-line description.
    pub oneline: &'static str,
}

const fn cmd(
    name: &'static str,
    alias: Option<&'static str>,
    argmin: usize,
    argmax: Option<usize>,
    args: Option<&'static str>,
    oneline: &'static str,
) -> CmdSpec {
    CmdSpec {
        name,
        alias,
        argmin,
        argmax,
        nofile_ok: false,
        needs_write: false,
        args,
        oneline,
    }
}

const fn nofile(mut c: CmdSpec) -> CmdSpec {
    c.nofile_ok = true;
    c
}

const fn write(mut c: CmdSpec) -> CmdSpec {
    c.needs_write = true;
    c
}

/// Every command, sorted by name (the order `help` lists them in).
pub(super) static COMMANDS: &[CmdSpec] = &[
    nofile(cmd(
        "abort",
        None,
        0,
        Some(0),
        None,
        "simulate a program crash using abort(3)",
    )),
    cmd(
        "aio_flush",
        None,
        0,
        Some(0),
        None,
        "completes all outstanding aio requests",
    ),
    cmd(
        "aio_read",
        None,
        2,
        None,
        Some("[-Ciqrv] [-P pattern] off len [len..]"),
        "asynchronously reads a number of bytes",
    ),
    write(cmd(
        "aio_write",
        None,
        2,
        None,
        Some("[-Cfiqruz] [-P pattern] off len [len..]"),
        "asynchronously writes a number of bytes",
    )),
    cmd(
        "alloc",
        Some("a"),
        1,
        Some(2),
        Some("offset [count]"),
        "checks if offset is allocated in the file",
    ),
    cmd(
        "break",
        None,
        2,
        Some(2),
        Some("event tag"),
        "sets a breakpoint on event and tags the stopped request as tag",
    ),
    cmd(
        "close",
        Some("c"),
        0,
        Some(0),
        None,
        "close the current open file",
    ),
    write(cmd(
        "discard",
        Some("d"),
        2,
        None,
        Some("[-Cq] off len"),
        "discards a number of bytes at a specified offset",
    )),
    cmd(
        "flush",
        Some("f"),
        0,
        Some(0),
        None,
        "flush all in-core file state to disk",
    ),
    nofile(cmd(
        "help",
        Some("?"),
        0,
        Some(1),
        Some("[command]"),
        "help for one or all commands",
    )),
    cmd(
        "info",
        Some("i"),
        0,
        Some(0),
        None,
        "prints information about the current file",
    ),
    cmd(
        "length",
        Some("l"),
        0,
        Some(0),
        None,
        "gets the length of the current file",
    ),
    cmd(
        "map",
        None,
        0,
        Some(0),
        Some(""),
        "prints the allocated areas of a file",
    ),
    nofile(cmd(
        "open",
        Some("o"),
        1,
        None,
        Some("[-rsCnkU] [-t cache] [-d discard] [-o options] [path]"),
        "open the file specified by path",
    )),
    nofile(cmd("quit", Some("q"), 0, Some(0), None, "exit the program")),
    cmd(
        "read",
        Some("r"),
        2,
        None,
        Some("[-abCqrv] [-P pattern [-s off] [-l len]] off len"),
        "reads a number of bytes at a specified offset",
    ),
    cmd(
        "readv",
        None,
        2,
        None,
        Some("[-Cqrv] [-P pattern] off len [len..]"),
        "reads a number of bytes at a specified offset",
    ),
    cmd(
        "remove_break",
        None,
        1,
        Some(1),
        Some("tag"),
        "remove a breakpoint by tag",
    ),
    cmd(
        "reopen",
        None,
        0,
        None,
        Some("[(-r|-w)] [-c cache] [-o options]"),
        "reopens an image with new options",
    ),
    cmd(
        "resume",
        None,
        1,
        Some(1),
        Some("tag"),
        "resumes the request tagged as tag",
    ),
    nofile(cmd(
        "sigraise",
        None,
        1,
        Some(1),
        Some("signal"),
        "raises a signal",
    )),
    nofile(cmd(
        "sleep",
        None,
        1,
        Some(1),
        None,
        "waits for the given value in milliseconds",
    )),
    write(cmd(
        "truncate",
        Some("t"),
        1,
        Some(3),
        Some("[-m prealloc_mode] off"),
        "truncates the current file at the given offset",
    )),
    cmd(
        "wait_break",
        None,
        1,
        Some(1),
        Some("tag"),
        "waits for the suspension of a request",
    ),
    write(cmd(
        "write",
        Some("w"),
        2,
        None,
        Some("[-bcCfnqruz] [-P pattern | -s source_file] off len"),
        "writes a number of bytes at a specified offset",
    )),
    write(cmd(
        "writev",
        None,
        2,
        None,
        Some("[-Cfqr] [-P pattern] off len [len..]"),
        "writes a number of bytes at a specified offset",
    )),
    cmd(
        "zone_append",
        None,
        3,
        Some(4),
        Some("offset len [len..]"),
        "append write a number of bytes at a specified offset",
    ),
    cmd(
        "zone_close",
        None,
        2,
        Some(2),
        Some("offset len"),
        "close a range of zones in zone block device",
    ),
    cmd(
        "zone_finish",
        None,
        2,
        Some(2),
        Some("offset len"),
        "finish a range of zones in zone block device",
    ),
    cmd(
        "zone_open",
        None,
        2,
        Some(2),
        Some("offset len"),
        "explicit open a range of zones in zone block device",
    ),
    cmd(
        "zone_report",
        None,
        2,
        Some(2),
        Some("offset number"),
        "report zone information",
    ),
    cmd(
        "zone_reset",
        None,
        2,
        Some(2),
        Some("offset len"),
        "reset a zone write pointer in zone block device",
    ),
];

/// The command called `name` (canonical name or alias).
pub fn lookup_command(name: &str) -> Option<&'static CmdSpec> {
    COMMANDS
        .iter()
        .find(|c| c.name == name || c.alias == Some(name))
}

impl CmdSpec {
    /// The usage line as qemu-io prints it, under the name the user typed.
    pub fn usage(&self, typed: &str) -> String {
        match self.args {
            Some(args) => format!("{typed} {args} -- {}", self.oneline),
            None => format!("{typed} -- {}", self.oneline),
        }
    }

    /// qemu-io's complaint when `n` words follow the name, or `None` if `n` is allowed.
    pub fn arg_count_error(&self, typed: &str, n: usize) -> Option<String> {
        let ok = n >= self.argmin && self.argmax.is_none_or(|max| n <= max);
        if ok {
            return None;
        }
        let expected = match self.argmax {
            None => format!("at least {} arguments", self.argmin),
            Some(max) if max == self.argmin => format!("{max} arguments"),
            Some(max) => format!("between {} and {max} arguments", self.argmin),
        };
        Some(format!(
            "bad argument count {n} to {typed}, expected {expected}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_lookups_work() {
        assert!(COMMANDS.windows(2).all(|w| w[0].name < w[1].name));
        assert_eq!(lookup_command("r").unwrap().name, "read");
        assert_eq!(lookup_command("l").unwrap().name, "length");
        assert!(lookup_command("len").is_none());
        assert!(lookup_command("m").is_none());
    }

    #[test]
    fn usage_and_counts() {
        let read = lookup_command("read").unwrap();
        assert_eq!(
            read.usage("r"),
            "r [-abCqrv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes at a specified offset"
        );
        assert_eq!(
            lookup_command("map").unwrap().usage("map"),
            "map  -- prints the allocated areas of a file"
        );
        assert_eq!(
            read.arg_count_error("read", 1).unwrap(),
            "bad argument count 1 to read, expected at least 2 arguments"
        );
        let alloc = lookup_command("alloc").unwrap();
        assert_eq!(
            alloc.arg_count_error("alloc", 3).unwrap(),
            "bad argument count 3 to alloc, expected between 1 and 2 arguments"
        );
        assert_eq!(
            lookup_command("sleep")
                .unwrap()
                .arg_count_error("sleep", 0)
                .unwrap(),
            "bad argument count 0 to sleep, expected 1 arguments"
        );
        assert!(alloc.arg_count_error("alloc", 2).is_none());
    }
}
