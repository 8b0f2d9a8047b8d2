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

use super::chain::{cache_mode, discover, finish_rebase_job, open_chain};
use super::open::{Tool, check_format, parse_src_cache};
use super::progress::Steps;
use super::{fail, split_or_fail};
use crate::cli::prog::usage_error;

const USAGE: &str = "\
Usage: blk rebase [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] [-U] -b backing_file [-F backing_fmt] filename
Change the backing file of an image, as qemu-img rebase does.";

/// Entry point of `blk rebase`.
pub fn run(args: &[String]) -> i32 {
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
    let (opts, operands) = match split_or_fail("rebase", args, "hf:F:b:upt:T:qUc", &long, USAGE) {
        Ok(v) => v,
        Err(code) => return code,
    };
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
        return usage_error("rebase", "Expecting one image file name");
    };
    let Some(backing) = backing else {
        return usage_error(
            "rebase",
            "Must specify backing file (-b) or use unsafe mode (-u)",
        );
    };
    if let Some(f) = &bfmt
        && check_format(f).is_err()
    {
        return fail(format!("Invalid format name: '{f}'"));
    }
    let cache = match cache_mode(&cache).and_then(|c| parse_src_cache(&src_cache).map(|_| c)) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if quiet {
        progress = false;
    }
    // -c compresses what a safe rebase writes; an unsafe one writes no data, so it is moot.
    if compress && !unsafe_mode {
        return fail("Compression is not supported by blk's qcow2 driver yet (rebase -c)");
    }
    let new_name = (!backing.is_empty()).then_some(backing);
    let tool = Tool::new();
    // qemu-img shows 0% before it opens anything, and ends the line however the run ends.
    let steps = RefCell::new(Steps::new(progress, 0, 2.0));
    let result = tool.block_on(async {
        if let Some(f) = &fmt {
            check_format(f).map_err(|_| {
                Error::generic(format!("Unknown driver '{f}'")).could_not_open(path)
            })?;
        }
        let layers = if unsafe_mode {
            let format = match &fmt {
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
            vec![super::chain::Layer {
                path: path.clone(),
                format,
            }]
        } else {
            discover(&tool, path, fmt.as_deref()).await?
        };
        let no_format = new_name.as_ref().filter(|_| bfmt.is_none()).map(|name| {
            Error::generic(format!(
                "Could not change the backing file to '{name}': backing format must be specified"
            ))
        });
        if let Some(e) = no_format.clone().filter(|_| !unsafe_mode) {
            return Err(e);
        }
        if unsafe_mode {
            // Only the header: open the image without its backing chain.
            let top = open_chain(&tool, &layers, &[true], cache, false).await?;
            // Nothing to copy: straight to 100%, and only then the header's refusal.
            steps.borrow_mut().complete();
            if let Some(e) = no_format {
                return Err(e);
            }
            return engine::request::change_backing_file(
                &top[0],
                new_name.as_deref(),
                bfmt.as_deref(),
            )
            .await
            .map_err(|e| {
                e.context(format_args!(
                    "Could not change the backing file to '{}'",
                    new_name.as_deref().unwrap_or("")
                ))
            });
        }
        let mut writable = vec![false; layers.len()];
        writable[0] = true;
        let nodes = open_chain(&tool, &layers, &writable, cache, false).await?;
        let new_backing = match &new_name {
            None => None,
            Some(name) => {
                // A relative name is relative to the image's directory, as in the header.
                let full = engine::filename::backing_path(path, name);
                if let Err(e) = std::fs::metadata(&full) {
                    return Err(engine::env::real::host_error(&e)
                        .could_not_open(&full)
                        .context(format_args!("Could not open new backing file '{name}'")));
                }
                let node = tool
                    .engine
                    .blockdev_add(json!({"driver": bfmt.clone().unwrap_or_default(),
                                         "node-name": "newbacking", "read-only": true,
                                         "file": {"driver": "file", "filename": full}}))
                    .await
                    .map_err(|e| {
                        e.context(format_args!("Could not open new backing file '{name}'"))
                    })?;
                Some(node)
            }
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
            name: new_name.clone(),
            format: new_name.as_ref().and(bfmt.clone()),
            on_error: OnError::Report,
        };
        let job = rebase::start(tool.engine.jobs(), &opts, spec).await?;
        finish_rebase_job(&tool, &job, &steps, nodes[0].len()).await
    });
    steps.borrow_mut().end_line();
    let fin = tool.finish();
    match result.and(fin) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}
