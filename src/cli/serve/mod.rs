//! `blk serve` (and `qemu-storage-daemon` through a link of that name): hold a block graph open
//! and serve it over QMP monitors until `quit`, SIGTERM, SIGINT or SIGHUP, then shut down
//! cleanly (jobs cancelled, devices flushed, every node closed, sockets and pidfile removed).
//!
//! Options are handled in command-line order, as qemu-storage-daemon does, and the first one
//! that fails ends the run with `PROG: --OPT VALUE: MESSAGE` and status 1. `args` parses the
//! option values; `daemon` forks for `--daemonize` and keeps the pidfile.

mod args;
mod daemon;

use std::rc::Rc;

use engine::env::Env;
use engine::env::net::{Listener, NetAddr};
use engine::env::real::RealEnv;
use engine::qmp::monitor::Monitors;
use engine::util::{Either, race};
use engine::{Engine, Error, Result};

use super::getopt::{LongOpt, split};
use super::prog;

const LONG: [LongOpt; 11] = [
    ("help", 'h', false),
    ("version", 'V', false),
    ("trace", 'T', true),
    ("blockdev", 'b', true),
    ("chardev", 'c', true),
    ("daemonize", 'd', false),
    ("export", 'e', true),
    ("monitor", 'm', true),
    ("nbd-server", 'n', true),
    ("object", 'o', true),
    ("pidfile", 'p', true),
];

/// `blk serve ARGS...`; the exit status.
pub fn run_serve(argv: &[String]) -> i32 {
    let (opts, rest) = match split(argv, "hT:V", &LONG) {
        Ok(s) => s,
        Err(e) => {
            prog::error(e);
            return 1;
        }
    };
    if let Some(arg) = rest.first() {
        prog::error(format_args!("{arg}: Unexpected argument"));
        return 1;
    }
    for (c, _) in &opts {
        match c {
            'h' => {
                print!("{}", help());
                return 0;
            }
            'V' => {
                print!("{}", prog::version());
                return 0;
            }
            'T' => {
                prog::error("-T (trace) is not supported by blk");
                return 1;
            }
            _ => {}
        }
    }
    let daemonize = opts.iter().any(|(c, _)| *c == 'd');
    let pidfile = opts.iter().rev().find(|(c, _)| *c == 'p').map(|(_, v)| v);
    let status = match daemonize {
        true => daemon::daemonize(),
        false => Ok(None),
    };
    let ready = match status {
        Ok(ready) => ready,
        Err(e) => {
            prog::error(format_args!("daemonize failed: {e}"));
            return 1;
        }
    };
    let code = serve(&opts, pidfile.map(String::as_str), ready);
    if daemonize {
        // The daemon is a forked child: no other thread will return this status for it.
        std::process::exit(code);
    }
    code
}

/// The long name of an option letter, for error prefixes.
fn long_name(c: char) -> &'static str {
    LONG.iter().find(|l| l.1 == c).map_or("?", |l| l.0)
}

/// Start everything the options ask for, serve until told to stop, shut down.
fn serve(opts: &[(char, String)], pidfile: Option<&str>, ready: Option<daemon::Ready>) -> i32 {
    let env = RealEnv::new();
    let dyn_env: Rc<dyn Env> = env.clone();
    let engine = Rc::new(Engine::new(dyn_env));
    let monitors = Monitors::new(engine.clone());
    // Catch the termination signals from the start: one during start-up still shuts down.
    let mut signal = env.termination_signal();
    let code = env.block_on(async {
        let started = async {
            start(&engine, &monitors, opts).await?;
            daemon::write_pidfile(pidfile)
        };
        let pid = match race(started, &mut signal).await {
            Either::Left(Ok(pid)) => pid,
            Either::Left(Err(msg)) => {
                prog::error(msg);
                shutdown(&engine, &monitors).await;
                return 1;
            }
            Either::Right(_) => {
                shutdown(&engine, &monitors).await;
                return 0;
            }
        };
        if let Some(r) = ready {
            r.started();
        }
        race(monitors.quit_requested(), &mut signal).await;
        let code = shutdown(&engine, &monitors).await;
        drop(pid);
        code
    });
    env.shutdown();
    code
}

/// Close the monitors, then the engine (jobs cancelled, devices flushed, nodes closed).
async fn shutdown(engine: &Engine, monitors: &Monitors) -> i32 {
    monitors.close().await;
    match engine.shutdown().await {
        Ok(()) => 0,
        Err(e) => {
            prog::error(e);
            1
        }
    }
}

/// Handle the options in order; the first error as `--OPT VALUE: MESSAGE`.
async fn start(
    engine: &Rc<Engine>,
    monitors: &Rc<Monitors>,
    opts: &[(char, String)],
) -> std::result::Result<(), String> {
    let mut chardevs: Vec<(String, Option<Rc<dyn Listener>>)> = Vec::new();
    for (c, value) in opts {
        let r = match c {
            'b' => blockdev(engine, value).await,
            'c' => chardev(engine, value, &mut chardevs),
            'm' => monitor(monitors, value, &mut chardevs),
            'o' => object(engine, value).await,
            'n' => engine::qmp::nbd_server_cmdline(engine, value),
            'e' => engine::qmp::export_cmdline(engine, value),
            _ => Ok(()),
        };
        r.map_err(|e| format!("--{} {value}: {e}", long_name(*c)))?;
    }
    Ok(())
}

async fn blockdev(engine: &Engine, text: &str) -> Result<()> {
    engine.blockdev_add(args::blockdev(text)?).await.map(drop)
}

async fn object(engine: &Engine, text: &str) -> Result<()> {
    engine
        .object_add(engine::object::parse_object_arg(text)?)
        .await
}

/// `--chardev`: listen at once (a unix path left by an earlier run is replaced, as QEMU does).
fn chardev(
    engine: &Engine,
    text: &str,
    chardevs: &mut Vec<(String, Option<Rc<dyn Listener>>)>,
) -> Result<()> {
    let c = args::chardev(text)?;
    if chardevs.iter().any(|(id, _)| *id == c.id) {
        return Err(Error::generic("duplicate yank instance"));
    }
    if let NetAddr::Unix(path) = &c.addr {
        let _ = std::fs::remove_file(path);
    }
    let listener = engine.env().net().listen(&c.addr)?;
    chardevs.push((c.id, Some(listener)));
    Ok(())
}

fn monitor(
    monitors: &Rc<Monitors>,
    text: &str,
    chardevs: &mut [(String, Option<Rc<dyn Listener>>)],
) -> Result<()> {
    let id = args::monitor(text)?;
    let Some((_, slot)) = chardevs.iter_mut().find(|(c, _)| *c == id) else {
        return Err(Error::generic(format!("chardev \"{id}\" not found")));
    };
    let Some(listener) = slot.take() else {
        return Err(Error::generic(format!("chardev '{id}' is already in use")));
    };
    monitors.add(listener);
    Ok(())
}

/// `--help`.
fn help() -> String {
    let name = prog::name();
    format!(
        "Usage: {name} [options]\n\
         blk storage daemon (the options of QEMU's storage daemon)\n\n\
         \x20 -h, --help             display this help and exit\n\
         \x20 -V, --version          output version information and exit\n\n\
         \x20 --blockdev [driver=]<driver>[,node-name=<N>][,read-only=on|off]\n\
         \x20            [,driver specific parameters...]\n\
         \x20                        configure a block backend (or a JSON object)\n\n\
         \x20 --chardev socket,id=<id>,path=<path>,server=on,wait=off\n\
         \x20 --chardev socket,id=<id>,host=<host>,port=<port>,server=on,wait=off\n\
         \x20                        configure a listening socket for a monitor\n\n\
         \x20 --daemonize            daemonize the process, and have the parent exit\n\
         \x20                        once startup is complete\n\n\
         \x20 --export [type=]nbd,id=<id>,node-name=<node-name>[,name=<export-name>]\n\
         \x20          [,writable=on|off][,bitmap=<name>]\n\
         \x20                        export the specified block node over NBD\n\
         \x20                        (requires --nbd-server)\n\n\
         \x20 --monitor [chardev=]name[,mode=control]\n\
         \x20                        configure a QMP monitor\n\n\
         \x20 --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>\n\
         \x20 --nbd-server addr.type=unix,addr.path=<path>\n\
         \x20                        start an NBD server for exporting block nodes\n\n\
         \x20 --object secret,id=<id>,data=<data>|file=<file>[,format=raw|base64]\n\
         \x20                        create a new object\n\n\
         \x20 --pidfile <path>       write process ID to a file after startup\n"
    )
}
