//! `blk commit [-q] [-f fmt] [-t cache] [-b base] [-d] [-p] [-r rate] FILE`: qemu-img commit,
//! on the commit job the QMP `block-commit` uses (run as an internal job with no overlay).
//!
//! The image's data goes into its backing file (or into `-b BASE` further down the chain); then
//! the image is emptied so it reads everything from the backing file again, unless `-d` (or
//! `-b`, which implies it) keeps it. The chain in the headers is not changed.

use engine::job::{JobOptions, commit};
use engine::types::OnError;
use engine::{Error, Result};

use super::chain::{cache_mode, discover, find_in_chain, finish_job, open_chain};
use super::number::{in_range, strtosz};
use super::open::Tool;
use super::{fail, split_or_fail};

const USAGE: &str = "\
Usage: blk commit [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename
Commit the changes recorded in filename into its base image, as qemu-img commit does.";

/// `blk commit`'s command line, checked.
struct Args {
    path: String,
    fmt: Option<String>,
    base: Option<String>,
    /// `-d` (or `-b`, which implies it): leave the top as it is instead of emptying it.
    drop_top: bool,
    progress: bool,
    quiet: bool,
    rate: u64,
    cache: (bool, bool),
}

/// Entry point of `blk commit`.
pub fn run(args: &[String]) -> i32 {
    let a = match parse_args(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let tool = Tool::new();
    let result = tool.block_on(commit_image(&tool, &a));
    let fin = tool.finish();
    match result.and(fin) {
        Ok(()) => {
            if !a.quiet {
                println!("Image committed.");
            }
            0
        }
        Err(e) => fail(e),
    }
}

/// Parse and check the command line; `Err` is the exit code after the message.
fn parse_args(args: &[String]) -> std::result::Result<Args, i32> {
    // qemu-img 10's long options.
    let long = [
        ("help", 'h', false),
        ("quiet", 'q', false),
        ("progress", 'p', false),
        ("format", 'f', true),
        ("cache", 't', true),
        ("drop", 'd', false),
        ("base", 'b', true),
        ("rate", 'r', true),
    ];
    let (opts, operands) = split_or_fail("commit", args, "f:ht:b:dpqr:", &long, USAGE)?;
    let (mut fmt, mut cache, mut base, mut drop_top) = (None, "writeback".to_string(), None, false);
    let (mut progress, mut quiet, mut rate) = (false, false, 0u64);
    for (c, v) in opts {
        match c {
            'f' => fmt = Some(v),
            't' => cache = v,
            'b' => {
                base = Some(v);
                // -b implies -d: with a base further down, the top must keep its data.
                drop_top = true;
            }
            'd' => drop_top = true,
            'p' => progress = true,
            'q' => quiet = true,
            'r' => rate = parse_rate(&v).map_err(fail)?,
            _ => unreachable!("option {c} is in the option table"),
        }
    }
    let [path] = operands.as_slice() else {
        return Err(crate::cli::prog::usage_error(
            "commit",
            "Expecting one image file name",
        ));
    };
    let cache = cache_mode(&cache).map_err(fail)?;
    Ok(Args {
        path: path.clone(),
        fmt,
        base,
        drop_top,
        progress: progress && !quiet,
        quiet,
        rate,
        cache,
    })
}

/// Open the chain from the image down to the base, run the commit job, empty the top.
async fn commit_image(tool: &Tool, a: &Args) -> Result<()> {
    let path = &a.path;
    let layers = discover(tool, path, a.fmt.as_deref()).await?;
    if layers.len() < 2 {
        return Err(Error::generic("Image does not have a backing file"));
    }
    let base_idx = match &a.base {
        Some(b) => find_in_chain(&layers, b).ok_or_else(|| {
            Error::generic(format!(
                "Did not find '{b}' in the backing chain of '{path}'"
            ))
        })?,
        None => 1,
    };
    let writable: Vec<bool> = (0..layers.len()).map(|i| i == 0 || i == base_idx).collect();
    let nodes = open_chain(tool, &layers[..=base_idx], &writable, a.cache, true).await?;
    let (top, base) = (nodes[0].clone(), nodes[base_idx].clone());
    let opts = JobOptions {
        id: "blk-commit".into(),
        internal: true,
        auto_finalize: true,
        auto_dismiss: false,
        speed: a.rate,
    };
    let spec = commit::CommitSpec {
        overlay: None,
        top: top.clone(),
        base,
        backing_file: None,
        on_error: OnError::Report,
        filter_node_name: None,
    };
    let job = commit::start(tool.engine.jobs(), &opts, spec).await?;
    finish_job(tool, &job, a.progress).await?;
    if !a.drop_top {
        engine::request::make_empty(&top)
            .await
            .map_err(|e| e.context(format!("Could not empty {path}")))?;
    }
    Ok(())
}

/// `-r`: a size with an optional suffix, in bytes per second.
fn parse_rate(v: &str) -> Result<u64> {
    in_range("rate limit", v, strtosz(v), 0, i64::MAX as u64)
}
