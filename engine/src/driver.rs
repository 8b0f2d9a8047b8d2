//! The `BlockDriver` trait: what a driver implements, and what the generic request path
//! guarantees it.
//!
//! A driver sees only pre-validated requests: offsets and lengths of reads and writes are
//! multiples of its `Limits::request_align`, no request is longer than `max_transfer`, reads lie
//! within the node's length (the generic path zero-fills past the end), and every request holds
//! the permission it needs. Everything generic (alignment, splitting, serialisation, in-flight
//! counting, flush de-duplication, FUA emulation, detect-zeroes) lives once, in `request/`.
//!
//! Capabilities are data ([`DriverCaps`]), never inferred from which methods a driver overrides.
//!
//! The trait's shape:
//!
//! ```text
//! BlockDriver                 every driver: caps, limits, len, read/write/write_zeroes/discard/
//!                             flush/block_status/truncate, child_perms, activate, reopen
//!                             prepare/commit/abort, close, drain begin/end, filename, info
//!   .breakpoints()  -> Option<&dyn Breakpoints>   blkdebug: the debug-event hook and the
//!                             break/resume/remove_break/wait_break verbs
//!   .format_ops()   -> Option<&dyn FormatOps>     image formats: make_empty,
//!                             change_backing_file, check/repair (snapshots and bitmaps to come)
//! ```
//!
//! Optional families are sub-traits reached by these typed accessors (never by downcasting the
//! driver); a driver without one returns `None`, and the caller (`request/`, `Node`) gives the
//! error. Filters take their pass-through pieces from `request::filter`.
//!
//! Imports only `io`, `types`, `event`, `error` and `env` (for the boxed-future type).

use serde_json::Value;

use crate::env::LocalBoxFuture;
use crate::error::{Errno, Error, Result};
use crate::event::DebugEvent;
use crate::io::{BlockStatus, BufResult, IoBuf, Limits, ReqFlags};
use crate::types::{ChildRole, Perms};
use crate::util::Options;

mod check;
mod stored_bitmaps;
pub use check::{CheckReport, Repair};
pub use stored_bitmaps::{BitmapToStore, StoredBitmap};

/// What kind of node a driver makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    /// Talks to storage outside the graph (file, null-co).
    Protocol,
    /// Interprets an image format stored in a child (raw, qcow2).
    Format,
    /// Passes requests to one child, adding behaviour (blkdebug, throttle).
    Filter,
}

/// Static facts about a driver.
#[derive(Clone, Copy, Debug)]
pub struct DriverCaps {
    /// The name used in `blockdev-add`'s `driver`.
    pub name: &'static str,
    /// Protocol, format or filter.
    pub kind: DriverKind,
    /// Can have a backing child.
    pub supports_backing: bool,
    /// Flags the driver honours on `write` (e.g. FUA). Others are emulated or dropped.
    pub write_flags: ReqFlags,
    /// Flags the driver honours on `write_zeroes` (FUA, MAY_UNMAP).
    pub zero_flags: ReqFlags,
    /// Can switch between read-only and read-write while open (`reopen_*`); a reopen that
    /// involves a node whose driver cannot is refused before anything changes.
    pub reopen: bool,
}

/// Preallocation modes for create and truncate (`preallocation=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Prealloc {
    /// Nothing allocated ahead.
    #[default]
    Off,
    /// Metadata only (formats).
    Metadata,
    /// Space reserved with fallocate.
    Falloc,
    /// Zeroes written.
    Full,
}

impl Prealloc {
    /// Parse QMP's value.
    pub fn parse(s: &str) -> Result<Prealloc> {
        match s {
            "off" => Ok(Prealloc::Off),
            "metadata" => Ok(Prealloc::Metadata),
            "falloc" => Ok(Prealloc::Falloc),
            "full" => Ok(Prealloc::Full),
            _ => Err(Error::generic(format!(
                "Invalid preallocation mode: '{s}' (expected off, metadata, falloc or full)"
            ))),
        }
    }
}

/// What a driver is told about one of its children when asked for that child's permissions.
#[derive(Clone, Copy, Debug)]
pub struct ChildDesc<'a> {
    /// The edge name ("file", "backing", "image").
    pub name: &'a str,
    /// The child's role.
    pub role: ChildRole,
}

/// The permissions the node itself holds from its parents, plus whether it is read-only.
#[derive(Clone, Copy, Debug)]
pub struct ParentPerms {
    /// Union of what the node's parents take.
    pub perm: Perms,
    /// Intersection of what the node's parents share.
    pub shared: Perms,
    /// The node was opened read-only.
    pub read_only: bool,
}

/// Permissions a node takes on a child, by role, as QEMU's `bdrv_default_perms` does.
pub fn default_child_perms(child: ChildDesc<'_>, parent: ParentPerms) -> (Perms, Perms) {
    // Filters pass the data permissions through and keep graph changes to themselves.
    let passthrough =
        Perms::CONSISTENT_READ | Perms::WRITE | Perms::WRITE_UNCHANGED | Perms::RESIZE;
    if child.role.contains(ChildRole::FILTERED) {
        return (
            parent.perm & passthrough,
            (parent.shared & passthrough) | Perms::GRAPH_MOD,
        );
    }
    if child.role.contains(ChildRole::COW) {
        // A backing file is only read; it may be shared with writers only if our own parents
        // already let others write (otherwise the overlay's view would change under it).
        let perm = parent.perm & Perms::CONSISTENT_READ;
        let mut shared = if parent.shared.contains(Perms::WRITE) {
            Perms::WRITE | Perms::RESIZE
        } else {
            Perms::NONE
        };
        shared |= Perms::CONSISTENT_READ | Perms::GRAPH_MOD | Perms::WRITE_UNCHANGED;
        return (perm, shared);
    }
    // Storage (data and/or metadata): like a filter, but a writable format node may write
    // metadata and grow its file whatever its parents do, and metadata must stay consistent.
    let mut perm = parent.perm & passthrough;
    let mut shared = (parent.shared & passthrough) | Perms::GRAPH_MOD;
    if child.role.contains(ChildRole::METADATA) {
        perm |= Perms::CONSISTENT_READ;
        shared = shared & !(Perms::WRITE | Perms::RESIZE);
    }
    if !parent.read_only {
        perm |= Perms::WRITE | Perms::RESIZE;
    }
    (perm, shared)
}

/// A block driver. Every method describes one layer; the generic path does the rest.
///
/// Futures borrow the driver; the engine keeps the node alive while any request runs.
#[allow(clippy::len_without_is_empty)] // length is a property of the image, not a container
pub trait BlockDriver {
    /// Static capabilities.
    fn caps(&self) -> &DriverCaps;

    /// Current limits (may depend on children; asked again after graph changes).
    fn limits(&self) -> Limits;

    /// Current length in bytes.
    fn len(&self) -> u64;

    /// Read `buf.len()` bytes at `offset` into `buf`.
    fn read(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult>;

    /// Write `buf` at `offset`. `flags` are within `caps().write_flags`.
    fn write(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult>;

    /// Make `[offset, offset+len)` read as zeroes. May return `ENOTSUP`; the generic path then
    /// writes zero buffers (unless the caller said NO_FALLBACK).
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ReqFlags,
    ) -> LocalBoxFuture<'_, Result<()>>;

    /// Discard a range (advisory). `ENOTSUP` is treated as success by the generic path.
    fn discard(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<()>>;

    /// Make this layer's completed writes durable in its children (write back caches) and, for a
    /// protocol driver, on its storage. Children are flushed by the generic path afterwards.
    fn flush(&self) -> LocalBoxFuture<'_, Result<()>>;

    /// How the range starting at `offset` (at most `len` bytes) is provided by this layer.
    fn block_status(&self, offset: u64, len: u64) -> LocalBoxFuture<'_, Result<BlockStatus>>;

    /// Change the length. `exact=false` allows a larger result; `prealloc` applies to a grown area.
    fn truncate(&self, len: u64, exact: bool, prealloc: Prealloc)
    -> LocalBoxFuture<'_, Result<()>>;

    /// The permissions this node takes on a child and shares with others.
    fn child_perms(&self, child: ChildDesc<'_>, parent: ParentPerms) -> (Perms, Perms) {
        default_child_perms(child, parent)
    }

    /// The permissions this node's users will hold together change to `perm`, sharing `shared`
    /// (phase one of a permission change, after the graph accepted it): a protocol driver on a
    /// host file takes its image locks here, and fails if another process holds the image.
    /// `perm_commit` or `perm_abort` follows.
    fn perm_prepare(&self, perm: Perms, shared: Perms) -> Result<()> {
        let _ = (perm, shared);
        Ok(())
    }

    /// Phase two: the change `perm_prepare` accepted is in force.
    fn perm_commit(&self) {}

    /// The change `perm_prepare` accepted was refused elsewhere: back to the old permissions.
    fn perm_abort(&self) {}

    /// Called once right after open, when the node holds its permissions on its children:
    /// a format brings its image up to date here (qcow2 rebuilds the refcounts of an image
    /// left dirty by lazy refcounts and clears unknown autoclear bits, as QEMU does at open).
    /// An error fails the open.
    fn activate(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Reopen, phase one: stage a switch to read-only (`true`) or read-write (`false`). Runs
    /// inside a drained section, after the permission plan accepted the new state and while
    /// the node still holds its old permissions (so a switch to read-only can write back its
    /// caches here). May fail; then `reopen_abort` follows and nothing may have changed.
    /// Only called when `caps().reopen` is set.
    fn reopen_prepare(&self, read_only: bool) -> LocalBoxFuture<'_, Result<()>> {
        let _ = read_only;
        let name = self.caps().name;
        Box::pin(async move {
            Err(Error::io_msg(
                Errno::ENOTSUP,
                format!("Block format '{name}' does not support reopening files"),
            ))
        })
    }

    /// Reopen, phase two: apply what `reopen_prepare` staged. Cannot fail.
    fn reopen_commit(&self) {}

    /// The bytes the storage under a protocol driver really holds (QEMU's allocated file
    /// size), when known; `None` for other drivers.
    fn allocated_bytes(&self) -> Option<u64> {
        None
    }

    /// Stage the driver's own options for a reopen (qemu-io `reopen -o`): the whole set, so
    /// an option not in `changes` goes back to its default. Applied by `reopen_commit`,
    /// dropped by `reopen_abort`. Drivers without changeable options refuse any.
    fn reopen_prepare_options(&self, changes: Options) -> LocalBoxFuture<'_, Result<()>> {
        let first = changes.keys().next().map(str::to_string);
        Box::pin(async move {
            match first {
                Some(key) => Err(Error::generic(format!("Cannot change the option '{key}'"))),
                None => Ok(()),
            }
        })
    }

    /// Drop what `reopen_prepare` staged; the node stays as it was.
    fn reopen_abort(&self) {}

    /// Called once before the node goes away; write back anything cached.
    fn close(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// The node entered a drained section: stop internal request sources.
    fn drain_begin(&self) {}

    /// The node left its drained section.
    fn drain_end(&self) {}

    /// blkdebug's breakpoint verbs and debug-event hook; `None` for every other driver (the
    /// request path then skips debug events at this node).
    fn breakpoints(&self) -> Option<&dyn Breakpoints> {
        None
    }

    /// Format-only verbs (emptying, backing file changes, check/repair); `None` for protocol
    /// and filter drivers and formats without them.
    fn format_ops(&self) -> Option<&dyn FormatOps> {
        None
    }

    /// The file name shown in `query-named-block-nodes` ("file" member).
    fn filename(&self) -> String;

    /// Format-specific information for `info` output (`Value::Null` when none).
    fn specific_info(&self) -> Value {
        Value::Null
    }

    /// What qemu-io's `info` prints of the image (QEMU's driver info and its format-specific
    /// block); zeroes and no lines by default.
    fn image_info(&self) -> ImageInfo {
        ImageInfo::default()
    }
}

/// The image facts qemu-io's `info` prints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageInfo {
    /// Bytes per cluster (0: the format has none).
    pub cluster_size: u64,
    /// Where the VM state would live, past the guest data.
    pub vm_state_offset: u64,
    /// The "Format specific information" lines (name, value), in QEMU's order.
    pub specific: Vec<(&'static str, String)>,
}

/// A driver that acts on debug events and can suspend requests at them (blkdebug): reached
/// through [`BlockDriver::breakpoints`].
pub trait Breakpoints {
    /// A debug event reached this node. A returned future suspends the request that raised the
    /// event until it completes.
    fn debug_event(&self, event: DebugEvent) -> Option<LocalBoxFuture<'_, ()>>;

    /// `break EVENT TAG`: suspend the next request that raises `event` at this node under `tag`.
    fn debug_breakpoint(&self, event: DebugEvent, tag: &str) -> Result<()>;

    /// `remove_break TAG`: delete the breakpoints under `tag` and resume every request suspended
    /// under it.
    fn debug_remove_breakpoint(&self, tag: &str) -> Result<()>;

    /// `resume TAG`: resume the first request suspended under `tag`.
    fn debug_resume(&self, tag: &str) -> Result<()>;

    /// True while a request is suspended under `tag`.
    fn debug_is_suspended(&self, tag: &str) -> bool;

    /// Completes once a request is suspended under `tag` (`wait_break TAG`).
    fn debug_wait_suspended(&self, tag: &str) -> LocalBoxFuture<'_, ()>;
}

/// The error of a breakpoint verb on a node whose driver has no breakpoints.
pub fn no_breakpoints() -> Error {
    Error::io_msg(Errno::ENOTSUP, "This node does not support breakpoints")
}

/// QEMU's refusal of a persistent bitmap on a node that cannot store one.
pub fn cannot_store_bitmaps(node: &str) -> Error {
    Error::generic(format!(
        "Can't store persistent bitmaps to {node}: Operation not supported"
    ))
}

/// The refusal of a persistent bitmap verb on a format that cannot store bitmaps.
fn no_persistent_bitmaps(name: &str) -> Error {
    Error::io_msg(
        Errno::ENOTSUP,
        format!("Can't store persistent bitmap '{name}': Operation not supported"),
    )
}

/// One internal snapshot as listed (`qemu-img snapshot -l`, `query-block`'s snapshots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Unique id (QEMU numbers them).
    pub id: String,
    /// Name (tag).
    pub name: String,
    /// Bytes of saved VM state.
    pub vm_state_size: u64,
    /// Creation time, seconds since the Unix epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds within the second.
    pub date_nsec: u32,
    /// Guest clock at creation, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// `None`: not recorded.
    pub icount: Option<u64>,
    /// Virtual disk size at snapshot time, when the entry records it.
    pub disk_size: Option<u64>,
}

impl SnapshotInfo {
    /// QAPI's SnapshotInfo (QMP replies, `qemu-img info --output=json`), in QEMU's key order.
    pub fn to_qapi(&self) -> Value {
        let mut m = serde_json::Map::new();
        if let Some(i) = self.icount {
            m.insert("icount".into(), i.into());
        }
        m.insert(
            "vm-clock-nsec".into(),
            (self.vm_clock_nsec % 1_000_000_000).into(),
        );
        m.insert("name".into(), self.name.clone().into());
        m.insert("date-sec".into(), self.date_sec.into());
        m.insert("date-nsec".into(), self.date_nsec.into());
        m.insert(
            "vm-clock-sec".into(),
            (self.vm_clock_nsec / 1_000_000_000).into(),
        );
        m.insert("id".into(), self.id.clone().into());
        m.insert("vm-state-size".into(), self.vm_state_size.into());
        Value::Object(m)
    }
}

/// What a new internal snapshot records (no VM state: a disk-only snapshot).
#[derive(Clone, Debug, Default)]
pub struct NewSnapshot {
    /// `None`: the format picks the next free id.
    pub id: Option<String>,
    /// Name (tag).
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds within the second.
    pub date_nsec: u32,
    /// Guest clock at creation, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Instruction count (`None`: not recorded).
    pub icount: Option<u64>,
}

/// What `qemu-img amend -o` asks a format to change: each field `None` when the option was
/// not given. Values are as typed (the format checks them and refuses with its own messages).
#[derive(Clone, Debug, Default)]
pub struct AmendOptions {
    /// `backing_file=` (amend cannot change it: only the current name is accepted).
    pub backing_file: Option<String>,
    /// `backing_fmt=` (as `backing_file`).
    pub backing_fmt: Option<String>,
    /// `compat=` (`0.10`/`v2` or `1.1`/`v3`).
    pub compat: Option<String>,
    /// `data_file=` (empty: drop the name from the header).
    pub data_file: Option<String>,
    /// `data_file_raw=`.
    pub data_file_raw: Option<bool>,
    /// Some `encrypt.*` option was given.
    pub encrypt: bool,
    /// `lazy_refcounts=`.
    pub lazy_refcounts: Option<bool>,
    /// `refcount_bits=`.
    pub refcount_bits: Option<u64>,
    /// `size=` (0: unchanged, as QEMU takes it).
    pub size: Option<u64>,
}

/// How an amend resizes the image: through the node's generic truncate (so the graph's live
/// bitmaps follow), supplied by the caller.
pub type AmendResize<'a> = &'a dyn Fn(u64) -> LocalBoxFuture<'a, Result<()>>;

/// Progress of an amend: (operation done so far, in 0.0..=1.0).
pub type AmendProgress<'a> = &'a dyn Fn(f64);

/// The refusal of a snapshot verb on a format without internal snapshots.
fn no_snapshots() -> Error {
    Error::io(Errno::ENOTSUP)
}

/// Verbs only image formats have: reached through [`BlockDriver::format_ops`]. Persistent
/// bitmaps ([`StoredBitmap`], [`BitmapToStore`]) are plain data here, independent of the live
/// named bitmaps of a node; snapshots join this family when they come.
pub trait FormatOps {
    /// Deallocate everything so the image reads entirely from its backing file (`qemu-img
    /// commit` empties the image it committed).
    fn make_empty(&self) -> LocalBoxFuture<'_, Result<()>>;

    /// Rewrite the backing file name (and format) recorded in the image's metadata, as a job
    /// does once the chain below changed (stream, commit, rebase). `None` removes the backing
    /// reference. Only the image header changes, never the graph. Everything written before is
    /// durable before the header changes, and the header is durable when this returns.
    fn change_backing_file(
        &self,
        name: Option<&str>,
        format: Option<&str>,
    ) -> LocalBoxFuture<'_, Result<()>>;

    /// How many internal snapshots the image holds.
    fn snapshot_count(&self) -> u32 {
        0
    }

    /// True when the format keeps internal snapshots.
    fn can_snapshot(&self) -> bool {
        false
    }

    /// The internal snapshots, in table order.
    fn snapshots(&self) -> Vec<SnapshotInfo> {
        Vec::new()
    }

    /// Create internal snapshot `spec`; durable when this returns.
    fn snapshot_create(&self, _spec: NewSnapshot) -> LocalBoxFuture<'_, Result<SnapshotInfo>> {
        Box::pin(async { Err(no_snapshots()) })
    }

    /// Revert the disk to the snapshot whose id, else name, is `key` (ENOENT: none).
    fn snapshot_goto(&self, _key: &str) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async { Err(no_snapshots()) })
    }

    /// Delete the first snapshot matching `id` and `name` (each when given); ENOENT: none.
    fn snapshot_delete<'a>(
        &'a self,
        _id: Option<&'a str>,
        _name: Option<&'a str>,
    ) -> LocalBoxFuture<'a, Result<SnapshotInfo>> {
        Box::pin(async { Err(no_snapshots()) })
    }

    /// True when the image holds persistent dirty bitmaps that are in use (valid).
    fn has_persistent_bitmaps(&self) -> bool {
        false
    }

    /// True when the stored bitmaps must stay as they are for this open even if the image is
    /// writable (qcow2 opened for check/repair): they load read-only, nothing marks or stores
    /// them.
    fn bitmaps_read_only(&self) -> bool {
        false
    }

    /// Whether a new persistent dirty bitmap `name` with `granularity` can be stored in the
    /// image of node `node` (`block-dirty-bitmap-add persistent=true`); `taken`: the node has a
    /// bitmap of that name already (a format that stores bitmaps refuses that first). The
    /// error is the whole message QMP shows. Formats without persistent bitmaps keep the
    /// default refusal.
    fn can_store_new_bitmap(
        &self,
        node: &str,
        _name: &str,
        _granularity: u64,
        _taken: bool,
    ) -> Result<()> {
        Err(cannot_store_bitmaps(node))
    }

    /// The persistent bitmaps the image stores, in directory order (none for formats
    /// without them, and for a qcow2 image whose bitmaps extension a program without bitmap
    /// support invalidated).
    fn stored_bitmaps(&self) -> LocalBoxFuture<'_, Result<Vec<StoredBitmap>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// The bits of stored bitmap `name` (one per granule of the current disk size). A bitmap
    /// marked in use has no usable bits: refused.
    fn load_bitmap(&self, name: &str) -> LocalBoxFuture<'_, Result<crate::bitmap::HBits>> {
        let e = no_persistent_bitmaps(name);
        Box::pin(async move { Err(e) })
    }

    /// Store `bitmaps` (each clean: not in use), replacing the stored ones of the same names;
    /// stored bitmaps not named here stay as they are. Durable when this returns.
    fn store_bitmaps<'a>(
        &'a self,
        bitmaps: &'a [BitmapToStore<'a>],
    ) -> LocalBoxFuture<'a, Result<()>> {
        let e = no_persistent_bitmaps(bitmaps.first().map_or("", |b| b.name));
        Box::pin(async move { Err(e) })
    }

    /// Whether `bitmap` could be stored (name, granularity, size limits, a format version
    /// that holds bitmaps), without storing anything.
    fn check_bitmap_constraints(&self, bitmap: &BitmapToStore<'_>) -> Result<()> {
        Err(no_persistent_bitmaps(bitmap.name))
    }

    /// Remove stored bitmap `name` and free its clusters; false when there is none.
    fn remove_bitmap(&self, name: &str) -> LocalBoxFuture<'_, Result<bool>> {
        let e = no_persistent_bitmaps(name);
        Box::pin(async move { Err(e) })
    }

    /// Mark every stored bitmap in use (what a read-write open does in QEMU, so that a crash
    /// before they are stored again leaves them inconsistent). Durable when this returns.
    fn mark_bitmaps_in_use(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Write `buf` at `pos` of the image's VM state area (qemu-io `write -b`, savevm).
    /// Formats without one refuse (ENOTSUP).
    fn save_vmstate(&self, _pos: u64, buf: IoBuf) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move { (buf, Err(Error::io(Errno::ENOTSUP))) })
    }

    /// Read `buf.len()` bytes at `pos` of the image's VM state area (qemu-io `read -b`).
    fn load_vmstate(&self, _pos: u64, buf: IoBuf) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move { (buf, Err(Error::io(Errno::ENOTSUP))) })
    }

    /// Whether a data run's zeroes are worth asking the storage child for (QEMU's
    /// `BDRV_BLOCK_RECURSE`): true for an image whose data clusters were preallocated over
    /// holes of its file, so that a zero-seeking caller sees them as zeroes.
    fn data_may_be_file_holes(&self) -> LocalBoxFuture<'_, Result<bool>> {
        Box::pin(async { Ok(false) })
    }

    /// One consistency check (and repair, when asked) of the image, as `qemu-img check -r`
    /// does in one pass; `check_node` runs the second pass after a repair.
    fn check(&self, repair: Option<Repair>) -> LocalBoxFuture<'_, Result<CheckReport>>;

    /// Metadata tables held in memory (a format's caches, e.g. qcow2's L2 tables and refcount
    /// blocks): `(mapping tables, refcount tables)`. Formats without caches keep the default.
    fn cached_tables(&self) -> (usize, usize) {
        (0, 0)
    }

    /// Drop cached tables unused since the last call (`cache-clean-interval`).
    fn clean_unused_tables(&self) -> LocalBoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// `qemu-img amend`: change the image's creation options in place (`resize` changes the
    /// size). ENOTSUP: the format cannot amend.
    fn amend<'a>(
        &'a self,
        _opts: &'a AmendOptions,
        _resize: AmendResize<'a>,
        _progress: AmendProgress<'a>,
    ) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(async { Err(Error::io(Errno::ENOTSUP)) })
    }
}
