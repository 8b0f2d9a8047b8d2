//! `qcow2`: QEMU's copy-on-write image format (v2 and v3).
//!
//! This file owns the driver state, `open` (options, header, tables, backing child) and the
//! `BlockDriver` glue. The rest is split by concern: `header` (fixed fields + extensions),
//! `layout` (header geometry and feature bits), `l2map` (L1 table and L2 cache state),
//! `entry` (the typed L1 and L2 entries and their bit layout), `cluster` (L1/L2 mapping, L2
//! allocation, metadata write-back), `allocator` (refcount table, refblock cache, free search
//! hint, deferred frees: the state), `refcount` (refcounts and cluster allocation), `cache`
//! (table cache), `lock` (metadata lock, guest range locks), `units` (the `GuestOffset`,
//! `GuestCluster`, `HostOffset` and `HostCluster` newtypes the parts exchange),
//! `io` (reads, allocating writes with COW, zeroes, discard, status), `compress` (deflate and zstd
//! clusters), `create` (new images), `repair` (refcount rebuild of dirty images), `resize`,
//! `check` and `check_walk` (consistency check and repair, `qemu-img check`), `backing`
//! (rewriting the backing file name after a job changed the chain), `overlap`
//! (metadata overlap checks before writes, the corrupt bit), `bitmaps` (persistent dirty
//! bitmaps: the bitmaps extension, directory and tables), `amend`, `amend_downgrade` and
//! `refcount_rewrite` (`qemu-img amend`: version, refcount width, lazy refcounts, data file),
//! `measure` (the size arithmetic of `qemu-img measure`).
//!
//! An external data file (incompatible bit 2) is a second child, `data-file`: guest clusters
//! live there at their guest offsets, are not refcounted, and are flushed before the L2
//! tables that map them; with data-file-raw it is kept a raw image of the guest disk (zero
//! writes and discards zero it too). Images with extended L2 entries (bit 4) are read
//! subcluster by subcluster (`subcluster`) and written with subcluster allocation
//! (`subcluster_write`).
//!
//! Crash-safety rules (QEMU's ordering): refcount increments reach the disk before any L2/L1
//! entry relying on them; guest data is flushed before the L2 table that points to it is
//! written; a freed cluster's refcount is only decremented once the mapping change that freed it
//! is durable, so it is never reused too early. Whatever allocates, changes refcounts, frees or
//! touches the table caches takes `&MetaGuard` (the metadata lock held) as a parameter.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

mod allocator;
mod amend;
mod amend_downgrade;
mod backing;
mod bitmaps;
mod cache;
mod check;
mod check_walk;
mod clean;
mod cluster;
mod compress;
mod compressed_write;
mod create;
mod empty;
mod encrypt;
mod entry;
mod format_ops;
mod header;
mod info;
mod io;
mod l2_cow;
mod l2map;
mod layout;
mod lock;
pub mod measure;
mod options;
mod overlap;
mod prealloc_status;
mod refcount;
mod refcount_rewrite;
mod reopen;
mod repair;
mod resize;
mod snapshot;
mod snapshot_table;
mod subcluster;
mod subcluster_write;
mod units;
mod vmstate;

use std::cell::{Cell, RefCell};
use std::rc::Weak;

use serde_json::{Value, json};

use crate::driver::{BlockDriver, DriverCaps, DriverKind, FormatOps, Prealloc};
use crate::env::LocalBoxFuture;
use crate::error::{Errno, Error, Result};
use crate::graph::{Child, Node, OpenCtx};
use crate::io::{BlockStatus, BufResult, IoBuf, Limits, ReqFlags};
use crate::types::ChildRole;
use crate::util::Options;

pub use crate::driver::{CheckReport, Repair};
pub use check::check_node;
pub use clean::cached_tables;
pub use create::{Compat, CreateOptions, create};
pub use header::{Header, RawExtension};
pub use snapshot_table::{ReadMode, SnapshotEntry, TableError, decode_table, encode_table};

use allocator::Allocator;
use l2map::L2Map;
use layout::Layout;
use lock::{MetaGuard, MetaLock, RangeLocks};
use units::HostOffset;

const CAPS: DriverCaps = DriverCaps {
    name: "qcow2",
    kind: DriverKind::Format,
    supports_backing: true,
    write_flags: ReqFlags::WRITE_COMPRESSED,
    zero_flags: ReqFlags::MAY_UNMAP,
    reopen: true,
};

pub(crate) use entry::OFFSET_MASK;

/// The open image.
pub(crate) struct Qcow2 {
    file: Child,
    /// External data file (incompatible bit 2): guest clusters live there at their guest
    /// offset and are not refcounted; `file` holds only metadata.
    data: Option<Child>,
    /// The data file is a raw image of the guest disk (autoclear bit 1): whatever reads as
    /// zeroes in the image must read as zeroes in the data file too.
    data_raw: bool,
    /// The data file's name as the header records it.
    data_file_name: Option<String>,
    /// Header geometry and feature bits (`layout.rs`).
    layout: Layout,
    /// The active L1 table and the L2 table cache (`l2map.rs`).
    l2: L2Map,
    /// Refcount table, refcount block cache, free-cluster search, deferred frees
    /// (`allocator.rs`).
    alloc: Allocator,
    meta: MetaLock,
    ranges: RangeLocks,
    /// Switched by reopen (`reopen_commit`); `reopen_to` holds the staged value.
    read_only: Cell<bool>,
    reopen_to: Cell<Option<bool>>,
    /// Lazy refcounts (v3 compatible feature): the dirty bit is set before the first write,
    /// refcount blocks are not written ahead of the L2 tables, and a clean close clears it.
    /// A cell: a reopen may switch it.
    lazy: Cell<bool>,
    /// Header fix-ups (refcount rebuild of a dirty image, clearing autoclear bits) still to
    /// do. They run in `activate`, right after open (the node takes its permissions on `file`
    /// only once it is open); the write path checks again in case activation was skipped.
    fixups_pending: Cell<bool>,
    /// This node, for the BLOCK_IMAGE_CORRUPTED event (node and device name).
    node: Weak<Node>,
    /// A corruption event was sent; later ones are suppressed as in QEMU.
    signaled_corruption: Cell<bool>,
    /// Opened for check/repair (`x-check`): the corrupt bit does not stop the repair's own
    /// metadata writes.
    check_mode: bool,
    /// Corruption was found and signalled as fatal while open: every write fails from now on,
    /// check mode or not.
    fatal_signaled: Cell<bool>,
    /// The runtime open options (`options.rs`): discard pass-through, overlap checks. A
    /// reopen may replace them (`reopen.rs`).
    runtime: RefCell<options::OpenOpts>,
    /// Whether the image looks metadata-preallocated (`prealloc_status.rs`); found out on the
    /// first block status.
    metadata_prealloc: Cell<Option<bool>>,
    /// The header's lazy-refcounts bit: what `lazy` is when no option says otherwise.
    header_lazy: bool,
    /// Options a reopen has checked and will apply at commit.
    reopen_options: RefCell<Option<reopen::Staged>>,
    /// The `cache-clean-interval` task, ended when the driver goes away (or a reopen
    /// replaces it).
    cleaner: RefCell<Option<clean::Cleaner>>,
    /// The internal snapshots (`snapshot.rs`), in table order.
    snaps: RefCell<Vec<snapshot_table::SnapshotEntry>>,
    /// Where the snapshot table is and its size in bytes (0, 0: none).
    snap_table: Cell<(u64, u64)>,
    /// Where the persistent bitmap directory is and its size in bytes (0, 0: none), for the
    /// overlap checks; follows every header switch (`bitmaps/header.rs`).
    bitmap_dir_at: Cell<(u64, u64)>,
    /// Encryption of the guest data (`encrypt.rs`), if the image has any.
    crypto: Option<encrypt::Encryption>,
}

pub(super) fn open(
    ctx: OpenCtx,
    opts: Options,
) -> LocalBoxFuture<'static, Result<Box<dyn BlockDriver>>> {
    Box::pin(async move {
        let OpenArgs {
            file_spec,
            backing_opt,
            data_opt,
            runtime,
            check_mode,
            encrypt_opts,
            no_io,
        } = OpenArgs::take(opts, ctx.options().discard_unmap)?;
        let read_only = ctx.options().read_only;
        let file = ctx
            .open_child(
                "file",
                ChildRole::DATA | ChildRole::METADATA | ChildRole::PRIMARY,
                file_spec,
            )
            .await?;
        let h = Header::parse(&read_first_cluster(&file).await?, file.len())?;
        runtime.check_version(h.version)?;
        let crypto = encrypt::open(&ctx, &file, &h, encrypt_opts, no_io).await?;
        if h.incompat & header::INCOMPAT_CORRUPT != 0 && !read_only && !check_mode {
            return Err(Error::generic(
                "qcow2: Image is corrupt; cannot be opened read/write",
            ));
        }
        let cs = h.cluster_size();
        let l1 = read_table(&file, h.l1_offset, h.l1_size as u64).await?;
        file.debug_event(crate::event::DebugEvent::ReftableLoad)
            .await;
        let reftable = read_table(
            &file,
            h.reftable_offset,
            h.reftable_clusters as u64 * cs / 8,
        )
        .await?;
        let read_mode = if check_mode {
            snapshot_table::ReadMode::Repair
        } else {
            snapshot_table::ReadMode::Strict
        };
        let (snaps, snap_bytes) = snapshot::load_table(&file, &h, read_mode).await?;
        let data = open_data_file(&ctx, &h, data_opt).await?;
        // The backing child is found through the graph on every use (`Qcow2::backing`): jobs
        // change it.
        open_backing(&ctx, &file, &h, backing_opt).await?;
        let (l2_slots, rb_slots) = runtime.cache_tables(cs, h.size);
        let header_lazy = h.version == 3 && h.compat & header::COMPAT_LAZY_REFCOUNTS != 0;
        let q = Qcow2 {
            file,
            data_raw: data.is_some() && h.autoclear & header::AUTOCLEAR_DATA_FILE_RAW != 0,
            data_file_name: data.as_ref().and(h.data_file.clone()),
            data,
            layout: Layout::new(&h),
            l2: L2Map::new(HostOffset::new(h.l1_offset), l1, l2_slots),
            alloc: Allocator::new(HostOffset::new(h.reftable_offset), reftable, rb_slots),
            meta: MetaLock::default(),
            ranges: RangeLocks::default(),
            read_only: Cell::new(read_only),
            reopen_to: Cell::new(None),
            lazy: Cell::new(runtime.lazy.unwrap_or(header_lazy)),
            header_lazy,
            metadata_prealloc: Cell::new(None),
            fixups_pending: Cell::new(!read_only && needs_fixups(&h)),
            node: ctx.weak_node(),
            signaled_corruption: Cell::new(false),
            check_mode,
            fatal_signaled: Cell::new(false),
            cleaner: RefCell::new(
                runtime
                    .clean_interval
                    .filter(|&secs| secs > 0)
                    .map(|secs| clean::start(ctx.env(), ctx.weak_node(), secs)),
            ),
            runtime: RefCell::new(runtime),
            reopen_options: RefCell::new(None),
            snaps: RefCell::new(snaps),
            snap_table: Cell::new((h.snapshots_offset, snap_bytes)),
            bitmap_dir_at: Cell::new((0, 0)),
            crypto,
        };
        // QEMU loads the persistent bitmaps at open: a malformed extension, directory or
        // table fails the open, read-only or not.
        // The graph then loads them as live bitmaps, marked in use on a writable node.
        q.check_bitmaps_at_open(&h).await?;
        Ok(Box::new(q) as Box<dyn BlockDriver>)
    })
}

/// The options `open` takes (all of them: any other is an error).
struct OpenArgs {
    /// The `file` child's options.
    file_spec: Value,
    /// The `backing` option, if given.
    backing_opt: Option<Value>,
    /// The `data-file` option, if given.
    data_opt: Option<Value>,
    /// The options a reopen may change.
    runtime: options::OpenOpts,
    /// blk's counterpart of QEMU's check open flag (qemu-img check): a corrupt image may be
    /// opened read-write so that check can repair it; guest writes stay refused.
    check_mode: bool,
    /// `encrypt.key-secret`, `encrypt.format`.
    encrypt_opts: encrypt::EncryptOpts,
    /// `x-no-io` (qemu-img info): an encrypted image opens without its key.
    no_io: bool,
}

impl OpenArgs {
    fn take(mut opts: Options, discard_unmap: bool) -> Result<OpenArgs> {
        let file_spec = opts
            .take("file")
            .ok_or_else(|| Error::param_missing("file"))?;
        let backing_opt = opts.take("backing");
        let data_opt = opts.take("data-file");
        let runtime = options::OpenOpts::take(&mut opts, discard_unmap)?;
        let check_mode = opts.take_bool("x-check")?.unwrap_or(false);
        let encrypt_opts = encrypt::EncryptOpts::take(&mut opts)?;
        let no_io = opts.take_bool("x-no-io")?.unwrap_or(false);
        opts.finish()?;
        Ok(OpenArgs {
            file_spec,
            backing_opt,
            data_opt,
            runtime,
            check_mode,
            encrypt_opts,
            no_io,
        })
    }
}

/// A writable open must first repair the refcounts (dirty bit) or clear autoclear bits
/// blk does not keep valid.
fn needs_fixups(h: &Header) -> bool {
    h.incompat & header::INCOMPAT_DIRTY != 0
        || (h.version == 3 && h.autoclear & !known_autoclear(h.incompat) != 0)
}

/// The first cluster of the image file (or what exists of it): its size is only known
/// after the first bytes.
async fn read_first_cluster(file: &Child) -> Result<Vec<u8>> {
    let file_len = file.len();
    let probe = file_len.min(512) as usize;
    let (buf, r) = file.read(0, IoBuf::new(probe), ReqFlags::NONE).await;
    r?;
    let mut first = buf.as_slice().to_vec();
    if first.len() >= 24 {
        let bits = u32::from_be_bytes(first[20..24].try_into().expect("4 bytes"));
        if (9..=21).contains(&bits) {
            let want = file_len.min(1u64 << bits) as usize;
            if want > first.len() {
                let (b, r) = file.read(0, IoBuf::new(want), ReqFlags::NONE).await;
                r?;
                first = b.as_slice().to_vec();
            }
        }
    }
    Ok(first)
}

/// Autoclear bits blk keeps valid on an image with incompatible bits `incompat`: the
/// bitmaps bit (the directory is maintained by `bitmaps`), and data-file-raw with a data file.
fn known_autoclear(incompat: u64) -> u64 {
    let raw = if incompat & header::INCOMPAT_DATA_FILE != 0 {
        header::AUTOCLEAR_DATA_FILE_RAW
    } else {
        0
    };
    raw | bitmaps::AUTOCLEAR_BITMAPS
}

/// Read a table of `entries` big-endian u64 at `offset` (validated against the file size).
async fn read_table(file: &Child, offset: u64, entries: u64) -> Result<Vec<u64>> {
    let (buf, r) = file
        .read(offset, IoBuf::new((entries * 8) as usize), ReqFlags::NONE)
        .await;
    r?;
    Ok(buf
        .as_slice()
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// The backing child: from the `backing` option, or from the header's name (relative to the
/// overlay's directory) with the backing-format extension or a probe of the qcow2 magic.
async fn open_backing(
    ctx: &OpenCtx,
    file: &Child,
    h: &Header,
    opt: Option<Value>,
) -> Result<Option<Child>> {
    let mut in_chain = None;
    let spec = match opt {
        Some(Value::Null) => return Ok(None),
        Some(v) => v,
        None => {
            let Some(name) = &h.backing_file else {
                return Ok(None);
            };
            if name.starts_with("json:") {
                return Err(Error::generic(
                    "qcow2: json: backing file names are not supported",
                ));
            }
            // A protocol name (`blkdebug:CONFIG:IMAGE`, as an overlay over a blkdebug file
            // records it) opens through that protocol, as QEMU opens it; it needs the format.
            let path = match (name.starts_with("blkdebug:"), &h.backing_fmt) {
                (true, Some(_)) => name.clone(),
                _ => relative_to(file, name),
            };
            // This image stays on the list of chains being opened while its backing file
            // opens: a reference back to any image above (or to itself) is a loop, refused
            // before anything opens.
            let entry = ctx.graph().enter_chain(&file.filename())?;
            drop(ctx.graph().enter_chain(&path)?);
            in_chain = Some(entry);
            let fmt = match &h.backing_fmt {
                Some(f) => f.clone(),
                None => probe_format(ctx, &path).await?,
            };
            // The file inherits read-only, as in QEMU: its host handle is opened without write
            // access, and a reopen switches both.
            let mut spec = json!({"driver": fmt, "read-only": true,
                   "file": {"driver": "file", "filename": path, "read-only": true}});
            if path.starts_with("blkdebug:") {
                let mut proto = crate::filename::image_options(&path, Some("blkdebug"), false)?;
                proto.insert("read-only".into(), json!(true));
                spec["file"] = Value::Object(proto);
            }
            spec
        }
    };
    let child = ctx
        .open_child("backing", ChildRole::COW, spec)
        .await
        .map_err(|e| e.context("Could not open backing file"))?;
    drop(in_chain);
    Ok(Some(child))
}

/// The external data file: from the `data-file` option, or from the header's name, opened as a
/// plain file. Refused when the image does not say it
/// has one, required when it does.
async fn open_data_file(ctx: &OpenCtx, h: &Header, opt: Option<Value>) -> Result<Option<Child>> {
    let has = h.incompat & header::INCOMPAT_DATA_FILE != 0;
    if !has {
        if opt.is_some() {
            return Err(Error::generic(
                "'data-file' can only be set for images with an external data file",
            ));
        }
        if h.version == 3 && h.autoclear & header::AUTOCLEAR_DATA_FILE_RAW != 0 {
            return Err(Error::generic("data-file-raw requires a data file"));
        }
        return Ok(None);
    }
    let spec = match opt {
        Some(v) => v,
        None => {
            let Some(name) = &h.data_file else {
                return Err(Error::generic("'data-file' is required for this image"));
            };
            // As QEMU does, the stored name is used as is (relative names are relative to
            // the working directory, not to the image's directory as backing names are).
            json!({"driver": "file", "filename": name})
        }
    };
    Ok(Some(
        ctx.open_child("data-file", ChildRole::DATA, spec).await?,
    ))
}

/// `name` resolved against the directory of the image `file` (absolute names stay).
fn relative_to(file: &Child, name: &str) -> String {
    crate::filename::backing_path(&file.node().driver().filename(), name)
}

/// The probed format of a backing file the header names without a backing format.
async fn probe_format(ctx: &OpenCtx, path: &str) -> Result<String> {
    crate::probe::probe_format(&*ctx.env(), path, "backing file ").await
}

impl Qcow2 {
    /// The backing child as the graph has it now (stream, commit and rebase change it).
    fn backing(&self) -> Option<Child> {
        self.file.sibling("backing")
    }

    /// Refuse writes to a read-only image; do the pending header fix-ups before the first
    /// write (rebuild stale lazy refcounts, clear unknown autoclear bits).
    async fn check_writable(&self) -> Result<()> {
        if self.read_only.get() {
            return Err(Error::io_msg(Errno::EROFS, "qcow2: image is read-only"));
        }
        if self.is_corrupt() {
            return Err(self.corrupt_error());
        }
        if !self.fixups_pending.get() && !self.needs_dirty_bit() {
            return Ok(());
        }
        let held = self.meta.lock().await;
        if self.fixups_pending.get() {
            self.do_fixups(&held).await?;
        }
        if self.needs_dirty_bit() {
            self.set_dirty_bit(true).await?;
        }
        Ok(())
    }

    /// `check_writable` before a change of guest data: stored enabled bitmaps are marked in
    /// use first.
    async fn check_guest_writable(&self) -> Result<()> {
        self.check_not_ejected()?;
        self.check_writable().await
    }

    /// Autoclear bits this driver keeps valid.
    fn known_autoclear(&self) -> u64 {
        known_autoclear(self.layout.incompat.get())
    }

    /// The child guest data clusters live in: the data file, or the image file.
    fn data_child(&self) -> &Child {
        self.data.as_ref().unwrap_or(&self.file)
    }

    /// How many internal snapshots the image holds.
    fn nb_snapshots(&self) -> u32 {
        self.snaps.borrow().len() as u32
    }

    /// True when guest data lives in an external data file.
    fn has_data_file(&self) -> bool {
        self.data.is_some()
    }

    /// True when lazy refcounts are in use and the dirty bit is not set yet.
    fn needs_dirty_bit(&self) -> bool {
        self.lazy.get() && self.layout.incompat.get() & header::INCOMPAT_DIRTY == 0
    }

    /// Set or clear the dirty bit durably (everything written before is flushed first).
    async fn set_dirty_bit(&self, on: bool) -> Result<()> {
        let bits = if on {
            self.layout.incompat.get() | header::INCOMPAT_DIRTY
        } else {
            self.layout.incompat.get() & !header::INCOMPAT_DIRTY
        };
        self.file.flush().await?;
        self.file
            .write(
                header::OFF_INCOMPAT,
                IoBuf::from_slice(&bits.to_be_bytes()),
                ReqFlags::NONE,
            )
            .await
            .1?;
        self.file.flush().await?;
        self.layout.incompat.set(bits);
        Ok(())
    }

    /// Write back every cached table, flush, and clear the lazy-refcounts dirty bit (close,
    /// and a reopen to read-only).
    async fn write_back_and_mark_clean(&self) -> Result<()> {
        let held = &self.meta.lock().await;
        self.flush_metadata(held).await?;
        self.file.flush().await?;
        // Lazy refcounts: everything is written back, the refcounts are accurate again.
        if self.lazy.get() && self.layout.incompat.get() & header::INCOMPAT_DIRTY != 0 {
            self.set_dirty_bit(false).await?;
        }
        Ok(())
    }

    /// The header fix-ups of `check_writable` (metadata lock held: `held`).
    async fn do_fixups(&self, held: &MetaGuard<'_>) -> Result<()> {
        if self.layout.incompat.get() & header::INCOMPAT_DIRTY != 0 {
            self.rebuild_refcounts(held, false).await?;
        }
        let keep = self.layout.autoclear.get() & self.known_autoclear();
        if self.layout.version.get() == 3 && self.layout.autoclear.get() != keep {
            // Autoclear features this driver does not maintain are cleared before anything
            // is written (data-file-raw is maintained: data clusters sit at their guest offset
            // and zeroes are written through).
            self.file
                .write(
                    header::OFF_AUTOCLEAR,
                    IoBuf::from_slice(&keep.to_be_bytes()),
                    ReqFlags::NONE,
                )
                .await
                .1?;
            self.file.flush().await?;
            self.layout.autoclear.set(keep);
        }
        self.fixups_pending.set(false);
        Ok(())
    }
}

impl BlockDriver for Qcow2 {
    fn caps(&self) -> &DriverCaps {
        &CAPS
    }

    fn activate(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // Opened for check/repair: the check reports the image as it is (QEMU's
            // BDRV_O_CHECK skips the repair at open too).
            if !self.fixups_pending.get() || self.check_mode {
                return Ok(());
            }
            let held = self.meta.lock().await;
            if self.fixups_pending.get() {
                self.do_fixups(&held)
                    .await
                    .map_err(|e| e.context("Could not repair dirty image"))?;
            }
            Ok(())
        })
    }

    fn limits(&self) -> Limits {
        Limits {
            // Encrypted data is ciphered in whole sectors.
            request_align: if self.encrypted() { 512 } else { 1 },
            opt_transfer: self.layout.cs() as u32,
            min_mem_align: self.file.node().limits().min_mem_align,
            ..Limits::default()
        }
    }

    fn len(&self) -> u64 {
        self.layout.size.get()
    }

    fn read(&self, offset: u64, buf: IoBuf, _flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            if let Err(e) = self.check_not_ejected() {
                return (buf, Err(e));
            }
            self.do_read(offset, buf).await
        })
    }

    fn write(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            if let Err(e) = self.check_guest_writable().await {
                return (buf, Err(e));
            }
            if flags.contains(ReqFlags::WRITE_COMPRESSED) {
                return self.do_write_compressed(offset, buf).await;
            }
            self.do_write(offset, buf).await
        })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ReqFlags,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.check_guest_writable().await?;
            self.do_write_zeroes(offset, len, flags).await
        })
    }

    fn discard(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.check_guest_writable().await?;
            self.do_discard(offset, len).await
        })
    }

    fn flush(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.read_only.get() || self.fatal_signaled.get() {
                return Ok(());
            }
            let held = &self.meta.lock().await;
            self.flush_metadata(held).await
        })
    }

    fn block_status(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<BlockStatus>> {
        Box::pin(async move {
            self.check_not_ejected()?;
            self.do_block_status(offset, len).await
        })
    }

    fn truncate(
        &self,
        len: u64,
        _exact: bool,
        prealloc: Prealloc,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.check_writable().await?;
            self.truncate_with_bitmaps(len, prealloc).await
        })
    }

    fn close(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // Nothing more is written to an image found corrupt.
            if self.read_only.get() || self.is_corrupt() {
                return Ok(());
            }
            self.write_back_and_mark_clean().await
        })
    }

    fn reopen_prepare(&self, read_only: bool) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if read_only {
                // The file loses its write permission at commit: everything cached goes out
                // now, and a lazy-refcounts image is marked clean, as at close.
                if !self.is_corrupt() {
                    self.write_back_and_mark_clean().await?;
                }
            } else if self.is_corrupt() && !self.check_mode {
                return Err(Error::generic(
                    "qcow2: Image is corrupt; cannot be opened read/write",
                ));
            }
            self.reopen_to.set(Some(read_only));
            Ok(())
        })
    }

    fn reopen_commit(&self) {
        self.apply_option_changes();
        let Some(read_only) = self.reopen_to.take() else {
            return;
        };
        if !read_only && self.read_only.get() {
            // What open decides for a writable image: the header fix-ups are due (they run in
            // `activate`, which the reopen calls next, or before the first write).
            let incompat = self.layout.incompat.get();
            self.fixups_pending.set(
                incompat & header::INCOMPAT_DIRTY != 0
                    || (self.layout.version.get() == 3
                        && self.layout.autoclear.get() & !self.known_autoclear() != 0),
            );
        }
        self.read_only.set(read_only);
    }

    fn reopen_abort(&self) {
        self.reopen_to.set(None);
        self.reopen_options.take();
    }

    fn reopen_prepare_options(&self, changes: Options) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(self.prepare_option_changes(changes))
    }

    fn format_ops(&self) -> Option<&dyn FormatOps> {
        Some(self)
    }

    fn filename(&self) -> String {
        self.file.node().driver().filename()
    }

    fn image_info(&self) -> crate::driver::ImageInfo {
        self.qemu_io_info()
    }

    fn specific_info(&self) -> Value {
        let mut v = json!({
            "compat": if self.layout.version.get() == 3 { "1.1" } else { "0.10" },
            "refcount-bits": 1u32 << self.layout.refcount_order.get(),
            "corrupt": self.layout.incompat.get() & header::INCOMPAT_CORRUPT != 0,
            "compression-type": if self.layout.compression_type == 1 { "zstd" } else { "zlib" },
        });
        if let Some(e) = &self.crypto {
            v["encrypt"] = e.info().clone();
        }
        v
    }
}
