//! `blk convert [options] SRC [SRC2 ...] DST` (options in `convert_args.rs`): qemu-img convert
//! between raw and qcow2.
//!
//! The guest-visible data of the sources, one after the other, is copied by block status:
//! ranges that read as zeroes (holes, zero clusters, unallocated through the whole chain,
//! metadata-preallocated clusters over file holes) are skipped on a freshly created target (or
//! one declared zero with `--target-is-zero`), and data chunks are written only where sparse
//! detection (`-S`, see `sparse.rs`) finds data, so the output is sparse; `-S 0` writes
//! everything. `--salvage` turns sectors that cannot be read into zeroes, with a warning each.
//! With `-n` the existing target gets explicit zero writes instead. With `-B` the target is
//! created over that backing file and only what the source's top layer allocates is copied (its
//! zero ranges as explicit zeroes); the rest is left to the backing file, as qemu-img does.
//! `-W` keeps up to `-m` (default 8) chunks in flight at once, written out of order; `-r`
//! holds the copy to a rate. `-c` writes whole target clusters compressed: a range shorter than
//! a cluster is copied as data, and a chunk is skipped (or zeroed) only when all of it reads as
//! zeroes, as qemu-img does; the copy ends with an empty compressed write that pads the file to
//! a whole sector.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::task::Poll;

use engine::graph::Child;
use engine::io::{IoBuf, Mapping, ReqFlags};
use engine::util::Notify;
use engine::{Error, Result};

use engine::env::Env;

use super::convert_args::{ConvertArgs, parse};
use super::create::{CreateSpec, create_image};
use super::fail;
use super::open::{Image, Tool};
use super::progress::Steps;
use super::sparse::Sparse;

/// Largest chunk read and written at once (qemu-img's default buffer).
const CHUNK: u64 = 2 << 20;

type Job<'a> = Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

/// Run every job concurrently; the first error, once all have finished.
async fn join_all(mut jobs: Vec<Job<'_>>) -> Result<()> {
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
async fn read(src: &Image, pos: u64, len: u64, salvage: bool) -> Result<IoBuf> {
    let (mut buf, r) = src.bb.read(pos, IoBuf::new(len as usize)).await;
    match r {
        Ok(()) => return Ok(buf),
        Err(e) if !salvage => {
            return Err(Error::generic(format!(
                "error while reading at byte {pos}: {e}"
            )));
        }
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

/// A failed write as qemu-img reports it: the byte offset and the errno's text only (the
/// engine's own detail would not be in qemu-img's line).
fn write_error(e: Error, at: u64) -> Error {
    let e = match e.errno() {
        Some(errno) => Error::io(errno),
        None => e,
    };
    e.context(format!("error while writing at byte {at}"))
}

/// Copy `[pos, pos+len)` of `src` to `base + pos` of `dst`: read it, then, once it is this
/// job's turn, write what sparse detection keeps (all of it when `sparse` is `None`).
async fn copy(
    (src, dst): (&Image, &Image),
    (base, pos, len): (u64, u64, u64),
    plan: &Plan,
    turn: Turn<'_>,
) -> Result<()> {
    let read = read(src, pos, len, plan.salvage).await;
    turn.write(async move { write_out(dst, base + pos, read?.as_slice(), plan).await })
        .await
}

/// Write `data` (read from the source) at `at` of `dst`.
async fn write_out(dst: &Image, at: u64, data: &[u8], plan: &Plan) -> Result<()> {
    if plan.compress.is_some() {
        return copy_compressed(dst, at, data, plan).await;
    }
    let runs = match (plan.fresh && !plan.top_only).then_some(plan.sparse) {
        Some(s) => s.runs(data, at),
        None => vec![(0, data.len())],
    };
    for (i, j) in runs {
        let at = at + i as u64;
        let (_, r) = dst
            .bb
            .write(at, IoBuf::from_slice(&data[i..j]), ReqFlags::NONE)
            .await;
        r.map_err(|e| write_error(e, at))?;
    }
    Ok(())
}

/// The order of the target writes. Without `-W` qemu-img reads up to `-m` chunks ahead but
/// writes them in source order, so the target is laid out as by a serial copy; with `-W`
/// they go out as they come.
struct WriteOrder {
    in_order: bool,
    /// The sequence number of the next job allowed to write.
    next: Cell<u64>,
    /// Sequence numbers handed out.
    issued: Cell<u64>,
    /// A job failed: the rest write nothing.
    failed: Cell<bool>,
    moved: Notify,
}

/// One job's place in the [`WriteOrder`].
#[derive(Clone, Copy)]
struct Turn<'a> {
    order: &'a WriteOrder,
    seq: u64,
}

impl WriteOrder {
    fn new(in_order: bool) -> WriteOrder {
        WriteOrder {
            in_order,
            next: Cell::new(0),
            issued: Cell::new(0),
            failed: Cell::new(false),
            moved: Notify::new(),
        }
    }

    /// The turn of the next job, in the order jobs are made.
    fn take(&self) -> Turn<'_> {
        let seq = self.issued.get();
        self.issued.set(seq + 1);
        Turn { order: self, seq }
    }
}

impl Turn<'_> {
    /// Run `write` once every earlier job has written (or failed), then let the next one go;
    /// a job passes its turn on whatever happens, so a failure never stalls the others. Once
    /// a write has failed no other job writes (as qemu-img stops its copy at the first error).
    async fn write(self, write: impl Future<Output = Result<()>>) -> Result<()> {
        let o = self.order;
        while o.in_order && o.next.get() != self.seq {
            o.moved.wait().await;
        }
        let out = if o.failed.get() { Ok(()) } else { write.await };
        if out.is_err() {
            o.failed.set(true);
        }
        o.next.set(self.seq + 1);
        o.moved.notify_all();
        out
    }
}

/// `-c`: write `data` (whole target clusters) compressed at `at`. Clusters are written as a
/// whole, so only a chunk that is all zeroes is left out (or zeroed on a target that does not
/// read as zeroes), unless `-S 0` asks for everything.
async fn copy_compressed(dst: &Image, at: u64, data: &[u8], plan: &Plan) -> Result<()> {
    let context = |e: Error| write_error(e, at);
    if plan.sparse.min != 0 && data.iter().all(|b| *b == 0) {
        if plan.fresh {
            return Ok(());
        }
        let len = data.len() as u64;
        return dst
            .bb
            .write_zeroes(at, len, ReqFlags::MAY_UNMAP)
            .await
            .map_err(context);
    }
    let (_, r) = dst
        .bb
        .write(at, IoBuf::from_slice(data), ReqFlags::WRITE_COMPRESSED)
        .await;
    r.map_err(context)
}

struct Plan {
    /// Target freshly created (reads as zeroes, or as its backing file with `-B`).
    fresh: bool,
    /// Copy only SRC's top layer (`-B`).
    top_only: bool,
    in_flight: usize,
    /// Without `-W`: target writes in source order.
    in_order: bool,
    progress: bool,
    /// `-S`: sparse detection on a fresh target (minimum 0: everything is written).
    sparse: Sparse,
    /// `--salvage`: unreadable sectors become zeroes, with a warning.
    salvage: bool,
    /// `-r`: bytes per second, 0 for no limit.
    rate: u64,
    /// `-c`: the target's cluster size (compressed writes cover whole clusters).
    compress: Option<u64>,
}

/// What to do with the range of SRC at `pos`: its length (at least 1) and the action.
async fn classify(root: &Child, pos: u64, size: u64, plan: &Plan) -> Result<(u64, Action)> {
    let status_error = |e: Error| {
        e.context(format_args!(
            "error while reading block status at offset {pos}"
        ))
    };
    let (len, action) = if plan.top_only {
        let st = root
            .block_status(pos, size - pos)
            .await
            .map_err(status_error)?;
        let a = match st.mapping {
            Mapping::Unallocated | Mapping::UnallocatedAt { .. } => Action::Skip,
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
    let len = len.min(size - pos).max(1);
    let Some(cs) = plan.compress else {
        return Ok((len, action));
    };
    // Compressed clusters are written whole: a range shorter than a cluster is copied with the
    // cluster around it; a longer one stops at a cluster boundary.
    if len < cs {
        return Ok(((size - pos).min(cs), Action::Copy));
    }
    // qemu-img reads and writes one cluster at a time then (so all-zero clusters are left out).
    let len = if matches!(action, Action::Copy) {
        len.min(cs)
    } else {
        len
    };
    Ok((len - len % cs, action))
}

/// The bytes the copy reads and writes as data: what qemu-img's progress counts (ranges
/// written as zeroes or skipped do not count).
async fn data_total(srcs: &[Image], plan: &Plan) -> Result<u64> {
    let mut total = 0;
    for src in srcs {
        let (root, size) = (src.root(), src.len());
        let mut pos = 0;
        while pos < size {
            let (len, action) = classify(&root, pos, size, plan).await?;
            if matches!(action, Action::Copy) {
                total += len;
            }
            pos += len;
        }
    }
    Ok(total)
}

/// Shared state of one convert run: what was copied, the progress line, the rate limit.
struct Run<'a> {
    dst: &'a Image,
    plan: &'a Plan,
    env: &'a dyn Env,
    started_ns: u64,
    copied: Cell<u64>,
    progress: RefCell<Steps>,
    order: WriteOrder,
}

impl Run<'_> {
    /// Wait until the data copied so far fits the rate limit (`-r`).
    async fn keep_rate(&self) {
        if self.plan.rate == 0 {
            return;
        }
        let due = self.copied.get() as u128 * 1_000_000_000 / self.plan.rate as u128;
        let at = self
            .started_ns
            .saturating_add(due.min(u64::MAX as u128) as u64);
        if at > self.env.now_ns() {
            self.env.sleep_until(at).await;
        }
    }

    /// Copy all of `src` to the target from `base` on.
    async fn copy_source(&self, src: &Image, base: u64) -> Result<()> {
        let (size, root, plan, dst) = (src.len(), src.root(), self.plan, self.dst);
        let mut pos = 0;
        while pos < size {
            let mut jobs: Vec<Job<'_>> = Vec::new();
            while pos < size && jobs.len() < plan.in_flight {
                let (len, action) = classify(&root, pos, size, plan).await?;
                match action {
                    Action::Skip => {}
                    Action::Zero => {
                        let at = base + pos;
                        let turn = self.order.take();
                        jobs.push(Box::pin(turn.write(async move {
                            dst.bb
                                .write_zeroes(at, len, ReqFlags::MAY_UNMAP)
                                .await
                                .map_err(|e| write_error(e, at))
                        })));
                    }
                    Action::Copy => {
                        let mut at = pos;
                        while at < pos + len && jobs.len() < plan.in_flight {
                            let n = CHUNK.min(pos + len - at);
                            self.keep_rate().await;
                            let turn = self.order.take();
                            jobs.push(Box::pin(async move {
                                copy((src, dst), (base, at, n), plan, turn).await?;
                                self.copied.set(self.copied.get() + n);
                                self.progress.borrow_mut().reach(self.copied.get());
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
        Ok(())
    }
}

async fn convert(srcs: &[Image], dst: &Image, plan: &Plan, env: &dyn Env) -> Result<()> {
    let total = match plan.progress {
        true => data_total(srcs, plan).await?,
        false => 0,
    };
    let run = Run {
        dst,
        plan,
        env,
        started_ns: env.now_ns(),
        copied: Cell::new(0),
        // Shown as each data chunk lands, as qemu-img shows it.
        progress: RefCell::new(Steps::new(plan.progress, total, 1.0)),
        order: WriteOrder::new(plan.in_order),
    };
    let mut base = 0;
    for src in srcs {
        run.copy_source(src, base).await?;
        base += src.len();
    }
    if plan.compress.is_some() {
        // An empty compressed write: the format pads its file to a whole sector.
        let (_, r) = dst
            .bb
            .write(0, IoBuf::new(0), ReqFlags::WRITE_COMPRESSED)
            .await;
        r.map_err(|e| write_error(e, 0))?;
    }
    dst.bb
        .flush()
        .await
        .map_err(|e| e.context("error while flushing"))?;
    run.progress.borrow_mut().finish();
    Ok(())
}

/// Entry point of `blk convert`.
pub fn run(args: &[String]) -> i32 {
    let mut a = match parse(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let tool = Tool::new();
    let result = tool.block_on(run_opened(&tool, &mut a));
    let fin = tool.finish();
    match result.and(fin) {
        Ok(()) => 0,
        // qemu-img reports this refusal yet exits 0 (its status is still unset there).
        Err(e) if e == target_is_zero_with_backing() => {
            crate::cli::prog::error(e);
            0
        }
        Err(e) => fail(e),
    }
}

/// The one refusal of convert that qemu-img reports with exit status 0.
fn target_is_zero_with_backing() -> Error {
    Error::generic("Cannot use --target-is-zero when the destination image has a backing file")
}

async fn run_opened(tool: &Tool, a: &mut ConvertArgs) -> Result<()> {
    tool.cache.set(a.copy.src_cache()?);
    let mut srcs = Vec::new();
    for path in &a.sources {
        srcs.push(tool.open(path, a.fmt.as_deref(), true, a.share).await?);
    }
    if let Some(name) = &a.snapshot {
        snapshot_refusal(&srcs, name)?;
    }
    if a.bitmaps {
        bitmaps_refusal(&srcs, a.skip_broken_bitmaps)?;
    }
    let total: u64 = srcs.iter().map(Image::len).sum();
    let out_fmt = a.out_fmt.clone().unwrap_or_default();
    if !a.no_create {
        target_options_valid(&out_fmt, &mut a.spec)?;
        if a.compressed && out_fmt != "qcow2" {
            return Err(Error::generic(
                "Compression not supported for this file format",
            ));
        }
        if a.compressed && a.spec.opts.iter().any(|(k, _)| k == "encrypt.format") {
            return Err(Error::generic(
                "Compression and encryption not supported at the same time",
            ));
        }
        a.spec.fmt = out_fmt.clone();
        a.spec.size = Some(total);
        let dst_path = &a.target;
        create_image(tool, dst_path, &a.spec)
            .await
            .map_err(|e| e.context(format!("{dst_path}: error while converting {out_fmt}")))?;
    }
    if a.target_is_zero && a.spec.backing.is_some() {
        return Err(target_is_zero_with_backing());
    }
    // --image-opts names the sources only; --target-image-opts the target.
    tool.image_opts.set(a.target_image_opts);
    tool.cache.set(a.copy.cache()?);
    let dst = match keyed_target(a) {
        // A new encrypted target opens with the key it was created with, as qemu-img does.
        Some(opts) => {
            tool.image_opts.set(true);
            tool.open(&opts, None, false, false).await?
        }
        None => {
            tool.open(&a.target, a.out_fmt.as_deref(), false, false)
                .await?
        }
    };
    if a.no_create && dst.len() < total {
        return Err(Error::generic("output file is smaller than input file"));
    }
    if a.target_is_zero && dst.node.backing().is_some() {
        return Err(target_is_zero_with_backing());
    }
    // qemu-img finds out that the target cannot hold bitmaps once it is open, before the data.
    if let Some(f) = a.out_fmt.as_deref().filter(|f| a.bitmaps && *f != "qcow2") {
        return Err(Error::generic(format!(
            "Format driver '{f}' does not support bitmaps"
        )));
    }
    let plan = Plan {
        fresh: !a.no_create || a.target_is_zero,
        top_only: a.spec.backing.is_some(),
        // Reads run ahead in either mode (writes keep source order without -W); an in-order
        // salvaging copy reads one chunk at a time so its warnings come out in offset order.
        in_flight: if a.out_of_order || !a.copy.salvage {
            a.coroutines
        } else {
            1
        },
        in_order: !a.out_of_order,
        progress: a.progress,
        sparse: a.copy.sparse,
        salvage: a.copy.salvage,
        rate: a.copy.rate,
        compress: a
            .compressed
            .then(|| compress_cluster_size(&dst))
            .transpose()?,
    };
    convert(&srcs, &dst, &plan, &*tool.env).await?;
    if a.bitmaps {
        super::bitmap::copy_bitmaps(&tool.engine, &srcs[0].node, &dst.node).await?;
    }
    Ok(())
}

/// `-c`: the target's cluster size, which compressed writes cover whole.
fn compress_cluster_size(dst: &Image) -> Result<u64> {
    let cs = dst.node.driver().image_info().cluster_size;
    if !dst
        .node
        .driver()
        .caps()
        .write_flags
        .contains(ReqFlags::WRITE_COMPRESSED)
    {
        return Err(Error::generic(
            "Compression not supported for this file format",
        ));
    }
    if cs == 0 || cs > CHUNK {
        return Err(Error::generic("invalid cluster size"));
    }
    Ok(cs)
}

/// `-l`: blk reads no internal snapshot yet; QEMU's refusals where it has none to read.
fn snapshot_refusal(srcs: &[Image], _name: &str) -> Result<()> {
    for src in srcs {
        let Some(ops) = src
            .node
            .driver()
            .format_ops()
            .filter(|_| src.format == "qcow2")
        else {
            return Err(Error::generic(format!(
                "Failed to load snapshot: Block format '{}' used by device '' does not support \
                 temporarily loading internal snapshots",
                src.format
            )));
        };
        if ops.snapshot_count() == 0 {
            return Err(Error::generic(
                "Failed to load snapshot: Can't find snapshot",
            ));
        }
    }
    Err(Error::generic(
        "Failed to load snapshot: blk cannot read internal snapshots yet",
    ))
}

/// `--bitmaps`: QEMU's refusals before the target is created: one source, a qcow2 one, and no
/// inconsistent bitmap unless `skip_broken`.
fn bitmaps_refusal(srcs: &[Image], skip_broken: bool) -> Result<()> {
    if srcs.len() != 1 {
        return Err(Error::generic(
            "Copying bitmaps only possible with single source",
        ));
    }
    if srcs[0].format != "qcow2" {
        return Err(Error::generic("Source lacks bitmap support"));
    }
    // The source's live bitmaps, newest first, as QEMU looks for the first inconsistent one.
    let broken = srcs[0]
        .node
        .bitmaps()
        .all()
        .into_iter()
        .find(|b| b.persistent() && b.inconsistent());
    match broken {
        Some(b) if !skip_broken => Err(Error::generic(format!(
            "Cannot copy inconsistent bitmap '{}'\nTry --skip-broken-bitmaps, or use 'qemu-img \
             bitmap --remove' to delete it",
            b.name()
        ))),
        _ => Ok(()),
    }
}

/// The option string that opens a target just created encrypted (`-o key-secret=` for luks,
/// `encrypt.key-secret=` for qcow2) with its key; `None` for any other target.
fn keyed_target(a: &ConvertArgs) -> Option<String> {
    if a.no_create || a.target_image_opts {
        return None;
    }
    let fmt = a.out_fmt.as_deref()?;
    let key = if fmt == "luks" {
        "key-secret"
    } else {
        "encrypt.key-secret"
    };
    let (_, id) = a.spec.opts.iter().rev().find(|(k, _)| k == key)?;
    let file = a.target.replace(',', ",,");
    Some(format!(
        "driver={fmt},{key}={},file.filename={file}",
        id.replace(',', ",,")
    ))
}

/// The checks qemu-img makes on the target's options before it creates anything (their messages
/// carry no "error while converting" prefix).
fn target_options_valid(out_fmt: &str, spec: &mut CreateSpec) -> Result<()> {
    if let Some((k, _)) = spec
        .opts
        .iter()
        .find(|(k, _)| !super::opt_help::accepts(out_fmt, k))
    {
        return Err(Error::generic(format!("Invalid parameter '{k}'")));
    }
    adopt_backing_options(spec);
    if spec.backing.is_some() && out_fmt != "qcow2" {
        return Err(Error::generic(format!(
            "Backing file not supported for file format '{out_fmt}'"
        )));
    }
    if spec.backing.is_some() && spec.backing_fmt.is_none() {
        return Err(Error::generic(
            "Use of backing file requires explicit backing format",
        ));
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
