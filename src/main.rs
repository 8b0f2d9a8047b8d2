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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(cmd) = args.get(1) else { usage() };
    let rest = &args[2..];
    let code = match cmd.as_str() {
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
    };
    std::process::exit(code);
}
