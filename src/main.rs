//! `blk`: the command-line tool. Subcommands in the style of qemu-img, `blk io` in qemu-io's
//! language, `blk sim` to replay scenarios on the deterministic simulator. A multi-call binary:
//! through a link named `qemu-img` or `qemu-io` it takes that tool's command line.

mod cli;

use cli::prog;

/// The image subcommands blk has, with qemu-img's one-line descriptions.
const COMMANDS: [(&str, &str); 15] = [
    ("amend", "Update format-specific options of the image"),
    ("bench", "Run simple image benchmark"),
    (
        "bitmap",
        "Perform modifications of the persistent bitmap in the image",
    ),
    ("check", "Check basic image integrity"),
    ("commit", "Commit image to its backing file"),
    ("compare", "Check if two images have the same contents"),
    (
        "convert",
        "Copy one image to another with optional format conversion",
    ),
    ("create", "Create and format new image file"),
    ("dd", "Copy input to output with optional format conversion"),
    ("info", "Display information about image"),
    ("map", "Dump image metadata"),
    ("measure", "Calculate file size requred for a new image"),
    ("rebase", "Change backing file of the image"),
    ("resize", "Resize the image to the new size"),
    ("snapshot", "List or manipulate snapshots within image"),
];

/// `--help` of the image tool (as blk or as qemu-img).
fn img_help() -> String {
    let name = prog::name();
    let mut s = prog::version();
    s.push_str(&format!(
        "Disk image utility.  Usage:\n\n  {name} [standard options] COMMAND [--help | command options]\n\n\
         Standard options:\n  -h, --help\n     display this help and exit\n  -V, --version\n     \
         display version info and exit\n\n\
         Recognized commands (run {name} COMMAND --help for command-specific help):\n\n"
    ));
    for (cmd, what) in COMMANDS {
        s.push_str(&format!("  {cmd} - {what}\n"));
    }
    if name == "blk" {
        s.push_str(
            "  io - Run qemu-io commands on an image (blk io -c 'write -P 0xab 0 64k' disk.img)\n  \
             sim - Replay, generate (swarm), shrink and crash-test scenarios on the simulator\n  \
             serve - Hold images open and serve them over QMP (qemu-storage-daemon's options)\n",
        );
    }
    s.push_str("\nSupported image formats:\n\n  blkdebug file null-co qcow2 raw\n");
    s
}

/// The base name blk was invoked as.
fn invoked_as(argv0: &str) -> &'static str {
    match std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
    {
        Some("qemu-img") => "qemu-img",
        Some("qemu-io") => "qemu-io",
        Some("qemu-storage-daemon") => "qemu-storage-daemon",
        _ => "blk",
    }
}

/// Stack of the thread the program runs on. A backing chain is opened, read and dropped one
/// nested call per image, up to `engine::graph::MAX_CHAIN_DEPTH` images; the main thread's
/// 8 MiB does not hold that many in a debug build. Only the pages used are ever committed.
const STACK_BYTES: usize = 1 << 30;

fn main() {
    let program = std::thread::Builder::new()
        .name("blk".into())
        .stack_size(STACK_BYTES)
        .spawn(run_program)
        .expect("spawning the program thread");
    std::process::exit(program.join().unwrap_or(101))
}

/// The whole program; its exit status.
fn run_program() -> i32 {
    cli::stdout::exit_quietly_on_closed_stdout();
    let args: Vec<String> = std::env::args().collect();
    let name = invoked_as(args.first().map(String::as_str).unwrap_or("blk"));
    prog::set(name);
    if name == "qemu-io" {
        return cli::io::run_io(&args[1..]);
    }
    if name == "qemu-storage-daemon" {
        return cli::serve::run_serve(&args[1..]);
    }
    let rest = match global_options(&args[1..]) {
        Ok(rest) => rest,
        Err(code) => return code,
    };
    let Some(cmd) = rest.first() else {
        prog::error(format_args!(
            "Not enough arguments\nTry '{name} --help' for more info"
        ));
        return 1;
    };
    run_command(cmd, &rest[1..])
}

/// The image tool's own options, before the command (qemu-img's `-h`, `-V`, `-T`); the command
/// and its arguments, or the exit status when an option ends the run.
fn global_options(args: &[String]) -> Result<Vec<String>, i32> {
    const LONG: [cli::getopt::LongOpt; 3] = [
        ("help", 'h', false),
        ("version", 'V', false),
        ("trace", 'T', true),
    ];
    let name = prog::name();
    let (opts, rest) = cli::getopt::split_leading(args, "hVT:", &LONG).map_err(|msg| {
        prog::error(format_args!("{msg}\nTry '{name} --help' for more info"));
        1
    })?;
    match opts.first() {
        None => Ok(rest),
        Some(('h', _)) => Err(print_ok(&img_help())),
        Some(('V', _)) => Err(print_ok(&prog::version())),
        Some(_) => {
            prog::error("-T (trace) is not supported by blk");
            Err(1)
        }
    }
}

/// `blk CMD ARGS...` (and `qemu-img CMD ARGS...` through a link).
fn run_command(cmd: &str, rest: &[String]) -> i32 {
    let blk = prog::name() == "blk";
    match cmd {
        "check" => cli::check::run_check(rest),
        "io" if blk => cli::io::run_io(rest),
        "sim" if blk => cli::sim::run_sim(rest),
        "serve" if blk => cli::serve::run_serve(rest),
        "amend" | "bench" | "bitmap" | "create" | "info" | "map" | "measure" | "compare"
        | "convert" | "dd" | "resize" | "commit" | "rebase" | "snapshot" => {
            cli::img::run(cmd, rest)
        }
        "help" if blk => print_ok(&img_help()),
        other => {
            let name = prog::name();
            prog::error(format_args!(
                "Command not found: {other}\nTry '{name} --help' for more info"
            ));
            1
        }
    }
}

fn print_ok(text: &str) -> i32 {
    print!("{text}");
    0
}
