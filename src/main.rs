//! `blk`: the command-line tool. Subcommands in the style of qemu-img, `blk io` in qemu-io's
//! language, `blk sim` to replay scenarios on the deterministic simulator.

mod cli;

fn usage() -> ! {
    eprintln!(
        "usage: blk <command> [args]\n\
         \n\
         commands:\n\
         \x20 io      run qemu-io commands on an image (blk io -c 'write -P 0xab 0 64k' disk.img)\n\
         \x20 sim     replay scenarios on the deterministic simulator (blk sim run scenarios)\n\
         \x20 create  create an image (blk create -f qcow2 -o cluster_size=64k disk.qcow2 1G)\n\
         \x20 info    show an image's format, sizes and backing chain (--output=json)\n\
         \x20 map     show how an image's data is allocated (--output=json)\n\
         \x20 compare compare two images' guest-visible contents\n\
         \x20 convert copy an image into another format, sparse (-p for progress)\n\
         \x20 resize  grow or (--shrink) shrink an image\n\
         \x20 check   check an image's metadata, -r leaks|all to repair (--output=json)\n\
         \x20 commit  commit an image's data into its backing file (-b base, -d keep, -p)\n\
         \x20 rebase  change an image's backing file (-b new -F fmt; -u: header only)\n\
         \n\
         Run 'blk <command> --help' for a command's options."
    );
    std::process::exit(1)
}

/// The tool blk is invoked as: the base name of argv[0] (busybox-style links `qemu-img` and
/// `qemu-io` make blk a drop-in for those tools).
fn invoked_as(argv0: &str) -> &str {
    std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("blk")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match invoked_as(args.first().map(String::as_str).unwrap_or("blk")) {
        "qemu-io" => std::process::exit(cli::io::run_io(&args[1..])),
        "qemu-img" => {
            let Some(cmd) = args.get(1) else { usage() };
            std::process::exit(run_command(cmd, &args[2..]))
        }
        _ => {}
    }
    let Some(cmd) = args.get(1) else { usage() };
    std::process::exit(run_command(cmd, &args[2..]))
}

/// `blk CMD ARGS...` (and `qemu-img CMD ARGS...` through a link).
fn run_command(cmd: &str, rest: &[String]) -> i32 {
    match cmd {
        "check" => cli::check::run_check(rest),
        "io" => cli::io::run_io(rest),
        "sim" => cli::sim::run_sim(rest),
        "create" | "info" | "map" | "compare" | "convert" | "resize" | "commit" | "rebase" => {
            cli::img::run(cmd, rest)
        }
        "-h" | "--help" | "help" => usage(),
        other => {
            eprintln!("blk: unknown command '{other}'");
            usage()
        }
    }
}
