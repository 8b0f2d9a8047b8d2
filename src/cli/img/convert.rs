//! `blk convert [-f fmt] [-O fmt] [-o options] [-n] [-B backing [-F backing_fmt]] [-t cache]
//! [-T src_cache] [-S size] [--salvage] [-p] [-W] [-m num] [-q] [-U] SRC DST`: qemu-img convert
//! between raw and qcow2.
//!
//! The guest-visible data of SRC is copied by block status: ranges that read as zeroes (holes, zero
//! clusters, unallocated through the whole chain) are skipped on a freshly created target, and data
//! chunks are written only where sparse detection (`-S`, see `sparse.rs`) finds data, so the output
//! is sparse; `-S 0` writes everything. `--salvage` turns sectors that cannot be read into zeroes,
//! with a warning each. With `-n` the existing target gets explicit zero writes instead. With `-B`
//! the target is created over that backing file and only what SRC's top layer allocates is copied
//! (its zero ranges as explicit zeroes); the rest is left to the backing file, as qemu-img does.
//! `-W` keeps up to `-m` (default 8) chunks in flight at once, written out of order. `-c` is
//! refused: blk's qcow2 driver does not write compressed clusters.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::task::Poll;

use engine::graph::Child;
use engine::io::{IoBuf, Mapping, ReqFlags};
use engine::qemu_io::CacheMode;

use super::create::{CreateSpec, create_image, parse_o};
use super::number::{in_range, parse_size};
use super::open::{Image, Tool, check_format, parse_cache, parse_src_cache};
use super::progress::Steps;
use super::sparse::Sparse;
use super::{fail, split_or_fail};

const USAGE: &str = "\
Usage: blk convert [-f fmt] [-O output_fmt] [-o options] [-n] [-B backing_file [-F backing_fmt]]
                   [-t cache] [-T src_cache] [-S sparse_size] [--salvage]
                   [-p] [-W] [-m num] [-q] [-U] filename output_filename
Copy the guest-visible contents of an image into a new raw or qcow2 image.";

/// Largest chunk read and written at once (qemu-img's default buffer).
const CHUNK: u64 = 2 << 20;
/// qemu-img's default minimum hole size (`-S 4k`).
const SPARSE: u64 = 4096;
/// The largest `-S` qemu-img takes.
const SPARSE_MAX: u64 = 16 << 20;

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

/// Read `[pos, pos+len)` of `src`. With `--salvage` a failed read is retried sector by
/// sector, and each sector that cannot be read is warned about and taken as zeroes.
async fn read(src: &Image, pos: u64, len: u64, salvage: bool) -> Result<IoBuf, String> {
    let (mut buf, r) = src.bb.read(pos, IoBuf::new(len as usize)).await;
    match r {
        Ok(()) => return Ok(buf),
        Err(e) if !salvage => return Err(format!("error while reading at byte {pos}: {e}")),
        Err(_) => {}
    }
    let mut at = 0;
    while at < len {
        let n = 512.min(len - at);
        let (sector, r) = src.bb.read(pos + at, IoBuf::new(n as usize)).await;
        let range = at as usize..(at + n) as usize;
        match r {
            Ok(()) => buf.as_mut_slice()[range].copy_from_slice(sector.as_slice()),
            Err(e) => {
                let offset = pos + at;
                let msg = format!("warning: error while reading offset {offset}: {e}");
                crate::cli::prog::error(msg);
                buf.as_mut_slice()[range].fill(0);
            }
        }
        at += n;
    }
    Ok(buf)
}

/// Copy `[pos, pos+len)`: read it, then write what sparse detection keeps (all of it when
/// `sparse` is `None`).
async fn copy(
    src: &Image,
    dst: &Image,
    (pos, len): (u64, u64),
    sparse: Option<Sparse>,
    salvage: bool,
) -> Result<(), String> {
    let buf = read(src, pos, len, salvage).await?;
    let data = buf.as_slice();
    let runs = match sparse {
        Some(s) => s.runs(data, pos),
        None => vec![(0, data.len())],
    };
    for (i, j) in runs {
        let at = pos + i as u64;
        let (_, r) = dst
            .bb
            .write(at, IoBuf::from_slice(&data[i..j]), ReqFlags::NONE)
            .await;
        r.map_err(|e| format!("error while writing at byte {at}: {e}"))?;
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
    /// `-S`: sparse detection on a fresh target (minimum 0: everything is written).
    sparse: Sparse,
    /// `--salvage`: unreadable sectors become zeroes, with a warning.
    salvage: bool,
}

/// What to do with the range of SRC at `pos`: its length (at least 1) and the action.
async fn classify(root: &Child, pos: u64, size: u64, plan: &Plan) -> Result<(u64, Action), String> {
    let status_error = |e| format!("error while reading block status at offset {pos}: {e}");
    let (len, action) = if plan.top_only {
        let st = root
            .block_status(pos, size - pos)
            .await
            .map_err(status_error)?;
        let a = match st.mapping {
            Mapping::Unallocated => Action::Skip,
            Mapping::Zero { .. } | Mapping::DataZero { .. } => Action::Zero,
            Mapping::Data { .. } => Action::Copy,
        };
        (st.len, a)
    } else {
        let st = root
            .chain_status_want_zero(pos, size - pos, None)
            .await
            .map_err(status_error)?;
        let zero = st.node.is_none() || st.mapping.is_zero();
        let a = match (zero, plan.fresh) {
            // -S 0: even what reads as zeroes is written out.
            (true, true) if plan.sparse.min == 0 => Action::Copy,
            (true, true) => Action::Skip,
            (true, false) => Action::Zero,
            (false, _) => Action::Copy,
        };
        (st.len, a)
    };
    Ok((len.min(size - pos).max(1), action))
}

/// The bytes the copy reads and writes as data: what qemu-img's progress counts (ranges
/// written as zeroes or skipped do not count).
async fn data_total(root: &Child, size: u64, plan: &Plan) -> Result<u64, String> {
    let (mut pos, mut total) = (0, 0);
    while pos < size {
        let (len, action) = classify(root, pos, size, plan).await?;
        if matches!(action, Action::Copy) {
            total += len;
        }
        pos += len;
    }
    Ok(total)
}

async fn convert(src: &Image, dst: &Image, plan: &Plan) -> Result<(), String> {
    let size = src.len();
    let root = src.root();
    let total = match plan.progress {
        true => data_total(&root, size, plan).await?,
        false => 0,
    };
    // Shown as each data chunk lands, as qemu-img shows it.
    let progress = RefCell::new(Steps::new(plan.progress, total, 1.0));
    let copied = Cell::new(0);
    let (progress, copied) = (&progress, &copied);
    let mut pos = 0;
    while pos < size {
        let mut jobs: Vec<Job<'_>> = Vec::new();
        while pos < size && jobs.len() < plan.in_flight {
            let (len, action) = classify(&root, pos, size, plan).await?;
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
                        let sparse = (plan.fresh && !plan.top_only).then_some(plan.sparse);
                        jobs.push(Box::pin(async move {
                            copy(src, dst, (at, n), sparse, plan.salvage).await?;
                            copied.set(copied.get() + n);
                            progress.borrow_mut().reach(copied.get());
                            Ok(())
                        }));
                        at += n;
                    }
                    pos = at;
                    continue;
                }
            }
            pos += len;
        }
        join_all(jobs).await?;
    }
    dst.bb
        .flush()
        .await
        .map_err(|e| format!("error while flushing: {e}"))?;
    progress.borrow_mut().finish();
    Ok(())
}

/// `-S`, `-t`, `-T` and `--salvage`: how data is read and written.
struct CopyOpts {
    sparse: Sparse,
    cache: Option<String>,
    src_cache: Option<String>,
    salvage: bool,
}

impl Default for CopyOpts {
    fn default() -> CopyOpts {
        CopyOpts {
            sparse: Sparse::new(SPARSE),
            cache: None,
            src_cache: None,
            salvage: false,
        }
    }
}

impl CopyOpts {
    /// Take option `c`; `-S` is checked at once, as qemu-img does.
    fn take(&mut self, c: char, v: String) -> Result<(), String> {
        match c {
            'S' => {
                let what = "buffer size for sparse output";
                let n = in_range(what, &v, parse_size(&v), 0, i64::MAX as u64)?;
                if n % 512 != 0 || n > SPARSE_MAX {
                    return Err(format!(
                        "Invalid {what} specified. Valid sizes are multiples of 512 up to \
                         {SPARSE_MAX}. Select 0 to disable sparse detection (fully allocates output)."
                    ));
                }
                self.sparse = Sparse::new(n);
            }
            't' => self.cache = Some(v),
            'T' => self.src_cache = Some(v),
            'V' => self.salvage = true,
            _ => unreachable!("option {c} is in the option string"),
        }
        Ok(())
    }

    fn src_cache(&self) -> Result<CacheMode, String> {
        self.src_cache
            .as_deref()
            .map_or(Ok(CacheMode::Writeback), parse_src_cache)
    }

    /// The target's cache mode: qemu-img checks it only once the target exists.
    fn cache(&self) -> Result<CacheMode, String> {
        self.cache
            .as_deref()
            .map_or(Ok(CacheMode::Writeback), parse_cache)
    }
}

/// Entry point of `blk convert`.
pub fn run(args: &[String]) -> i32 {
    let long = [
        ("help", 'h', false),
        ("force-share", 'U', false),
        ("salvage", 'V', false),
    ];
    let short = "f:O:o:nB:F:pWcm:qhUS:t:T:";
    let (opts, operands) = match split_or_fail("convert", args, short, &long, USAGE) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let (mut fmt, mut out_fmt, mut share) = (None, "raw".to_string(), false);
    let mut spec = CreateSpec {
        quiet: true,
        ..CreateSpec::default()
    };
    let (mut no_create, mut progress, mut out_of_order, mut coroutines) = (false, false, false, 8);
    let mut copy_opts = CopyOpts::default();
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
            _ => {
                if let Err(e) = copy_opts.take(c, v) {
                    return fail(e);
                }
            }
        }
    }
    let [src_path, dst_path] = operands.as_slice() else {
        return fail("Must specify image file name");
    };
    if let Err(e) = copy_opts.src_cache().and(check_format(&out_fmt)) {
        return fail(e);
    }
    if no_create && !spec.opts.is_empty() {
        return fail("-o has no effect when skipping image creation");
    }
    let tool = Tool::new();
    let result = tool.block_on(async {
        tool.cache.set(copy_opts.src_cache()?);
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
        tool.cache.set(copy_opts.cache()?);
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
            sparse: copy_opts.sparse,
            salvage: copy_opts.salvage,
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
