//! `blk bench`: qemu-img bench. Sends COUNT reads (or writes, `-w`) of BUFFER_SIZE bytes to an
//! image, DEPTH at a time, and prints how long that took, in qemu-img bench's words, so the same
//! command line runs side by side with QEMU's. `--output=json` (blk's own) prints the figures
//! instead: operations, bytes, seconds, IOPS, throughput and latency percentiles.
//!
//! Flags, defaults, number syntax and refusals are qemu-img 10.0.2's (worked out by running
//! it; see `tests/compat/qemu-img-bench.txt`). Its `--object` is taken in full only (qemu-img
//! 10.0.2's bench has no `--object`, so a prefix such as `--o` still means `--offset`), as is
//! `--output`. The request schedule lives in `bench_run`.

use engine::qemu_io::CacheMode;
use engine::{Error, Result};

use super::bench_run::{self, Outcome, Plan};
use super::number::{in_range, parse_c_u64, strtosz};
use super::open::{Tool, parse_cache};
use super::{Output, fail, parse_output, split_or_fail, to_json_pretty};

const USAGE: &str = "\
Usage: blk bench [-f FMT|--image-opts] [-t CACHE] [-c COUNT] [-d DEPTH] [-o OFFSET]
                 [-s BUFFER_SIZE] [-S STEP_SIZE] [-i AIO] [-n] [-U] [-q]
                 [-w [--pattern PATTERN] [--flush-interval INTERVAL [--no-drain]]]
                 [--output=human|json] FILENAME
Send COUNT requests to the image FILENAME, DEPTH at a time, and print how long they took.

  -h, --help                 display this help and exit
  -f, --format FMT           format of FILENAME (probed when omitted)
  --image-opts               FILENAME is an option string (key=value,...), not a file name
  --object OBJECTDEF         create a user object (a secret) before opening FILENAME
  -t, --cache CACHE          cache mode: none, writeback (default), writethrough,
                             directsync or unsafe
  -c, --count COUNT          number of requests (default 75000)
  -d, --depth DEPTH          requests in flight at a time (default 64)
  -o, --offset OFFSET        offset of the first request (default 0)
  -s, --buffer-size SIZE     bytes per request (default 4096)
  -S, --step-size STEP       offset increment between requests (default: the buffer size);
                             offsets wrap at the end of the image
  -i, --aio AIO              threads, native or io_uring: checked as qemu-img checks it
                             (blk's host I/O is its io_uring reactor whichever is named)
  -n, --native               -i native (which needs -t none or directsync)
  -w, --write                write instead of read
  --pattern PATTERN          byte written by -w (default 0)
  --flush-interval N         flush after every N requests (-w only; at least DEPTH)
  --no-drain                 flush without waiting for the requests in flight
  -U, --force-share          open FILENAME in shared mode, alongside another user
  -q, --quiet                accepted for qemu-img compatibility
  --output=human|json        json: operations, bytes, seconds, IOPS, throughput and
                             latency percentiles (p50, p99, p99.9) instead of the text";

/// The command line, parsed.
struct Args {
    plan: Plan,
    fmt: Option<String>,
    cache: CacheMode,
    aio: Option<String>,
    share: bool,
    output: Output,
    file: String,
}

/// A number option: qemu-img's parser for it (sizes take a unit suffix, counts are C
/// integers) and its range, with qemu-img's two messages.
fn number(name: &str, v: &str, suffix: bool, min: u64, max: u64) -> Result<u64> {
    let parsed = if suffix { strtosz(v) } else { parse_c_u64(v) };
    in_range(name, v, parsed, min, max)
}

/// Parse the command line; `Err` is the exit status (the message printed already).
fn parse(args: &[String]) -> Result<Args, i32> {
    // qemu-img 10.0.2's long options, in its order (getopt's ambiguity messages show it).
    let long = [
        ("help", 'h', false),
        ("format", 'f', true),
        super::open_args::IMAGE_OPTS,
        ("cache", 't', true),
        ("count", 'c', true),
        ("depth", 'd', true),
        ("offset", 'o', true),
        ("buffer-size", 's', true),
        ("step-size", 'S', true),
        ("aio", 'i', true),
        ("native", 'n', false),
        ("write", 'w', false),
        ("pattern", '\u{1}', true),
        ("flush-interval", '\u{2}', true),
        ("no-drain", '\u{3}', false),
        ("force-share", 'U', false),
        ("=object", super::OBJECT.1, true),
        ("=output", '\u{4}', true),
    ];
    let (opts, operands) = split_or_fail("bench", args, "hc:d:f:ni:o:qs:S:t:wU", &long, USAGE)?;
    let int_max = i32::MAX as u64;
    let mut a = Args {
        plan: Plan {
            count: 75000,
            depth: 64,
            offset: 0,
            bufsize: 4096,
            step: 0,
            write: false,
            pattern: 0,
            flush_interval: 0,
            drain: true,
        },
        fmt: None,
        cache: CacheMode::Writeback,
        aio: None,
        share: false,
        output: Output::Human,
        file: String::new(),
    };
    let p = &mut a.plan;
    for (c, v) in opts {
        let r: Result<()> = (|| {
            match c {
                'c' => p.count = number("request count", &v, false, 1, int_max)?,
                'd' => p.depth = number("queue depth", &v, false, 1, int_max)?,
                'o' => p.offset = number("offset", &v, true, 0, i64::MAX as u64)?,
                's' => p.bufsize = number("buffer size", &v, true, 1, int_max)?,
                'S' => p.step = number("step size", &v, true, 0, int_max)?,
                '\u{1}' => p.pattern = number("pattern byte", &v, false, 0, 0xff)? as u8,
                '\u{2}' => p.flush_interval = number("flush interval", &v, false, 0, int_max)?,
                '\u{3}' => p.drain = false,
                'w' => p.write = true,
                'f' => a.fmt = Some(v.clone()),
                'n' => a.aio = Some("native".into()),
                'i' => {
                    if !matches!(v.as_str(), "threads" | "native" | "io_uring") {
                        return Err(Error::generic(format!("Invalid aio option: {v}")));
                    }
                    a.aio = Some(v.clone());
                }
                't' => {
                    a.cache = parse_cache(&v).map_err(|_| Error::generic("Invalid cache mode"))?
                }
                'U' => a.share = true,
                'q' => {}
                '\u{4}' => a.output = parse_output(&v)?,
                _ => unreachable!("option {c} is in the option table"),
            }
            Ok(())
        })();
        r.map_err(fail)?;
    }
    let [file] = operands.as_slice() else {
        return Err(crate::cli::prog::usage_error(
            "bench",
            "Expecting one image file name",
        ));
    };
    a.file = file.clone();
    let p = &mut a.plan;
    if !p.write && p.flush_interval != 0 {
        return Err(fail("--flush-interval is only available in write tests"));
    }
    if p.flush_interval != 0 && p.flush_interval < p.depth {
        return Err(fail("Flush interval can't be smaller than depth"));
    }
    if p.step == 0 {
        p.step = p.bufsize;
    }
    Ok(a)
}

/// qemu-img's header lines.
fn header(p: &Plan) -> String {
    let mut s = format!(
        "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})\n",
        p.count,
        if p.write { "write" } else { "read" },
        p.bufsize,
        p.depth,
        p.offset,
        p.step
    );
    if p.flush_interval != 0 {
        s += &format!("Sending flush every {} requests\n", p.flush_interval);
    }
    s
}

/// `--output=json`: the plan and what was measured.
fn json(p: &Plan, o: &Outcome) -> serde_json::Value {
    let secs = o.elapsed_ns as f64 / 1e9;
    let per_sec = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
    let us = |q: f64| o.latency.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({
        "operation": if p.write { "write" } else { "read" },
        "buffer-size": p.bufsize,
        "depth": p.depth,
        "offset": p.offset,
        "step-size": p.step,
        "flush-interval": p.flush_interval,
        "ops": p.count,
        "bytes": p.count * p.bufsize,
        "flushes": o.flushes,
        "seconds": secs,
        "iops": per_sec(p.count as f64),
        "throughput": per_sec((p.count * p.bufsize) as f64),
        "latency-us": {
            "p50": us(0.5),
            "p99": us(0.99),
            "p99.9": us(0.999),
            "max": o.latency.max() as f64 / 1000.0,
        },
    })
}

/// Entry point of `blk bench`.
pub fn run(args: &[String]) -> i32 {
    let a = match parse(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let tool = Tool::new();
    tool.cache.set(a.cache);
    *tool.aio.borrow_mut() = a.aio.clone();
    let result = tool.block_on(async {
        if a.share && a.plan.write {
            return Err(Error::generic(
                "force-share=on can only be used with read-only images",
            )
            .could_not_open(&a.file));
        }
        if a.aio.as_deref() == Some("native") && !a.cache.direct() {
            return Err(Error::generic(
                "aio=native was specified, but it requires cache.direct=on, which was not specified.",
            )
            .could_not_open(&a.file));
        }
        let img = tool
            .open(&a.file, a.fmt.as_deref(), !a.plan.write, a.share)
            .await?;
        if a.output == Output::Human {
            print!("{}", header(&a.plan));
        }
        let outcome = bench_run::run(tool.env.clone(), img.bb.clone(), img.len(), a.plan.clone())
            .await
            .map_err(|f| Error::generic(f.0));
        tool.close(img).await;
        outcome
    });
    let fin = tool.finish();
    match (result, fin) {
        (Ok(o), Ok(())) => {
            let text = match a.output {
                Output::Human => format!(
                    "Run completed in {:.3} seconds.\n",
                    o.elapsed_ns as f64 / 1e9
                ),
                Output::Json => to_json_pretty(&json(&a.plan, &o)) + "\n",
            };
            print!("{text}");
            0
        }
        (Err(e), _) | (Ok(_), Err(e)) => fail(e),
    }
}
