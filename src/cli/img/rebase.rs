//! `blk rebase [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] [-U] -b BACKING [-F fmt] FILE`:
//! qemu-img rebase. `-b ''` means no backing file.
//!
//! Safe mode (the default) runs the rebase job: every range the image does not allocate itself
//! and whose content differs between the old chain and the new backing file is copied into the
//! image first, then the header and the chain change; what the image reads stays the same.
//! Unsafe mode (`-u`) only rewrites the header.

use std::cell::RefCell;

use engine::Error;
use engine::job::{JobOptions, rebase};
use engine::types::OnError;
use serde_json::json;

use super::chain::{Layer, cache_mode, discover, finish_rebase_job, open_chain};
use super::open::{Tool, check_format, parse_src_cache};
use super::progress::Steps;
use super::{fail, split_or_fail};
use crate::cli::prog::usage_error;

const USAGE: &str = "\
Usage: blk rebase [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] [-U] -b backing_file [-F backing_fmt] filename
Change the backing file of an image, as qemu-img rebase does.";

/// `blk rebase`'s command line, checked.
struct Args {
    path: String,
    fmt: Option<String>,
    bfmt: Option<String>,
    /// The new backing file's name; `None` for `-b ''`.
    new_name: Option<String>,
    unsafe_mode: bool,
    progress: bool,
    cache: (bool, bool),
}

/// Entry point of `blk rebase`.
pub fn run(args: &[String]) -> i32 {
    let a = match parse_args(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let tool = Tool::new();
    // qemu-img shows 0% before it opens anything, and ends the line however the run ends.
    let steps = RefCell::new(Steps::new(a.progress, 0, 2.0));
    let result = tool.block_on(rebase_image(&tool, &a, &steps));
    steps.borrow_mut().end_line();
    let fin = tool.finish();
    match result.and(fin) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// Parse and check the command line; `Err` is the exit code after the message.
fn parse_args(args: &[String]) -> Result<Args, i32> {
    // qemu-img 10's long options, in its order where they share a prefix.
    let long = [
        ("help", 'h', false),
        ("quiet", 'q', false),
        ("progress", 'p', false),
        ("force-share", 'U', false),
        ("format", 'f', true),
        ("cache", 't', true),
        ("compress", 'c', false),
        ("backing", 'b', true),
        ("backing-format", 'F', true),
        ("backing-cache", 'T', true),
        ("backing-unsafe", 'u', false),
    ];
    let (opts, operands) = split_or_fail("rebase", args, "hf:F:b:upt:T:qUc", &long, USAGE)?;
    let (mut fmt, mut bfmt, mut backing, mut unsafe_mode) = (None, None, None, false);
    let mut compress = false;
    let (mut progress, mut quiet, mut cache, mut src_cache) = (
        false,
        false,
        "writeback".to_string(),
        "writeback".to_string(),
    );
    for (c, v) in opts {
        match c {
            'f' => fmt = Some(v),
            'F' => bfmt = Some(v),
            'b' => backing = Some(v),
            'u' => unsafe_mode = true,
            'p' => progress = true,
            'q' => quiet = true,
            't' => cache = v,
            'T' => src_cache = v,
            // Shared mode for the backing files: blk takes no file locks, so there are none
            // to skip; the images' permissions within the command are unchanged.
            'U' => {}
            'c' => compress = true,
            _ => unreachable!("option {c} is in the option table"),
        }
    }
    let [path] = operands.as_slice() else {
        return Err(usage_error("rebase", "Expecting one image file name"));
    };
    let Some(backing) = backing else {
        return Err(usage_error(
            "rebase",
            "Must specify backing file (-b) or use unsafe mode (-u)",
        ));
    };
    if let Some(f) = &bfmt
        && check_format(f).is_err()
    {
        return Err(fail(format!("Invalid format name: '{f}'")));
    }
    let cache = cache_mode(&cache)
        .and_then(|c| parse_src_cache(&src_cache).map(|_| c))
        .map_err(fail)?;
    // -c compresses what a safe rebase writes; an unsafe one writes no data, so it is moot.
    if compress && !unsafe_mode {
        return Err(fail(
            "Compression is not supported by blk's qcow2 driver yet (rebase -c)",
        ));
    }
    Ok(Args {
        path: path.clone(),
        fmt,
        bfmt,
        new_name: (!backing.is_empty()).then_some(backing),
        unsafe_mode,
        progress: progress && !quiet,
        cache,
    })
}

/// Open the image (and, in safe mode, its chain) and rebase it.
async fn rebase_image(tool: &Tool, a: &Args, steps: &RefCell<Steps>) -> engine::Result<()> {
    let path = &a.path;
    if let Some(f) = &a.fmt {
        check_format(f)
            .map_err(|_| Error::generic(format!("Unknown driver '{f}'")).could_not_open(path))?;
    }
    let layers = if a.unsafe_mode {
        let format = match &a.fmt {
            Some(f) => f.clone(),
            None => {
                let probed = tool.probe_format(path).await?;
                // Opened for writing: qemu-img's warning for a probed raw image.
                if probed == "raw" {
                    eprintln!("{}", engine::probe::raw_warning(path));
                }
                probed
            }
        };
        vec![Layer {
            path: path.clone(),
            format,
        }]
    } else {
        discover(tool, path, a.fmt.as_deref()).await?
    };
    let no_format = a
        .new_name
        .as_ref()
        .filter(|_| a.bfmt.is_none())
        .map(|name| {
            Error::generic(format!(
                "Could not change the backing file to '{name}': backing format must be specified"
            ))
        });
    if a.unsafe_mode {
        unsafe_rebase(tool, a, &layers, no_format, steps).await
    } else if let Some(e) = no_format {
        Err(e)
    } else {
        safe_rebase(tool, a, &layers, steps).await
    }
}

/// `-u`: only the header changes.
async fn unsafe_rebase(
    tool: &Tool,
    a: &Args,
    layers: &[Layer],
    no_format: Option<Error>,
    steps: &RefCell<Steps>,
) -> engine::Result<()> {
    // Open the image without its backing chain.
    let top = open_chain(tool, layers, &[true], a.cache, false).await?;
    // Nothing to copy: straight to 100%, and only then the header's refusal.
    steps.borrow_mut().complete();
    if let Some(e) = no_format {
        return Err(e);
    }
    engine::request::change_backing_file(&top[0], a.new_name.as_deref(), a.bfmt.as_deref())
        .await
        .map_err(|e| {
            e.context(format_args!(
                "Could not change the backing file to '{}'",
                a.new_name.as_deref().unwrap_or("")
            ))
        })
}

/// The default mode: the rebase job copies what would change, then the header changes.
async fn safe_rebase(
    tool: &Tool,
    a: &Args,
    layers: &[Layer],
    steps: &RefCell<Steps>,
) -> engine::Result<()> {
    let mut writable = vec![false; layers.len()];
    writable[0] = true;
    let nodes = open_chain(tool, layers, &writable, a.cache, false).await?;
    let new_backing = match &a.new_name {
        None => None,
        Some(name) => Some(open_new_backing(tool, a, name).await?),
    };
    let opts = JobOptions {
        id: "blk-rebase".into(),
        internal: true,
        auto_finalize: true,
        auto_dismiss: false,
        speed: 0,
    };
    let spec = rebase::RebaseSpec {
        image: nodes[0].clone(),
        new_backing,
        name: a.new_name.clone(),
        format: a.new_name.as_ref().and(a.bfmt.clone()),
        on_error: OnError::Report,
    };
    let job = rebase::start(tool.engine.jobs(), &opts, spec).await?;
    finish_rebase_job(tool, &job, steps, nodes[0].len()).await
}

/// Open the new backing file `name` read-only, as a node of its own.
async fn open_new_backing(
    tool: &Tool,
    a: &Args,
    name: &str,
) -> engine::Result<std::rc::Rc<engine::graph::Node>> {
    // A relative name is relative to the image's directory, as in the header.
    let full = engine::filename::backing_path(&a.path, name);
    if let Err(e) = std::fs::metadata(&full) {
        return Err(engine::env::real::host_error(&e)
            .could_not_open(&full)
            .context(format_args!("Could not open new backing file '{name}'")));
    }
    tool.engine
        .blockdev_add(json!({"driver": a.bfmt.clone().unwrap_or_default(),
                             "node-name": "newbacking", "read-only": true,
                             "file": {"driver": "file", "filename": full}}))
        .await
        .map_err(|e| e.context(format_args!("Could not open new backing file '{name}'")))
}
