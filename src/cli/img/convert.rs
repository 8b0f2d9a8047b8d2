//! `blk convert [-f fmt] [-O fmt] [-o options] [-n] [-B backing [-F backing_fmt]] [-p] [-W]
//! [-m num] [-q] [-U] SRC DST`: qemu-img convert between raw and qcow2.
//!
//! The guest-visible data of SRC is copied by block status: ranges that read as zeroes (holes,
//! zero clusters, unallocated through the whole chain) are skipped on a freshly created
//! target, and data chunks are written only where a 4 KiB block is non-zero, so the output is
//! sparse. With `-n` the existing target gets explicit zero writes instead. With `-B` the
//! target is created over that backing file and only what SRC's top layer allocates is copied
//! (its zero ranges as explicit zeroes); the rest is left to the backing file, as qemu-img does.
//! `-W` keeps up to `-m` (default 8) chunks in flight at once, written out of order.
//! `-c` is refused: blk's qcow2 driver does not write compressed clusters.

use std::pin::Pin;
use std::task::Poll;

use engine::io::{IoBuf, Mapping, ReqFlags};

use super::create::{CreateSpec, create_image, parse_o};
use super::open::{Image, Tool, check_format};
use super::progress::Progress;
use super::{fail, split_or_fail};

const USAGE: &str = "\
Usage: blk convert [-f fmt] [-O output_fmt] [-o options] [-n] [-B backing_file [-F backing_fmt]]
                   [-p] [-W] [-m num] [-q] [-U] filename output_filename
Copy the guest-visible contents of an image into a new raw or qcow2 image.";

/// Largest chunk read and written at once (qemu-img's default buffer).
const CHUNK: u64 = 2 << 20;
/// Granularity of zero detection in data chunks (qemu-img's default `-S 4k`).
const SPARSE: usize = 4096;

fn is_zero(data: &[u8]) -> bool {
    data.iter().all(|&b| b == 0)
}

type Job<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;

/// Run every job concurrently; the first error, once all have finished.
async fn join_all(mut jobs: Vec<Job<'_>>) -> Result<(), String> {
    let mut done = vec![false; jobs.len()];
    let mut err = None;
    std::future::poll_fn(|cx| {
        for (i, job) in jobs.iter_mut().enumerate() {
            if !done[i]
                && let Poll::Ready(r) = job.as_mut().poll(cx)
            {
                done[i] = true;
                if let Err(e) = r {
                    err.get_or_insert(e);
                }
            }
        }
        if done.iter().all(|d| *d) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    err.map_or(Ok(()), Err)
}

/// What to do with one range of the source.
enum Action {
    Skip,
    Zero,
    Copy,
}

/// Copy `[pos, pos+len)`: read it, then write its non-zero 4 KiB runs (all of it when
/// `sparse` is false).
async fn copy(src: &Image, dst: &Image, pos: u64, len: u64, sparse: bool) -> Result<(), String> {
    let (buf, r) = src.bb.read(pos, IoBuf::new(len as usize)).await;
    r.map_err(|e| format!("error while reading at byte {pos}: {e}"))?;
    let data = buf.as_slice();
    let mut i = 0;
    while i < data.len() {
        let block = |j: usize| &data[j..(j + SPARSE).min(data.len())];
        let zero = sparse && is_zero(block(i));
        let mut j = i;
        while j < data.len() && (sparse && is_zero(block(j))) == zero {
            j = (j + SPARSE).min(data.len());
        }
        if !zero {
            let at = pos + i as u64;
            let (_, r) = dst
                .bb
                .write(at, IoBuf::from_slice(&data[i..j]), ReqFlags::NONE)
                .await;
            r.map_err(|e| format!("error while writing at byte {at}: {e}"))?;
        }
        i = j;
    }
    Ok(())
}

struct Plan {
    /// Target freshly created (reads as zeroes, or as its backing file with `-B`).
    fresh: bool,
    /// Copy only SRC's top layer (`-B`).
    top_only: bool,
    in_flight: usize,
    progress: bool,
}

async fn convert(src: &Image, dst: &Image, plan: &Plan) -> Result<(), String> {
    let size = src.len();
    let mut progress = Progress::new(plan.progress, size);
    let root = src.root();
    let mut pos = 0;
    while pos < size {
        let mut jobs: Vec<Job<'_>> = Vec::new();
        while pos < size && jobs.len() < plan.in_flight {
            let (len, action) = if plan.top_only {
                let st = root.block_status(pos, size - pos).await.map_err(|e| {
                    format!("error while reading block status at offset {pos}: {e}")
                })?;
                let a = match st.mapping {
                    Mapping::Unallocated => Action::Skip,
                    Mapping::Zero { .. } => Action::Zero,
                    Mapping::Data { .. } => Action::Copy,
                };
                (st.len, a)
            } else {
                let st = root
                    .chain_status(pos, size - pos, None)
                    .await
                    .map_err(|e| {
                        format!("error while reading block status at offset {pos}: {e}")
                    })?;
                let zero = st.node.is_none() || matches!(st.mapping, Mapping::Zero { .. });
                let a = match (zero, plan.fresh) {
                    (true, true) => Action::Skip,
                    (true, false) => Action::Zero,
                    (false, _) => Action::Copy,
                };
                (st.len, a)
            };
            let len = len.min(size - pos).max(1);
            match action {
                Action::Skip => {}
                Action::Zero => {
                    let at = pos;
                    jobs.push(Box::pin(async move {
                        dst.bb
                            .write_zeroes(at, len, ReqFlags::MAY_UNMAP)
                            .await
                            .map_err(|e| format!("error while writing at byte {at}: {e}"))
                    }));
                }
                Action::Copy => {
                    let mut at = pos;
                    while at < pos + len && jobs.len() < plan.in_flight {
                        let n = CHUNK.min(pos + len - at);
                        let sparse = plan.fresh && !plan.top_only;
                        jobs.push(Box::pin(copy(src, dst, at, n, sparse)));
                        at += n;
                    }
                    pos = at;
                    continue;
                }
            }
            pos += len;
        }
        join_all(jobs).await?;
        progress.update(pos);
    }
    dst.bb
        .flush()
        .await
        .map_err(|e| format!("error while flushing: {e}"))?;
    progress.finish();
    Ok(())
}

/// Entry point of `blk convert`.
pub fn run(args: &[String]) -> i32 {
    let long = [("help", 'h', false), ("force-share", 'U', false)];
    let (opts, operands) = match split_or_fail("convert", args, "f:O:o:nB:F:pWcm:qhU", &long, USAGE)
    {
        Ok(v) => v,
        Err(code) => return code,
    };
    let (mut fmt, mut out_fmt, mut share) = (None, "raw".to_string(), false);
    let mut spec = CreateSpec {
        quiet: true,
        ..CreateSpec::default()
    };
    let (mut no_create, mut progress, mut out_of_order, mut coroutines) = (false, false, false, 8);
    if let Some(code) = super::opt_help::answer(&opts, 'O', operands.last().map(String::as_str)) {
        return code;
    }
    for (c, v) in opts {
        match c {
            'f' => fmt = Some(v),
            'O' => out_fmt = v,
            'o' => {
                if let Err(e) = parse_o(&v, &mut spec.opts) {
                    return fail(e);
                }
            }
            'n' => no_create = true,
            'B' => spec.backing = Some(v),
            'F' => spec.backing_fmt = Some(v),
            'p' => progress = true,
            'W' => out_of_order = true,
            'm' => match v.parse::<usize>() {
                Ok(n) if (1..=16).contains(&n) => coroutines = n,
                _ => {
                    return fail(
                        "Invalid number of coroutines. Allowed number of coroutines is between 1 and 16",
                    );
                }
            },
            'c' => return fail("Compression is not supported by blk's qcow2 driver (convert -c)"),
            'q' => progress = false,
            'U' => share = true,
            _ => unreachable!("option {c} is in the option string"),
        }
    }
    let [src_path, dst_path] = operands.as_slice() else {
        return fail("Must specify image file name");
    };
    if let Err(e) = check_format(&out_fmt) {
        return fail(e);
    }
    if no_create && !spec.opts.is_empty() {
        return fail("-o has no effect when skipping image creation");
    }
    let tool = Tool::new();
    let result = tool.block_on(async {
        let src = tool.open(src_path, fmt.as_deref(), true, share).await?;
        if !no_create {
            target_options_valid(&out_fmt, &mut spec)?;
            spec.fmt = out_fmt.clone();
            spec.size = Some(src.len());
            create_image(&tool, dst_path, &spec)
                .await
                .map_err(|e| format!("{dst_path}: error while converting {out_fmt}: {e}"))?;
        }
        // --image-opts names the sources only; the target is a file name.
        tool.image_opts.set(false);
        let dst = tool.open(dst_path, Some(&out_fmt), false, false).await?;
        if dst.len() < src.len() {
            return Err(format!(
                "Target image is smaller than the source ({} < {} bytes)",
                dst.len(),
                src.len()
            ));
        }
        let plan = Plan {
            fresh: !no_create,
            top_only: spec.backing.is_some(),
            in_flight: if out_of_order { coroutines } else { 1 },
            progress,
        };
        convert(&src, &dst, &plan).await
    });
    let fin = tool.finish();
    match result.and(fin) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// The checks qemu-img makes on the target's options before it creates anything (their messages
/// carry no "error while converting" prefix).
fn target_options_valid(out_fmt: &str, spec: &mut CreateSpec) -> Result<(), String> {
    if let Some((k, _)) = spec
        .opts
        .iter()
        .find(|(k, _)| !super::opt_help::accepts(out_fmt, k))
    {
        return Err(format!("Invalid parameter '{k}'"));
    }
    adopt_backing_options(spec);
    if spec.backing.is_some() && out_fmt != "qcow2" {
        return Err(format!(
            "Backing file not supported for file format '{out_fmt}'"
        ));
    }
    if spec.backing.is_some() && spec.backing_fmt.is_none() {
        return Err("Use of backing file requires explicit backing format".into());
    }
    Ok(())
}

/// `-o backing_file=`/`backing_fmt=` name the target's backing file as `-B`/`-F` do, so the copy
/// leaves what the backing file holds to it; `-B`/`-F` win over the option, as in qemu-img.
fn adopt_backing_options(spec: &mut CreateSpec) {
    let mut from_options = |key: &str| {
        let at = spec.opts.iter().position(|(k, _)| k == key)?;
        Some(spec.opts.remove(at).1)
    };
    let (file, fmt) = (from_options("backing_file"), from_options("backing_fmt"));
    spec.backing = spec.backing.take().or(file);
    spec.backing_fmt = spec.backing_fmt.take().or(fmt);
}
